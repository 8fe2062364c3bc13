"""Atomic writes: nothing this package writes is ever seen half-written (and link_or_copy, for
folders of many inputs standing for a few files).

Write to a temporary sibling, flush and fsync, then ``os.replace`` (atomic on POSIX within a
filesystem). A crash leaves either the old file or the new one, plus at worst a ``.tmp-*`` file
that no reader ever opens.

Modes: the temporary is created as a plain ``open()`` / ``mkdir`` creates files (``0o666`` /
``0o777`` less the process umask, default ACLs applied by the kernel), never with
``tempfile.mkstemp``'s private ``0o600`` / ``0o700``: the rename publishes the temporary's mode,
and results on shared storage must be readable by teammates and by Ray workers running as
another user.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def temp_sibling(path: str | Path, *, is_dir: bool = False) -> Path:
    """Create and return a new, empty ``.tmp-<name>-<random>`` file (or directory) beside
    ``path``, with the mode a plain ``open()`` (``mkdir``) would give it: ``0o666`` (``0o777``)
    less the umask. ``tempfile.mkstemp`` / ``mkdtemp`` would make it ``0o600`` / ``0o700``,
    and renaming it into place would publish a file no one else can read."""
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(6)}")
        try:
            if is_dir:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: no free temporary name beside it after 100 tries")


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux's
    ``/proc/self/status``): setting it to read it back, the portable way, leaves a moment in
    which another thread's new file gets the wrong mode."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(*, is_dir: bool = False) -> int:
    """The mode a plain ``open()`` (``0o666``) or ``mkdir`` (``0o777``) gives under the
    current umask."""
    return (0o777 if is_dir else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    For directories (zarr stores) an existing destination is removed only after the new
    one is complete, so a failure leaves the old store intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, is_dir=is_dir)
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
        # The content and times, not the source's mode: a copy of a read-only input is a new
        # file of ours, with the umask's mode (a hard link is the same file, mode and all).
        shutil.copyfile(src, dst)
        st = os.stat(src)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
