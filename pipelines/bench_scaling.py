#!/usr/bin/env python
"""Rollout throughput (episodes/s) of 1, 2, 4, ... Ray actors against linear scaling.

    python pipelines/bench_scaling.py --actors 1 2 4 --envs mnist slides

Same as ``ram-wsi bench scaling``; see :mod:`ram_wsi.bench.scaling`. Writes ``scaling.jsonl``,
``scaling.png`` and prints a table.
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["scaling", *sys.argv[1:]], prog="bench_scaling.py"))
