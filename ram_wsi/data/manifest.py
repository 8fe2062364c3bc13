"""Slide manifests: a CSV with a header ``path,label``, paths relative to the manifest's folder.

The one place manifests are parsed (:func:`read_manifest`: slide episodes, the model's shape,
benchmarks) and written (:func:`write_manifest`: ``pipelines/make_slides.py``, the scaling
benchmark).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from ..errors import DataError
from ..io_utils import atomic_open

__all__ = ["read_manifest", "write_manifest"]


def read_manifest(path: str | Path) -> tuple[list[str], list[int], list[str]]:
    """``(paths, label indices, class names)`` from a ``path,label`` CSV.

    Paths are resolved against the manifest's folder. Labels that are all integers are used as
    class indices; otherwise the sorted distinct labels are the classes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "slide manifest not found")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise DataError(path, "manifest needs a header with columns path,label and >= 1 row")
    paths = [str((path.parent / r["path"]).resolve()) if not Path(r["path"]).is_absolute()
             else r["path"] for r in rows]
    raw = [r["label"].strip() for r in rows]
    if all(v.lstrip("-").isdigit() for v in raw):
        labels = [int(v) for v in raw]
        names = [str(i) for i in range(max(labels) + 1)]
    else:
        names = sorted(set(raw))
        labels = [names.index(v) for v in raw]
    return paths, labels, names


def write_manifest(path: str | Path, rows: Iterable[tuple[str, int | str]]) -> Path:
    """Write ``(path, label)`` rows (paths relative to the manifest) under a ``path,label``
    header, atomically; returns the manifest's path."""
    path = Path(path)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label"])
    w.writerows(rows)
    with atomic_open(path) as fh:
        fh.write(buf.getvalue())
    return path
