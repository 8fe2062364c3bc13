#!/usr/bin/env python
"""`make demo`: the whole slide pipeline on an embedded default, in a few minutes on 2 cores.

    python pipelines/demo.py [--out runs/demo] [--shared ../shared/data/slides] [--minutes 3]

1. writes a cohort of 8,192^2 tissue-mosaic slides under OUT/cohort, paved with the real H&E
   tiles of ../shared/data/tissue/crc_tiles (carcinoma against benign; train, validation and
   test slides from disjoint tile pools): procedural training and validation slides (drawn on
   demand, no disk) and held-out test slides written as files (JPEG pyramidal TIFF and
   OME-Zarr) -- kept when already there. Without the tiles (or with --kind needle) it is the
   synthetic needle cohort (dots against stripes);
2. trains the slide agent of configs/demo_slides.yaml (RAM + the thumbnail glance) with Ray
   rollout actors and a learner on a local Ray instance -> OUT/train (best.pt, metrics, figures);
3. fills OUT/folder with the held-out slides and every file of ../shared/data/slides (real
   OpenSlide fixtures and two bad files) and scores it with ``ram-wsi score`` on 2 Ray workers
   -> OUT/scores (results.csv, results.parquet, geojson/, thumbnails/, run_metadata.json);
4. prints where they are, the held-out accuracy and the errors of the bad files.

Each run trains and scores afresh (the cohort is kept). Exit status: 0 when the pipeline ran
(bad fixture files are expected to give error rows), 1 when a held-out slide failed.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout: use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _place(src: Path, dst: Path) -> None:
    """A hard link (a copy where links fail) of a file, a copy of a directory (a store)."""
    from ram_wsi.io_utils import link_or_copy

    if dst.exists():
        return
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        link_or_copy(src, dst)


def _cohort(kind: str, folder: Path, args: argparse.Namespace) -> Path:
    """Step 1: the cohort's manifest (written once, kept by later runs)."""
    n_val = max(8, args.train_slides // 25)
    log = lambda m: _say(f"  {m}")
    if kind == "needle":
        from ram_wsi.bench.needle import write_needle_cohort

        _say(f"1/3 writing a needle cohort of {args.size:,}^2 slides -> {folder}")
        return write_needle_cohort(folder, args.size, train=args.train_slides, val=n_val,
                                   test=args.test_slides, lesion=max(2048, args.size // 16),
                                   log=log)
    from ram_wsi.slide.synth.cohort import tissue_slide_kwargs, write_tissue_cohort

    _say(f"1/3 writing a tissue cohort of {args.size:,}^2 slides from {args.tiles} -> "
         f"{folder} (the first run normalises the tiles once: about a minute)")
    scene = tissue_slide_kwargs(args.tiles, region_um=(1000.0, 3000.0))
    return write_tissue_cohort(folder, args.size, args.tiles, train=args.train_slides,
                               val=n_val, test=args.test_slides, fmt="mixed", scene=scene,
                               log=log)


def build_parser() -> argparse.ArgumentParser:
    from ram_wsi.cli_args import CommandParser, integer, number

    ap = CommandParser(prog="demo.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    ap.add_argument("--config", default=None,
                    help="default configs/demo_slides.yaml (tissue), demo_needle.yaml (needle)")
    ap.add_argument("--shared", type=Path, default=None,
                    help="real slide fixtures to score beside the generated ones (default "
                         "../shared/data/slides, when there)")
    ap.add_argument("--kind", choices=["tissue", "needle"], default="tissue",
                    help="tissue: mosaics of real H&E tiles (--tiles); needle: synthetic")
    ap.add_argument("--tiles", type=Path, default=None,
                    help="tissue: a folder of class tiles H/ AC/ S/ T/ V/ (default "
                         "../shared/data/tissue/crc_tiles; without it, the needle cohort)")
    ap.add_argument("--size", type=integer(1024, 1 << 18), default=8192,
                    help="side of the generated slides, px")
    ap.add_argument("--train-slides", type=integer(1, 100_000), default=400,
                    help="procedural training slides")
    ap.add_argument("--test-slides", type=integer(1, 10_000), default=8,
                    help="held-out slides written as files")
    ap.add_argument("--minutes", type=number(above=0, hi=10_000), default=3.0,
                    help="training budget")
    ap.add_argument("--workers", type=integer(0, 1024), default=2,
                    help="scorers on the Ray pool (0: in this process)")
    ap.add_argument("--no-seed", action="store_true",
                    help="train from scratch, not from the config's train.init_from seed")
    return ap


def check(args: argparse.Namespace) -> None:
    """Before anything is written: the run folder, the files named, the kind's options."""
    from ram_wsi.cli_args import UsageError, input_dir, input_file, output_dir

    output_dir(args.out, "--out")
    if args.config:
        input_file(args.config, "--config")
    if args.shared is not None:
        input_dir(args.shared, "--shared")
    if args.tiles is not None:
        if args.kind == "needle":
            raise UsageError("applies to --kind tissue only", "--tiles")
        input_dir(args.tiles, "--tiles")
    args.shared = args.shared or ROOT / ".." / "shared" / "data" / "slides"
    args.tiles = args.tiles or ROOT / ".." / "shared" / "data" / "tissue" / "crc_tiles"


def main(argv: list[str] | None = None) -> int:
    """0 the pipeline ran, 1 a held-out slide failed, 2 a mistake (one line on stderr)."""
    from ram_wsi.cli_args import guarded

    return guarded(_run, list(sys.argv[1:] if argv is None else argv), prog="demo.py")


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check(args)
    from ram_wsi.config import load_config
    from ram_wsi.distributed import train_distributed

    t0 = time.perf_counter()
    out = args.out
    kind = args.kind if args.kind == "needle" or (args.tiles / "AC").is_dir() else "needle"
    if kind != args.kind:
        _say(f"no tiles at {args.tiles}: the synthetic needle cohort instead")
    manifest = _cohort(kind, out / f"cohort_{kind}", args)
    config = args.config or str(ROOT / "configs" / ("demo_slides.yaml" if kind == "tissue"
                                                    else "demo_needle.yaml"))

    train_dir = out / "train"
    shutil.rmtree(train_dir, ignore_errors=True)
    cfg = load_config(config, [f"data.slides.manifest={manifest}",
                               f"train.out_dir={train_dir}",
                               f"train.max_minutes={args.minutes}"])
    seed = cfg.train.init_from
    if seed and not Path(seed).is_absolute():  # the config's seed lies in the repository
        cfg.train.init_from = str(ROOT / seed)
    if args.no_seed:
        cfg.train.init_from = None
    if cfg.train.init_from:
        _say(f"  starting from the seed {cfg.train.init_from} (--no-seed: from scratch)")
    _say(f"2/3 training the slide agent ({config}, {args.minutes:g} min budget) with "
         f"{cfg.distributed.actors} Ray rollout actors -> {train_dir}")
    summary = train_distributed(cfg, resume=False, log=lambda m: _say(f"  {m}"))
    ckpt = train_dir / "best.pt"
    if not ckpt.exists():
        ckpt = train_dir / "last.pt"
    return _score_and_report(args, manifest, ckpt, summary, t0)


def _score_and_report(args: argparse.Namespace, manifest: Path, ckpt: Path,
                      summary: dict, t0: float) -> int:
    """Steps 3 and 4: score the held-out slides and the fixtures, print where it all is."""
    from ram_wsi.score.runner import RunOptions, format_summary, score_slides
    from ram_wsi.score.scorer import ScorerOptions

    out = args.out
    folder, scores = out / "folder", out / "scores"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(scores, ignore_errors=True)
    folder.mkdir(parents=True)
    labels: dict[str, str] = {}
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test":
                _place(manifest.parent / row["path"], folder / row["path"])
                labels[str(folder / row["path"])] = row["label"]
    fixtures = sorted(args.shared.iterdir()) if args.shared.is_dir() else []
    for p in fixtures:
        _place(p, folder / p.name)
    _say(f"3/3 scoring {folder}: {len(labels)} held-out slides + {len(fixtures)} files of "
         f"{args.shared} with {args.workers} Ray workers -> {scores}")
    res = score_slides(folder, ckpt, scores, options=ScorerOptions(),
                       run_options=RunOptions(workers=args.workers, progress=False),
                       log=lambda m: _say(f"  {m}"), command=["pipelines/demo.py"])

    with open(res["results_csv"], newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    held = [rows.get(p) for p in labels]
    failed = [p for p, r in zip(labels, held) if r is None or r["status"] != "ok"]
    right = sum(r is not None and r["status"] == "ok" and r["predicted"] == labels[p]
                for p, r in zip(labels, held))
    print()
    print(format_summary(res))
    print()
    print(f"training: {summary.get('steps')} updates; test accuracy on the cohort's held-out "
          f"slides {summary.get('test_accuracy')} (mean policy)")
    print(f"scored held-out slides: {right}/{len(labels)} right; checkpoint {ckpt}")
    print(f"run directory: {out.resolve()}  ({time.perf_counter() - t0:.0f} s in all)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
