#!/usr/bin/env python
"""Train a RAM with Ray rollout actors (or single-process with --single).

    python pipelines/train.py --config configs/demo.yaml --data-dir ../shared/data/mnist
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/train.py --config configs/demo.yaml

Joins the cluster named by ``distributed.address`` or ``RAY_ADDRESS`` (set for a submitted job),
else starts a local Ray instance. Checkpoints, metrics.jsonl, summary.json and figures go to
``--out-dir`` (default ``train.out_dir``); running the same command again resumes from
``last.pt`` (``--no-resume`` starts over). ``ram-wsi train --distributed`` with the same
options; a mistake is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout (e.g. a Ray job's working_dir): use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROG = "train.py"


def build_parser() -> argparse.ArgumentParser:
    from ram_wsi.cli import add_train_args
    from ram_wsi.cli_args import CommandParser

    ap = CommandParser(prog=PROG, description=__doc__.splitlines()[0])
    add_train_args(ap, distributed_flag=False)
    ap.add_argument("--single", action="store_true",
                    help="one process, without Ray (default: Ray rollout actors + learner)")
    return ap


def _run(argv: list[str]) -> int:
    from ram_wsi.cli import check_train

    args = build_parser().parse_args(argv)
    check_train(args)
    args.distributed = not args.single
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Train; 0 done, 2 a mistake (one line on stderr; ``--debug``: the traceback)."""
    from ram_wsi.cli_args import guarded

    return guarded(_run, list(sys.argv[1:] if argv is None else argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
