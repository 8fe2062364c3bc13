"""Train the paper's rows on one MNIST task and print our errors beside the paper's.

    python pipelines/bench_mnist.py --config configs/cluttered60_8g.yaml \
        [--archs ram,ram_random,conv,fc] [--set train.max_minutes=30]

Same as ``ram-wsi bench mnist`` (:mod:`ram_wsi.bench.mnist`). JSON lines, then a table.
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["mnist", *sys.argv[1:]], prog="bench_mnist.py"))
