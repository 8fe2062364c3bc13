"""The remote-slide benchmark (issue 24 §5): glimpses per second per core from a store on a
local S3-protocol server (moto's) or web server, against the same store on local disk, with no
added latency and with ``--delays`` ms added per request (a delaying proxy on loopback); one
cold glimpse's latency in round trips; and seconds per scored slide from the server against
local.

    ram-wsi bench remote --size 8192 --slides 4 --delays 0 20 --out bench-results/remote

Stores: ``--slides`` generated needle slides written as OME-Zarr (256^2 chunks, one object
each: ``chunked``) and converted sharded as ``ram-wsi convert`` writes to a URI (2048^2 shards:
``sharded``), uploaded to moto's server (s3fs) and served by a read-only web server over the
folder. The servers and the proxy run in processes of their own, so that the client's CPU time
is its own.

Rows (one JSON line each, then a table):

* ``glimpses``: per (layout, store, delay), each slide opened cold (caches emptied, as a
  scoring run does per slide), its thumbnail read, then ``--steps`` glimpse calls of
  ``--batch`` random locations (the M rollouts of a scoring run: one call per step).
  ``glimpses_per_s`` over the glimpse calls (wall), ``glimpses_per_cpu_s`` over this process's
  CPU time for them (all its threads: per core), ``vs_local`` the ratio to local disk's
  ``glimpses_per_cpu_s`` (goal >= 0.5 at 0 ms), ``open_ms`` the median open + thumbnail.
* ``latency``: ``--trials`` single glimpses (one location, every scale), each on a freshly
  opened source with cold caches (the open not timed): median ms, ``batches`` (requests the
  store sent together: 1 chunked, 2 sharded -- shard indexes, then chunks) and
  ``round_trips`` = (median - the 0 ms median) / delay: the added latency in round trips (goal <= 2 at 20 ms).
* ``score``: ``ram-wsi score`` in this process (``--workers 0``) of the same slides: local
  folder, the s3 prefix at each delay; ``s_per_slide`` the median of the rows' ``seconds``
  (reading and network) and ``wall_per_slide`` the run's wall time over its slides.

Without ``--checkpoint`` a throwaway checkpoint of ``configs/needle_slides.yaml``'s
architecture is trained for two updates (:func:`.score.throwaway_checkpoint`).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._report import emit, print_table, write_jsonl

__all__ = ["main"]

BUCKET = "bench"


def main(argv: Sequence[str] | None = None) -> int:
    """``ram-wsi bench remote``: its arguments checked (:mod:`ram_wsi.commands.bench`),
    then :func:`run_bench`."""
    from ..commands.bench import parse_bench

    return run_bench(parse_bench("remote", sys.argv[1:] if argv is None else argv))


def run_bench(args: argparse.Namespace) -> int:
    """``ram-wsi bench remote`` with checked arguments."""
    torch.set_num_threads(1)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_remote_"))
    rows: list[dict[str, Any]] = []
    try:
        _run(args, work, rows)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "remote.jsonl", rows)
    print()
    print_table([r for r in rows if r["kind"] == "glimpses"],
                ["layout", "store", "delay_ms", "glimpses_per_s", "glimpses_per_cpu_s",
                 "vs_local", "open_ms"])
    print()
    print_table([r for r in rows if r["kind"] == "latency"],
                ["layout", "store", "delay_ms", "median_ms", "batches", "round_trips"])
    if any(r["kind"] == "score" for r in rows):
        print()
        print_table([r for r in rows if r["kind"] == "score"],
                    ["layout", "store", "delay_ms", "slides", "s_per_slide", "wall_per_slide",
                     "vs_local"])
    return 0


def _machine() -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_1min": None if load is None else round(load, 2)}


def _write_slides(work: Path, args: argparse.Namespace, layouts: list[str]) -> dict[str, Path]:
    """``{layout: folder}`` of the slides, written once (kept in ``--work``)."""
    from ..slide import convert_to_ome_zarr, write_synthetic_slide

    folders = {lay: work / lay for lay in layouts}
    for i in range(args.slides):
        name = f"s{i:02d}.zarr"
        chunked = work / "chunked" / name
        if not chunked.exists():
            chunked.parent.mkdir(parents=True, exist_ok=True)
            write_synthetic_slide(chunked, args.size, seed=900 + i, label=i % 2, kind="needle",
                                  fmt="zarr")
        if "sharded" in layouts and not (work / "sharded" / name).exists():
            (work / "sharded").mkdir(parents=True, exist_ok=True)
            convert_to_ome_zarr(chunked, work / "sharded" / name, chunk=256, shard=2048)
            side = Path(f"{chunked}.json")
            if side.exists():
                shutil.copy2(side, work / "sharded" / f"{name}.json")
    return folders


def _run(args: argparse.Namespace, work: Path, rows: list[dict[str, Any]]) -> None:
    from ..slide import remote as rm
    from .servers import MotoServer, environment, moto_env, serve_subprocess

    machine = _machine()
    folders = _write_slides(work, args, list(args.layouts))
    ckpt = None
    if not args.no_score:
        from .score import throwaway_checkpoint

        ckpt = Path(args.checkpoint) if args.checkpoint else throwaway_checkpoint(work / "ckpt")
    procs = []
    with environment(moto_env()), MotoServer(subprocess=True) as moto:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=moto.endpoint, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        for lay, folder in folders.items():
            fs.put(str(folder) + "/", f"{BUCKET}/{lay}/", recursive=True)
        targets = {"s3": moto.port}
        if "http" in args.stores:
            proc, port = serve_subprocess("http", str(work))
            procs.append(proc)
            targets["http"] = port
        try:
            for delay in args.delays:
                ports = dict(targets)
                if delay:
                    for store, port in targets.items():
                        proc, ports[store] = serve_subprocess("proxy", str(port),
                                                              str(delay / 1000.0))
                        procs.append(proc)
                for lay, folder in folders.items():
                    local = sorted(str(p) for p in folder.glob("*.zarr"))
                    if delay == args.delays[0]:
                        _measure(args, rows, machine, lay, "local", 0.0, local)
                    for store in args.stores:
                        if store not in ports:
                            continue
                        endpoint = f"http://127.0.0.1:{ports[store]}"
                        if store == "s3":
                            opts: dict[str, Any] = {"endpoint_url": endpoint}
                            uris = [f"s3://{BUCKET}/{lay}/{Path(p).name}" for p in local]
                        else:
                            opts = {}
                            uris = [f"{endpoint}/{lay}/{Path(p).name}" for p in local]
                        rm.set_storage_options(opts)
                        _measure(args, rows, machine, lay, store, delay, uris)
                        if ckpt is not None and store == "s3":
                            _score(args, rows, machine, lay, delay, ckpt, work, folder,
                                   f"s3://{BUCKET}/{lay}/", opts)
                        rm.set_storage_options(None)
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)


def _measure(args: argparse.Namespace, rows: list[dict[str, Any]], machine: dict[str, Any],
             layout: str, store: str, delay: float, paths: list[str]) -> None:
    """The ``glimpses`` and ``latency`` rows of one (layout, store, delay)."""
    from ..retina import RetinaSpec
    from ..slide import clear_caches, open_source

    spec = RetinaSpec(args.patch, args.scales, args.scale_factor, 1.0)
    rng = np.random.default_rng(0)
    opens, wall, cpu, n = [], 0.0, 0.0, 0
    for _ in range(args.rounds):
        for p in paths:
            clear_caches()
            t0 = time.perf_counter()
            src = open_source(p)
            src.thumbnail(512)
            opens.append(time.perf_counter() - t0)
            locs = torch.tensor(rng.uniform(-0.8, 0.8, (args.steps, args.batch, 2)),
                                dtype=torch.float32)
            w0, c0 = time.perf_counter(), time.process_time()
            for t in range(args.steps):
                src.glimpse(locs[t], spec)
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            n += args.steps * args.batch
            src.close()
    rec = {"kind": "glimpses", "layout": layout, "store": store, "delay_ms": delay,
           "glimpses": n, "glimpses_per_s": round(n / wall, 1),
           "glimpses_per_cpu_s": round(n / max(cpu, 1e-9), 1),
           "open_ms": round(1000 * statistics.median(opens), 1), "batch": args.batch,
           "retina": [args.patch, args.scales, args.scale_factor], **machine}
    base = next((r for r in rows if r["kind"] == "glimpses" and r["layout"] == layout
                 and r["store"] == "local"), None)
    rec["vs_local"] = None if base is None else round(
        rec["glimpses_per_cpu_s"] / base["glimpses_per_cpu_s"], 3)
    emit(rec, rows)
    _latency(args, rows, machine, layout, store, delay, paths, spec, rng)


def _latency(args: argparse.Namespace, rows: list[dict[str, Any]], machine: dict[str, Any],
             layout: str, store: str, delay: float, paths: list[str], spec: Any,
             rng: np.random.Generator) -> None:
    """The ``latency`` row: one glimpse (every scale) on a freshly opened source, cold."""
    from ..slide import clear_caches, open_source
    from ..slide import remote as rm

    batches: list[int] = []
    real = rm.RemoteStore.get_many

    def counted(self, requests):
        batches.append(len(requests))
        return real(self, requests)

    times, per_glimpse = [], []
    for i in range(args.trials):
        clear_caches()
        src = open_source(paths[i % len(paths)])
        loc = torch.tensor(rng.uniform(-0.5, 0.5, (1, 2)), dtype=torch.float32)
        batches.clear()
        rm.RemoteStore.get_many = counted
        try:
            t0 = time.perf_counter()
            src.glimpse(loc, spec)
            times.append(time.perf_counter() - t0)
        finally:
            rm.RemoteStore.get_many = real
        per_glimpse.append(len(batches))
        src.close()
    med = 1000 * statistics.median(times)
    # Round trips: the latency the delay added (over the same store at 0 ms: the client's and
    # the server's own time are not round trips) in units of the delay.
    zero = next((r["median_ms"] for r in rows if r["kind"] == "latency" and r["delay_ms"] == 0
                 and r["layout"] == layout and r["store"] == store), None)
    emit({"kind": "latency", "layout": layout, "store": store, "delay_ms": delay,
          "median_ms": round(med, 2), "p90_ms": round(1000 * float(np.percentile(times, 90)), 2),
          "batches": max(per_glimpse),
          "round_trips": round((med - zero) / delay, 2) if delay and zero is not None else None,
          "trials": args.trials, **machine}, rows)


def _score(args: argparse.Namespace, rows: list[dict[str, Any]], machine: dict[str, Any],
           layout: str, delay: float, ckpt: Path, work: Path, folder: Path, prefix: str,
           opts: dict[str, Any]) -> None:
    """``score`` rows: the local folder once (at the first delay), then the s3 prefix."""
    from ..score.runner import RunOptions, score_slides
    from ..score.scorer import ScorerOptions

    def one(slides: str | Path, store: str, d: float, options: dict | None) -> None:
        out = work / f"scores_{layout}_{store}_{int(d)}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        summary = score_slides(slides, ckpt, out, log=lambda *_: None,
                               options=ScorerOptions(storage_options=options),
                               run_options=RunOptions(workers=0, progress=False))
        wall = time.perf_counter() - t0
        import csv

        with open(out / "results.csv", newline="") as fh:
            got = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
        rec = {"kind": "score", "layout": layout, "store": store, "delay_ms": d,
               "slides": len(got), "errors": summary["counts"].get("error", 0),
               "s_per_slide": round(statistics.median(float(r["seconds"]) for r in got), 3),
               "wall_per_slide": round(wall / max(1, len(got)), 3),
               "predicted": [r["predicted"] for r in got], **machine}
        base = next((r for r in rows if r["kind"] == "score" and r["layout"] == layout
                     and r["store"] == "local"), None)
        rec["vs_local"] = None if base is None else round(
            rec["s_per_slide"] / base["s_per_slide"], 3)
        rec["same_predictions"] = None if base is None else rec["predicted"] == base["predicted"]
        emit(rec, rows)

    if delay == args.delays[0]:
        one(folder, "local", 0.0, None)
    one(prefix, "s3", delay, opts)


if __name__ == "__main__":
    sys.exit(main())
