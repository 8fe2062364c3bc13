"""Slides on object storage and web servers: ``s3://``, ``gs://``, ``az://`` and ``http(s)://``
OME-Zarr stores, read through zarr v3's own store layer (:class:`zarr.storage.FsspecStore`).

Why this module: a cohort of 10^4-10^6 slides lives in object storage and every Ray worker reads
from there while only URIs travel. The store provides *bytes* -- whole objects and byte ranges
of shards -- and :mod:`._zarr_decode` keeps decoding them as it decodes local files, so a remote
glimpse equals the local one to the bit. What latency costs is paid once per batch, not once per
chunk: :meth:`RemoteStore.get_many` sends every request of a batch at once (one round trip for
the chunks of a glimpse's scales, one more for the shard indexes not yet cached).

Credentials come from where the ecosystem keeps them, never from this package's configs or
command lines (both are written down: configs into checkpoints, command lines into
``run_metadata.json``): the standard environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for an
S3-compatible store; ``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_*``), the shared files
(``~/.aws``, ``~/.netrc`` for a web server with ``client_kwargs: {trust_env: true}``) and
instance roles. *Storage options* hold the rest (``endpoint_url``, ``anon: true`` for a public
bucket, ``profile``, ``client_kwargs``, ``config_kwargs``): set per process with
:func:`set_storage_options` (from ``data.slides.storage_options`` or ``--storage-option``) or
per source (``open_source(url, storage_options=...)``); :func:`check_storage_options` refuses a
credential among them with the reason.

Options are flat for the object stores (``s3``, ``gs``, ``az``) or per scheme under the
scheme's name (``{s3: {...}, https: {...}}``); a web server takes only its own section (an
``endpoint_url`` means nothing to it).

Process state: the storage options (a setting, like :mod:`.cache`'s sizes) and a small bounded
LRU of filesystem clients (connection pools; reset in a forked child, closed on eviction).
Every failure is a :class:`SlideError` naming the URI and the cause (:func:`storage_error`);
a store that cannot be reached says ``storage unreachable`` (:data:`UNREACHABLE`), which a
scoring run retries on its next run (:func:`is_transient`).
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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..errors import SlideError

__all__ = [
    "REMOTE_SCHEMES",
    "UNREACHABLE",
    "RemoteStore",
    "check_storage_options",
    "drop_metadata",
    "is_remote",
    "is_transient",
    "join",
    "options_for",
    "parse_storage_options",
    "scan_prefix",
    "set_storage_options",
    "stamps",
    "storage_error",
    "storage_options",
    "stored_bytes",
    "use_config",
    "writable_store",
]

#: The schemes read through fsspec, and the package each needs.
REMOTE_SCHEMES: dict[str, str] = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
    "abfs": "adlfs", "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp",
}
_SECTION = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}  # scheme -> options section
_WEB = frozenset({"http", "https"})

#: What the error of a store that cannot be reached says (a scoring run retries such rows).
UNREACHABLE = "storage unreachable"

# Keys whose values are credentials, in any backend's spelling (compared lower-case, at any
# depth of the options): refused, see the module docstring.
_CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "session_token", "password", "passwd", "username",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "access_key",
    "secret_key", "access_key_id", "secret_access_key", "account_key", "sas_token",
    "client_secret", "connection_string", "credential", "credentials", "authorization",
    "cookie", "auth", "api_key",
})
# gcsfs' ``token`` may name a method instead of holding one.
_TOKEN_METHODS = frozenset({"anon", "google_default", "cloud", "browser"})

# Requests in flight per batch (an object store answers each in ~10-50 ms; more in flight hide
# it); S3's connection pool is sized to match (botocore's default is 10).
MAX_IN_FLIGHT = 64
_S3_DEFAULTS: dict[str, Any] = {
    # No HEAD before a whole-object GET (s3fs does one to split big downloads).
    "max_concurrency": 1,
    "config_kwargs": {"max_pool_connections": MAX_IN_FLIGHT},
}


def scheme_of(url: str) -> str:
    """The URI's scheme, lower-case (``""`` for a plain path)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def is_remote(path: Any) -> bool:
    """A slide named by an object-store or web URI (``s3://``, ``gs://``, ``az://``,
    ``http(s)://`` ...): read through fsspec, never stat-ed as a local path."""
    return isinstance(path, str) and scheme_of(path) in REMOTE_SCHEMES


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended by ``/`` (no double slashes)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


# ----------------------------------------------------------------------------- storage options
_settings: dict[str, Any] = {"options": {}}
_settings_lock = threading.Lock()


def check_storage_options(options: Mapping[str, Any] | None, where: str = "storage options"
                          ) -> dict[str, Any]:
    """A plain-dict copy of ``options`` when nothing in it is a credential.

    Raises:
        ValueError: ``options`` is not a mapping, or holds a credential (a key such as
            ``key``, ``secret``, ``token``, ``password``, or a URL with a user or password in
            it), saying where credentials belong instead.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{where} must be a mapping of option: value, got "  # noqa: TRY004
                         f"{type(options).__name__}")

    def walk(node: Any, trail: str) -> Any:
        if isinstance(node, Mapping):
            out = {}
            for k, v in node.items():
                name = f"{trail}.{k}" if trail else str(k)
                low = str(k).lower()
                if low in _CREDENTIAL_KEYS and not (low == "token" and v in _TOKEN_METHODS):
                    raise ValueError(
                        f"{where}: {name!r} is a credential, and options are written down "
                        "(configs into checkpoints, command lines into run_metadata.json); "
                        "use the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                        "AWS_PROFILE or the option 'profile', GOOGLE_APPLICATION_CREDENTIALS, "
                        "AZURE_STORAGE_*), a credentials file, or anon: true for a public "
                        "bucket")
                out[str(k)] = walk(v, name)
            return out
        if isinstance(node, (list, tuple)):
            return [walk(v, trail) for v in node]
        if isinstance(node, str) and "://" in node and _has_userinfo(node):
            raise ValueError(f"{where}: {trail!r} is a URL with a user or password in it; "
                             "credentials belong in the environment or a credentials file")
        return node

    return walk(options, "")


def _has_userinfo(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return bool(parts.username or parts.password)
    except ValueError:
        return False


def set_storage_options(options: Mapping[str, Any] | None) -> None:
    """The storage options of this process: every remote slide opened without its own (a Ray
    actor's, a scorer's) uses them. Checked by :func:`check_storage_options` (ValueError)."""
    clean = check_storage_options(options)
    with _settings_lock:
        _settings["options"] = clean


def use_config(cfg: Any) -> None:
    """Take a slide run's ``data.slides.storage_options`` as this process's (when it states
    any): what a trainer, a Ray rollout actor and ``ram-wsi eval`` call before opening a
    slide, since the readers below them open slides by path alone."""
    data = getattr(cfg, "data", None)
    opts = getattr(getattr(data, "slides", None), "storage_options", None)
    if getattr(data, "source", None) == "slides" and opts:
        set_storage_options(opts)


def storage_options() -> dict[str, Any]:
    """A copy of this process's storage options."""
    return json.loads(json.dumps(_settings["options"], default=str))


def options_for(url: str, explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The filesystem options for ``url``: the defaults of its scheme, then the flat options
    (object stores only), then the scheme's own section; ``explicit`` replaces the process's
    options."""
    scheme = scheme_of(url)
    section = _SECTION.get(scheme, scheme)
    base = check_storage_options(explicit) if explicit is not None else storage_options()
    sections = {k for k, v in base.items() if k in REMOTE_SCHEMES and isinstance(v, Mapping)}
    flat = {k: v for k, v in base.items() if k not in sections}
    own = dict(base.get(section) or {})
    if scheme != section:
        own = {**dict(base.get(scheme) or {}), **own}
    if section in _WEB:
        out = own
    else:
        out = _merge(_S3_DEFAULTS if section == "s3" else {}, _merge(flat, own))
    return out


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a`` updated by ``b``, nested mappings merged (``config_kwargs`` keeps its defaults)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(
            out.get(k), Mapping) else v
    return out


def parse_storage_options(items: Iterable[str], where: str = "--storage-option"
                          ) -> dict[str, Any]:
    """``KEY=VALUE`` strings as storage options: values parsed as YAML (``anon=true`` is a
    bool), dotted keys nest (``config_kwargs.connect_timeout=5``, ``s3.endpoint_url=...``).

    Raises:
        ValueError: an item without ``=``, or a credential (:func:`check_storage_options`).
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{where} {item!r} is not of the form KEY=VALUE")
        value = yaml.safe_load(text) if text != "" else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{where} {item!r}: {part!r} is not a section")  # noqa: TRY004
        node[parts[-1]] = value
    return check_storage_options(out, where)


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


def _filesystem(url: str, options: Mapping[str, Any]) -> Any:
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
        self.fs = _filesystem(url, options_for(url, options))
        self.path = self.fs._strip_protocol(self.url) if self.scheme not in _WEB else self.url
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
            return run(self.fs._info(posixpath.join(self.path, key) if self.scheme not in _WEB
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
            p = posixpath.join(self.path, key) if self.scheme not in _WEB else self.key_url(key)
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
        if self.scheme in _WEB:
            return f"not found: nothing at {self.key_url('zarr.json')} (HTTP 404)"
        bucket = self.path.split("/", 1)[0]
        try:
            run(self.fs._info(bucket))
        except FileNotFoundError:
            return f"no such bucket {bucket!r}"
        except Exception as exc:  # noqa: BLE001
            return storage_error(self.url, exc).cause
        return f"not found: no object {self.key_url('zarr.json')} (not a zarr store)"


async def _gather(coros: list[Any]) -> list[Any]:
    """``asyncio.gather`` of ``coros`` with their exceptions returned, made on the loop that
    runs it (a gather made outside belongs to no loop)."""
    return await asyncio.gather(*coros, return_exceptions=True)


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


# ----------------------------------------------------------------------------- writing
def writable_store(url: str, options: Mapping[str, Any] | None = None) -> Any:
    """A writable zarr :class:`~zarr.storage.FsspecStore` at ``url`` (``ram-wsi convert``'s
    destination). Raises SlideError (no backend, bad options)."""
    from zarr.storage import FsspecStore

    fs = _filesystem(url, options_for(url, options))
    path = url.rstrip("/") if scheme_of(url) in _WEB else fs._strip_protocol(url.rstrip("/"))
    return FsspecStore(fs, path=path, read_only=False)


def drop_metadata(store: Any) -> None:
    """Delete the root ``zarr.json`` of the store at ``store`` (a zarr store): from now on it
    is no image, whatever else it still holds. Raises SlideError (access denied, unreachable)."""
    url = f"{getattr(store.fs, 'protocol', ['?'])[0]}://{store.path}"
    try:
        run(store.delete("zarr.json"))
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise storage_error(url, exc, "zarr.json") from exc


def stored_bytes(store: Any) -> int:
    """The bytes of every object under a zarr store's prefix (0 where it cannot be listed)."""
    try:
        return int(run(store.fs._du(store.path, total=True)))
    except Exception:  # noqa: BLE001 -- a summary figure only
        return 0


# ----------------------------------------------------------------------------- listing
def stamps(urls: Sequence[str], options: Mapping[str, Any] | None = None
           ) -> list[tuple[int, float]]:
    """``(size, mtime)`` of each remote input, fetched concurrently: a store's ``zarr.json``
    (a rewrite replaces it), a file's own; ``(0, 0.0)`` for one that cannot be reached (it is
    then scored, and its error says why)."""
    if not urls:
        return []
    fs = _filesystem(urls[0], options_for(urls[0], options))
    web = scheme_of(urls[0]) in _WEB

    def target(u: str) -> str:
        t = join(u, "zarr.json") if _is_store_name(u) else u.rstrip("/")
        return t if web else fs._strip_protocol(t)

    async def batch() -> list[Any]:
        sem = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(u: str) -> Any:
            async with sem:
                return await fs._info(target(u))

        return await asyncio.gather(*(one(u) for u in urls), return_exceptions=True)

    try:
        infos = run(batch())
    except Exception:  # noqa: BLE001
        return [(0, 0.0)] * len(urls)
    return [(0, 0.0) if isinstance(i, BaseException) else entry_stamp(i) for i in infos]


def _is_store_name(url: str) -> bool:
    from ._paths import file_format_ending

    return file_format_ending(url) is None


def scan_prefix(url: str, options: Mapping[str, Any] | None = None,
                max_depth: int = 16) -> tuple[list[tuple[str, tuple[int, float]]], list[str]]:
    """The inputs under ``url`` and the files no reader claims, as a folder is scanned
    (:mod:`ram_wsi.score.inputs`): a "directory" with a ``zarr.json`` (or a ``.zarr`` name) is
    one store, never descended into; a file a reader claims by name is an input (an OpenSlide
    file: its row will say to convert it); hidden names and ``<slide>.json`` sidecars are left
    out. Directories of one depth are listed together (one round trip per depth).

    Returns:
        ``([(uri, (size, mtime))], unclaimed)``, each sorted; a store's stamp is its
        ``zarr.json``'s (a rewrite replaces it).

    Raises:
        SlideError: the prefix does not exist or cannot be listed (naming it and the cause).
    """
    root = url.rstrip("/")
    fs = _filesystem(url, options_for(url, options))
    web = scheme_of(url) in _WEB

    def strip(u: str) -> str:
        return u if web else fs._strip_protocol(u)

    proto = f"{scheme_of(url)}://"

    def full(name: str) -> str:
        name = name.rstrip("/")
        return name if web or "://" in name else proto + name

    async def ls(d: str) -> Any:
        if web:  # a server's index page of the folder
            return await fs._ls(d + "/", detail=True)
        return await fs._ls(strip(d), detail=True, refresh=True)

    found: list[tuple[str, tuple[int, float]]] = []
    unclaimed: list[str] = []
    level = [root]
    for depth in range(max_depth + 1):
        if not level:
            break
        try:
            listings = run(_gather([ls(d) for d in level]))
        except Exception as exc:
            raise storage_error(url, exc) from exc
        nxt: list[str] = []
        for d, entries in zip(level, listings):
            if isinstance(entries, BaseException):
                if d == root:
                    raise storage_error(url, entries, "listing the prefix") from entries
                if not d.endswith(".zarr"):
                    raise storage_error(url, entries, f"listing {d}") from entries
                found.append((d, (0, 0.0)))  # one input that fails with its reason
                continue
            _sort_listing(d, d == root, entries, full, found, unclaimed,
                          nxt if depth < max_depth else None)
        level = nxt
    return sorted(found), sorted(unclaimed)


def _sort_listing(d: str, is_root: bool, entries: list[dict[str, Any]], full: Any,
                  found: list, unclaimed: list, deeper: list | None) -> None:
    """One directory ``d``'s listing into ``found`` (stores and claimed files with their
    stamps), ``unclaimed`` and ``deeper`` (subdirectories to list next; None at the depth
    limit)."""
    from ._paths import reader_claims

    by_name = {posixpath.basename(e["name"].rstrip("/")): e for e in entries}
    meta = by_name.get("zarr.json")
    if meta is not None and meta.get("type") != "directory":
        found.append((d, entry_stamp(meta)))
        return
    if not is_root and d.endswith(".zarr"):
        found.append((d, (0, 0.0)))  # a .zarr that is no store: one failing input
        return
    for name, e in sorted(by_name.items()):
        if not name or name.startswith(".") or name in (".", ".."):
            continue
        u = full(e["name"])
        if e.get("type") == "directory":
            if deeper is not None:
                deeper.append(u)
        elif name.endswith(".json") and (name[:-5] in by_name):
            continue  # a slide's sidecar
        elif reader_claims(name):
            found.append((u, entry_stamp(e)))
        else:
            unclaimed.append(u)
