"""Write a folder of synthetic labelled slides and a manifest CSV (``path,label``).

    python pipelines/make_slides.py OUT_DIR --count 20 --size 8192 [--fmt tiff|zarr]
        [--seed 0] [--tile 256] [--mpp 0.25] [--compression jpeg|none] [--mnist DIR]
    python pipelines/make_slides.py OUT_DIR --kind needle --size 16384 --procedural 600
        --count 12 [--fmt tiff|zarr|mixed] [--lesion 2048] [--tile 256] [--mpp 0.25]
    python pipelines/make_slides.py OUT_DIR --kind tissue --tiles DIR --size 16384
        --procedural 600 --count 40 [--fmt mixed] [--region-um 1000 3000] [--split-seed 0]

Each slide is ``slide_XXXX.<fmt>`` with its sidecar ``slide_XXXX.<fmt>.json`` (label, target
centre in level-0 pixels and in [-1, 1], target size); ``manifest.csv`` lists ``path,label``
(paths relative to the manifest) and is written last, atomically. Labels cycle through 0-9 so
classes are balanced. Slides already present (with their sidecar) are kept, so a rerun resumes.
Needle and tissue cohorts: procedural train/validation slides and ``--count`` test files
(``test_XXX.<fmt>``), ``manifest.csv`` with a split column. An option that does not apply to
the ``--kind`` (or ``--fmt``) is refused, in one line, exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# light: the slide libraries load after the arguments are checked
from ram_wsi.cli_args import (
    CommandParser,
    UsageError,
    guarded,
    input_dir,
    integer,
    number,
    ordered_pair,
    output_dir,
    refuse_unless,
)

PROG = "make_slides.py"


def _tile(text: str) -> int:
    value = integer(16, 4096)(text)
    if value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = CommandParser(prog=PROG, description="Write synthetic labelled slides + manifest.csv")
    ap.add_argument("out", type=Path, help="the folder to write (created; kept slides reused)")
    ap.add_argument("--kind", choices=["digit", "needle", "tissue"], default="digit",
                    help="digit: an MNIST digit on tissue; needle: dots against stripes; "
                         "tissue: mosaics of real H&E tiles")
    ap.add_argument("--count", type=integer(0, 100_000), default=20,
                    help="slides written as files (needle, tissue: the test split)")
    ap.add_argument("--size", type=integer(256, 1 << 20), default=8192,
                    help="level-0 side in pixels")
    ap.add_argument("--fmt", choices=["tiff", "zarr", "mixed"], default="tiff",
                    help="the files: TIFF, OME-Zarr, or (needle, tissue) pairs alternating "
                         "both on purpose")
    ap.add_argument("--seed", type=integer(0, 2**31 - 1), default=0,
                    help="slide i uses seed + i")
    ap.add_argument("--tile", type=_tile, default=256, help="TIFF tile / zarr chunk side, px")
    ap.add_argument("--mpp", type=number(0, 1000), default=None,
                    help="um per level-0 pixel; 0 = write no physical units (default 0.25; "
                         "tissue 0.5, the tiles' own)")
    ap.add_argument("--compression", choices=["jpeg", "none"], default=None,
                    help="TIFF tiles of digit and needle slides (default jpeg)")
    ap.add_argument("--mnist", default=None,
                    help="digit: MNIST idx directory (default ../shared/data/mnist)")
    cohort = ap.add_argument_group("needle and tissue cohorts")
    cohort.add_argument("--procedural", type=integer(0, 1_000_000), default=None,
                        help="this many procedural train slides in the manifest (default 0)")
    cohort.add_argument("--val", type=integer(0, 1_000_000), default=None,
                        help="procedural validation slides (default max(2, procedural / 10))")
    ap.add_argument("--lesion", type=integer(16, 1 << 20), default=None,
                    help="needle: lesion diameter, px (default 2048)")
    tissue = ap.add_argument_group("tissue (--kind tissue: mosaics of real H&E tiles)")
    tissue.add_argument("--tiles", type=Path, default=None,
                        help="a folder with class folders H/ AC/ S/ T/ V/ of tiles (default "
                             "../shared/data/tissue/crc_tiles or $RAM_WSI_TILES)")
    tissue.add_argument("--region-um", type=number(above=0), nargs=2, default=None,
                        metavar=("MIN", "MAX"),
                        help="the carcinoma / adenoma region's diameter range, um "
                             "(default 1000 3000: large enough to learn in minutes on 2 cores)")
    tissue.add_argument("--adenoma", type=number(0, 1), default=None,
                        help="share of benign slides with an adenoma region (default 0.5)")
    tissue.add_argument("--tissue-um", type=number(above=0), default=None,
                        help="the tissue piece's largest extent, um (default 20000)")
    tissue.add_argument("--split-seed", type=integer(0, 2**31 - 1), default=None,
                        help="seed of the tiles' train/val/test split (default 0)")
    return ap


def check(args: argparse.Namespace) -> None:
    """Refuse, before anything is written, an output that cannot be a folder and every option
    the ``--kind`` (or ``--fmt``) would ignore; fill in the kind's defaults."""
    output_dir(args.out, "out")
    kind = args.kind
    refuse_unless(args, kind == "digit", ["mnist"], "to --kind digit")
    refuse_unless(args, kind != "digit", ["procedural", "val"], "to --kind needle and tissue")
    refuse_unless(args, kind == "needle", ["lesion"], "to --kind needle")
    refuse_unless(args, kind == "tissue", ["tiles", "region_um", "adenoma", "tissue_um",
                                           "split_seed"], "to --kind tissue")
    refuse_unless(args, kind != "tissue", ["compression"], "to --kind digit and needle")
    if kind == "digit" and args.fmt == "mixed":
        raise UsageError("mixed applies to --kind needle and tissue only", "--fmt")
    if kind == "digit" and args.count == 0:
        raise UsageError("a digit cohort needs at least one slide, got 0", "--count")
    if args.fmt == "zarr" and args.compression is not None:
        raise UsageError("applies to TIFF tiles only (OME-Zarr stores use blosc)",
                         "--compression")
    if args.tiles is not None:
        input_dir(args.tiles, "--tiles")
    ordered_pair(args.region_um, "--region-um")
    default_mpp = 0.5 if kind == "tissue" else 0.25
    args.mpp = default_mpp if args.mpp is None else (args.mpp or None)  # 0: no units
    args.compression = args.compression or "jpeg"
    args.procedural = args.procedural or 0
    if args.val is None:
        args.val = max(2, args.procedural // 10)


def _digits(args: argparse.Namespace) -> int:
    """``--kind digit``: ``--count`` slides and ``manifest.csv`` (``path,label``)."""
    from ram_wsi.data.manifest import write_manifest
    from ram_wsi.slide import write_synthetic_slide
    from ram_wsi.slide.ngff import publish_mode

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for i in range(args.count):
        p = args.out / f"slide_{i:04d}.{args.fmt}"
        side = Path(str(p) + ".json")
        if p.exists() and side.exists():
            meta = json.loads(side.read_text())
        else:
            meta = write_synthetic_slide(p, args.size, seed=args.seed + i, label=i % 10,
                                         fmt=args.fmt, tile=args.tile, mpp=args.mpp,
                                         compression=args.compression, mnist_dir=args.mnist)
        rows.append((p.name, int(meta["label"])))
        print(json.dumps({"slide": str(p), "label": meta["label"],
                          "target_center_loc": meta["target_center_loc"]}), flush=True)
    publish_mode(write_manifest(args.out / "manifest.csv", rows))
    print(json.dumps({"manifest": str(args.out / "manifest.csv"), "slides": len(rows),
                      "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
    return 0


def _needles(args: argparse.Namespace) -> int:
    """``--kind needle``: procedural train / validation slides, ``--count`` test files in
    ``--fmt`` (``mixed``: alternating TIFF and OME-Zarr), and the manifest."""
    from ram_wsi.bench.needle import write_needle_cohort

    t0 = time.perf_counter()
    m = write_needle_cohort(args.out, args.size, train=args.procedural, val=args.val,
                            test=args.count, lesion=args.lesion or 2048, seed=args.seed,
                            fmt=args.fmt, tile=args.tile, mpp=args.mpp,
                            compression=args.compression,
                            log=lambda s: print(json.dumps({"log": s}), flush=True))
    print(json.dumps({"manifest": str(m), "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


def _tissue(args: argparse.Namespace) -> int:
    """``--kind tissue``: procedural train / validation slides and ``--count`` test files from
    disjoint tile pools, and the manifest (``path,label,split``)."""
    from ram_wsi.slide.synth.cohort import tissue_slide_kwargs, write_tissue_cohort
    from ram_wsi.slide.synth.mosaic import default_tiles_dir

    tiles = args.tiles or default_tiles_dir()
    if tiles is None:
        raise UsageError("--kind tissue needs a folder with class folders H/ AC/ S/ T/ V/ "
                         "(none at ../shared/data/tissue/crc_tiles or $RAM_WSI_TILES)",
                         "--tiles")
    t0 = time.perf_counter()
    scene = tissue_slide_kwargs(tiles, split_seed=args.split_seed or 0,
                                region_um=tuple(args.region_um or (1000.0, 3000.0)),
                                adenoma=0.5 if args.adenoma is None else args.adenoma,
                                tissue_um=args.tissue_um or 20000.0)
    m = write_tissue_cohort(args.out, args.size, tiles, train=args.procedural, val=args.val,
                            test=args.count, seed=args.seed, fmt=args.fmt, mpp=args.mpp,
                            tile=args.tile, scene=scene,
                            log=lambda s: print(json.dumps({"log": s}), flush=True))
    print(json.dumps({"manifest": str(m), "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check(args)
    return {"digit": _digits, "needle": _needles, "tissue": _tissue}[args.kind](args)


def main(argv: list[str] | None = None) -> int:
    """The script's exit status: 0 written; 2 a mistake (one line on stderr, nothing
    written); ``--debug`` shows the traceback instead."""
    return guarded(_run, sys.argv[1:] if argv is None else argv, prog=PROG)


if __name__ == "__main__":
    raise SystemExit(main())
