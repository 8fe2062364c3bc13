#!/usr/bin/env python
"""Train a RAM with Ray rollout actors (or single-process with --single).

    python pipelines/train.py --config configs/demo.yaml --data-dir ../shared/data/mnist
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/train.py --config configs/demo.yaml

Joins the cluster named by ``distributed.address`` or ``RAY_ADDRESS`` (set for a submitted job),
else starts a local Ray instance. Checkpoints, metrics.jsonl, summary.json and figures go to
``--out-dir`` (default ``train.out_dir``); running the same command again resumes from
``last.pt`` (``--no-resume`` starts over).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout (e.g. a Ray job's working_dir): use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    """``ram-wsi train --distributed`` (``--single``: without Ray); same arguments."""
    from ram_wsi.cli import main as cli

    argv = list(sys.argv[1:] if argv is None else argv)
    mode = [] if "--single" in argv else ["--distributed"]
    return cli(["train", *mode, *[a for a in argv if a != "--single"]])


if __name__ == "__main__":
    sys.exit(main())
