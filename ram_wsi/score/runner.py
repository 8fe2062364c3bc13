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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..io_utils import write_json
from ..slide.remote import is_remote, parse_storage_options, set_storage_options
from .inputs import InputScan, ScoreInput, file_stamp, scan_inputs
from .pool import score_in_process, score_on_pool
from .results import ResultStore
from .scorer import ScorerOptions, SlideScorer, load_scoring_model
from .state import RunOptions, RunState, up_to_date
from .summary import format_summary, run_summary

__all__ = ["RunOptions", "exit_status", "format_summary", "run_score", "score_slides"]


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
    if is_remote(str(out)):
        raise DataError(out, "the outputs go to a local (or mounted shared) folder: the "
                             "journal's fsync, the atomic renames of results.csv and the "
                             "per-slide locks need a file system; copy OUT to object storage "
                             "after the run (aws s3 sync OUT s3://...)")
    if options.storage_options is not None:
        set_storage_options(options.storage_options)  # the scan and stamps of remote inputs
    out = Path(out)
    started = time.time()
    _model, cfg, meta = load_scoring_model(checkpoint)  # fail fast, before Ray and the folder
    class_names = [str(c) for c in meta["class_names"]]
    scan = scan_inputs(slides, exclude=out)
    unknown = unknown_labels(scan.inputs, class_names)
    if unknown:
        log(f"score: warning: labels not among the checkpoint's classes "
            f"({', '.join(class_names)}): {', '.join(unknown)}; metrics are over the slides "
            "with known labels")
    store = ResultStore(out, class_names)
    store.set_order(i.path for i in scan.inputs)
    run = RunState(out, store, opts, log)
    todo = _to_score(scan.inputs, run, options)
    base_meta = {
        "checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": _sha256(checkpoint),
        "checkpoint_step": meta.get("step"), "class_names": class_names,
        "config": cfg.to_dict(), "retina": meta.get("retina"), "context": meta.get("context"),
        "trained_with": meta.get("package_version"), "versions": _versions(),
        "host": socket.gethostname(), "slides": str(slides), "out": str(out.resolve()),
        "command": command if command is not None else list(sys.argv),
        "options": asdict(options), "run_options": asdict(opts),
        "started": _iso(started), "inputs": len(scan.inputs), "to_score": len(todo),
        "skipped": scan.skipped,
    }
    write_json(out / "run_metadata.json", {**base_meta, "status": "running"})
    log(f"score: {len(scan.inputs)} inputs, {len(scan.inputs) - len(todo)} already scored, "
        f"{len(todo)} to score -> {out}"
        + (f"; {len(scan.skipped)} file(s) no reader claims skipped" if scan.skipped else ""))
    return _run(todo, scan, run, str(checkpoint), options, scorer_cls, base_meta)


def _to_score(inputs: list[ScoreInput], run: RunState, options: ScorerOptions
              ) -> list[ScoreInput]:
    """The inputs whose earlier row (if any) does not stand; every input's stamp recorded."""
    todo = []
    for inp in inputs:
        stamp = inp.stamp if inp.stamp is not None else file_stamp(inp.path)
        run.stamps[inp.path] = stamp
        if not up_to_date(run.store.previous(inp.path), stamp, run.out, options, run.opts):
            todo.append(inp)
    return todo


def unknown_labels(inputs: list[ScoreInput], class_names: list[str]) -> list[str]:
    """The manifest's labels that are not among the checkpoint's classes, sorted."""
    return sorted({str(i.label) for i in inputs if i.label is not None} - set(class_names))


def _run(todo: list[ScoreInput], scan: InputScan, run: RunState, checkpoint: str,
         options: ScorerOptions, scorer_cls: type, base_meta: dict[str, Any]) -> dict[str, Any]:
    """Score ``todo`` (on Ray actors, or here); whatever happens, release the locks, flush the
    table and write ``run_metadata.json`` with the summary and how the run ended."""
    opts, store = run.opts, run.store
    workers: list[dict[str, Any]] = []
    status = "interrupted"
    t0 = time.perf_counter()
    started_ray = False
    try:
        if opts.progress and todo:
            from tqdm import tqdm

            run.bar = tqdm(total=len(todo), unit="slide", file=sys.stderr, dynamic_ncols=True)
        if todo and opts.workers > 0:
            started_ray = _start_ray(opts, run.log)
            workers = score_on_pool(todo, checkpoint, options, run, scorer_cls)
        elif todo:
            workers = score_in_process(todo, checkpoint, options, run, scorer_cls)
        status = "done"
    finally:
        if run.bar is not None:
            run.bar.close()
        run.release_all()
        store.flush(reread=True)
        summary = run_summary(store, scan.inputs, scan.skipped, run.scored,
                              time.perf_counter() - t0, base_meta["class_names"])
        for kind in ("geojson", "thumbnails"):  # what was not written is not named
            if not getattr(options, kind):
                summary[kind] = None
        if status == "done":
            pq = store.write_parquet()
            summary["parquet"] = None if pq is None else str(pq)
        write_json(run.out / "run_metadata.json", {**base_meta, "status": status,
                                                   "ended": _iso(time.time()),
                                                   "workers": workers, **summary})
        if started_ray:
            import ray

            ray.shutdown()
    return summary


def _start_ray(opts: RunOptions, log: Callable[[str], None]) -> bool:
    """Join the cluster, or start a local instance with CPUs for every worker; True when this
    call started Ray (the run then shuts it down)."""
    from ..distributed.runner import init_ray

    need = opts.workers * opts.cpus_per_worker
    local = {} if opts.address or os.environ.get("RAY_ADDRESS") else {
        "num_cpus": max(int(need + 0.999), os.cpu_count() or 1)}
    return init_ray(opts.address, log=log, log_to_driver=False, **local)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def run_score(args: Any) -> int:
    """``ram-wsi score`` with arguments checked by :func:`ram_wsi.commands.score.parse_score`:
    run, print the summary, return the exit status (:func:`exit_status`)."""
    try:
        storage = parse_storage_options(args.storage_option) if args.storage_option else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    options = ScorerOptions(samples=args.samples, seed=args.seed,
                            threads=max(1, int(args.cpus_per_worker)),
                            device="auto" if args.workers == 0 else "cpu",
                            geojson=not args.no_geojson, thumbnails=not args.no_thumbnails,
                            fallback_mpp=args.fallback_mpp, stop_at=args.stop_at,
                            storage_options=storage)
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
