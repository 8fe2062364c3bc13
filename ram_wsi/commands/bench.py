"""``ram-wsi bench NAME``'s command lines, one builder per benchmark (each run by
``ram_wsi.bench.<module>.main``): every option typed, with its range and its default in the
help; options that do not apply to a run are refused."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..cli_args import (
    CommandParser,
    UsageError,
    add_config_args,
    checkpoint_file,
    input_dir,
    input_file,
    integer,
    key_value,
    number,
    ordered_pair,
    output_dir,
    refuse_unless,
)

__all__ = ["BENCH_PARSERS", "GLAS_ROWS", "MEM_OPTS", "NEEDLE_ROWS", "PHASE_OPTS",
           "parse_bench"]

ROOT = Path(__file__).resolve().parents[2]
# glimpse: the timed phases' counts, and the memory child's (glimpse.py forwards them).
PHASE_OPTS = (("--n-cold", 300), ("--n-naive", 100), ("--batch", 256), ("--warm-reps", 10),
              ("--threads", 1))
MEM_OPTS = (("--mem-slides", 50), ("--mem-glimpses", 10000), ("--mem-size", 4096),
            ("--mem-cache-mb", 128), ("--mem-openslide-mb", 32), ("--mem-max-open", 16))
# needle: its RAM rows (ram_wsi.bench.needle.RAM_ROWS) and the baselines.
NEEDLE_ROWS = ("ram_context", "ram_paper", "ram_random", "ram_guided", "thumbnail", "dense")
# glas: its RAM rows (ram_wsi.bench.glas.GLAS_RAM_ROWS) and the CNN rows.
GLAS_ROWS = ("ram", "ram_random", "thumbnail", "whole")

SIDE = integer(256, 1 << 20)  # a generated slide's side, pixels
COUNT = integer(1, 100_000)
COUNT0 = integer(0, 100_000)
THREADS = integer(1, 1024)


def _parser(name: str, description: str, prog: str | None) -> CommandParser:
    return CommandParser(prog=prog or f"ram-wsi bench {name}", description=description)


def _glimpse(prog: str | None) -> CommandParser:
    ap = _parser("glimpse", "Lazy glimpses on generated slides: OpenSlide (JPEG TIFF) against "
                            "OME-Zarr, small slides against large ones.", prog)
    ap.add_argument("--sizes", type=SIDE, nargs="+", default=[8192, 131072],
                    help="slide sides, pixels")
    ap.add_argument("--cache-dir", default=os.environ.get("RAM_WSI_BENCH_DIR",
                                                          "/tmp/ram_wsi_bench"),
                    help="where the generated slides are kept ($RAM_WSI_BENCH_DIR)")
    ap.add_argument("--out", default=None, help="also write OUT/results.jsonl (default: none)")
    ap.add_argument("--backends", nargs="+", default=["openslide", "zarr"],
                    choices=["openslide", "zarr"], help="readers to time")
    ap.add_argument("--patch", type=integer(2, 1024), default=32, help="glimpse side, pixels")
    ap.add_argument("--scales", type=integer(1, 8), default=3, help="retina scales")
    ap.add_argument("--scale-factor", type=number(1, 16), default=4.0,
                    help="size ratio of successive scales")
    ap.add_argument("--base", type=number(above=0, hi=1024), default=1.0,
                    help="level-0 pixels per glimpse pixel at the finest scale")
    for flag, default in PHASE_OPTS:
        ap.add_argument(flag, type=COUNT, default=default, help="count")
    ap.add_argument("--rounds", type=COUNT, default=6, help="alternations for the size ratio")
    ap.add_argument("--openslide-warm-mb", type=COUNT0, default=256,
                    help="OpenSlide's tile cache in the warm phases (MiB)")
    for flag, default in MEM_OPTS:
        ap.add_argument(flag, type=COUNT, default=default, help="memory check")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory check")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    return ap


def _mnist(prog: str | None) -> CommandParser:
    ap = _parser("mnist", "Train the paper's rows on one MNIST task; our errors beside the "
                          "paper's.", prog)
    add_config_args(ap)
    ap.add_argument("--archs", type=_archs, default="ram,ram_random,conv,fc",
                    help="rows of the table, comma-separated (ram, ram_random, conv, fc)")
    return ap


def _archs(text: str) -> str:
    known = ("ram", "ram_random", "conv", "fc")
    bad = [a for a in text.split(",") if a not in known]
    if bad or not text:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of "
                                         f"{', '.join(known)}, got {text!r}")
    return text


def _needle(prog: str | None) -> CommandParser:
    ap = _parser("needle", "The slide agent against a thumbnail CNN and dense tiling on "
                           "gigapixel needle (or tissue-mosaic) slides.", prog)
    ap.add_argument("--sizes", type=SIDE, nargs="+", default=[16384, 131072],
                    help="slide sides, pixels")
    ap.add_argument("--rows", nargs="+", default=None, choices=NEEDLE_ROWS,
                    help="default: needle ram_context ram_paper ram_random thumbnail dense; "
                         "tissue ram_guided and those")
    ap.add_argument("--kind", choices=["needle", "tissue"], default="needle",
                    help="needle: dots against stripes (synthetic); tissue: carcinoma against "
                         "benign on mosaics of real H&E tiles (--tiles)")
    ap.add_argument("--config", default=None,
                    help="the RAM rows' config (default configs/needle_slides.yaml; tissue: "
                         "configs/crc_slides.yaml)")
    ap.add_argument("--tiles", default=None,
                    help="tissue: a folder with class folders H/ AC/ S/ T/ V/ (default "
                         "../shared/data/tissue/crc_tiles)")
    ap.add_argument("--region-um", type=number(above=0), nargs=2, default=None,
                    metavar=("MIN", "MAX"),
                    help="tissue: the carcinoma / adenoma region's diameter range, um "
                         "(default: 1000 3000)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                    help="override the RAM rows' config (repeatable; default: none)")
    ap.add_argument("--minutes", type=number(above=0), default=4.0,
                    help="training budget per RAM row")
    ap.add_argument("--init-from", default=None, metavar="DIR",
                    help="a curriculum: start each RAM row from DIR/<size>/<row>/best.pt of an "
                         "earlier run (default: from scratch)")
    for flag, default in (("--train-slides", 400), ("--val-slides", 32), ("--test-slides", 12),
                          ("--large-test-slides", 4), ("--dense-train-slides", 24),
                          ("--thumb-train-slides", 300)):
        ap.add_argument(flag, type=COUNT, default=default, help="slides")
    ap.add_argument("--lesion", type=integer(16, 1 << 20), default=None,
                    help="needle: lesion diameter, level-0 px (default max(2048, size / 16))")
    ap.add_argument("--dense-level", type=integer(0, 16), default=1, help="dense row's level")
    ap.add_argument("--dense-tile", type=integer(8, 4096), default=128,
                    help="dense row's tile side, px")
    ap.add_argument("--epochs", type=COUNT, default=8, help="epochs of the CNN baselines")
    ap.add_argument("--threads", type=THREADS, default=2, help="torch threads")
    ap.add_argument("--out", default="bench-results/needle", help="output folder")
    return ap


def _check_needle(args: argparse.Namespace) -> None:
    output_dir(args.out, "--out")
    if args.config:
        input_file(args.config, "--config")
    refuse_unless(args, args.kind == "tissue", ["tiles", "region_um"], "to --kind tissue")
    refuse_unless(args, args.kind == "needle", ["lesion"], "to --kind needle")
    if args.tiles:
        input_dir(args.tiles, "--tiles")
    if args.init_from:
        input_dir(args.init_from, "--init-from")
    args.region_um = ordered_pair(args.region_um, "--region-um") or (1000.0, 3000.0)


def _glas(prog: str | None) -> CommandParser:
    ap = _parser("glas", "RAM on the GlaS colon fields (benign against malignant) against a "
                         "whole-field CNN, a thumbnail CNN and random glimpses.", prog)
    ap.add_argument("--rows", nargs="+", default=list(GLAS_ROWS), choices=GLAS_ROWS,
                    help="rows, in order")
    ap.add_argument("--splits", nargs="+", default=["challenge"], metavar="NAME",
                    help="manifests MANIFESTS/NAME.csv: challenge (train -> testA), fold0 .. "
                         "fold3 (patients kept together; pooled in one more line per row)")
    ap.add_argument("--manifests", default="data/glas",
                    help="folder of the manifests; challenge and fold<i> are written there "
                         "from --glas when missing")
    ap.add_argument("--glas", default=str(ROOT.parent / "shared" / "data" / "tissue" / "glas"),
                    help="the GlaS folder (fields, grades.csv, gland masks)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "glas.yaml"),
                    help="the RAM rows' config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                    help="override the RAM rows' config (repeatable; default: none)")
    ap.add_argument("--minutes", type=number(above=0), default=6.0,
                    help="training budget per RAM row and split")
    ap.add_argument("--epochs", type=COUNT, default=30, help="epochs of the CNN rows")
    ap.add_argument("--thumb-size", type=integer(32, 1024), default=64,
                    help="the thumbnail row's thumbnail, longest side, px")
    ap.add_argument("--whole-downsample", type=int, choices=(1, 2), default=2,
                    help="the whole-field row's input: 1 full resolution (0.62 um/px), 2 half")
    ap.add_argument("--threads", type=THREADS, default=2, help="torch threads")
    ap.add_argument("--out", default="bench-results/glas", help="output folder")
    return ap


def _check_glas(args: argparse.Namespace) -> None:
    output_dir(args.out, "--out")
    output_dir(args.manifests, "--manifests")
    input_file(args.config, "--config")
    missing = [s for s in args.splits if not (Path(args.manifests) / f"{s}.csv").is_file()]
    unknown = [s for s in missing if s != "challenge" and not re.fullmatch(r"fold[0-3]", s)]
    if unknown:
        raise UsageError(f"no manifest {unknown[0]}.csv in {args.manifests} (challenge and "
                         "fold0 .. fold3 are written from --glas)", "--splits")
    if missing:
        input_dir(args.glas, "--glas")


def _remote(prog: str | None) -> CommandParser:
    ap = _parser("remote", "OME-Zarr from a local S3-protocol server and a web server "
                           "against local disk, with latency added per request.", prog)
    ap.add_argument("--size", type=SIDE, default=8192, help="slide side, pixels")
    ap.add_argument("--slides", type=COUNT, default=4, help="generated slides")
    ap.add_argument("--delays", type=number(0, 10_000), nargs="+", default=[0.0, 20.0],
                    help="ms added per request by the proxy")
    ap.add_argument("--layouts", nargs="+", default=["chunked", "sharded"],
                    choices=["chunked", "sharded"], help="store layouts")
    ap.add_argument("--stores", nargs="+", default=["s3", "http"], choices=["s3", "http"],
                    help="servers")
    ap.add_argument("--patch", type=integer(2, 1024), default=32, help="glimpse side, pixels")
    ap.add_argument("--scales", type=integer(1, 8), default=3, help="retina scales")
    ap.add_argument("--scale-factor", type=number(1, 16), default=4.0,
                    help="size ratio of successive scales")
    ap.add_argument("--batch", type=COUNT, default=4, help="locations per glimpse call (M+1)")
    ap.add_argument("--steps", type=COUNT, default=6, help="glimpse calls per slide (T)")
    ap.add_argument("--rounds", type=COUNT, default=2, help="passes over the slides")
    ap.add_argument("--trials", type=COUNT, default=12, help="single glimpses timed for latency")
    ap.add_argument("--no-score", action="store_true", help="skip the scoring rows")
    ap.add_argument("--checkpoint", default=None,
                    help="the scoring rows' checkpoint (default: a throwaway one)")
    ap.add_argument("--work", default=None, help="folder for the slides (default: a temp dir)")
    ap.add_argument("--out", default="bench-results/remote", help="output folder")
    return ap


def _check_remote(args: argparse.Namespace) -> None:
    output_dir(args.out, "--out")
    if args.work:
        output_dir(args.work, "--work")
    if args.checkpoint:
        if args.no_score:
            raise UsageError("applies to the scoring rows, which --no-score skips",
                             "--checkpoint")
        checkpoint_file(args.checkpoint, "--checkpoint")


def _scaling(prog: str | None) -> CommandParser:
    ap = _parser("scaling", "Ray rollout episodes/s of 1, 2, 4, ... actors against linear "
                            "scaling.", prog)
    ap.add_argument("--config", default="configs/cluttered60_8g.yaml",
                    help="the MNIST rows' config")
    ap.add_argument("--actors", type=integer(1, 1024), nargs="+", default=[1, 2, 4],
                    help="actor counts")
    ap.add_argument("--envs", nargs="+", default=["mnist", "slides"],
                    choices=["mnist", "slides"], help="episode sources")
    ap.add_argument("--episodes", type=COUNT, default=64, help="episodes per actor call")
    ap.add_argument("--calls", type=COUNT, default=40, help="timed calls per actor (MNIST)")
    ap.add_argument("--slide-calls", type=COUNT, default=10,
                    help="timed calls per actor (slides)")
    ap.add_argument("--repeats", type=COUNT, default=3, help="timed repeats (the median kept)")
    ap.add_argument("--slides", type=COUNT, default=4, help="generated slides")
    ap.add_argument("--slide-size", type=SIDE, default=8192, help="level-0 side of each slide")
    ap.add_argument("--data-dir", help="MNIST idx directory (default: the config's)")
    ap.add_argument("--out-dir", default="bench-results/scaling", help="output folder")
    return ap


def _check_scaling(args: argparse.Namespace) -> None:
    output_dir(args.out_dir, "--out-dir")
    input_file(args.config, "--config")
    if args.data_dir and "mnist" not in args.envs:
        raise UsageError("applies to --envs mnist only", "--data-dir")
    if args.data_dir:
        input_dir(args.data_dir, "--data-dir")


def _score(prog: str | None) -> CommandParser:
    ap = _parser("score", "What ram-wsi score costs per slide, flat in the slide's size, "
                          "against dense tiling on the same files; slides/s on a Ray pool; "
                          "memory over many slides; single-level slides against pyramids.",
                 prog)
    ap.add_argument("--checkpoint", default=None,
                    help="a slide agent's checkpoint (default: train a throwaway one)")
    ap.add_argument("--config", default=None,
                    help="the throwaway checkpoint's config (its architecture is what costs; "
                         "default: configs/needle_slides.yaml)")
    ap.add_argument("--sizes", type=SIDE, nargs="+", default=[8192, 32768, 131072],
                    help="slide sides, pixels")
    ap.add_argument("--slides", type=COUNT, default=4, help="slides per size (TIFF, zarr, ...)")
    ap.add_argument("--rounds", type=COUNT, default=3, help="times each slide is scored")
    ap.add_argument("--threads", type=THREADS, default=1, help="torch threads of the scorer")
    ap.add_argument("--dense-slides", type=COUNT0, default=1, help="per size; 0: no dense rows")
    ap.add_argument("--dense-level", type=integer(0, 16), default=1, help="dense rows' level")
    ap.add_argument("--dense-tile", type=integer(8, 4096), default=128,
                    help="dense rows' tile side, px")
    ap.add_argument("--throughput-slides", type=COUNT0, default=100,
                    help="slides of the throughput rows; 0: none")
    ap.add_argument("--workers", type=integer(0, 1024), nargs="+", default=[0, 1, 2],
                    help="throughput rows: 0 in-process, N a Ray pool of N scorers")
    ap.add_argument("--memory-slides", type=COUNT0, default=500, help="0: no memory row")
    ap.add_argument("--single-size", type=integer(16, 1 << 16), nargs=2, default=[2220, 2967],
                    metavar=("W", "H"), help="single rows: slide size")
    ap.add_argument("--single-slides", type=COUNT0, default=2,
                    help="single rows: scenes, each as pyramid, one-level TIFF, JPEG; 0: none")
    ap.add_argument("--out", default="bench-results/score", help="output folder")
    return ap


def _check_score(args: argparse.Namespace) -> None:
    output_dir(args.out, "--out")
    if args.checkpoint:
        if args.config:
            raise UsageError("applies to the throwaway checkpoint only, not with --checkpoint",
                             "--config")
        checkpoint_file(args.checkpoint, "--checkpoint")
    args.config = args.config or str(ROOT / "configs" / "needle_slides.yaml")
    input_file(args.config, "--config")


def _throughput(prog: str | None) -> CommandParser:
    ap = _parser("throughput", "Training images/s: the batched retina against a per-sample "
                               "crop loop.", prog)
    add_config_args(ap, config_help="experiment YAML (default: configs/cluttered60_8g.yaml)")
    ap.add_argument("--batches", type=integer(1, 1 << 16), nargs="+", default=None,
                    help="batch sizes (default: 128 on the CPU, 1024 8192 on CUDA)")
    ap.add_argument("--steps", type=integer(2, 100_000), default=20, help="timed steps")
    ap.add_argument("--threads", type=THREADS, default=None,
                    help="torch threads on the CPU (default: torch's)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--compile", action="store_true", help="torch.compile the unroll")
    ap.add_argument("--skip-naive", action="store_true", help="no per-sample-loop reference")
    return ap


def _check_throughput(args: argparse.Namespace) -> None:
    args.config = args.config or str(ROOT / "configs" / "cluttered60_8g.yaml")
    input_file(args.config, "--config")
    if args.out_dir:  # throughput.jsonl goes there
        output_dir(args.out_dir, "--out-dir")


def _time_to_accuracy(prog: str | None) -> CommandParser:
    ap = _parser("time-to-accuracy", "Minutes until one capped MNIST run's validation error "
                                     "reaches the paper's rows.", prog)
    add_config_args(ap)
    ap.add_argument("--minutes", type=number(above=0), default=None,
                    help="the run's budget (train.max_minutes; default: 25)")
    ap.add_argument("--targets", type=number(hi=100), nargs="+",
                    help="error targets in %% (default: the paper's Conv and RAM rows)")
    ap.add_argument("--smooth", type=integer(1, 1000), default=5,
                    help="minutes_smoothed: the mean of this many evaluations")
    ap.add_argument("--run", help="read this finished run directory instead of training "
                                  "(default: train)")
    return ap


def _check_time_to_accuracy(args: argparse.Namespace) -> None:
    if args.run:
        input_dir(args.run, "--run")
        for dest in ("config", "set", "data_dir", "out_dir", "minutes"):
            if getattr(args, dest):
                raise UsageError("applies to a training run, not with --run",
                                 "--" + dest.replace("_", "-"))
    else:
        _check_config(args)
    args.minutes = 25.0 if args.minutes is None else args.minutes


def _check_config(args: argparse.Namespace) -> None:
    if args.config:
        input_file(args.config, "--config")
    if args.out_dir:
        output_dir(args.out_dir, "--out-dir")


def _check_glimpse(args: argparse.Namespace) -> None:
    output_dir(args.cache_dir, "--cache-dir")
    if args.out:
        output_dir(args.out, "--out")


Builder = Callable[[str | None], CommandParser]
Check = Callable[[argparse.Namespace], None]
# name -> (parser, check); the check runs after parsing, before any work.
BENCH_PARSERS: dict[str, tuple[Builder, Check]] = {
    "mnist": (_mnist, _check_config),
    "time-to-accuracy": (_time_to_accuracy, _check_time_to_accuracy),
    "throughput": (_throughput, _check_throughput),
    "glimpse": (_glimpse, _check_glimpse),
    "scaling": (_scaling, _check_scaling),
    "needle": (_needle, _check_needle),
    "score": (_score, _check_score),
    "remote": (_remote, _check_remote),
    "glas": (_glas, _check_glas),
}


def parse_bench(name: str, argv: Sequence[str], prog: str | None = None) -> argparse.Namespace:
    """The checked arguments of benchmark ``name`` (a mistake: one line, exit status 2)."""
    build, check = BENCH_PARSERS[name]
    args = build(prog).parse_args(list(argv))
    check(args)
    return args
