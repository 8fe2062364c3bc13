#!/usr/bin/env python
"""The needle benchmark: the slide agent against a thumbnail CNN and dense tiling.

    python pipelines/bench_needle.py --sizes 16384 131072 --minutes 4

Same as ``ram-wsi bench needle``; see :mod:`ram_wsi.bench.needle`. Writes ``needle.jsonl`` and
prints a table.
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["needle", *sys.argv[1:]], prog="bench_needle.py"))
