"""Minutes until one capped MNIST run's validation error reaches the paper's rows.

    python pipelines/bench_time_to_accuracy.py -c configs/cluttered60_8g.yaml \
        --data-dir ../shared/data/mnist --minutes 25 [--targets 8.09 4.04] [--run DIR]

Same as ``ram-wsi bench time-to-accuracy`` (:mod:`ram_wsi.bench.time_to_accuracy`).
"""

import sys

import _bootstrap  # noqa: F401

from ram_wsi.bench import main

if __name__ == "__main__":
    sys.exit(main(["time-to-accuracy", *sys.argv[1:]], prog="bench_time_to_accuracy.py"))
