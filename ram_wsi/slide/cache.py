"""Process-wide, bounded caches shared by every slide source in a process.

Two things are bounded here, whatever the number of slides a process touches:

* **Decoded blocks** (:class:`BlockCache`): a bytes-bounded, thread-safe LRU of decoded tiles /
  chunks (``(C, h, w)`` uint8 arrays), keyed by ``(source key, level, block row, block col)``.
  Zarr and in-memory sources serve glimpses from it, so a warm glimpse costs a few array copies
  and never a decode. One instance per process (:func:`block_cache`).
* **Open handles** (:class:`HandlePool`): an LRU of open slide handles (OpenSlide objects, zarr
  groups). 1,000 slides do not mean 1,000 open files; an evicted handle is closed once no reader
  is using it.

A backend whose library keeps its own cache (OpenSlide's tile cache) owns it in its own module
and registers it here with :func:`register_backend_cache`, so that :func:`set_cache_bytes`,
:func:`cache_settings` and :func:`clear_caches` reach it by name without this module knowing
any backend.

Sizes: ``RAM_WSI_SLIDE_CACHE_BYTES`` (decoded blocks, default 256 MiB),
``RAM_WSI_MAX_OPEN_SLIDES`` (open handles, default 192: OpenSlide keeps one per level read, so
~64 slides under a 3-scale retina), a backend's own variable (see its module), or
:func:`set_cache_bytes` / :func:`set_max_open` at run time.

Fork safety: everything here is reset in a forked child (``os.register_at_fork``), so a child
never reads through a handle its parent opened; handles are opened lazily where they are used.
A forked child also sets ``torch.set_num_threads(1)`` (torch's OpenMP pool hangs after a fork;
``RAM_WSI_KEEP_THREADS_AFTER_FORK=1`` opts out).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "BlockCache",
    "HandlePool",
    "block_cache",
    "cache_settings",
    "clear_caches",
    "drop_process_wide",
    "env_int",
    "handle_pool",
    "process_wide",
    "register_backend_cache",
    "set_cache_bytes",
    "set_max_open",
]

_MIB = 1 << 20
_log = logging.getLogger(__name__)


def env_int(name: str, default: int) -> int:
    try:
        return int(float(os.environ.get(name, default)))
    except ValueError:
        return default


class BlockCache:
    """Bytes-bounded, thread-safe LRU of immutable numpy arrays.

    Cached arrays are made read-only; readers copy out of them, so evicting an entry while another
    thread still holds a reference to the array is safe (the array just lives until released).
    """

    def __init__(self, capacity_bytes: int):
        self.capacity = int(capacity_bytes)
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            arr = self._data.get(key)
            if arr is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return arr

    def put(self, key: Hashable, arr: np.ndarray) -> np.ndarray:
        arr.flags.writeable = False
        size = arr.nbytes
        if size > self.capacity:
            return arr  # never cache something larger than the whole cache
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._data[key] = arr
            self._bytes += size
            while self._bytes > self.capacity and self._data:
                _, ev = self._data.popitem(last=False)
                self._bytes -= ev.nbytes
        return arr

    def resize(self, capacity_bytes: int) -> None:
        with self._lock:
            self.capacity = int(capacity_bytes)
            while self._bytes > self.capacity and self._data:
                _, ev = self._data.popitem(last=False)
                self._bytes -= ev.nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0
            self.hits = self.misses = 0


class _Entry:
    __slots__ = ("close", "evicted", "handle", "users")

    def __init__(self, handle: Any, close: Callable[[Any], None] | None):
        self.handle = handle
        self.users = 0
        self.evicted = False
        self.close = close


class HandlePool:
    """LRU of open handles, keyed by anything hashable (a backend name and a path).

    ``with pool.use(key, opener, close) as h:`` opens on first use, counts the users of a handle,
    and closes an evicted handle only when its last user is done. ``discard(key)`` drops a handle
    that went bad (OpenSlide errors are sticky).
    """

    def __init__(self, max_open: int):
        self.max_open = max(1, int(max_open))
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[Hashable, threading.Lock] = {}
        self.opened = 0

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def use(self, key: Hashable, opener: Callable[[], Any],
            close: Callable[[Any], None] | None = None) -> Iterator[Any]:
        entry = self._acquire(key, opener, close)
        try:
            yield entry.handle
        finally:
            self._release(entry)

    def _acquire(self, key: Hashable, opener: Callable[[], Any],
                 close: Callable[[Any], None] | None) -> _Entry:
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    entry.users += 1
                    return entry
                gate = self._opening.setdefault(key, threading.Lock())
            # Open outside the pool lock (opening can be slow) but only once per key.
            with gate:
                with self._lock:
                    if key in self._entries:
                        continue
                handle = opener()  # may raise: nothing is registered then
                entry = _Entry(handle, close)
                with self._lock:
                    self._opening.pop(key, None)
                    self._entries[key] = entry
                    self.opened += 1
                    entry.users += 1
                    to_close = self._evict_locked()
                for ev in to_close:
                    _close(ev)
                return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            done = entry.evicted and entry.users == 0
        if done:
            _close(entry)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return
            entry.evicted = True
            done = entry.users == 0
        if done:
            _close(entry)

    def _evict_locked(self) -> list[_Entry]:
        """Drop the least recently used entries beyond ``max_open`` (caller holds the lock);
        returns those no reader is using, to be closed outside the lock."""
        idle = []
        while len(self._entries) > self.max_open:
            _, ev = self._entries.popitem(last=False)
            ev.evicted = True
            if ev.users == 0:
                idle.append(ev)
        return idle

    def set_max_open(self, n: int) -> None:
        with self._lock:
            self.max_open = max(1, int(n))
            to_close = self._evict_locked()
        for ev in to_close:
            _close(ev)

    def clear(self) -> None:
        self.set_max_open(self.max_open)
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for ev in entries:
            ev.evicted = True
            if ev.users == 0:
                _close(ev)


def _close(entry: _Entry) -> None:
    if entry.close is not None:
        try:
            entry.close(entry.handle)
        except Exception as e:  # noqa: BLE001 -- closing must never take a reader down
            _log.debug("closing a slide handle failed: %s", e)
    entry.handle = None


# ----------------------------------------------------------------------------- process state
_state_lock = threading.Lock()
# The process-wide objects by name ("block", "handles", a backend's), created on first use.
_process: dict[str, Any] = {}
_settings = {
    "block_bytes": env_int("RAM_WSI_SLIDE_CACHE_BYTES", 256 * _MIB),
    "max_open": env_int("RAM_WSI_MAX_OPEN_SLIDES", 192),
}
# Backends' own caches by name: (its configured bytes, resize it to n bytes).
_backend_caches: dict[str, tuple[Callable[[], int], Callable[[int], None]]] = {}


def register_backend_cache(name: str, size: Callable[[], int],
                           resize: Callable[[int], None]) -> None:
    """Make a backend's own cache reachable as ``<name>_bytes`` in :func:`set_cache_bytes` and
    :func:`cache_settings`; :func:`clear_caches` drops the process's instance ``name``."""
    _backend_caches[name] = (size, resize)


def cache_settings() -> dict[str, int]:
    """The configured sizes: ``block_bytes``, ``max_open`` and ``<backend>_bytes`` for every
    registered backend cache (``openslide_bytes``)."""
    return {**_settings, **{f"{n}_bytes": size() for n, (size, _) in _backend_caches.items()}}


def drop_process_wide(name: str) -> None:
    """Forget this process's ``name`` object (made again on its next use)."""
    with _state_lock:
        _process.pop(name, None)


def process_wide(name: str, make: Callable[[], Any]) -> Any:
    """This process's one ``name`` object, made on first use (double-checked under a lock)."""
    obj = _process.get(name)
    if obj is None:
        with _state_lock:
            obj = _process.get(name)
            if obj is None:
                obj = _process[name] = make()
    return obj


def block_cache() -> BlockCache:
    """The process's decoded-block cache (created on first use)."""
    return process_wide("block", lambda: BlockCache(_settings["block_bytes"]))


def handle_pool() -> HandlePool:
    """The process's pool of open slide handles."""
    return process_wide("handles", lambda: HandlePool(_settings["max_open"]))


def set_cache_bytes(block_bytes: int | None = None, **backend_bytes: int | None) -> None:
    """Resize the process's caches: the decoded-block cache shrinks in place; a backend cache
    named by ``<name>_bytes`` (``openslide_bytes=``) resizes as its backend defines (OpenSlide:
    open handles are closed and reopen lazily with a new cache)."""
    if block_bytes is not None:
        _settings["block_bytes"] = int(block_bytes)
        if "block" in _process:
            _process["block"].resize(int(block_bytes))
    for key, nbytes in backend_bytes.items():
        name = key.removesuffix("_bytes")
        if name not in _backend_caches or not key.endswith("_bytes"):
            raise TypeError(f"set_cache_bytes() got an unexpected keyword argument {key!r}; "
                            f"backend caches: {sorted(_backend_caches)}")
        if nbytes is not None:
            _backend_caches[name][1](int(nbytes))


def set_max_open(n: int) -> None:
    """Bound the number of slide handles open at once in this process."""
    _settings["max_open"] = int(n)
    if "handles" in _process:
        _process["handles"].set_max_open(n)


def clear_caches() -> None:
    """Drop every cached block, every backend's own cache (OpenSlide's tile cache), and every
    idle handle (benchmarks: a cold start; the operating system's page cache is not touched)."""
    if "block" in _process:
        _process["block"].clear()
    for name in _backend_caches:
        drop_process_wide(name)
    if "handles" in _process:
        _process["handles"].clear()


def _after_fork_in_child() -> None:
    # The parent's handles (and their locks) are not ours: forget them without closing.
    global _state_lock
    _state_lock = threading.Lock()
    _process.clear()
    # torch's OpenMP pool does not survive a fork: the first multi-threaded op of the child
    # (resample's matmul) would hang. A forked child glimpses single-threaded, as torch's own
    # DataLoader workers do. (Spawned processes -- Ray, spawn pools -- are not affected.)
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and os.environ.get("RAM_WSI_KEEP_THREADS_AFTER_FORK") != "1":
        try:
            torch.set_num_threads(1)
        except Exception as e:  # noqa: BLE001 -- never fail a fork over this
            _log.debug("torch.set_num_threads(1) after fork failed: %s", e)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
