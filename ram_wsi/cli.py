"""``ram-wsi`` command line: train, eval, bench, convert, and the slide tools as they arrive.

Every subcommand takes ``--config FILE`` and any number of ``--set section.key=value``.
User mistakes (bad config, missing files) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import RamWsiError

__all__ = ["main"]


def _config(args: argparse.Namespace):
    from .config import load_config

    overrides = list(args.set or [])
    if getattr(args, "data_dir", None):
        overrides.append(f"data.dir={args.data_dir}")
    if getattr(args, "out_dir", None):
        overrides.append(f"train.out_dir={args.out_dir}")
    return load_config(args.config, overrides)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="experiment YAML (configs/...)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. train.lr=0.0005 (repeatable)")
    p.add_argument("--data-dir", help="MNIST idx directory (sets data.dir)")
    p.add_argument("--out-dir", help="output directory (sets train.out_dir)")


def cmd_train(args: argparse.Namespace) -> int:
    import os

    cfg = _config(args)
    if args.distributed and cfg.distributed.enabled:
        from .distributed import train_distributed

        summary = train_distributed(cfg, resume=not args.no_resume,
                                    log=lambda m: print(m, flush=True))
    else:
        from .train.trainer import Trainer

        trainer = Trainer(cfg)
        if not args.no_resume:
            trainer.resume()
        summary = trainer.fit()
    print(json.dumps(summary, default=str), flush=True)
    print(f"run directory: {os.path.abspath(cfg.out_dir)}", flush=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .train.checkpoint import load_checkpoint
    from .train.trainer import Trainer

    cfg = _config(args)
    trainer = Trainer(cfg)
    trainer.model.load_state_dict(load_checkpoint(args.checkpoint, trainer.device)["model"])
    res = trainer.evaluate(args.split, samples=args.samples)
    if trainer.attention and args.split == "test" and trainer.data.test_centers is not None:
        from .train.evaluate import on_target_fraction

        res["on_target"] = on_target_fraction(trainer.model, trainer.data.test[0],
                                              trainer.data.test_centers,
                                              14.0 / (trainer.data.canvas / 2))
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, **res}))
    if args.figure:
        from .viz import plot_glimpses

        x, y = trainer.data.test if args.split == "test" else trainer.data.val
        centers = trainer.data.test_centers if args.split == "test" else None
        plot_glimpses(trainer.model, x[:6].to(trainer.device), y[:6], args.figure,
                      centers=None if centers is None else centers[:6])
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import mnist_table, print_table

    if args.what == "mnist":
        cfg = _config(args)
        mnist_table(cfg, args.archs.split(","))
        return 0
    if args.what == "throughput":
        import torch

        from .bench import measure_throughput

        if args.threads:
            torch.set_num_threads(args.threads)
        args.config = args.config or "configs/cluttered60_8g.yaml"
        cfg = _config(args)
        rows = []
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devices:
            batches = args.batches or ([128] if dev == "cpu" else [1024, 8192])
            for b in batches:
                for sensor in ("retina", "naive"):
                    if sensor == "naive" and (b > 1024 or args.skip_naive):
                        continue  # a per-sample loop at 8192 takes minutes; the ratio is clear
                    steps = args.steps if sensor == "retina" else max(2, args.steps // 10)
                    r = measure_throughput(cfg, b, device=dev, steps=steps, sensor=sensor,
                                           amp=args.amp and dev == "cuda",
                                           compile=args.compile)
                    print(json.dumps(r), flush=True)
                    rows.append(r)
        for r in rows:
            ref = next((q for q in rows if q["sensor"] == "naive" and q["device"] == r["device"]
                        and q["batch"] == r["batch"]), None)
            r["speedup_vs_naive"] = (r["images_per_s"] / ref["images_per_s"]
                                     if ref and r["sensor"] == "retina" else None)
        print_table(rows, ["device", "batch", "sensor", "threads", "images_per_s",
                           "speedup_vs_naive"])
        return 0
    raise SystemExit(f"unknown benchmark {args.what}")


def _passthrough(argv: list[str]) -> int | None:
    """Subcommands that own their argument parsing (slide tools): hand them the rest."""
    if argv[:1] == ["convert"]:
        from .slide.convert import cli

        return int(cli(argv[1:]) or 0)
    if argv[:2] == ["bench", "glimpse"]:
        from .slide.bench import main as bench_glimpse

        return int(bench_glimpse(argv[2:]) or 0)
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ram-wsi", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a config (single process, or --distributed)")
    _add_config_args(t)
    t.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt")
    t.add_argument("--distributed", action="store_true",
                   help="Ray rollout actors + learner (joins RAY_ADDRESS or starts Ray)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint: stochastic, mean and M-avg errors")
    _add_config_args(e)
    e.add_argument("checkpoint")
    e.add_argument("--split", choices=["val", "test"], default="test")
    e.add_argument("--samples", type=int, default=None, help="M for the M-averaged error")
    e.add_argument("--figure", help="write the glimpse figure (PNG) here")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="benchmarks: mnist (paper table), throughput, glimpse")
    bsub = b.add_subparsers(dest="what", required=True)
    bm = bsub.add_parser("mnist", help="train the paper's rows; our errors beside the paper's")
    _add_config_args(bm)
    bm.add_argument("--archs", default="ram,ram_random,conv,fc", help="rows of the table")
    bt = bsub.add_parser("throughput", help="training images/s: batched retina vs crop loop")
    _add_config_args(bt)
    bt.add_argument("--batches", type=int, nargs="*", help="batch sizes")
    bt.add_argument("--steps", type=int, default=20, help="timed steps")
    bt.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    bt.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    bt.add_argument("--compile", action="store_true", help="torch.compile the unroll")
    bt.add_argument("--skip-naive", action="store_true", help="no per-sample-loop reference")
    bsub.add_parser("glimpse", help="slide glimpse benchmark (`ram-wsi bench glimpse -h`)")
    b.set_defaults(func=cmd_bench)

    sub.add_parser("convert", help="slide -> OME-Zarr pyramid (`ram-wsi convert -h`)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        direct = _passthrough(argv)
        if direct is not None:
            return direct
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except RamWsiError as exc:
        print(f"ram-wsi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
