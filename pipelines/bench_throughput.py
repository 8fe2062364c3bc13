"""Training throughput (images/s, forward + backward + step) on the 60x60 cluttered config,
batched retina vs a per-sample crop loop, CPU at batch 128 and CUDA at 1024/8192 when present.

    python pipelines/bench_throughput.py [--threads 2] [--batches 128] [--steps 20]

Same as ``ram-wsi bench throughput`` (:mod:`ram_wsi.bench.throughput`). JSON lines, then a table.
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["throughput", *sys.argv[1:]], prog="bench_throughput.py"))
