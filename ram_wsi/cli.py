"""``ram-wsi`` command line: train, eval, bench, convert, and the slide tools as they arrive.

Every subcommand takes ``--config FILE`` and any number of ``--set section.key=value``.
User mistakes (bad config, missing files) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .cli_args import add_config_args, config_from_args, guarded

__all__ = ["main"]


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from .slide.remote import use_config

    cfg = config_from_args(args)
    use_config(cfg)  # slides on object storage: this process's storage options
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
    from .slide.remote import use_config
    from .train.checkpoint import load_checkpoint
    from .train.trainer import Trainer

    cfg = config_from_args(args)
    use_config(cfg)
    trainer = Trainer(cfg)
    trainer.model.load_state_dict(load_checkpoint(args.checkpoint, trainer.device)["model"])
    if trainer.slides:
        return _eval_slides(trainer, args)
    res = trainer.evaluate(args.split, samples=args.samples)
    if trainer.attention and args.split == "test" and trainer.data.test_centers is not None:
        from .train.evaluate import on_target_fraction, on_target_half_width

        res["on_target"] = on_target_fraction(trainer.model, trainer.data.test[0],
                                              trainer.data.test_centers,
                                              on_target_half_width(trainer.data.canvas))
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, **res}))
    if args.figure:
        from .viz import plot_glimpses

        x, y = trainer.data.test if args.split == "test" else trainer.data.val
        centers = trainer.data.test_centers if args.split == "test" else None
        plot_glimpses(trainer.model, x[:6].to(trainer.device), y[:6], args.figure,
                      centers=None if centers is None else centers[:6])
    return 0


def _eval_slides(trainer, args: argparse.Namespace) -> int:
    """``eval`` on the val or test slides: metrics as JSON, the figure on the first four."""
    from .train.slide_eval import slide_metrics, write_slide_rows
    from .viz import plot_slide_glimpses

    rows = trainer.local_slide_rollouts(args.split, keep_glimpses=4 if args.figure else 0,
                                         samples=args.samples)
    res = slide_metrics(rows, trainer.data.class_names)
    out = trainer.out_dir / f"{args.split}_slides.csv"
    write_slide_rows(out, rows, trainer.data.class_names)  # one row per slide
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "rows": str(out),
                      **res}))
    shown = [r for r in rows if "glimpses" in r]
    if args.figure and shown:
        plot_slide_glimpses(shown, trainer.model.spec, trainer.data.class_names, args.figure)
    return 0


def cmd_bench(argv: list[str]) -> int:
    """``ram-wsi bench NAME ...``: the benchmark package parses and runs NAME."""
    from .bench import main as bench_main

    return bench_main(argv)


def _passthrough(argv: list[str]) -> int | None:
    """Subcommands that own their argument parsing (slide tools, benchmarks): hand them the
    rest."""
    if argv[:1] == ["convert"]:
        from .slide.convert import cli

        return int(cli(argv[1:]) or 0)
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    if argv[:1] == ["score"]:
        from .score.runner import main_args

        return main_args(argv[1:])
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ram-wsi", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a config (single process, or --distributed)")
    add_config_args(t)
    t.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt")
    t.add_argument("--distributed", action="store_true",
                   help="Ray rollout actors + learner (joins RAY_ADDRESS or starts Ray)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint: stochastic, mean and M-avg errors")
    add_config_args(e)
    e.add_argument("checkpoint")
    e.add_argument("--split", choices=["val", "test"], default="test")
    e.add_argument("--samples", type=int, default=None, help="M for the M-averaged error")
    e.add_argument("--figure", help="write the glimpse figure (PNG) here")
    e.set_defaults(func=cmd_eval)

    sub.add_parser("bench", help="benchmarks: mnist (paper table), throughput, glimpse, "
                                 "scaling (`ram-wsi bench -h`)")
    sub.add_parser("convert", help="slide -> OME-Zarr pyramid (`ram-wsi convert -h`)")
    sub.add_parser("score", help="score a folder of slides with a checkpoint: CSV, QuPath "
                                 "GeoJSON, thumbnails (`ram-wsi score -h`)")
    return p


def _run(argv: list[str]) -> int:
    direct = _passthrough(argv)
    if direct is not None:
        return direct
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    return guarded(_run, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
