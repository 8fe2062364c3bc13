"""One remote zarr store and the requests to it: filesystem clients, batched byte requests,
and the errors a failed request becomes.

What latency costs is paid once per batch, not once per chunk: :meth:`RemoteStore.get_many`
sends every request of a batch at once (one round trip for the chunks of a glimpse's scales,
one more for the shard indexes not yet cached).

Process state: a small bounded LRU of filesystem clients (connection pools; reset in a forked
child, closed on eviction). Every failure is a :class:`SlideError` naming the URI and the cause
(:func:`storage_error`); a store that cannot be reached says ``storage unreachable``
(:data:`UNREACHABLE`), which a scoring run retries on its next run (:func:`is_transient`).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import os
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import SlideError
from .options import MAX_IN_FLIGHT, REMOTE_SCHEMES, WEB_SCHEMES, join, options_for, scheme_of

__all__ = [
    "UNREACHABLE",
    "RemoteStore",
    "Request",
    "entry_stamp",
    "filesystem",
    "is_transient",
    "run",
    "storage_error",
]

#: What the error of a store that cannot be reached says (a scoring run retries such rows).
UNREACHABLE = "storage unreachable"

# ----------------------------------------------------------------------------- filesystems
_FS_MAX = 8
_fs_lock = threading.Lock()
_fs_cache: OrderedDict[tuple, Any] = OrderedDict()


def _env_fingerprint() -> str:
    """A digest of the environment that decides credentials and endpoints: a client made
    before they changed is not reused after (the digest stays in memory only)."""
    keys = sorted(k for k in os.environ if k.startswith(("AWS_", "GOOGLE_", "AZURE_", "GCS")))
    h = hashlib.sha256()
    for k in keys:
        h.update(f"{k}={os.environ[k]}\0".encode())
    return h.hexdigest()


def filesystem(url: str, options: Mapping[str, Any]) -> Any:
    """The async fsspec filesystem for ``url``'s scheme with ``options`` (cached per process,
    at most :data:`_FS_MAX`; fsspec's own instance cache is bypassed so that a change of the
    environment's credentials takes effect)."""
    import fsspec

    scheme = scheme_of(url)
    key = (scheme, json.dumps(options, sort_keys=True, default=str), _env_fingerprint())
    with _fs_lock:
        fs = _fs_cache.get(key)
        if fs is not None:
            _fs_cache.move_to_end(key)
            return fs
    try:
        fs = fsspec.filesystem(scheme, asynchronous=True, skip_instance_cache=True,
                               **dict(options))
    except ImportError as exc:
        raise SlideError(url, f"no fsspec backend for {scheme}:// is installed (pip install "
                              f"{REMOTE_SCHEMES.get(scheme, scheme)}): {exc}") from None
    except (TypeError, ValueError) as exc:
        raise SlideError(url, f"bad storage options for {scheme}://: {exc}") from None
    with _fs_lock:
        _fs_cache[key] = fs
        evicted = []
        while len(_fs_cache) > _FS_MAX:
            evicted.append(_fs_cache.popitem(last=False)[1])
    for old in evicted:
        _close_fs(old)
    return fs


def _close_fs(fs: Any) -> None:
    """Close a filesystem's client session on zarr's loop (where it was opened)."""
    from zarr.core.sync import sync

    async def close() -> None:
        s3 = getattr(fs, "_s3", None)
        if s3 is not None:
            await s3.__aexit__(None, None, None)
        session = getattr(fs, "_session", None)
        if session is not None and not getattr(session, "closed", True):
            await session.close()

    try:
        sync(close(), timeout=5)
    except Exception:  # noqa: BLE001, S110 -- closing must never take a reader down
        pass


def _close_all() -> None:
    with _fs_lock:
        items = list(_fs_cache.values())
        _fs_cache.clear()
    for fs in items:
        _close_fs(fs)


def _forget_after_fork() -> None:
    # The parent's sessions belong to its event loop: a child makes its own.
    global _fs_lock
    _fs_lock = threading.Lock()
    _fs_cache.clear()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def run(coro: Any) -> Any:
    """Run ``coro`` on zarr's event loop (where the stores' sessions live) and return its
    result."""
    from zarr.core.sync import sync

    return sync(coro)


# ----------------------------------------------------------------------------- errors
def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def storage_error(url: str, exc: BaseException, what: str | None = None) -> SlideError:
    """The :class:`SlideError` for a failed request to the store ``url`` (``what``: the
    object or range it asked for): no credentials, access denied, not found, unreachable
    (:data:`UNREACHABLE`), or the library's own message."""
    if isinstance(exc, SlideError):
        return exc
    names = _names(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    where = f" ({what})" if what else ""
    status = getattr(exc, "status", None)
    if "NoCredentialsError" in names or "PartialCredentialsError" in names:
        cause = ("no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                 "AWS_PROFILE), or the storage option anon=true for a public bucket")
    elif isinstance(exc, PermissionError) or status in (401, 403):
        cause = f"access denied{where}: {text or type(exc).__name__}"
    elif isinstance(exc, FileNotFoundError) or status == 404:
        cause = f"not found{where}"
    elif _unreachable(exc, names) or (isinstance(status, int) and status >= 500):
        cause = f"{UNREACHABLE}{where}: {type(exc).__name__}: {text}"
    else:
        cause = f"cannot read{where}: {type(exc).__name__}: {text}"
    return SlideError(url, cause)


def _unreachable(exc: BaseException, names: set[str]) -> bool:
    return bool(isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError))
                or names & {"EndpointConnectionError", "ConnectTimeoutError",
                            "ReadTimeoutError", "ClientConnectionError", "ServerDisconnectedError",
                            "ClientOSError", "ClientConnectorError", "ConnectionClosedError",
                            "ServerTimeoutError", "ClientPayloadError"})


def is_transient(error: str | None) -> bool:
    """Whether a row's error says that its store could not be reached (worth another try)."""
    return bool(error) and UNREACHABLE in str(error)


# ----------------------------------------------------------------------------- the store
Request = tuple[str, "int | None", "int | None"]
"""``(key, start, end)``: the whole object (``start`` None), its last ``-start`` bytes
(``start < 0``, ``end`` None) or bytes ``[start, end)``."""


class RemoteStore:
    """One remote zarr store: zarr's :class:`~zarr.storage.FsspecStore` over ``url``, read
    only, and batched byte requests to it.

    Raises (on construction):
        SlideError: the scheme's backend is missing or the options are wrong.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None):
        from zarr.storage import FsspecStore

        self.url = url.rstrip("/")
        self.scheme = scheme_of(url)
        self.fs = filesystem(url, options_for(url, options))
        self.path = self.fs._strip_protocol(self.url) if self.scheme not in WEB_SCHEMES else self.url
        self.store = FsspecStore(self.fs, path=self.path, read_only=True)

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    def key_url(self, key: str) -> str:
        """The URI of object ``key`` (for error messages)."""
        return join(self.url, key)

    async def _get(self, req: Request, sem: asyncio.Semaphore) -> bytes | None:
        from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype

        key, start, end = req
        if start is None:
            br: Any = OffsetByteRequest(0)  # one GET, never a HEAD first
        elif start < 0:
            br = SuffixByteRequest(-start)
        else:
            br = RangeByteRequest(start, end)
        async with sem:
            buf = await self.store.get(key, default_buffer_prototype(), br)
        if buf is None:
            return None
        data = buf.to_bytes()
        # A server that ignores Range (python's http.server) sends the whole object.
        if start is not None and start < 0 and len(data) > -start:
            data = data[start:]
        elif start is not None and start >= 0 and end is not None and len(data) > end - start:
            data = data[start:end]
        return data

    def get_many(self, requests: Sequence[Request]) -> list[bytes | None]:
        """The bytes of every request, fetched concurrently (:data:`MAX_IN_FLIGHT` at a
        time): one round trip for the batch. None for an object that does not exist.

        Raises:
            SlideError: the first request that failed, naming its object (storage_error).
        """
        if not requests:
            return []

        async def batch() -> list[Any]:
            sem = asyncio.Semaphore(MAX_IN_FLIGHT)
            return await asyncio.gather(*(self._get(r, sem) for r in requests),
                                        return_exceptions=True)

        try:
            out = run(batch())
        except Exception as exc:
            raise storage_error(self.url, exc) from exc
        for req, res in zip(requests, out):
            if isinstance(res, BaseException):
                raise storage_error(self.url, res, _describe(req)) from res
        return out

    def info(self, key: str) -> dict[str, Any] | None:
        """The object's listing entry (size, modification time, ETag), None when absent.
        Raises SlideError."""
        try:
            return run(self.fs._info(posixpath.join(self.path, key) if self.scheme not in WEB_SCHEMES
                                     else self.key_url(key)))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise storage_error(self.url, exc, key) from exc

    def root(self, key: str = "zarr.json") -> tuple[float, bytes | None]:
        """``(stamp, bytes)`` of object ``key`` in one round trip (a HEAD and a GET sent
        together): the stamp (:func:`entry_stamp`'s modification time, else a number from its
        ETag) keys the caches, the bytes are the store's metadata. ``(0.0, None)`` when
        absent. Raises SlideError."""
        async def both() -> list[Any]:
            p = posixpath.join(self.path, key) if self.scheme not in WEB_SCHEMES else self.key_url(key)
            return await asyncio.gather(self.fs._info(p), self._get((key, None, None),
                                                                    asyncio.Semaphore(2)),
                                        return_exceptions=True)

        try:
            info, data = run(both())
        except Exception as exc:
            raise storage_error(self.url, exc) from exc
        if isinstance(data, BaseException):
            raise storage_error(self.url, data, key) from data
        if data is None:
            return 0.0, None
        if isinstance(info, FileNotFoundError):
            return 0.0, data  # a server without HEAD for it: no stamp
        if isinstance(info, BaseException):
            raise storage_error(self.url, info, key) from info
        return _version_stamp(info), data

    def why_missing(self) -> str:
        """Why the store's ``zarr.json`` is absent: no such bucket, or no such key."""
        if self.scheme in WEB_SCHEMES:
            return f"not found: nothing at {self.key_url('zarr.json')} (HTTP 404)"
        bucket = self.path.split("/", 1)[0]
        try:
            run(self.fs._info(bucket))
        except FileNotFoundError:
            return f"no such bucket {bucket!r}"
        except Exception as exc:  # noqa: BLE001
            return storage_error(self.url, exc).cause
        return f"not found: no object {self.key_url('zarr.json')} (not a zarr store)"



def _describe(req: Request) -> str:
    key, start, end = req
    if start is None:
        return key
    return f"{key}, last {-start} bytes" if start < 0 else f"{key}, bytes {start}..{end}"


def entry_stamp(entry: Mapping[str, Any]) -> tuple[int, float]:
    """``(size, modification time)`` of a listing entry, as each backend spells them
    (``LastModified``, ``last_modified``, ``updated``, ``mtime``; 0.0 when none)."""
    size = entry.get("size")
    for k in ("LastModified", "last_modified", "updated", "mtime", "Last-Modified"):
        v = entry.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return int(size or 0), float(v.timestamp())
        if isinstance(v, (int, float)):
            return int(size or 0), float(v)
        try:
            from email.utils import parsedate_to_datetime

            return int(size or 0), float(parsedate_to_datetime(str(v)).timestamp())
        except (TypeError, ValueError):
            try:
                from datetime import datetime

                return int(size or 0), datetime.fromisoformat(
                    str(v).replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return int(size or 0), 0.0


def _version_stamp(info: Mapping[str, Any]) -> float:
    """A number that changes when the object is rewritten: its modification time, else one
    made from its ETag, else 0."""
    t = entry_stamp(info)[1]
    if t:
        return t
    tag = info.get("ETag") or info.get("etag")
    if tag:
        return float(int(hashlib.sha256(str(tag).encode()).hexdigest()[:12], 16))
    return 0.0
