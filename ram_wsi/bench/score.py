"""The scoring benchmark: what ``ram-wsi score`` costs per slide, and that the cost is flat in
the slide's size, against dense tiling on the same files.

    ram-wsi bench score --sizes 8192 32768 131072 --out bench-results/score

Four parts, all in one run (so that the ratios compare like with like):

* ``size`` rows: per slide size, ``--slides`` generated needle slides (alternately a JPEG
  pyramidal TIFF read through OpenSlide and an OME-Zarr store) scored in this process by one
  :class:`~ram_wsi.score.scorer.SlideScorer` on ``--threads`` threads, each slide ``--rounds``
  times, cold (the scorer empties the slide caches per slide, as it does in a real run). Per
  slide: the wall seconds of scoring and writing it, and the split: opening with the thumbnail,
  tissue mask and context (``open``), reading glimpses, the network, drawing and writing the
  GeoJSON and thumbnail. Medians over slides x rounds; ``vs_smallest`` is the ratio to the
  smallest size (goal <= 1.2).
* ``dense`` rows: on the first ``--dense-slides`` slides of each size, dense tiling as
  conventional pipelines do it (:func:`~ram_wsi.bench.needle_baselines.score_dense`: every tissue
  tile of ``--dense-level``, a tile CNN, max-pooled; the CNN is untrained: its weights do not
  change its cost). ``dense_vs_ram`` is the headline ratio.
* ``throughput`` rows: ``--throughput-slides`` inputs (links to the smallest size's TIFFs and
  stores, distinct names) through :func:`~ram_wsi.score.runner.score_slides`, in-process and on a Ray
  pool of 1 and 2 workers: slides/s over the whole call (Ray's start included) and steady
  (from the first committed slide to the last, read off the journal as it grows).
* a ``memory`` row: ``--memory-slides`` inputs scored by one scorer in a child process, its RSS
  sampled every 50 slides, against the slide caches' budget.
* ``single`` rows: a one-level slide against a pyramid of the same pixels (issue 26: a
  single-level slide should cost at most 1.5x a pyramid per decision, and read at most its own
  pixels). ``--single-slides`` needle scenes of ``--single-size`` (CMU-1-Small-Region's
  2,220 x 2,967 by default) written three ways from the same level 0: a JPEG pyramidal TIFF, a
  single-level JPEG TIFF (OpenSlide) and a JPEG image (a plain image, as the GlaS fields),
  each scored as the ``size`` rows are; ``vs_pyramid`` is the seconds' ratio to the pyramid,
  ``pixels_vs_slide`` the pixels decoded per slide over the slide's own.

Without ``--checkpoint`` a throwaway checkpoint with ``configs/needle_slides.yaml``'s
architecture is trained for two updates (its cost is its architecture's, not its accuracy's).
Prints one JSON line per row and a table; writes ``score.jsonl`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._report import emit, print_table, write_jsonl

__all__ = ["main", "throwaway_checkpoint"]

_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "needle_slides.yaml"
_PARTS = ("open", "glimpses", "model", "write")


def throwaway_checkpoint(folder: str | Path, config: str | Path = _CONFIG) -> Path:
    """A checkpoint of ``config``'s architecture trained for two updates on small procedural
    needle slides, for measuring what scoring costs (not how well it scores)."""
    from ..config import load_config
    from ..train.trainer import Trainer
    from .needle import write_needle_cohort

    folder = Path(folder)
    ckpt = folder / "run" / "best.pt"
    if ckpt.exists():
        return ckpt
    m = write_needle_cohort(folder / "cohort", 4096, train=8, val=2, test=0, lesion=1024,
                            log=lambda *_: None)
    sets = [f"data.slides.manifest={m}", "data.slides.episodes_per_slide=4",
            "train.batch_size=16", "train.epochs=1", "train.steps_per_epoch=2",
            "train.threads=1", "train.progress=false",
            f"train.out_dir={folder / 'run'}"]
    Trainer(load_config(config, sets), log=lambda *_: None).fit()
    return ckpt


def _write_slides(folder: Path, size: int, n: int, log) -> list[Path]:
    from ..slide import write_synthetic_slide

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"s{size}_{i:02d}.{('tiff', 'zarr')[i % 2]}"
        if not (p.exists() and Path(f"{p}.json").exists()):
            t0 = time.perf_counter()
            write_synthetic_slide(p, size, seed=700 + i, label=i % 2, kind="needle",
                                  lesion_size=max(2048, size // 16), fmt=p.suffix[1:])
            log(f"wrote {p} ({time.perf_counter() - t0:.1f} s)")
        paths.append(p)
    return paths


def _score_once(scorer, inp, out: Path) -> dict[str, float]:
    from ..score.scorer import write_outputs

    t0 = time.perf_counter()
    scored = scorer.score(inp)
    row = scored.row
    if row["status"] != "ok":
        raise RuntimeError(f"{inp.path}: {row['error']}")
    write_s = float(row["seconds_write"]) + write_outputs(out, scored)
    return {"wall": time.perf_counter() - t0, "open": float(row["seconds_open"]),
            "glimpses": float(row["seconds_glimpses"]), "model": float(row["seconds_model"]),
            "write": write_s, "pixels_read": float(row["pixels_read"]),
            "pixels_decision": float(row["pixels_decision"])}


def _size_rows(ckpt: Path, sizes: dict[int, list[Path]], args, out: Path) -> list[dict]:
    from ..score.inputs import ScoreInput
    from ..score.scorer import ScorerOptions, SlideScorer

    scorer = SlideScorer(ckpt, ScorerOptions(threads=args.threads))
    first = next(iter(sizes.values()))[0]
    _score_once(scorer, ScoreInput(str(first), "warmup"), out / "warmup")  # lazy inits
    rows = []
    for size, paths in sizes.items():
        runs = [_score_once(scorer, ScoreInput(str(p), p.name), out / "outputs")
                for _ in range(args.rounds) for p in paths]
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        rows.append({"part": "size", "size": size, "slides": len(paths), "rounds": args.rounds,
                     "threads": args.threads, "samples": scorer.samples,
                     "seconds_per_slide": med["wall"],
                     **{f"seconds_{k}": med[k] for k in _PARTS},
                     "seconds_per_slide_max": float(max(r["wall"] for r in runs)),
                     "pixels_read": med["pixels_read"],
                     "pixels_decision": med["pixels_decision"]})
    base = rows[0]["seconds_per_slide"]
    for r in rows:
        r["vs_smallest"] = r["seconds_per_slide"] / base
    return rows


_SINGLE_KINDS = ("pyramid tiff", "single-level tiff", "jpeg image")


def _write_single(folder: Path, size: tuple[int, int], i: int, log) -> list[Path]:
    """One needle scene as a JPEG pyramidal TIFF, a one-level JPEG TIFF and a JPEG image,
    all from the same level-0 pixels (the TIFFs through the same writer and encoder)."""
    import tifffile
    from PIL import Image

    from ..slide import write_synthetic_slide
    from ..slide.synth import write_pyramid_tiff

    w, h = size
    paths = [folder / f"s{w}x{h}_{i:02d}_{k}" for k in ("pyramid.tiff", "single.tiff",
                                                         "image.jpg")]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    scene = folder / f"s{w}x{h}_{i:02d}_scene.tiff"
    write_synthetic_slide(scene, (w, h), seed=900 + i, label=i % 2, kind="needle",
                          lesion_size=max(256, min(w, h) // 6))
    img = tifffile.imread(scene, key=0)[..., :3]
    levels = 1
    while max(-(-w // 2 ** (levels - 1)), -(-h // 2 ** (levels - 1))) > 256:
        levels += 1
    for p, n in zip(paths[:2], (levels, 1)):
        write_pyramid_tiff(p, img, levels=n, tile=256, compression="jpeg", quality=85,
                           mpp=0.25)
    Image.fromarray(img).save(paths[2], quality=85)
    log(f"wrote {paths[0].parent}/s{w}x{h}_{i:02d}_* ({levels} levels / 1 / image)")
    return paths


def _single_rows(ckpt: Path, args, out: Path, tmp: Path) -> list[dict]:
    """A one-level slide against a pyramid of the same pixels (module docstring)."""
    from ..score.inputs import ScoreInput
    from ..score.scorer import ScorerOptions, SlideScorer

    size = (int(args.single_size[0]), int(args.single_size[1]))
    sets = [_write_single(out / "slides" / "single", size, i, lambda m: print(m, file=sys.stderr))
            for i in range(args.single_slides)]
    scorer = SlideScorer(ckpt, ScorerOptions(threads=args.threads))
    _score_once(scorer, ScoreInput(str(sets[0][0]), "warmup"), tmp / "warmup")
    rows = []
    for k, kind in enumerate(_SINGLE_KINDS):
        runs = [_score_once(scorer, ScoreInput(str(s[k]), s[k].name), tmp / "single")
                for _ in range(args.rounds) for s in sets]
        med = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
        rows.append({"part": "single", "kind": kind, "width": size[0], "height": size[1],
                     "slides": len(sets), "rounds": args.rounds, "threads": args.threads,
                     "seconds_per_slide": med["wall"],
                     **{f"seconds_{p}": med[p] for p in _PARTS},
                     "pixels_read": med["pixels_read"],
                     "pixels_decision": med["pixels_decision"],
                     "pixels_vs_slide": max(r["pixels_read"] for r in runs) / (size[0] * size[1])})
    for r in rows:
        r["vs_pyramid"] = r["seconds_per_slide"] / rows[0]["seconds_per_slide"]
    return rows


def _dense_rows(sizes: dict[int, list[Path]], ram: dict[int, float], args) -> list[dict]:
    import torch

    from ..slide import open_source
    from .needle_baselines import TileCNN, measure_cold, score_dense

    torch.manual_seed(0)
    model = TileCNN(2).eval()
    rows = []
    for size, paths in sizes.items():
        secs, pixels = [], []
        for p in paths[:args.dense_slides]:
            src = open_source(str(p))
            _, c, s = measure_cold(lambda src=src: score_dense(
                src, model, level=args.dense_level, tile=args.dense_tile, mask_size=512), src)
            src.close()
            secs.append(s)
            pixels.append(c["pixels_decoded"])
        rows.append({"part": "dense", "size": size, "slides": len(secs),
                     "level": args.dense_level, "tile": args.dense_tile,
                     "seconds_per_slide": float(np.mean(secs)),
                     "pixels_read": float(np.mean(pixels)),
                     "dense_vs_ram": float(np.mean(secs)) / ram[size]})
    return rows


def _link_folder(folder: Path, slides: list[Path], n: int) -> Path:
    """``n`` inputs with distinct names standing for ``slides`` in turn (TIFF and OME-Zarr):
    hard links to the files (a copy where links fail), symbolic links to the stores -- a folder
    of ``n`` slides for the disk space of a few."""
    from ..io_utils import link_or_copy

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = slides[i % len(slides)].resolve()
        dst = folder / f"slide_{i:04d}{src.suffix}"
        if dst.exists() or dst.is_symlink():
            continue
        if src.is_dir():
            dst.symlink_to(src, target_is_directory=True)
        else:
            link_or_copy(src, dst)
    return folder


def _journal_watch(journal: Path, stop: threading.Event, marks: list[tuple[float, int]]):
    while not stop.is_set():
        try:
            with open(journal, "rb") as fh:
                n = sum(1 for _ in fh)
        except OSError:
            n = 0
        if not marks or n != marks[-1][1]:
            marks.append((time.perf_counter(), n))
        stop.wait(0.02)


def _throughput_rows(ckpt: Path, folder: Path, n: int, args, out: Path) -> list[dict]:
    import shutil

    from ..score.runner import RunOptions, score_slides
    from ..score.scorer import ScorerOptions

    rows = []
    for w in args.workers:
        run_out = out / f"throughput_w{w}"
        shutil.rmtree(run_out, ignore_errors=True)
        marks: list[tuple[float, int]] = []
        stop = threading.Event()
        watch = threading.Thread(target=_journal_watch,
                                 args=(run_out / "journal.jsonl", stop, marks), daemon=True)
        t0 = time.perf_counter()
        watch.start()
        try:
            s = score_slides(folder, ckpt, run_out, options=ScorerOptions(threads=args.threads),
                             run_options=RunOptions(workers=w, cpus_per_worker=args.threads,
                                                    progress=False),
                             log=lambda *_: None, command=["bench", "score"])
        finally:
            stop.set()
            watch.join()
        wall = time.perf_counter() - t0
        ok = s["counts"].get("ok", 0)
        firsts = [t for t, k in marks if k >= 1]
        steady = None
        if firsts and ok > 1 and marks[-1][0] > firsts[0]:
            steady = (marks[-1][1] - 1) / (marks[-1][0] - firsts[0])
        rows.append({"part": "throughput", "workers": w, "slides": n, "ok": ok,
                     "threads": args.threads, "wall_seconds": wall,
                     "slides_per_second": ok / wall, "steady_slides_per_second": steady,
                     "seconds_to_first": (firsts[0] - t0) if firsts else None})
    return rows


def _rss_kib() -> tuple[int, int]:
    with open("/proc/self/status") as fh:
        f = dict(line.split(":", 1) for line in fh if ":" in line)
    return int(f["VmRSS"].split()[0]), int(f["VmHWM"].split()[0])


def _memory_child(folder: str, ckpt: str, n: int, threads: int, out: str) -> None:
    """One worker's process: score ``n`` inputs of ``folder`` one after another, print RSS
    every 50 as JSON lines (``{"slides": k, "rss_kib": .., "hwm_kib": ..}``)."""
    from ..score.inputs import find_inputs
    from ..score.scorer import ScorerOptions, SlideScorer, write_outputs

    inputs = find_inputs(folder)[:n]
    scorer = SlideScorer(ckpt, ScorerOptions(threads=threads))
    rss, hwm = _rss_kib()
    print(json.dumps({"slides": 0, "rss_kib": rss, "hwm_kib": hwm}), flush=True)
    for k, inp in enumerate(inputs, 1):
        scored = scorer.score(inp)
        if scored.row["status"] != "ok":
            raise RuntimeError(scored.row["error"])
        write_outputs(out, scored)
        if k % 50 == 0 or k == len(inputs):
            rss, hwm = _rss_kib()
            print(json.dumps({"slides": k, "rss_kib": rss, "hwm_kib": hwm}), flush=True)
    from ..slide.cache import cache_settings

    print(json.dumps({"caches": cache_settings()}), flush=True)


def _memory_row(ckpt: Path, folder: Path, n: int, args, out: Path) -> dict[str, Any]:
    code = ("import sys; from ram_wsi.bench.score import _memory_child; "
            "_memory_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "
            "sys.argv[5])")
    res = subprocess.run([sys.executable, "-c", code, str(folder), str(ckpt), str(n),
                          str(args.threads), str(out / "memory_outputs")],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory child failed: {res.stderr[-2000:]}")
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    samples = [s for s in lines if "slides" in s]
    caches = next(s["caches"] for s in lines if "caches" in s)
    after = [s for s in samples if s["slides"] >= min(50, samples[-1]["slides"])]
    mib = 1 / 1024
    return {"part": "memory", "slides": samples[-1]["slides"], "threads": args.threads,
            "rss_start_mib": samples[0]["rss_kib"] * mib,
            "rss_at_50_mib": after[0]["rss_kib"] * mib,
            "rss_end_mib": samples[-1]["rss_kib"] * mib,
            "peak_rss_mib": samples[-1]["hwm_kib"] * mib,
            "growth_50_to_end_mib": (samples[-1]["rss_kib"] - after[0]["rss_kib"]) * mib,
            "slide_cache_budget_mib": sum(v for k, v in caches.items()
                                          if k.endswith("_bytes")) / 2**20,
            "caches": caches,
            "rss_samples_mib": [round(s["rss_kib"] * mib, 1) for s in samples]}


def main(argv: Sequence[str] | None = None) -> int:
    """``ram-wsi bench score``: its arguments checked (:mod:`ram_wsi.commands.bench`),
    then :func:`run_bench`."""
    from ..commands.bench import parse_bench

    return run_bench(parse_bench("score", sys.argv[1:] if argv is None else argv))


def run_bench(args: argparse.Namespace) -> int:
    """``ram-wsi bench score`` with checked arguments."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    ckpt = Path(args.checkpoint) if args.checkpoint else throwaway_checkpoint(out / "checkpoint",
                                                                              args.config)
    sizes = {s: _write_slides(out / "slides" / str(s), s, args.slides, log)
             for s in sorted(args.sizes)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        for r in _size_rows(ckpt, sizes, args, Path(tmp)):
            emit(r, rows)
        ram = {r["size"]: r["seconds_per_slide"] for r in rows}
        if args.dense_slides > 0:
            for r in _dense_rows(sizes, ram, args):
                emit(r, rows)
        smallest = sizes[min(sizes)]
        if args.throughput_slides > 0 and args.workers:
            folder = _link_folder(out / "folder", smallest, args.throughput_slides)
            for r in _throughput_rows(ckpt, folder, args.throughput_slides, args, Path(tmp)):
                emit(r, rows)
        if args.memory_slides > 0:
            folder = _link_folder(out / "folder_memory", smallest, args.memory_slides)
            emit(_memory_row(ckpt, folder, args.memory_slides, args, Path(tmp)), rows)
        if args.single_slides > 0:
            for r in _single_rows(ckpt, args, out, Path(tmp)):
                emit(r, rows)
    write_jsonl(out / "score.jsonl", rows)
    print()
    print_table([r for r in rows if r["part"] in ("size", "dense")],
                ["part", "size", "slides", "seconds_per_slide", "seconds_open",
                 "seconds_glimpses", "seconds_model", "seconds_write", "vs_smallest",
                 "dense_vs_ram", "pixels_read"])
    tp = [r for r in rows if r["part"] == "throughput"]
    if tp:
        print()
        print_table(tp, ["workers", "slides", "ok", "wall_seconds", "slides_per_second",
                         "steady_slides_per_second", "seconds_to_first"])
    single = [r for r in rows if r["part"] == "single"]
    if single:
        print()
        print_table(single, ["kind", "width", "height", "seconds_per_slide", "seconds_open",
                             "seconds_glimpses", "vs_pyramid", "pixels_read",
                             "pixels_vs_slide"])
    mem = [r for r in rows if r["part"] == "memory"]
    if mem:
        print()
        print_table(mem, ["slides", "rss_at_50_mib", "rss_end_mib", "peak_rss_mib",
                          "growth_50_to_end_mib", "slide_cache_budget_mib"])
    return 0
