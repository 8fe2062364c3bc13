"""What every command line of the package shares, apart from the ``ram-wsi`` entry point:
the config arguments (``--config``, ``--set``, ``--data-dir``, ``--out-dir``) and the config
they give, and the guard that turns a user's mistake into one line and exit status 2.

``ram-wsi train`` / ``eval`` and the benchmarks that train (``ram-wsi bench mnist``,
``throughput``, ``time-to-accuracy``) take the same arguments from here, so that the
benchmarks need no command-line module of their own and ``ram_wsi.cli`` can import them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from .config import ExperimentConfig, load_config
from .errors import RamWsiError

__all__ = ["add_config_args", "config_from_args", "guarded"]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config/-c FILE``, ``--set/-s KEY=VALUE`` (repeatable), ``--data-dir``,
    ``--out-dir`` on ``parser``."""
    parser.add_argument("--config", "-c", help="experiment YAML (configs/...)")
    parser.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. train.lr=0.0005 (repeatable)")
    parser.add_argument("--data-dir", help="MNIST idx directory (sets data.mnist.dir)")
    parser.add_argument("--out-dir", help="output directory (sets train.out_dir)")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config that :func:`add_config_args`' arguments name: the YAML (or the defaults),
    then every ``--set``, then ``--data-dir`` and ``--out-dir``.

    Raises:
        ConfigError: naming the file or the key, for any bad value.
    """
    overrides = list(args.set or [])
    if getattr(args, "data_dir", None):
        overrides.append(f"data.mnist.dir={args.data_dir}")
    if getattr(args, "out_dir", None):
        overrides.append(f"train.out_dir={args.out_dir}")
    return load_config(args.config, overrides)


def guarded(fn: Callable[..., int | None], *args: Any) -> int:
    """``fn(*args)`` as a command's exit status: user mistakes print one line and give 2."""
    try:
        return int(fn(*args) or 0)
    except RamWsiError as exc:
        print(f"ram-wsi: error: {exc}", file=sys.stderr)
        return 2
