"""``ram-wsi score``: a folder (glob, manifest) of slides through a pool of Ray scorer actors,
results streamed to disk, resumable, every input accounted for.

Why plain actors rather than Ray Data's ``map_batches``: a scoring run must survive a reader
that segfaults (the actor dies: Ray restarts it, the slide is retried, then marked), stop a
slide that hangs (``--timeout``: the actor is killed and restarted, the slide marked), and
commit each slide as it finishes. A pool of restartable actors, fed one path at a time by this
driver, gives all three with nothing between the driver and the slide's row; each actor loads
the checkpoint once and opens slides itself, so only paths and small results travel. On a
cluster (``--address`` / ``RAY_ADDRESS``) the actors spread over the nodes
(``scheduling_strategy="SPREAD"``); slide paths must then name shared storage, and the driver
alone writes ``OUT``.

Per input, in order: skip it if an earlier run scored it and the file is unchanged (size and
mtime; ``--overwrite`` redoes all, ``--retry-errors`` redoes failed ones); take its lock (a run
elsewhere that holds it keeps it); score it; write its GeoJSON and thumbnail; append its row to
the journal (the commit); release the lock. ``results.csv`` is rebuilt every few seconds and at
the end, ``results.parquet`` and ``run_metadata.json`` at the end. The exit status
(:func:`exit_status`): 0 when every row is ``ok``, 1 when any slide failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..io_utils import write_json
from .inputs import ScoreInput, file_stamp, find_inputs
from .locks import SlideLock
from .results import ResultStore
from .scorer import Scored, ScorerOptions, SlideScorer, load_scoring_model, write_outputs

__all__ = ["RunOptions", "exit_status", "score_slides"]


@dataclass(frozen=True)
class RunOptions:
    """How a scoring run is spread and guarded.

    Attributes:
        workers: scorer actors (0: score in this process, without Ray: no timeout, no crash
            isolation -- for debugging).
        cpus_per_worker: Ray CPUs per actor (and torch threads in it).
        gpus_per_worker: Ray GPUs per actor (None: a share of the cluster's GPUs when it has
            some, else 0).
        timeout: seconds a slide may take before its actor is killed and the slide marked.
        retries: re-tries of a slide whose scorer process crashed.
        overwrite: score every input again.
        retry_errors: score again inputs whose earlier row is an error.
        address: the Ray cluster to join (None: ``RAY_ADDRESS``, else a local instance).
        progress: show a progress bar (slides/s, ETA) on stderr.
        stale_lock_seconds: a lock older than this is taken over (a host that died).
    """

    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    timeout: float = 600.0
    retries: int = 1
    overwrite: bool = False
    retry_errors: bool = False
    address: str | None = None
    progress: bool = True
    stale_lock_seconds: float = 6 * 3600


def exit_status(summary: dict[str, Any]) -> int:
    """0 when every input's row is ``ok``, 1 when any failed (or is held by another run)."""
    return 0 if summary["counts"].get("error", 0) == 0 and not summary["not_scored"] else 1


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("ram-wsi", "torch", "numpy", "ray", "openslide-python", "openslide-bin", "zarr",
                 "tifffile", "pillow", "dask", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import openslide

        out["libopenslide"] = openslide.__library_version__
    except (ImportError, AttributeError, OSError):  # a version string is best-effort
        out["libopenslide"] = None
    return out


class _ActorImpl:
    """The body of one Ray scorer actor (wrapped with ``ray.remote`` in :func:`_pool`)."""

    def __init__(self, checkpoint: str, options: ScorerOptions, scorer_cls: type = SlideScorer):
        import ray

        self.scorer = scorer_cls(checkpoint, options)
        node = ray.get_runtime_context().get_node_id() or ""
        self.worker = f"{socket.gethostname()}:{os.getpid()}/{node[:8]}"

    def score(self, inp: ScoreInput) -> Scored:
        return self.scorer.score(inp, self.worker)

    def describe(self) -> dict[str, Any]:
        return {**self.scorer.describe(), "worker": self.worker}


class _Run:
    """One scoring run's state: the store, the locks held, the counts (see module docstring)."""

    def __init__(self, out: Path, store: ResultStore, opts: RunOptions,
                 log: Callable[[str], None]):
        self.out, self.store, self.opts, self.log = out, store, opts, log
        self.locks: dict[str, SlideLock] = {}
        self.stamps: dict[str, tuple[int, float]] = {}
        self.scored = 0
        self.failed = 0
        self.bar = None

    def lock(self, inp: ScoreInput) -> bool:
        lk = SlideLock(self.out / "locks", inp.slide_id, stale_after=self.opts.stale_lock_seconds)
        if not lk.acquire():
            return False
        self.locks[inp.path] = lk
        return True

    def commit(self, inp: ScoreInput, scored: Scored, attempts: int) -> None:
        row = scored.row
        size, mtime = self.stamps[inp.path]
        row.update({"file_size": size, "file_mtime": mtime, "attempts": attempts})
        if row.get("status") == "ok":
            row["seconds_write"] = round(float(row.get("seconds_write") or 0.0)
                                         + write_outputs(self.out, scored), 4)
        self.store.add(row)
        lk = self.locks.pop(inp.path, None)
        if lk is not None:
            lk.release()
        self.scored += 1
        self.failed += row.get("status") != "ok"
        if self.bar is not None:
            self.bar.set_postfix_str(f"errors {self.failed}", refresh=False)
            self.bar.update(1)

    def fail(self, inp: ScoreInput, reason: str, attempts: int, seconds: float = 0.0) -> None:
        row = {"path": inp.path, "slide_id": inp.slide_id, "label": inp.label,
               "files": inp.files, "status": "error", "error": f"{inp.path}: {reason}",
               "seconds": round(seconds, 4)}
        self.commit(inp, Scored(row), attempts)

    def release_all(self) -> None:
        for lk in self.locks.values():
            lk.release()
        self.locks.clear()


def _up_to_date(prev: dict[str, Any] | None, stamp: tuple[int, float], out: Path,
                options: ScorerOptions, opts: RunOptions) -> bool:
    """Whether an earlier row of an input stands: same size and mtime, not asked to redo it,
    and (when ok) its outputs still there."""
    if prev is None or opts.overwrite:
        return False
    if (prev.get("file_size"), prev.get("file_mtime")) != stamp:
        return False
    if prev.get("status") != "ok":
        return not opts.retry_errors
    sid = prev.get("slide_id")
    if options.geojson and not (out / "geojson" / f"{sid}.geojson").is_file():
        return False
    return not (options.thumbnails and not (out / "thumbnails" / f"{sid}.png").is_file())


def _in_process(todo: list[ScoreInput], checkpoint: str, options: ScorerOptions, run: _Run,
                scorer_cls: type) -> list[dict[str, Any]]:
    scorer = scorer_cls(checkpoint, options)
    for inp in todo:
        if run.lock(inp):
            run.commit(inp, scorer.score(inp), 1)
    return [scorer.describe()]


def _pool(todo: list[ScoreInput], checkpoint: str, options: ScorerOptions, run: _Run,
          scorer_cls: type) -> list[dict[str, Any]]:
    """Feed ``todo`` through restartable actors; a crash retries, a timeout kills and marks."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    opts = run.opts
    gpus = opts.gpus_per_worker
    if gpus is None:
        have = float(ray.cluster_resources().get("GPU", 0))
        gpus = min(1.0, have / opts.workers) if have else 0.0
    if gpus and options.device == "cpu":
        options = ScorerOptions(**{**asdict(options), "device": "auto"})
    remote = ray.remote(_ActorImpl).options(
        num_cpus=opts.cpus_per_worker, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
        scheduling_strategy="SPREAD")
    n = max(1, min(opts.workers, len(todo)))
    actors = [remote.remote(checkpoint, options, scorer_cls) for _ in range(n)]
    queue: deque[tuple[ScoreInput, int]] = deque((inp, 1) for inp in todo)
    idle = list(range(n))
    flight: dict[Any, tuple[int, ScoreInput, int, float]] = {}  # ref -> actor, input, try, t0
    pings: dict[Any, tuple[int, int]] = {}  # ref -> actor, tries: a restarted actor's check
    killed: set[Any] = set()

    def revive(a: int, tries: int = 0) -> None:
        # A dead actor gets work again only once it answers: a slide sent to an actor that is
        # still restarting would fail and be counted against the slide.
        if tries > 20:
            raise RuntimeError(f"scorer actor {a} does not come back after a crash")
        pings[actors[a].describe.remote()] = (a, tries + 1)

    try:
        while queue or flight:
            while idle and queue:
                inp, attempt = queue.popleft()
                if attempt == 1 and not run.lock(inp):
                    run.log(f"{inp.path}: held by another run; left to it")
                    continue
                a = idle.pop()
                flight[actors[a].score.remote(inp)] = (a, inp, attempt, time.monotonic())
            if not flight and not pings:
                break  # only slides another run holds were left
            ready, _ = ray.wait([*flight, *pings], num_returns=1, timeout=0.5)
            now = time.monotonic()
            for ref in ready:
                if ref in pings:
                    a, tries = pings.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(a)
                    except RayActorError:
                        time.sleep(0.2)
                        revive(a, tries)
                    continue
                a, inp, attempt, t0 = flight.pop(ref)
                try:
                    scored = ray.get(ref)
                except RayActorError as exc:
                    revive(a)
                    if ref in killed:
                        killed.discard(ref)
                        run.fail(inp, f"timed out after {opts.timeout:g} s (its scorer was "
                                      "stopped and restarted)", attempt, now - t0)
                    elif attempt <= opts.retries:
                        run.log(f"{inp.path}: its scorer process died ({type(exc).__name__}); "
                                f"retrying ({attempt}/{opts.retries})")
                        queue.appendleft((inp, attempt + 1))
                    else:
                        run.fail(inp, f"the reading process crashed {attempt} time(s) "
                                      f"({type(exc).__name__}); a native reader fault on this "
                                      "file is likely", attempt, now - t0)
                    continue
                except RayTaskError as exc:  # a bug, not a bad slide: still one row only
                    idle.append(a)
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    run.fail(inp, f"scoring failed: {type(cause).__name__}: "
                                  f"{str(cause).splitlines()[0] if str(cause) else ''}",
                             attempt, now - t0)
                    continue
                idle.append(a)
                run.commit(inp, scored, attempt)
            for ref, (a, inp, _attempt, t0) in flight.items():
                if ref not in killed and now - t0 > opts.timeout:
                    run.log(f"{inp.path}: over {opts.timeout:g} s; stopping its scorer")
                    ray.kill(actors[a], no_restart=False)
                    killed.add(ref)
        try:
            return ray.get([x.describe.remote() for x in actors], timeout=60)
        except (RayActorError, RayTaskError, ray.exceptions.GetTimeoutError):
            return []  # who scored is in each row's ``worker``; this is only a summary
    finally:
        for x in actors:
            ray.kill(x, no_restart=True)


def score_slides(slides: str | os.PathLike, checkpoint: str | os.PathLike,
                 out: str | os.PathLike, *, options: ScorerOptions | None = None,
                 run_options: RunOptions | None = None, log: Callable[[str], None] = print,
                 scorer_cls: type = SlideScorer, command: list[str] | None = None
                 ) -> dict[str, Any]:
    """Score every input SLIDES names into ``out``; returns the run's summary (also in
    ``out/run_metadata.json``).

    Raises:
        CheckpointError: the checkpoint cannot be used (before anything is scored).
        DataError: SLIDES names nothing.
    """
    options = options or ScorerOptions()
    opts = run_options or RunOptions()
    out = Path(out)
    started = time.time()
    _model, cfg, meta = load_scoring_model(checkpoint)  # fail fast, before Ray and the folder
    class_names = [str(c) for c in meta["class_names"]]
    inputs = find_inputs(slides, exclude=out)
    store = ResultStore(out, class_names)
    store.set_order(i.path for i in inputs)
    run = _Run(out, store, opts, log)
    todo = []
    for inp in inputs:
        run.stamps[inp.path] = stamp = file_stamp(inp.path)
        if not _up_to_date(store.previous(inp.path), stamp, out, options, opts):
            todo.append(inp)
    meta_path = out / "run_metadata.json"
    base_meta = {
        "checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": _sha256(checkpoint),
        "checkpoint_step": meta.get("step"), "class_names": class_names,
        "config": cfg.to_dict(), "retina": meta.get("retina"), "context": meta.get("context"),
        "trained_with": meta.get("package_version"), "versions": _versions(),
        "host": socket.gethostname(), "slides": str(slides), "out": str(out.resolve()),
        "command": command if command is not None else list(sys.argv),
        "options": asdict(options), "run_options": asdict(opts),
        "started": _iso(started), "inputs": len(inputs), "to_score": len(todo),
    }
    write_json(meta_path, {**base_meta, "status": "running"})
    log(f"score: {len(inputs)} inputs, {len(inputs) - len(todo)} already scored, "
        f"{len(todo)} to score -> {out}")
    workers: list[dict[str, Any]] = []
    status = "interrupted"
    t0 = time.perf_counter()
    started_ray = False
    try:
        if opts.progress and todo:
            from tqdm import tqdm

            run.bar = tqdm(total=len(todo), unit="slide", file=sys.stderr, dynamic_ncols=True)
        if todo and opts.workers > 0:
            from ..distributed.runner import init_ray

            need = opts.workers * opts.cpus_per_worker
            started_ray = init_ray(opts.address, log=log, log_to_driver=False,
                                   **({} if opts.address or os.environ.get("RAY_ADDRESS") else
                                      {"num_cpus": max(int(need + 0.999), os.cpu_count() or 1)}))
            workers = _pool(todo, str(checkpoint), options, run, scorer_cls)
        elif todo:
            workers = _in_process(todo, str(checkpoint), options, run, scorer_cls)
        status = "done"
    finally:
        if run.bar is not None:
            run.bar.close()
        run.release_all()
        store.flush(reread=True)
        elapsed = time.perf_counter() - t0
        summary = _summary(store, inputs, run.scored, elapsed, class_names)
        if status == "done":
            pq = store.write_parquet()
            summary["parquet"] = None if pq is None else str(pq)
        write_json(meta_path, {**base_meta, "status": status, "ended": _iso(time.time()),
                               "workers": workers, **summary})
        if started_ray:
            import ray

            ray.shutdown()
    return summary


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _summary(store: ResultStore, inputs: list[ScoreInput], scored: int, elapsed: float,
             class_names: list[str]) -> dict[str, Any]:
    rows = store.table()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    ok = [r for r in rows if r["status"] == "ok"]
    out: dict[str, Any] = {
        "counts": counts, "rows": len(rows), "scored_now": scored,
        "not_scored": [i.path for i in inputs if i.path not in store.rows],
        "seconds": round(elapsed, 3),
        "slides_per_second": round(scored / elapsed, 4) if elapsed > 0 and scored else None,
        "results_csv": str(store.out / "results.csv"),
        "geojson": str(store.out / "geojson"), "thumbnails": str(store.out / "thumbnails"),
        "errors": {r["path"]: r["error"] for r in rows if r["status"] == "error"},
    }
    if ok:
        out["seconds_per_slide"] = round(sum(float(r["seconds"]) for r in ok) / len(ok), 4)
        out["pixels_read_per_slide"] = round(sum(int(r["pixels_read"]) for r in ok) / len(ok))
        out["predicted"] = {c: sum(r["predicted"] == c for r in ok) for c in class_names}
        known = [r for r in ok if r.get("label") in class_names]
        if known:
            out["labelled"] = len(known)
            out["accuracy"] = round(sum(r["predicted"] == r["label"] for r in known)
                                    / len(known), 4)
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The few lines a person reads at the end of a run."""
    c = summary["counts"]
    lines = [f"scored {summary['rows']} inputs: {c.get('ok', 0)} ok, {c.get('error', 0)} error"
             + (f", {len(summary['not_scored'])} not scored (held by another run or "
                "interrupted)" if summary["not_scored"] else "")
             + (f"  ({summary['scored_now']} this run, {summary['slides_per_second']} slides/s)"
                if summary.get("slides_per_second") else "")]
    if "seconds_per_slide" in summary:
        lines.append(f"per slide: {summary['seconds_per_slide']} s in its scorer, "
                     f"{summary['pixels_read_per_slide']:,} pixels read")
    if "accuracy" in summary:
        lines.append(f"accuracy on {summary['labelled']} labelled slides: {summary['accuracy']}")
    for path, err in list(summary["errors"].items())[:10]:
        lines.append(f"  error  {err if err.startswith(path) else path + ': ' + err}")
    if len(summary["errors"]) > 10:
        lines.append(f"  ... and {len(summary['errors']) - 10} more (results.csv)")
    lines.append(f"results:    {summary['results_csv']}")
    lines.append(f"geojson:    {summary['geojson']}/  (QuPath: File > Import objects)")
    lines.append(f"thumbnails: {summary['thumbnails']}/")
    return "\n".join(lines)


def main_args(argv: list[str] | None = None) -> int:
    """``ram-wsi score`` / ``pipelines/score.py``: parse, run, print, exit status."""
    import argparse

    p = argparse.ArgumentParser(
        prog="ram-wsi score", description="Score slides with a trained slide agent: "
        "results.csv/.parquet, QuPath GeoJSON, thumbnails; resumable. Exit status: 0 all "
        "slides ok, 1 some failed, 2 bad arguments or checkpoint, 130 interrupted.")
    p.add_argument("slides", help="a folder (recursive), a glob, a manifest CSV or one slide")
    p.add_argument("--checkpoint", "-k", required=True, help="a slide agent's best.pt / last.pt")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=2, help="Ray scorer actors (0: in-process)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="default: a share of the cluster's GPUs when it has some")
    p.add_argument("--samples", "-M", type=int, default=None,
                   help="rollouts averaged per slide (default: the checkpoint's eval_samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per slide")
    p.add_argument("--retries", type=int, default=1, help="after a crash of the reader")
    p.add_argument("--overwrite", action="store_true", help="score every input again")
    p.add_argument("--retry-errors", action="store_true", help="score failed inputs again")
    p.add_argument("--fallback-mpp", type=float, default=None,
                   help="um/px assumed for slides stating none (micrometre checkpoints)")
    p.add_argument("--no-geojson", action="store_true")
    p.add_argument("--no-thumbnails", action="store_true")
    p.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or local)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    options = ScorerOptions(samples=args.samples, seed=args.seed,
                            threads=max(1, int(args.cpus_per_worker)),
                            device="auto" if args.workers == 0 else "cpu",
                            geojson=not args.no_geojson, thumbnails=not args.no_thumbnails,
                            fallback_mpp=args.fallback_mpp)
    ropts = RunOptions(workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                       gpus_per_worker=args.gpus_per_worker, timeout=args.timeout,
                       retries=args.retries, overwrite=args.overwrite,
                       retry_errors=args.retry_errors, address=args.address,
                       progress=not args.no_progress)
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        summary = score_slides(args.slides, args.checkpoint, args.out, options=options,
                               run_options=ropts, log=log)
    except KeyboardInterrupt:
        print("ram-wsi score: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(format_summary(summary), flush=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, default=str),
          flush=True)
    return exit_status(summary)
