"""What every command line of the package shares: the parser (one-line errors, every default
in the help, ``--debug``), typed option values with their ranges, the checks of files and
output folders that run before any work, the config arguments (``--config``, ``--set``,
``--data-dir``, ``--out-dir``) and the guard that turns a user's mistake into one line and
exit status 2.

Why here, apart from ``ram_wsi.cli``: ``ram-wsi`` itself, the benchmarks (``ram-wsi bench
NAME``), ``score``, ``convert`` and the scripts of ``pipelines/`` all parse through it, so a
bad value reads the same everywhere -- ``ram-wsi score: error: must be an integer >= 1, got
-2 (--samples/-M)`` -- and none of them needs a command-line module of another. It imports
nothing heavy (no torch): a mistaken option is refused in a fraction of a second.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import RamWsiError

if TYPE_CHECKING:
    from .config import ExperimentConfig

__all__ = [
    "CommandParser",
    "UsageError",
    "add_config_args",
    "checkpoint_file",
    "config_from_args",
    "config_overrides",
    "guarded",
    "input_dir",
    "input_file",
    "integer",
    "key_value",
    "number",
    "one_line",
    "output_dir",
    "output_file",
    "refuse_unless",
    "storage_option",
]


class UsageError(RamWsiError, ValueError):
    """A mistake on a command line: what is wrong, and the option or file it concerns."""

    def __init__(self, what: str, where: str):
        super().__init__(f"{what} ({where})")
        self.what, self.where = what, where


def one_line(text: object) -> str:
    """``text`` on one line (a YAML or library message may span several)."""
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------- the parser
class _DefaultsInHelp(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the text already says it (a ``None``
    default is said in words by the option itself: what happens when it is not given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default
        if (action.option_strings and action.nargs != 0 and "default" not in text.lower()
                and shown is not None and shown is not argparse.SUPPRESS):
            if isinstance(shown, (list, tuple)):
                shown = " ".join(map(str, shown))
            text = f"{text} (default: {str(shown).replace('%', '%%')})".lstrip()
        return text


_ARG_MESSAGE = re.compile(r"argument (\S+): (.*)", re.DOTALL)


class CommandParser(argparse.ArgumentParser):
    """``argparse`` as every command of the package uses it: a mistake is one line on stderr,
    ``PROG: error: WHAT (OPTION)``, and exit status 2 (no usage block: the line says what to
    fix, ``-h`` says the rest); the help states every option's default; ``--debug`` (the
    :func:`guarded` runner reads it) shows a traceback instead of the one line."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", _DefaultsInHelp)
        super().__init__(*args, **kwargs)
        if self.add_help:
            self.add_argument("--debug", action="store_true",
                              help="on an error, the traceback instead of one line")

    def error(self, message: str) -> NoReturn:
        m = _ARG_MESSAGE.fullmatch(message.strip())
        text = f"{m[2]} ({m[1]})" if m else message
        self.exit(2, f"{self.prog}: error: {one_line(text)}\n")


# ----------------------------------------------------------------------------- typed values
def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _span(lo: float | None, hi: float | None, above: float | None = None) -> str:
    if above is not None:
        return f" > {_num(above)}" + (f" and <= {_num(hi)}" if hi is not None else "")
    if lo is not None and hi is not None:
        return f" in {_num(lo)}..{_num(hi)}"
    if lo is not None:
        return f" >= {_num(lo)}"
    return f" <= {_num(hi)}" if hi is not None else ""


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[lo, hi]`` (either bound may be open)."""

    def parse(text: str) -> int:
        what = f"must be an integer{_span(lo, hi)}"
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{what}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, hi: float | None = None, *,
           above: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number ``>= lo`` (or ``> above``) and ``<= hi``."""

    def parse(text: str) -> float:
        what = f"must be a number{_span(lo, hi, above)}"
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if (not math.isfinite(value) or (lo is not None and value < lo)
                or (above is not None and value <= above) or (hi is not None and value > hi)):
            raise argparse.ArgumentTypeError(f"{what}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def key_value(text: str) -> str:
    """An argparse ``type`` for ``KEY=VALUE`` items (``--set``, ``--storage-option``)."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    return text


def storage_option(text: str) -> str:
    """An argparse ``type`` for ``--storage-option KEY=VALUE``: the value must read as YAML
    (``anon=true``, ``config_kwargs.connect_timeout=5``)."""
    import yaml

    key_value(text)
    try:
        yaml.safe_load(text.partition("=")[2])
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise argparse.ArgumentTypeError(f"the value of {text!r} is {problem}") from None
    return text


# ----------------------------------------------------------------------------- files
def input_file(path: str | Path, where: str) -> Path:
    """``path`` if it is an existing file (a folder or nothing there is the user's mistake)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p} is a folder, not a file", where)
    if not p.is_file():
        raise UsageError(f"{p}: no such file", where)
    return p


def checkpoint_file(path: str | Path, where: str) -> Path:
    """``path`` if it is a file ``torch.save`` could have written (a zip archive holding a
    ``data.pkl``, or a pickle): anything else is refused here, in one line, rather than by
    PyTorch's unpickler with its advice to load untrusted files unsafely."""
    import zipfile

    p = input_file(path, where)
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                if any(n.rsplit("/", 1)[-1] == "data.pkl" for n in z.namelist()):
                    return p
        except (zipfile.BadZipFile, OSError):
            pass
    elif head[:1] == b"\x80":  # a pickle (torch's legacy format)
        return p
    raise UsageError(f"{p} is not a checkpoint (not a file written by ram-wsi train)", where)


def input_dir(path: str | Path, where: str) -> Path:
    """``path`` if it is an existing folder."""
    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"{p}: {'not a folder' if p.exists() else 'no such folder'}", where)
    return p


def _no_file_above(p: Path, where: str) -> None:
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise UsageError(f"{q} is a file, not a folder", where)
            return


def output_dir(path: str | Path, where: str) -> Path:
    """``path`` if an output folder can be made there: absent (it will be), or a folder --
    never an existing file, nor a path under one. Checked before any work, so that a mistaken
    ``--out`` costs nothing and writes nothing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{p} is a file, not a folder", where)
    _no_file_above(p, where)
    return p


def output_file(path: str | Path, where: str) -> Path:
    """``path`` if a file can be written there: not a folder, not under a file."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{p} is a folder, not a file", where)
    _no_file_above(p, where)
    return p


def refuse_unless(args: argparse.Namespace, applies: bool, options: Sequence[str],
                  why: str) -> None:
    """Refuse each of ``options`` (dest names) given on the command line (not None) when they
    do not apply: an option that would be silently ignored is a mistake to report."""
    if applies:
        return
    for dest in options:
        if getattr(args, dest, None) is not None:
            raise UsageError(f"applies {why} only", "--" + dest.replace("_", "-"))


def ordered_pair(pair: Sequence[float] | None, where: str) -> tuple[float, float] | None:
    """A ``MIN MAX`` option's two values (``nargs=2``) if ``MIN <= MAX``; None stays None."""
    if pair is None:
        return None
    lo, hi = pair
    if lo > hi:
        raise UsageError(f"MIN must be <= MAX, got {lo:g} {hi:g}", where)
    return lo, hi


# ----------------------------------------------------------------------------- config
def add_config_args(parser: argparse.ArgumentParser, *, config_help: str | None = None
                    ) -> None:
    """``--config/-c FILE``, ``--set/-s KEY=VALUE`` (repeatable), ``--data-dir``,
    ``--out-dir`` on ``parser``."""
    parser.add_argument("--config", "-c", help=config_help or
                        "experiment YAML (configs/...; default: the built-in defaults)")
    parser.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", type=key_value,
                        help="override a config value, e.g. train.lr=0.0005 (repeatable; "
                             "default: none)")
    parser.add_argument("--data-dir", help="MNIST idx directory (sets data.mnist.dir; default: "
                                           "the config's)")
    parser.add_argument("--out-dir", help="output directory (sets train.out_dir; default: the "
                                          "config's)")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` items, then ``--data-dir`` and ``--out-dir`` as overrides."""
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "data_dir", None):
        overrides.append(f"data.mnist.dir={args.data_dir}")
    if getattr(args, "out_dir", None):
        output_dir(args.out_dir, "--out-dir")
        overrides.append(f"train.out_dir={args.out_dir}")
    return overrides


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config that :func:`add_config_args`' arguments name: the YAML (or the defaults),
    then every ``--set``, then ``--data-dir`` and ``--out-dir``; its output folder checked.

    Raises:
        ConfigError: naming the file or the key, for any bad value.
        UsageError: the output folder is a file.
    """
    if getattr(args, "config", None):
        input_file(args.config, "--config")
    overrides = config_overrides(args)
    from .config import load_config

    cfg = load_config(args.config, overrides)
    output_dir(cfg.out_dir, "train.out_dir")
    return cfg


# ----------------------------------------------------------------------------- the guard
def guarded(fn: Callable[[list[str]], int | None], argv: Sequence[str], *,
            prog: str = "ram-wsi") -> int:
    """``fn(argv)`` as a command's exit status. A user's mistake (any
    :class:`~ram_wsi.errors.RamWsiError`: a bad option, config, checkpoint or file; an
    ``OSError`` naming a file) prints ``PROG: error: WHAT`` on one line and gives 2; with
    ``--debug`` in ``argv`` it is raised instead (the traceback). Other exceptions are bugs and
    raise as they are."""
    argv = list(argv)
    try:
        return int(fn(argv) or 0)
    except RamWsiError as exc:
        if "--debug" in argv:
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if "--debug" in argv or exc.filename is None:
            raise
        print(f"{prog}: error: {one_line(exc.strerror or exc)} ({exc.filename})",
              file=sys.stderr)
        return 2
