#!/usr/bin/env python
"""Manifests of the GlaS colon fields, split by patient.

    python pipelines/glas_manifests.py OUT [--glas ../shared/data/tissue/glas] [--folds 4]

Writes OUT/challenge.csv (the challenge's train -> testA split; it shares patients between
train and test) and OUT/fold<i>.csv (patient-grouped cross-validation: fold i tests, the other
fold with the most even grades validates, the rest train). A bad grades.csv (a missing column, an unknown grade, a field whose
image is absent) is one line naming the row, exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout: use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str]) -> int:
    from ram_wsi.cli_args import CommandParser, input_dir, integer, output_dir

    ap = CommandParser(prog="glas_manifests.py", description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="folder for the manifests")
    ap.add_argument("--glas", type=Path, default=ROOT / ".." / "shared" / "data" / "tissue"
                    / "glas", help="the GlaS folder (default ../shared/data/tissue/glas)")
    ap.add_argument("--folds", type=integer(2, 16), default=4,
                    help="cross-validation folds (GlaS has 16 patients)")
    ap.add_argument("--seed", type=integer(0, 2**31 - 1), default=0,
                    help="tie-breaking of the folds")
    args = ap.parse_args(argv)
    output_dir(args.out, "out")
    input_dir(args.glas, "--glas")
    from ram_wsi.data.glas import write_glas_manifests

    written = write_glas_manifests(args.glas, args.out, folds=args.folds, seed=args.seed)
    print(json.dumps({k: str(v) for k, v in written.items()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """0 written; 2 a mistake (one line on stderr, nothing written; ``--debug``: traceback)."""
    from ram_wsi.cli_args import guarded

    return guarded(_run, list(sys.argv[1:] if argv is None else argv),
                   prog="glas_manifests.py")


if __name__ == "__main__":
    raise SystemExit(main())
