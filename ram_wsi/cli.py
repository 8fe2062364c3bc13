"""``ram-wsi`` command line: train, eval, bench, convert, score.

``train`` and ``eval`` take ``--config FILE`` and any number of ``--set section.key=value``
(``eval`` without ``--config``: the checkpoint's own config). User mistakes (a bad option,
config or checkpoint, a missing file) print one line, ``ram-wsi COMMAND: error: WHAT (WHERE)``,
and exit with status 2; every option is checked before torch is imported (``--debug``: the
traceback instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_args import (
    CommandParser,
    add_config_args,
    checkpoint_file,
    config_from_args,
    config_overrides,
    guarded,
    input_file,
    integer,
    output_dir,
    output_file,
)

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


def _eval_config(args: argparse.Namespace, ckpt: dict):
    """``--config`` (and its overrides) when given, else the config the checkpoint carries,
    with ``--set``/``--data-dir``/``--out-dir`` on it (outputs beside the checkpoint)."""
    from .config import ExperimentConfig, apply_overrides
    from .errors import CheckpointError

    if args.config:
        return config_from_args(args)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(args.checkpoint, "carries no config: give the run's --config")
    overrides = config_overrides(args)
    if not args.out_dir:
        overrides.append(f"train.out_dir={Path(args.checkpoint).resolve().parent}")
    raw = apply_overrides(dict(ckpt["config"]), overrides, args.checkpoint)
    return ExperimentConfig.from_dict(raw, args.checkpoint)


def cmd_eval(args: argparse.Namespace) -> int:
    from .slide.remote import use_config
    from .train.checkpoint import load_checkpoint
    from .train.trainer import Trainer

    ckpt = load_checkpoint(args.checkpoint, "cpu")
    cfg = _eval_config(args, ckpt)
    use_config(cfg)
    trainer = Trainer(cfg)
    try:
        trainer.model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as exc:
        from .errors import CheckpointError

        raise CheckpointError(args.checkpoint, "its weights do not fit the config's model "
                                               f"({type(exc).__name__}: {exc}); give the "
                                               "run's --config, or none") from None
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
        from .commands.convert import parse_convert

        args = parse_convert(argv[1:])  # checked before the slide libraries load
        from .slide.convert import run_convert

        return run_convert(args)
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    if argv[:1] == ["score"]:
        from .commands.score import parse_score

        args = parse_score(argv[1:])  # checked before torch and Ray load
        from .score.runner import run_score

        return run_score(args)
    return None


def add_train_args(t: argparse.ArgumentParser, *, distributed_flag: bool = True) -> None:
    """``ram-wsi train``'s options (``pipelines/train.py`` has them too, with ``--single``
    in place of ``--distributed``)."""
    add_config_args(t)
    t.add_argument("--no-resume", action="store_true",
                   help="start over, ignoring an existing last.pt (default: resume from it)")
    if distributed_flag:
        t.add_argument("--distributed", action="store_true",
                       help="Ray rollout actors + learner (joins RAY_ADDRESS or starts Ray; "
                            "default: one process)")
    t.set_defaults(func=cmd_train)


def check_train(args: argparse.Namespace) -> None:
    """What ``train`` can check before torch loads: the config file, the output folder."""
    if args.config:
        input_file(args.config, "--config")
    if args.out_dir:
        output_dir(args.out_dir, "--out-dir")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="ram-wsi", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train from a config (one process, or --distributed)")
    add_train_args(t)

    e = sub.add_parser("eval", help="evaluate a checkpoint: stochastic, mean and M-avg errors")
    add_config_args(e, config_help="experiment YAML (default: the config the checkpoint "
                                   "carries, outputs beside it)")
    e.add_argument("checkpoint", help="a checkpoint written by ram-wsi train (best.pt, last.pt)")
    e.add_argument("--split", choices=["val", "test"], default="test", help="what to evaluate")
    e.add_argument("--samples", "-M", type=integer(1, 1000), default=None,
                   help="M for the M-averaged error (default: the config's train.eval_samples)")
    e.add_argument("--figure", help="write the glimpse figure (PNG) here (default: none)")
    e.set_defaults(func=cmd_eval)
    p.subcommands = {"train": t, "eval": e}  # type: ignore[attr-defined]

    sub.add_parser("bench", help="benchmarks: mnist (paper table), throughput, glimpse, "
                                 "scaling (`ram-wsi bench -h`)")
    sub.add_parser("convert", help="slide -> OME-Zarr pyramid (`ram-wsi convert -h`)")
    sub.add_parser("score", help="score a folder of slides with a checkpoint: CSV, QuPath "
                                 "GeoJSON, thumbnails (`ram-wsi score -h`)")
    return p


def check_eval(args: argparse.Namespace) -> None:
    """What ``eval`` can check before torch loads: every file it reads or writes."""
    checkpoint_file(args.checkpoint, "checkpoint")
    check_train(args)
    if args.figure:
        output_file(args.figure, "--figure")


def _run(argv: list[str]) -> int:
    direct = _passthrough(argv)
    if direct is not None:
        return direct
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand's parser: "ram-wsi train: error: ..."
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    (check_eval if args.func is cmd_eval else check_train)(args)
    return int(args.func(args) or 0)


def _prog(argv: list[str]) -> str:
    """``ram-wsi COMMAND`` (``ram-wsi bench NAME``) for the error line."""
    words = [a for a in argv[:2] if not a.startswith("-")]
    if words[:1] == ["bench"]:
        return " ".join(["ram-wsi", *words[:2]])
    return " ".join(["ram-wsi", *words[:1]])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(_run, argv, prog=_prog(argv))


if __name__ == "__main__":
    sys.exit(main())
