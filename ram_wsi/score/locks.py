"""Per-slide locks, so that two scoring runs (or hosts) on one output folder never score the
same slide twice -- TRIDENT's recipe: a ``<slide>.lock`` file holding pid, host and time,
created atomically (``O_CREAT | O_EXCL``), removed when the slide is done; a lock whose process
is gone (same host) or that is older than ``stale_after`` seconds (any host: a host that died)
is stale and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["SlideLock", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class SlideLock:
    """``with SlideLock(folder, slide_id) as got:`` -- ``got`` is False when another live run
    holds the slide (then skip it). The lock file is removed on exit."""

    def __init__(self, folder: str | Path, slide_id: str, *, stale_after: float = 6 * 3600):
        self.path = Path(folder) / f"{slide_id}.lock"
        self.stale_after = float(stale_after)
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        """The lock's ``{pid, host, time}``, or None when there is no (readable) lock."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def is_stale(self, info: dict[str, Any] | None) -> bool:
        """A lock of a dead process on this host, an unreadable one, or one too old."""
        if info is None:
            return True
        if time.time() - float(info.get("time", 0)) > self.stale_after:
            return True
        return info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid", -1)))

    def acquire(self) -> bool:
        """Take the lock (clearing a stale one); False when a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "time": time.time()}).encode()
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self.is_stale(self.holder()):
                    return False
                try:  # stale: remove it and try once more (a racing run may win: fine)
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            self.held = True
            return True
        return False

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
