"""Glimpse benchmark (OpenSlide vs OME-Zarr, 8k^2 vs 131k^2): see ``ram_wsi.bench.glimpse``.

    python pipelines/bench_glimpse.py [--sizes 8192 131072] [--patch 64] [--out DIR]

Same as ``ram-wsi bench glimpse``.
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["glimpse", *sys.argv[1:]], prog="bench_glimpse.py"))
