"""The checks every config section validates with: each returns the value or raises a
:class:`~ram_wsi.errors.ConfigError` naming the key and the file, as zarr-python's ``parse_*``
functions do, so that a section validates in a few lines."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

__all__ = ["at_least", "in_range", "one_of", "positive"]


def one_of(value: Any, choices: tuple, key: str, src: str | None) -> Any:
    """``value`` if it is one of ``choices`` (messages list them as ``a, b or c``)."""
    if value not in choices:
        names = ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}"
        raise ConfigError(f"must be {names}, got {value!r}", key=key, source=src)
    return value


def at_least(value: float, lo: float, key: str, src: str | None) -> float:
    """``value`` if ``value >= lo``."""
    if not value >= lo:
        raise ConfigError(f"must be >= {lo:g}, got {value}", key=key, source=src)
    return value


def positive(value: float, key: str, src: str | None) -> float:
    """``value`` if it is a finite number > 0."""
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"must be a positive number, got {value}", key=key, source=src)
    return value


def in_range(value: float, lo: float, hi: float, key: str, src: str | None, *,
             closed_low: bool = True) -> float:
    """``value`` if it lies in ``[lo, hi)`` (or ``(lo, hi)`` with ``closed_low=False``)."""
    ok = (lo <= value < hi) if closed_low else (lo < value < hi)
    if not ok:
        left = "[" if closed_low else "("
        raise ConfigError(f"must be in {left}{lo:g}, {hi:g}), got {value}", key=key, source=src)
    return value
