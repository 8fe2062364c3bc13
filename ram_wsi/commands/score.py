"""``ram-wsi score``'s command line (run by :func:`ram_wsi.score.runner.run_score`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..cli_args import (
    CommandParser,
    UsageError,
    checkpoint_file,
    integer,
    number,
    output_dir,
    storage_option,
)

__all__ = ["build_score_parser", "parse_score"]

DESCRIPTION = ("Score slides with a trained slide agent: results.csv/.parquet, QuPath GeoJSON, "
               "thumbnails; resumable. Exit status: 0 all slides ok, 1 some failed, 2 bad "
               "arguments or checkpoint, 130 interrupted.")


def build_score_parser(prog: str = "ram-wsi score") -> argparse.ArgumentParser:
    p = CommandParser(prog=prog, description=DESCRIPTION)
    p.add_argument("slides", help="a folder (recursive), a glob, a manifest CSV, one slide, "
                                  "or a URI prefix of OME-Zarr stores (s3://bucket/cohort/)")
    p.add_argument("--checkpoint", "-k", required=True, help="a slide agent's best.pt / last.pt")
    p.add_argument("--out", "-o", required=True, help="output folder (local or mounted)")
    p.add_argument("--workers", type=integer(0, 1024), default=2,
                   help="Ray scorer actors (0: in this process)")
    p.add_argument("--cpus-per-worker", type=number(above=0, hi=1024), default=1.0,
                   help="Ray CPUs per actor, and its torch threads")
    p.add_argument("--gpus-per-worker", type=number(0, 64), default=None,
                   help="Ray GPUs per actor (default: a share of the cluster's GPUs when it "
                        "has some)")
    p.add_argument("--samples", "-M", type=integer(1, 1000), default=None,
                   help="rollouts averaged per slide (default: the checkpoint's eval_samples)")
    p.add_argument("--stop-at", type=number(above=0, hi=1), default=None, metavar="P",
                   help="a confidence stop: decide at the first glimpse whose decision is at "
                        "least P sure, e.g. 0.9 (fewer pixels on easy slides; default: read "
                        "every glimpse)")
    p.add_argument("--seed", type=integer(0, 2**31 - 1), default=0,
                   help="mixed with each slide's id into its episode seed")
    p.add_argument("--timeout", type=number(above=0), default=None,
                   help="seconds a slide may take on a Ray worker (default: 600)")
    p.add_argument("--retries", type=integer(0, 100), default=None,
                   help="re-tries of a slide whose reader crashed its Ray worker (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="score every input again")
    p.add_argument("--retry-errors", action="store_true", help="score failed inputs again")
    p.add_argument("--fallback-mpp", type=number(above=0, hi=1000), default=None,
                   help="um/px assumed for slides stating none (micrometre checkpoints; "
                        "default: such a slide is an error row)")
    p.add_argument("--no-geojson", action="store_true", help="write no QuPath GeoJSON")
    p.add_argument("--no-thumbnails", action="store_true", help="write no thumbnails")
    p.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS or local)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   type=storage_option,
                   help="for slides named by URIs: endpoint_url=..., anon=true, profile=..., "
                        "config_kwargs.connect_timeout=5 (repeatable; YAML values; no "
                        "credentials: those come from the environment; default: none)")
    return p


def check_score(args: argparse.Namespace) -> None:
    """What is checked before anything loads: the checkpoint is one, ``--out`` can be a
    folder (a URI is refused later, with the reason), Ray options only with Ray workers."""
    checkpoint_file(args.checkpoint, "--checkpoint")
    if "://" not in args.out:
        output_dir(args.out, "--out")
    if args.workers == 0:
        for dest in ("gpus_per_worker", "address", "timeout", "retries"):
            if getattr(args, dest) is not None:
                raise UsageError("applies to Ray workers only; --workers 0 scores in this "
                                 "process", "--" + dest.replace("_", "-"))
    args.timeout = 600.0 if args.timeout is None else args.timeout
    args.retries = 1 if args.retries is None else args.retries


def parse_score(argv: Sequence[str], prog: str = "ram-wsi score") -> argparse.Namespace:
    """The checked arguments of ``ram-wsi score`` (a mistake: :class:`UsageError` or exit 2)."""
    args = build_score_parser(prog).parse_args(list(argv))
    check_score(args)
    return args
