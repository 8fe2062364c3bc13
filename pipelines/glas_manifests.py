#!/usr/bin/env python
"""Manifests of the GlaS colon fields, split by patient.

    python pipelines/glas_manifests.py OUT [--glas ../shared/data/tissue/glas] [--folds 4]

Writes OUT/challenge.csv (the challenge's train -> testA split; it shares patients between
train and test) and OUT/fold<i>.csv (patient-grouped cross-validation: fold i tests, the other
fold with the most even grades validates, the rest train). A bad grades.csv (a missing column, an unknown grade, a field whose
image is absent) is one line naming the row, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout: use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="glas_manifests.py", description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="folder for the manifests")
    ap.add_argument("--glas", type=Path, default=ROOT / ".." / "shared" / "data" / "tissue"
                    / "glas", help="the GlaS folder (default ../shared/data/tissue/glas)")
    ap.add_argument("--folds", type=int, default=4, help="cross-validation folds (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="tie-breaking of the folds (default 0)")
    args = ap.parse_args(argv)
    if not 2 <= args.folds <= 16:
        ap.error(f"--folds must be in 2..16 (GlaS has 16 patients), got {args.folds}")
    from ram_wsi.data.glas import write_glas_manifests
    from ram_wsi.errors import RamWsiError

    try:
        written = write_glas_manifests(args.glas, args.out, folds=args.folds, seed=args.seed)
    except RamWsiError as exc:
        print(f"glas_manifests.py: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: str(v) for k, v in written.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
