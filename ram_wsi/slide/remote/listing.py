"""Listing, stamping and writing remote stores: what a scoring run finds under a prefix
(:func:`scan_prefix`), the ``(size, mtime)`` of each input (:func:`stamps`), and the store
``ram-wsi convert`` writes to (:func:`writable_store`, :func:`drop_metadata`,
:func:`stored_bytes`)."""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from .options import MAX_IN_FLIGHT, WEB_SCHEMES, join, options_for, scheme_of
from .store import entry_stamp, filesystem, run, storage_error

__all__ = [
    "drop_metadata",
    "scan_prefix",
    "stamps",
    "stored_bytes",
    "writable_store",
]


async def _gather(coros: list[Any]) -> list[Any]:
    """``asyncio.gather`` of ``coros`` with their exceptions returned, made on the loop that
    runs it (a gather made outside belongs to no loop)."""
    return await asyncio.gather(*coros, return_exceptions=True)



# ----------------------------------------------------------------------------- writing
def writable_store(url: str, options: Mapping[str, Any] | None = None) -> Any:
    """A writable zarr :class:`~zarr.storage.FsspecStore` at ``url`` (``ram-wsi convert``'s
    destination). Raises SlideError (no backend, bad options)."""
    from zarr.storage import FsspecStore

    fs = filesystem(url, options_for(url, options))
    path = url.rstrip("/") if scheme_of(url) in WEB_SCHEMES else fs._strip_protocol(url.rstrip("/"))
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
    fs = filesystem(urls[0], options_for(urls[0], options))
    web = scheme_of(urls[0]) in WEB_SCHEMES

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
    from .._paths import file_format_ending

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
    fs = filesystem(url, options_for(url, options))
    web = scheme_of(url) in WEB_SCHEMES

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
    from .._paths import reader_claims

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
