"""Typed errors. Every error a user can cause names the file (or key) and what is wrong.

Why a small hierarchy: a batch job over thousands of slides catches ``RamWsiError`` (or one of its
children) per item, records it, and goes on; programming errors stay ordinary exceptions and
still crash loudly.
"""

from __future__ import annotations

from pathlib import Path


class RamWsiError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RamWsiError, ValueError):
    """A configuration key is unknown, or a value is impossible. Names the key and the file."""

    def __init__(self, message: str, *, key: str | None = None, source: str | Path | None = None):
        where = f" in {source}" if source else ""
        what = f"config key '{key}'{where}: " if key else (f"config{where}: " if where else "")
        super().__init__(what + message)
        self.key = key
        self.source = str(source) if source else None


class DataError(RamWsiError, ValueError):
    """A data file is missing or malformed. Names the file and the cause."""

    def __init__(self, path: str | Path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


class SlideError(RamWsiError, IOError):
    """A slide cannot be opened or read. Names the file and the cause.

    One type for every backend (OpenSlide, OME-Zarr, TIFF), so a scoring job needs one
    ``except`` clause per slide.
    """

    def __init__(self, path: str | Path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause


class CheckpointError(RamWsiError, IOError):
    """A checkpoint is missing, truncated or does not match the model."""

    def __init__(self, path: str | Path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause
