#!/usr/bin/env python
"""A small seed checkpoint (float16 weights and what scoring reads; no optimiser or RNG state).

    python pipelines/export_seed.py runs/crc8k/best.pt configs/seeds/crc8k_guided.pt

``make demo`` starts its short training from configs/seeds/crc8k_guided.pt (README: "The demo
on real tissue" says how it was made); any run can start from a seed with
``--set train.init_from=SEED``. A missing or unreadable checkpoint is one line, exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout: use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _run(argv: list[str]) -> int:
    from ram_wsi.cli_args import CommandParser, checkpoint_file, output_file

    ap = CommandParser(prog="export_seed.py", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a checkpoint written by ram-wsi train")
    ap.add_argument("out", type=Path, help="the seed to write (float16 weights)")
    args = ap.parse_args(argv)
    checkpoint_file(args.checkpoint, "checkpoint")
    output_file(args.out, "out")
    from ram_wsi.train.checkpoint import export_seed

    try:
        out = export_seed(args.checkpoint, args.out)
    except KeyError as exc:  # a checkpoint without the weights or config a seed carries
        from ram_wsi.errors import CheckpointError

        raise CheckpointError(args.checkpoint, f"lacks {exc} (not a training run's "
                                               "checkpoint?)") from None
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """0 written; 2 a mistake (one line on stderr, nothing written; ``--debug``: traceback)."""
    from ram_wsi.cli_args import guarded

    return guarded(_run, list(sys.argv[1:] if argv is None else argv), prog="export_seed.py")


if __name__ == "__main__":
    raise SystemExit(main())
