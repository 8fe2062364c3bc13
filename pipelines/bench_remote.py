#!/usr/bin/env python
"""The remote-slide benchmark: OME-Zarr from a local S3-protocol server (moto's) and a web
server against local disk, at 0 and 20 ms added per request.

    python pipelines/bench_remote.py --size 8192 --slides 4 --delays 0 20

Same as ``ram-wsi bench remote``; see :mod:`ram_wsi.bench.remote`. Writes ``remote.jsonl`` and
prints tables.
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["remote", *sys.argv[1:]], prog="bench_remote.py"))
