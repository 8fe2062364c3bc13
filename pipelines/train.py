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

import argparse
import json
import os
import sys
from pathlib import Path

try:
    import ram_wsi  # noqa: F401
except ImportError:  # a plain checkout (e.g. a Ray job's working_dir): use the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from ram_wsi.config import load_config
    from ram_wsi.errors import RamWsiError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", "-c", required=True, help="experiment YAML")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. distributed.actors=4 (repeatable)")
    p.add_argument("--single", action="store_true", help="single-process Trainer, no Ray")
    p.add_argument("--data-dir", help="MNIST idx directory (sets data.dir)")
    p.add_argument("--out-dir", help="run directory (sets train.out_dir)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt")
    args = p.parse_args(argv)

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    if args.out_dir:
        overrides.append(f"train.out_dir={args.out_dir}")
    try:
        cfg = load_config(args.config, overrides)
        if args.single or not cfg.distributed.enabled:
            from ram_wsi.train.trainer import Trainer

            trainer = Trainer(cfg)
            if not args.no_resume:
                trainer.resume()
            summary = trainer.fit()
        else:
            from ram_wsi.distributed import train_distributed

            summary = train_distributed(cfg, resume=not args.no_resume,
                                        log=lambda m: print(m, flush=True))
    except RamWsiError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str), flush=True)
    print(f"run directory: {os.path.abspath(cfg.out_dir)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
