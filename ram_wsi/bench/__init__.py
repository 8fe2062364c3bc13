"""Benchmarks, one module each; every one prints JSON lines (one per measurement), then a table.

* :mod:`.throughput`: training images/s, batched retina vs a per-sample crop loop
  (``ram-wsi bench throughput``, ``pipelines/bench_throughput.py``).
* :mod:`.mnist`: the paper's MNIST table, and the synthetic MNIST benchmark run by the tests
  (``ram-wsi bench mnist``, ``pipelines/bench_mnist.py``).
* :mod:`.time_to_accuracy`: minutes until one capped MNIST run's validation error reaches the
  paper's Conv and RAM rows (``ram-wsi bench time-to-accuracy``,
  ``pipelines/bench_time_to_accuracy.py``).
* :mod:`.glimpse`: lazy slide glimpses, OpenSlide vs OME-Zarr, small vs large slides
  (``ram-wsi bench glimpse``, ``pipelines/bench_glimpse.py``).
* :mod:`.scaling`: Ray rollout episodes/s against the number of actors
  (``ram-wsi bench scaling``, ``pipelines/bench_scaling.py``).
* :mod:`.needle`: the slide agent against a thumbnail CNN and dense tiling on synthetic
  16k^2 / 131k^2 slides: accuracy, pixels and seconds per slide (``ram-wsi bench needle``,
  ``pipelines/bench_needle.py``).
* :mod:`.score`: ``ram-wsi score``'s seconds per slide and its split at 8k^2-131k^2, against
  dense tiling; slides/s with 1 and 2 workers; memory over 500 slides (``ram-wsi bench score``,
  ``pipelines/bench_score.py``).
* :mod:`.remote`: OME-Zarr from a local S3-protocol server and a web server against local disk,
  with latency added per request: glimpses/s per core, one glimpse's round trips, seconds per
  scored slide (``ram-wsi bench remote``, ``pipelines/bench_remote.py``).
* :mod:`.glas`: RAM on the GlaS colon fields (benign against malignant; the challenge's split
  and patient-grouped folds) against a whole-field CNN, a thumbnail CNN and random glimpses:
  accuracy, AUC, pixels and seconds per field (``ram-wsi bench glas``,
  ``pipelines/bench_glas.py``).

:func:`main` runs one by name: ``main(["throughput", "--steps", "3"])``. Its arguments are
parsed and checked (:mod:`ram_wsi.commands.bench`) before the benchmark's module -- and torch --
loads; the names re-exported here load on first use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

from ..cli_args import guarded

__all__ = [
    "BENCHMARKS",
    "PAPER_NIPS",
    "emit",
    "main",
    "measure_throughput",
    "mnist_table",
    "naive_glimpse",
    "print_table",
    "synthetic_benchmark",
]

# name -> (module, one-line help); each module has ``main(argv) -> int`` with its own parser.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "mnist": (".mnist", "train the paper's rows; our errors beside the paper's"),
    "time-to-accuracy": (".time_to_accuracy", "minutes to the paper's errors (`-h`)"),
    "throughput": (".throughput", "training images/s: batched retina vs crop loop"),
    "glimpse": (".glimpse", "slide glimpse benchmark (`ram-wsi bench glimpse -h`)"),
    "scaling": (".scaling", "Ray rollout episodes/s vs actors (`ram-wsi bench scaling -h`)"),
    "needle": (".needle", "slide RAM vs dense tiling on gigapixel needle slides (`-h`)"),
    "score": (".score", "ram-wsi score: s/slide vs slide size, vs dense; slides/s; memory"),
    "remote": (".remote", "slides on a local S3 / web server vs local disk, 0 and 20 ms added"),
    "glas": (".glas", "GlaS fields: RAM vs whole-field / thumbnail CNNs, by patient (`-h`)"),
}


_LAZY = {"PAPER_NIPS": ".mnist", "mnist_table": ".mnist", "synthetic_benchmark": ".mnist",
         "measure_throughput": ".throughput", "naive_glimpse": ".throughput",
         "emit": "._report", "print_table": "._report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``main([NAME, *ARGS])``: run benchmark NAME with its own command line ARGS; a user
    mistake (a bad option, config or file) prints one line and gives 2, as ``ram-wsi`` does.
    ``prog``: the program named in help and errors (a script's; default ``ram-wsi bench
    NAME``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in BENCHMARKS else None
    return guarded(lambda a: _run(a, prog), argv,
                   prog=prog or ("ram-wsi bench" + (f" {name}" if name else "")))


def _run(argv: list[str], prog: str | None) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        known = ", ".join(BENCHMARKS)
        if argv[:1] in (["-h"], ["--help"]):
            print(f"usage: ram-wsi bench {{{known}}} ...\n")
            for name, (_, text) in BENCHMARKS.items():
                print(f"  {name:17} {text}")
            return 0
        what = f"unknown benchmark {argv[0]!r}" if argv else "no benchmark named"
        print(f"ram-wsi bench: error: {what}; choose one of {known} (NAME)", file=sys.stderr)
        return 2
    from ..commands.bench import parse_bench

    args = parse_bench(argv[0], argv[1:], prog)  # checked before the benchmark loads
    module = importlib.import_module(BENCHMARKS[argv[0]][0], __name__)
    return int(module.run_bench(args) or 0)
