"""Score a folder of slides with a trained slide agent -- the same as ``ram-wsi score``, as a
script that ``ray job submit --working-dir . -- python pipelines/score.py ...`` can run.

    python pipelines/score.py SLIDES --checkpoint runs/needle_slides/best.pt --out scores/

A mistake (an option, the checkpoint, the output folder) is one line, exit status 2, before
torch or Ray load.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout: the package is the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROG = "score.py"


def _run(argv: list[str]) -> int:
    from ram_wsi.commands.score import parse_score

    args = parse_score(argv, prog=PROG)
    from ram_wsi.score.runner import run_score

    return run_score(args)


def main(argv: list[str] | None = None) -> int:
    from ram_wsi.cli_args import guarded

    return guarded(_run, list(sys.argv[1:] if argv is None else argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
