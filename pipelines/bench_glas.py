#!/usr/bin/env python
"""The GlaS benchmark: RAM on the GlaS colon fields against a whole-field CNN, a thumbnail CNN
and random glimpses, on the challenge's split and patient-grouped folds.

    python pipelines/bench_glas.py --splits challenge fold0 fold1 fold2 fold3 --minutes 6

Same as ``ram-wsi bench glas``; see :mod:`ram_wsi.bench.glas`. Writes ``glas.jsonl`` and
``glas_summary.json`` and prints a table.
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["glas", *sys.argv[1:]], prog="bench_glas.py"))
