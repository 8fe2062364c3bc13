"""``ram-wsi convert``'s command line (run by :func:`ram_wsi.slide.convert.run_convert`)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from ..cli_args import (
    CommandParser,
    UsageError,
    input_file,
    integer,
    output_dir,
    storage_option,
)

__all__ = ["build_convert_parser", "parse_convert"]

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # s3://, gs://, https://, procedural:


def build_convert_parser(prog: str = "ram-wsi convert") -> argparse.ArgumentParser:
    ap = CommandParser(prog=prog,
                       description="Convert a whole-slide image to OME-Zarr (NGFF 0.5).")
    ap.add_argument("src", help="slide file (anything OpenSlide opens) or OME-Zarr store")
    ap.add_argument("dst", help="output store: a directory (e.g. slide.ome.zarr) or a URI "
                                "(s3://bucket/cohort/slide.zarr, gs://, az://)")
    ap.add_argument("--chunk", type=integer(1, 16384), default=256,
                    help="chunk side in pixels")
    ap.add_argument("--shard", type=integer(0, 65536), default=None,
                    help="shard side in pixels, a multiple of --chunk (default: 2048 for a URI "
                         "destination, none for a directory; 0: unsharded)")
    ap.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                    type=storage_option,
                    help="a storage option for a URI (endpoint_url=..., anon=true, profile=...; "
                         "repeatable; default: none); credentials come from the environment")
    ap.add_argument("--workers", type=integer(1, 1024), default=None,
                    help="dask threads (default: the CPUs this process may use)")
    ap.add_argument("--levels", type=integer(1, 32), default=None,
                    help="pyramid levels (default: halve until the coarsest fits one chunk)")
    ap.add_argument("--codec", choices=["lz4hc", "zstd", "lz4", "blosclz"], default="lz4hc",
                    help="blosc compressor (lz4hc: fastest to read; zstd: smallest)")
    ap.add_argument("--clevel", type=integer(0, 9), default=5, help="blosc compression level")
    return ap


def is_uri(text: str) -> bool:
    """A URI (``s3://...``, ``procedural:...``) rather than a path (``C:\\`` is a path)."""
    return bool(_URI.match(text))


def check_convert(args: argparse.Namespace) -> None:
    """Before the slide libraries load: the source exists, the destination can be a store,
    the shard holds whole chunks; the default shard of a URI destination filled in."""
    if not is_uri(args.src):
        from pathlib import Path

        if not Path(args.src).is_dir():  # a store or DICOM folder is a directory
            input_file(args.src, "src")
    if not is_uri(args.dst):
        output_dir(args.dst, "dst")
        if args.storage_option and not is_uri(args.src):
            raise UsageError("applies to a URI source or destination only", "--storage-option")
    if args.shard and args.shard % args.chunk:
        raise UsageError(f"must be a multiple of --chunk ({args.chunk}), got {args.shard}",
                         "--shard")
    if args.shard is None and is_uri(args.dst):
        args.shard = max(args.chunk, 2048 // args.chunk * args.chunk)
    args.shard = args.shard or None


def parse_convert(argv: Sequence[str], prog: str = "ram-wsi convert") -> argparse.Namespace:
    """The checked arguments of ``ram-wsi convert`` (a mistake: exit 2, one line)."""
    args = build_convert_parser(prog).parse_args(list(argv))
    check_convert(args)
    return args
