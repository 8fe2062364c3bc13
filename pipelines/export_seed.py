#!/usr/bin/env python
"""A small seed checkpoint (float16 weights and what scoring reads; no optimiser or RNG state).

    python pipelines/export_seed.py runs/crc8k/best.pt configs/seeds/crc8k_guided.pt

``make demo`` starts its short training from configs/seeds/crc8k_guided.pt (README: "The demo
on real tissue" says how it was made); any run can start from a seed with
``--set train.init_from=SEED``. A missing or unreadable checkpoint is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout: use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="export_seed.py", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a checkpoint written by ram-wsi train")
    ap.add_argument("out", type=Path, help="the seed to write (float16 weights)")
    args = ap.parse_args(argv)
    from ram_wsi.errors import RamWsiError
    from ram_wsi.train.checkpoint import export_seed

    try:
        out = export_seed(args.checkpoint, args.out)
    except (RamWsiError, KeyError) as exc:
        print(f"export_seed.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
