"""Atomic writes: nothing this package writes is ever seen half-written (and link_or_copy, for
folders of many inputs standing for a few files).

Write to a temporary sibling, flush and fsync, then ``os.replace`` (atomic on POSIX within a
filesystem). A crash leaves either the old file or the new one, plus at worst a ``.tmp-*`` file
that no reader ever opens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    For directories (zarr stores) an existing destination is removed only after the new
    one is complete, so a failure leaves the old store intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if path.exists():
                old = path.with_name(f".old-{path.name}-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``open`` that writes to a temporary file and renames it into place on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, default=str)
        fh.write("\n")


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one JSON line and flush it. Appends of one short line are not torn in practice,
    and a reader skips a last line that does not parse."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(obj, default=float) + "\n")
        fh.flush()


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """``dst`` as a hard link to the file ``src`` (no disk space), a copy where links fail
    (another file system, no permission): for folders of many inputs standing for a few."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
