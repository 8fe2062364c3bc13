"""The needle benchmark: classify gigapixel slides from a few glimpses, against dense tiling.

    ram-wsi bench needle --sizes 16384 131072 --minutes 4 --out bench-results/needle

Each slide (``write_synthetic_slide(kind="needle")``) holds tissue and one lesion, visible on a
thumbnail as a dark spot; its class (dots or stripes, equal ink) can be read only at levels 0-1.
Per slide size:

* training and validation slides are procedural (``procedural:needle?...`` URIs: pixels drawn
  on demand, no disk at any size); the test slides are real files written once (alternately a
  JPEG pyramidal TIFF read through OpenSlide and an OME-Zarr store) and never trained on;
* rows, each trained on the same training slides and tested on the same files:
  ``ram_context`` (RAM with the thumbnail context net; configs/needle_slides.yaml),
  ``ram_paper`` (no context: first glimpse uniform on tissue), ``ram_random`` (random glimpses,
  a classifier trained on them), ``thumbnail`` (a CNN on the 256 px thumbnail alone: the label
  must not be readable there) and ``dense`` (a tile CNN on every tissue tile at a level where
  the class is readable, max-pooled: how conventional pipelines work);
* per row: test accuracy with its standard error, balanced accuracy, AUC, and per slide the
  pixels decoded (block-level, cold caches; OpenSlide: the file tiles its regions touch),
  the pixels requested and the seconds of one decision (opening the slide included).

``--kind tissue`` runs the same rows on tissue-mosaic slides of real H&E tiles (carcinoma
against benign, :mod:`ram_wsi.slide.synth.mosaic`; ``configs/crc_slides.yaml``), test slides
from the test tile pool; its dense row pools tile scores as CLAM does (a carcinoma tile
anywhere makes the slide positive).

Prints one JSON line per row and a table; writes ``<kind>.jsonl`` and each RAM row's run
directory (``glimpses.png``: the path on a test slide) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._report import emit, print_table, write_jsonl
from .rows import RAM_ROWS, baseline_row, ram_row

__all__ = ["RAM_ROWS", "main", "write_needle_cohort"]

DEFAULT_ROWS = {"needle": ["ram_context", "ram_paper", "ram_random", "thumbnail", "dense"],
                "tissue": ["ram_guided", "ram_context", "ram_paper", "ram_random", "thumbnail",
                           "dense"]}
CLASS_NAMES = ("dots", "stripes")


def write_needle_cohort(folder: str | Path, size: int, *, train: int, val: int, test: int,
                        lesion: int = 2048, seed: int = 0, fmt: str = "mixed", tile: int = 256,
                        mpp: float | None = 0.25, compression: str = "jpeg", log=print) -> Path:
    """A needle cohort's manifest ``folder/manifest.csv`` (``path,label,split``): ``train`` and
    ``val`` procedural slides, ``test`` slides written as files (kept when already there),
    classes alternating. Returns the manifest's path.

    ``fmt``: the test files' format: ``tiff``, ``zarr``, or ``mixed`` (pairs alternate TIFF
    and OME-Zarr, on purpose: the benchmarks read both); ``tile``, ``mpp`` (None: no physical
    units; the procedural slides' too) and ``compression`` (TIFF tiles) as
    :func:`~ram_wsi.slide.write_synthetic_slide`."""
    from ..data.manifest import write_manifest
    from ..slide import write_synthetic_slide
    from ..slide.procedural import procedural_uri

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    for split, base, n in (("train", 10_000, train), ("val", 20_000, val)):
        for i in range(n):
            lab = i % 2
            uri = procedural_uri("needle", size, seed=seed + base + i, label=lab,
                                 lesion_size=lesion, mpp=mpp)
            rows.append((uri, CLASS_NAMES[lab], split))
    for i in range(test):
        lab, kind = i % 2, ("tiff", "zarr")[(i // 2) % 2] if fmt == "mixed" else fmt
        p = folder / f"test_{i:03d}.{kind}"
        if not (p.exists() and Path(str(p) + ".json").exists()):
            t0 = time.perf_counter()
            write_synthetic_slide(p, size, seed=seed + 30_000 + i, label=lab, kind="needle",
                                  lesion_size=lesion, fmt=kind, tile=tile, mpp=mpp,
                                  compression=compression)
            log(f"wrote {p} ({time.perf_counter() - t0:.1f} s)")
        rows.append((p.name, CLASS_NAMES[lab], "test"))
    return write_manifest(folder / "manifest.csv", rows)


def _ram_row(name: str, manifest: Path, size: int, args) -> dict[str, Any]:
    init = []
    if args.init_from:
        found = sorted(Path(args.init_from).glob(f"*/{name}/best.pt"))
        if found:
            init = [f"train.init_from={found[0]}"]
    row = ram_row(name, args.config, [*RAM_ROWS[name], *args.set, *init,
                                      f"data.slides.manifest={manifest}"],
                  Path(args.out) / str(size) / name, minutes=args.minutes,
                  threads=args.threads, run_name=f"{args.kind}_{name}_{size}")
    row.pop("pixels_seen")
    run_dir = row.pop("run_dir")
    return {"row": name, "size": size, **row,
            "init_from": init[0].split("=", 1)[1] if init else None, "run_dir": run_dir}


def _cohort(manifest: Path):
    """The cohort's manifest, as written (no slide is opened here)."""
    from ..data.manifest import load_manifest

    return load_manifest(manifest, check_slides=False)


def _baseline_row(name: str, size: int, man, probs: list[np.ndarray], costs: list[dict],
                  secs: list[float], train_s: float) -> dict[str, Any]:
    row = baseline_row(name, [r.label for r in man.split("test")], probs, costs, secs, train_s)
    return {"row": name, "size": size, **row}


def _thumbnail_row(manifest: Path, size: int, args) -> dict[str, Any]:
    from ..slide import open_source
    from .needle_baselines import (
        measure_cold,
        predict_thumbnails,
        slide_thumbnails,
        train_thumbnail_cnn,
    )

    man = _cohort(manifest)
    t0 = time.perf_counter()
    train = man.split("train")[:args.thumb_train_slides]
    x = slide_thumbnails([open_source(r.path) for r in train], 256)
    model = train_thumbnail_cnn(x, np.asarray([r.label for r in train]), classes=2,
                                epochs=args.epochs * 3, seed=0)
    train_s = time.perf_counter() - t0
    probs, costs, secs = [], [], []
    for r in man.split("test"):
        src = open_source(r.path)
        p, c, s = measure_cold(
            lambda src=src: predict_thumbnails(model, slide_thumbnails([src], 256)), src)
        probs.append(p[0])
        costs.append(c)
        secs.append(s)
    return _baseline_row("thumbnail", size, man, probs, costs, secs, train_s)


def _dense_row(manifest: Path, size: int, args) -> dict[str, Any]:
    from ..slide import open_source
    from .needle_baselines import measure_cold, score_dense, tile_training_set, train_tile_cnn

    man = _cohort(manifest)
    t0 = time.perf_counter()
    train = man.split("train")[:args.dense_train_slides]
    sources = [open_source(r.path) for r in train]
    tiles, labels = tile_training_set(sources, [r.label for r in train],
                                      [s.target for s in sources], level=args.dense_level,
                                      tile=args.dense_tile, seed=0, mask_size=512)
    model = train_tile_cnn(tiles, labels, classes=2, epochs=args.epochs, seed=0)
    train_s = time.perf_counter() - t0
    probs, costs, secs = [], [], []
    for r in man.split("test"):
        src = open_source(r.path)
        res, c, s = measure_cold(lambda src=src: score_dense(
            src, model, level=args.dense_level, tile=args.dense_tile, mask_size=512,
            pooling="ratio" if args.kind == "needle" else "positive"), src)
        probs.append(res["probs"])
        costs.append(c)
        secs.append(s)
    row = _baseline_row("dense", size, man, probs, costs, secs, train_s)
    row.update({"level": args.dense_level, "tile": args.dense_tile,
                "train_tiles": len(labels)})
    return row


def main(argv: Sequence[str] | None = None) -> int:
    """``ram-wsi bench needle``: its arguments checked (:mod:`ram_wsi.commands.bench`),
    then :func:`run_bench`."""
    from ..commands.bench import parse_bench

    return run_bench(parse_bench("needle", sys.argv[1:] if argv is None else argv))


def run_bench(args: argparse.Namespace) -> int:
    """``ram-wsi bench needle`` with checked arguments."""
    import torch

    args.rows = args.rows or DEFAULT_ROWS[args.kind]
    if args.config is None:
        name = "needle_slides.yaml" if args.kind == "needle" else "crc_slides.yaml"
        args.config = str(Path(__file__).resolve().parents[2] / "configs" / name)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        n_test = args.test_slides if size <= 32768 else args.large_test_slides
        manifest = _write_cohort(out / str(size) / "slides", size, n_test, args)
        for name in args.rows:
            if name in RAM_ROWS:
                row = _ram_row(name, manifest, size, args)
            elif name == "thumbnail":
                row = _thumbnail_row(manifest, size, args)
            else:
                row = _dense_row(manifest, size, args)
            emit({"bench": args.kind, **row}, rows)
            write_jsonl(out / f"{args.kind}.jsonl", rows)
    _ratios(rows)
    print_table(rows, ["row", "size", "test_slides", "accuracy", "accuracy_se", "auc",
                       "pixels_decoded", "pixels_requested", "seconds_per_slide",
                       "dense_over_row_pixels"])
    (out / f"{args.kind}_summary.json").write_text(json.dumps(rows, indent=1, default=float))
    return 0


def _write_cohort(folder: Path, size: int, n_test: int, args) -> Path:
    """The cohort of ``args.kind`` at ``size``: its manifest (procedural train / val slides,
    ``n_test`` test files)."""
    if args.kind == "needle":
        return write_needle_cohort(folder, size, train=args.train_slides, val=args.val_slides,
                                   test=n_test, lesion=args.lesion or max(2048, size // 16))
    from ..slide.synth.cohort import tissue_slide_kwargs, write_tissue_cohort
    from ..slide.synth.mosaic import default_tiles_dir

    tiles = args.tiles or default_tiles_dir()
    return write_tissue_cohort(folder, size, tiles, train=args.train_slides,
                               val=args.val_slides, test=n_test, fmt="mixed",
                               scene=tissue_slide_kwargs(tiles, region_um=args.region_um))


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's pixels decoded against dense tiling's on the same slides (the headline)."""
    dense = {r["size"]: r["pixels_decoded"] for r in rows if r["row"] == "dense"}
    for r in rows:
        d = dense.get(r["size"])
        if d and r.get("pixels_decoded"):
            r["dense_over_row_pixels"] = d / r["pixels_decoded"]


if __name__ == "__main__":
    raise SystemExit(main())
