#!/usr/bin/env python
"""The scoring benchmark: seconds per slide against slide size and dense tiling.

    python pipelines/bench_score.py --sizes 8192 32768 131072

Same as ``ram-wsi bench score``; see :mod:`ram_wsi.bench.score`. Writes ``score.jsonl`` and
prints a table.
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]], prog="bench_score.py"))
