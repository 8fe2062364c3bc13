"""Rollout throughput (episodes/s) of 1, 2, 4, ... Ray actors against linear scaling.

    python pipelines/bench_scaling.py --actors 1 2 4 --envs mnist slides

Each actor holds one CPU (``cpus_per_actor``; when the actors ask for more CPUs than the
machine has, each gets ``CPUs / actors`` and the row is labelled *oversubscribed*) and keeps one
call of ``--episodes`` episodes in flight; the rate is measured after one warm-up call per actor.
MNIST episodes are 60x60 cluttered canvases; slide episodes read glimpses lazily from generated
pyramidal TIFFs (``write_synthetic_slide``), starting inside tissue. This is the actors' side only
(no learner): what the learner can be fed. Writes ``scaling.jsonl``, ``scaling.png`` and prints a
table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ._report import emit, write_jsonl

__all__ = ["main", "make_slides", "measure"]


def make_slides(folder: Path, count: int, size: int) -> Path:
    from ..data.manifest import write_manifest
    from ..slide import write_synthetic_slide

    rows = []
    for i in range(count):
        meta = write_synthetic_slide(folder / f"slide{i}.tiff", size, seed=i, label=i % 2)
        rows.append((f"slide{i}.tiff", meta["label"]))
    return write_manifest(folder / "manifest.csv", rows)


def measure(cfg, n: int, cpus: float, calls: int, repeats: int = 1) -> dict:
    import dataclasses

    import ray

    from ..distributed.actors import RolloutWorker
    from ..distributed.runner import actor_config

    d = dataclasses.replace(cfg.distributed, actors=n, cpus_per_actor=cpus)
    cfg = dataclasses.replace(cfg, distributed=d)
    cls = ray.remote(num_cpus=cpus)(RolloutWorker)
    conf = actor_config(cfg)
    actors = [cls.remote(conf, i, threads=max(1, int(cpus))) for i in range(n)]
    try:
        ray.get([a.rollout.remote(None, 0) for a in actors])  # warm-up: imports, env, caches
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            pending = {a.rollout.remote(None, 0): i for i, a in enumerate(actors)}
            left = [calls - 1] * n
            episodes = 0
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready[0])
                episodes += len(ray.get(ready[0]))
                if left[i] > 0:
                    left[i] -= 1
                    pending[actors[i].rollout.remote(None, 0)] = i
            rates.append(episodes / (time.perf_counter() - t0))
    finally:
        for a in actors:
            ray.kill(a)
    rates.sort()
    return {"actors": n, "cpus_per_actor": cpus, "episodes_per_call": cfg.distributed.
            episodes_per_call, "calls_per_actor": calls, "repeats": repeats,
            "episodes_per_s": rates[len(rates) // 2], "min": rates[0], "max": rates[-1]}


def main(argv: Sequence[str] | None = None) -> int:
    """``ram-wsi bench scaling``: its arguments checked (:mod:`ram_wsi.commands.bench`),
    then :func:`run_bench`."""
    from ..commands.bench import parse_bench

    return run_bench(parse_bench("scaling", sys.argv[1:] if argv is None else argv))


def run_bench(args: argparse.Namespace) -> int:
    """``ram-wsi bench scaling`` with checked arguments."""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpus_total = int(os.environ.get("RAM_WSI_BENCH_CPUS", os.cpu_count() or 1))
    rows = run(args, cpus_total)
    write_jsonl(out / "scaling.jsonl", rows)
    table(rows)
    plot(rows, args.envs, out / "scaling.png")
    print(f"wrote {out / 'scaling.jsonl'} and {out / 'scaling.png'}")
    return 0


def run(args: argparse.Namespace, cpus_total: int) -> list[dict]:
    """Every (env, actor count) row, each printed as a JSON line when measured."""
    import ray

    from ..config import load_config

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=cpus_total, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="ram-wsi-slides-") as tmp:
            for env in args.envs:
                sets = [f"distributed.episodes_per_call={args.episodes}"]
                if env == "slides":
                    t0 = time.time()
                    manifest = make_slides(Path(tmp), args.slides, args.slide_size)
                    print(f"wrote {args.slides} slides of {args.slide_size}^2 in "
                          f"{time.time() - t0:.1f} s", flush=True)
                    sets += ["data.source=slides", f"data.slides.manifest={manifest}",
                             "data.retina_base=2.0"]
                elif args.data_dir:
                    sets.append(f"data.mnist.dir={args.data_dir}")
                cfg = load_config(args.config, sets)
                base = None
                for n in args.actors:
                    over = n > cpus_total
                    cpus = 1.0 if not over else cpus_total / n
                    calls = args.slide_calls if env == "slides" else args.calls
                    r = measure(cfg, n, cpus, calls, args.repeats)
                    base = base if base is not None else r["episodes_per_s"] / n
                    r.update(env=env, cpus_total=cpus_total, load_avg=os.getloadavg()[0],
                             oversubscribed=over, linear=base * n,
                             efficiency=r["episodes_per_s"] / (base * n))
                    rows.append(emit(r))
    finally:
        if started:
            ray.shutdown()
    return rows


def table(rows: list[dict]) -> None:
    print(f"\n{'env':7} {'actors':>6} {'cpu/actor':>9} {'episodes/s':>11} {'linear':>8} "
          f"{'eff.':>5}  note")
    for r in rows:
        print(f"{r['env']:7} {r['actors']:6d} {r['cpus_per_actor']:9.2f} "
              f"{r['episodes_per_s']:11.1f} {r['linear']:8.1f} {r['efficiency']:5.2f}  "
              f"{'oversubscribed' if r['oversubscribed'] else ''}")


def plot(rows: list[dict], envs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(4.5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        rs = [r for r in rows if r["env"] == env]
        xs = [r["actors"] for r in rs]
        ax.plot(xs, [r["linear"] for r in rs], "--", color="gray", label="linear")
        ax.plot(xs, [r["episodes_per_s"] for r in rs], "o-", label="measured")
        for r in rs:
            if r["oversubscribed"]:
                ax.annotate("oversubscribed", (r["actors"], r["episodes_per_s"]), fontsize=7,
                            textcoords="offset points", xytext=(-30, 8))
        ax.set_xticks(xs)
        ax.set_xlabel(f"actors ({rs[0]['cpus_total'] if rs else '?'} CPUs)")
        ax.set_ylabel("episodes/s")
        ax.set_title(f"{env} rollouts")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
