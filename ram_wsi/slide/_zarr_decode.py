"""Private low layer of :mod:`ram_wsi.slide.zarr_source`: decoding zarr v3 chunks and
``sharding_indexed`` shards straight from the files, without zarr's machinery (4x cheaper per
chunk). :class:`~ram_wsi.slide.zarr_source.ZarrSource` describes each level once
(:func:`fast_reader`) and reads chunks through :func:`read_chunk`; anything this layer cannot
read is None and zarr reads it.

A remote store (:mod:`.remote`) gives the same bytes through zarr's store layer: whole chunk
objects and byte ranges of shards. :func:`read_chunks` reads a batch of chunks from it in at most
two round trips -- the shard indexes not yet cached, all together, then every chunk's bytes,
all together -- and decodes them here as local ones are, so that a remote glimpse equals the
local one to the bit.

Every failure of a store -- opening it (``zarr_source``) or reading it (here) -- becomes a
:class:`SlideError` through :func:`zarr_error`, the one place that builds them, as
``_openslide_lowlevel.openslide_error`` is for OpenSlide.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import SlideError
from .cache import BlockCache

_MAX_U64 = 2**64 - 1


def zarr_error(path: str, cause: str, exc: BaseException | None = None, *,
               file: str | None = None) -> SlideError:
    """The :class:`SlideError` for a failure of the OME-Zarr store ``path``: ``cause`` says
    what is wrong and where (a level, a chunk), ``file`` names the chunk or shard file to
    blame, ``exc`` is the library's exception when one was raised (its type and text follow)."""
    text = cause if file is None else f"{cause} ({file})"
    if exc is not None:
        text = f"{text}: {type(exc).__name__}: {exc}"
    return SlideError(path, text)


class ShardLayout(NamedTuple):
    """How a ``sharding_indexed`` codec lays out one shard file."""

    cps: tuple[int, ...]
    """Inner chunks per shard along each array axis (array axis order)."""
    loc: str
    """Where the index sits in the file: ``"start"`` or ``"end"``."""
    crc: bool
    """Whether the index ends with a 4-byte little-endian crc32c of the rest."""
    crcfn: Callable[[bytes], int] | None
    """``crc32c(bytes) -> int``, None when no crc32c package is installed (bounds-only check)."""
    dtype: np.dtype
    """Byte order of the index entries: ``<u8`` or ``>u8``."""
    index_size: int
    """Index length in bytes: ``16 * prod(cps)`` (+ 4 with ``crc``)."""
    cache: BlockCache
    """Parsed indexes (:class:`ShardIndex` arrays) by (shard file, size in bytes, mtime in ns):
    a rewritten shard is parsed anew."""


class FastReader(NamedTuple):
    """How to find and decode one level's chunks."""

    root: str
    """The array's directory, with a trailing separator."""
    sep: str
    """Chunk key separator (``"/"`` or ``"."``)."""
    prefix: str
    """Chunk key prefix: ``"c" + sep`` for the default encoding, ``""`` for v2-style."""
    chunks: tuple[int, ...]
    """Shape of a decoded chunk (the inner chunk when sharded), array axis order, in pixels."""
    decode: Callable[[bytes], Any]
    """Encoded chunk bytes -> a buffer of ``prod(chunks)`` uint8 values."""
    fill: int
    """The array's fill value (absent chunks and shards)."""
    shard: ShardLayout | None
    """The shard layout, None for an unsharded array."""
    remote: Any = None
    """The :class:`~ram_wsi.slide.remote.RemoteStore` of a remote store (``root`` is then the
    array's key prefix in it), None for local files."""


class ShardIndex(NamedTuple):
    """A parsed shard index."""

    entries: np.ndarray
    """``cps + (2,)`` uint64: (byte offset, byte count) of each inner chunk in the shard file;
    ``(2**64 - 1, 2**64 - 1)`` for an absent chunk."""


def crc32c_fn() -> Any:
    """``crc32c(bytes) -> int`` when a crc32c package is installed (zarr 3 needs
    ``google_crc32c``), else None (shard indexes are then checked for bounds only)."""
    try:
        import google_crc32c

        return google_crc32c.value
    except ImportError:
        pass
    try:
        import crc32c

        return crc32c.crc32c
    except ImportError:
        return None


def shard_layout(sc: Any, shard_shape: tuple[int, ...]) -> ShardLayout | None:
    """The sharding codec's layout when the fast path can read it (index codecs ``bytes``
    [+ ``crc32c``], a regular inner grid), else None."""
    from zarr.codecs import BytesCodec, Crc32cCodec

    inner = tuple(int(c) for c in sc.chunk_shape)
    if len(inner) != len(shard_shape) or any(c <= 0 or s % c for s, c in zip(shard_shape, inner)):
        return None
    icodecs = list(sc.index_codecs)
    if not icodecs or not isinstance(icodecs[0], BytesCodec) or len(icodecs) > 2:
        return None
    crc = len(icodecs) == 2
    if crc and not isinstance(icodecs[1], Crc32cCodec):
        return None
    endian = getattr(getattr(icodecs[0], "endian", None), "value", None) or "little"
    cps = tuple(s // c for s, c in zip(shard_shape, inner))
    loc = getattr(sc.index_location, "value", sc.index_location)
    if loc not in ("start", "end"):
        return None
    n = int(np.prod(cps))
    return ShardLayout(cps=cps, loc=loc, crc=crc, crcfn=crc32c_fn() if crc else None,
                       dtype=np.dtype("<u8" if endian == "little" else ">u8"),
                       index_size=16 * n + (4 if crc else 0), cache=BlockCache(32 << 20))


def fast_reader(arr: Any, root: Path | str, ic: int | None, remote: Any = None
                ) -> FastReader | None:
    """How to decode a chunk of ``arr`` without zarr's machinery: only for the common case -- a
    zarr v3 uint8 array, regular chunks, ``bytes`` + blosc (any compressor) or zstd (or
    nothing), all channels in one chunk; unsharded, or sharded (``sharding_indexed`` with those
    inner codecs, index ``bytes`` [+ ``crc32c``] at the start or end), where the inner chunk is
    the block. ``root`` is the array's directory (local) or its key in ``remote`` (a
    :class:`~ram_wsi.slide.remote.RemoteStore`). None otherwise (zarr reads)."""
    try:
        import numcodecs
        from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec, ZstdCodec

        md = arr.metadata
        if md.zarr_format != 3 or np.dtype(arr.dtype) != np.uint8:
            return None
        if remote is None and not Path(root).is_dir():
            return None
        codecs = list(md.codecs)
        grid = tuple(int(c) for c in md.chunk_grid.chunk_shape)
        shard = None
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
            shard = shard_layout(codecs[0], grid)
            if shard is None:
                return None
            chunks = tuple(int(c) for c in codecs[0].chunk_shape)
            codecs = list(codecs[0].codecs)
        else:
            chunks = grid
        if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
            return None
        if len(codecs) == 1:
            decode = bytes
        elif isinstance(codecs[1], BloscCodec):
            decode = numcodecs.Blosc().decode
        elif isinstance(codecs[1], ZstdCodec):
            decode = numcodecs.Zstd().decode
        else:
            return None
        if ic is not None and chunks[ic] < arr.shape[ic]:
            return None
        cke = md.chunk_key_encoding
        sep = getattr(cke, "separator", "/")
        prefix = "c" + sep if getattr(cke, "name", "default") == "default" else ""
        fill = int(md.fill_value) if md.fill_value is not None else 0
        base = str(root).rstrip("/") + "/" if remote is not None else os.path.join(str(root), "")
        return FastReader(root=base, sep=sep, prefix=prefix, chunks=chunks, decode=decode,
                          fill=fill, shard=shard, remote=remote)
    except Exception:  # noqa: BLE001 -- anything unusual: let zarr read it
        return None


def read_chunk(fast: FastReader, path: str, level: int, ix: int, iy: int, bx: int,
               by: int, counts: dict[str, int] | None = None, stamp: float = 0.0
               ) -> np.ndarray:
    """The decoded chunk ``(by, bx)`` (x on axis ``ix``, y on ``iy``, 0 on the others) as a
    ``fast.chunks``-shaped uint8 array; the fill value when absent. ``path`` (the store) and
    ``level`` name it in errors; the encoded bytes read are added to ``counts["bytes_read"]``;
    ``stamp`` (the store's version) keys a remote store's cached shard indexes.
    Raises SlideError."""
    if fast.remote is not None:
        return read_chunks([(fast, level, bx, by)], path, ix, iy, counts, stamp)[level, bx, by]
    chunks = fast.chunks
    idx = [0] * len(chunks)
    idx[ix], idx[iy] = bx, by
    shard = fast.shard
    if shard is None:
        f = fast.root + (fast.prefix + fast.sep.join(map(str, idx)))
        try:
            with open(f, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raw = None
    else:
        cps = shard.cps
        f = fast.root + (fast.prefix + fast.sep.join(str(i // n) for i, n in zip(idx, cps)))
        # looked up on the module at call time (tests patch it)
        raw = read_inner(shard, f, tuple(i % n for i, n in zip(idx, cps)), level, path)
    if raw is None:
        return np.full(chunks, fast.fill, dtype=np.uint8)
    if counts is not None:
        counts["bytes_read"] += len(raw)
    try:
        data = np.frombuffer(fast.decode(raw), dtype=np.uint8)
        return data.reshape(chunks)
    except Exception as e:
        raise zarr_error(path, f"cannot decode level {level} chunk ({by}, {bx})", e,
                         file=f) from e


def read_inner(shard: ShardLayout, f: str, inner: tuple[int, ...], level: int,
               path: str) -> bytes | None:
    """The encoded bytes of inner chunk ``inner`` of shard file ``f``, None when the shard
    or the chunk is absent (fill value). The shard's index is parsed once (cached per file,
    size and mtime); an inner chunk then costs one ``pread``."""
    try:
        fd = os.open(f, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        key = (f, st.st_size, st.st_mtime_ns)
        index = shard.cache.get(key)
        if index is None:
            index = shard.cache.put(
                key, parse_shard_index(shard, fd, f, st.st_size, level, path).entries)
        off, nb = (int(v) for v in index[inner])
        if off == _MAX_U64:
            return None
        raw = os.pread(fd, nb, off)
    finally:
        os.close(fd)
    if len(raw) != nb:
        raise zarr_error(path, f"level {level} shard {f} is truncated: inner chunk "
                               f"{inner} needs bytes {off}..{off + nb}, read {len(raw)}")
    return raw


def parse_shard_index(shard: ShardLayout, fd: int, f: str, size: int, level: int,
                      path: str) -> ShardIndex:
    """Read and check the index of shard file ``f`` (open as ``fd``, ``size`` bytes): in
    bounds, and its crc32c when it has one. Raises SlideError naming ``path``."""
    isz = shard.index_size
    if size < isz:
        raise zarr_error(path, f"level {level} shard {f} is truncated: {size} bytes, "
                               f"shorter than its {isz}-byte index")
    start = 0 if shard.loc == "start" else size - isz
    buf = os.pread(fd, isz, start)
    if len(buf) != isz:
        raise zarr_error(path, f"level {level} shard {f}: short read of its index")
    return check_shard_index(shard, buf, f, size, level, path)


def check_shard_index(shard: ShardLayout, buf: bytes, f: str, size: int | None, level: int,
                      path: str) -> ShardIndex:
    """Parse and check the ``index_size`` bytes ``buf`` of shard ``f``: its crc32c when it has
    one, and every inner chunk inside the shard (``size`` bytes; None when unknown -- a remote
    shard's index read as its last bytes -- checks the lower bound only, and a chunk read past
    the end is caught as truncated). Raises SlideError naming ``path``."""
    isz = shard.index_size
    if shard.crc:
        fn = shard.crcfn
        if fn is not None and fn(buf[:-4]) != int.from_bytes(buf[-4:], "little"):
            raise zarr_error(path, f"level {level} shard {f}: index checksum (crc32c) "
                                   "mismatch (corrupt or truncated shard)")
        buf = buf[:-4]
    index = np.frombuffer(buf, dtype=shard.dtype).astype(np.uint64)
    index = index.reshape(shard.cps + (2,))
    off, nb = index[..., 0], index[..., 1]
    empty = off == _MAX_U64
    lo = isz if shard.loc == "start" else 0
    hi = _MAX_U64 if size is None else (size if shard.loc == "start" else size - isz)
    o, n = off[~empty], nb[~empty]
    if (np.any(empty & (nb != _MAX_U64)) or np.any(o < lo) or np.any(n > hi)
            or np.any(o > hi - n)):
        nbytes = "" if size is None else f"{size} bytes; "
        raise zarr_error(path, f"level {level} shard {f}: its index points outside "
                               f"the shard ({nbytes}corrupt or truncated shard)")
    return ShardIndex(index)


# ----------------------------------------------------------------------------- remote stores
_ABSENT = np.empty(0, dtype=np.uint64)  # a cached "no such shard" (reads as fill)


def _chunk_key(fast: FastReader, ix: int, iy: int, bx: int, by: int
               ) -> tuple[str, tuple[int, ...] | None]:
    """The object key of chunk ``(by, bx)`` (its shard's, when sharded) and the inner
    chunk's position in the shard (None when unsharded)."""
    idx = [0] * len(fast.chunks)
    idx[ix], idx[iy] = bx, by
    shard = fast.shard
    if shard is None:
        return fast.root + fast.prefix + fast.sep.join(map(str, idx)), None
    key = fast.root + fast.prefix + fast.sep.join(str(i // n) for i, n in zip(idx, shard.cps))
    return key, tuple(i % n for i, n in zip(idx, shard.cps))


def _shard_indexes(jobs: list[tuple[FastReader, int, str]], path: str, stamp: float
                   ) -> dict[str, np.ndarray]:
    """The index entries of every shard in ``jobs`` (``(reader, level, key)``), from each
    level's cache or fetched now in one batch (an index is the shard's first or last
    ``index_size`` bytes); :data:`_ABSENT` for a shard that does not exist."""
    out: dict[str, np.ndarray] = {}
    todo: dict[str, tuple[FastReader, int]] = {}
    for fast, level, key in jobs:
        if key in out or key in todo:
            continue
        hit = fast.shard.cache.get((fast.remote.url, key, stamp))
        if hit is not None:
            out[key] = hit
        else:
            todo[key] = (fast, level)
    if not todo:
        return out
    keys = list(todo)
    remote = todo[keys[0]][0].remote
    reqs = []
    for key in keys:
        isz = todo[key][0].shard.index_size
        reqs.append((key, -isz, None) if todo[key][0].shard.loc == "end" else (key, 0, isz))
    for key, buf in zip(keys, remote.get_many(reqs)):
        fast, level = todo[key]
        shard, url = fast.shard, remote.key_url(key)
        if buf is None:
            entries = _ABSENT
        elif len(buf) != shard.index_size:
            raise zarr_error(path, f"level {level} shard {url} is truncated: {len(buf)} bytes, "
                                   f"shorter than its {shard.index_size}-byte index")
        else:
            entries = check_shard_index(shard, buf, url, None, level, path).entries
        out[key] = shard.cache.put((remote.url, key, stamp), entries)
    return out


def read_chunks(jobs: list[tuple[FastReader, int, int, int]], path: str, ix: int, iy: int,
                counts: dict[str, int] | None = None, stamp: float = 0.0
                ) -> dict[tuple[int, int, int], np.ndarray]:
    """The decoded chunks ``(reader, level, bx, by)`` of one remote store (all ``jobs`` share
    its :class:`~ram_wsi.slide.remote.RemoteStore`), keyed ``(level, bx, by)``: the shard
    indexes not cached in one round trip, then every chunk's bytes in one more -- what a
    glimpse's scales (and a batch of glimpses) cost in latency. Absent chunks and shards read
    as the fill value; bytes read are counted as :func:`read_chunk` counts them.
    Raises SlideError naming ``path`` (and the shard or chunk object)."""
    keyed = [(fast, level, bx, by, *_chunk_key(fast, ix, iy, bx, by))
             for fast, level, bx, by in jobs]
    index = _shard_indexes([(f, lvl, key) for f, lvl, _, _, key, inner in keyed
                            if inner is not None], path, stamp)
    out: dict[tuple[int, int, int], np.ndarray] = {}
    wanted: list[tuple[FastReader, int, int, int, str, int, int]] = []  # key, offset, bytes
    for fast, level, bx, by, key, inner in keyed:
        if inner is None:
            wanted.append((fast, level, bx, by, key, -1, -1))
            continue
        entries = index[key]
        off, nb = (_MAX_U64, _MAX_U64) if entries is _ABSENT or not entries.size else (
            int(v) for v in entries[inner])
        if off == _MAX_U64:
            out[level, bx, by] = np.full(fast.chunks, fast.fill, dtype=np.uint8)
            continue
        wanted.append((fast, level, bx, by, key, off, nb))
    if not wanted:
        return out
    remote = wanted[0][0].remote
    reqs, spans = coalesce([(key, off, nb) for _, _, _, _, key, off, nb in wanted])
    got = remote.get_many(reqs)
    for (fast, level, bx, by, key, _, nb), (r, lo, hi) in zip(wanted, spans):
        url = remote.key_url(key)
        raw = got[r]
        if raw is None:
            if nb < 0:  # an unsharded chunk never written: the fill value
                out[level, bx, by] = np.full(fast.chunks, fast.fill, dtype=np.uint8)
                continue
            raise zarr_error(path, f"level {level} shard {url} vanished while being read")
        if nb >= 0:
            raw = raw[lo:hi]
            if len(raw) != nb:
                raise zarr_error(path, f"level {level} shard {url} is truncated: inner chunk "
                                       f"({by}, {bx}) needs {nb} bytes, read {len(raw)}")
        if counts is not None:
            counts["bytes_read"] += len(raw)
        try:
            out[level, bx, by] = np.frombuffer(fast.decode(raw), dtype=np.uint8).reshape(
                fast.chunks)
        except Exception as e:
            raise zarr_error(path, f"cannot decode level {level} chunk ({by}, {bx})", e,
                             file=url) from e
    return out


#: Ranges of one shard closer than this are fetched as one request (the bytes between come
#: along): neighbouring inner chunks of a glimpse's region lie side by side in a shard, and a
#: request costs its client far more than 64 KiB of loopback or data-centre bandwidth.
COALESCE_GAP = 64 << 10
#: ... up to this many bytes per request.
COALESCE_MAX = 8 << 20


def coalesce(items: list[tuple[str, int, int]]) -> tuple[list[tuple[str, int | None, int | None]],
                                                          list[tuple[int, int, int]]]:
    """The requests for ``items`` (``(key, offset, nbytes)``; ``offset < 0``: the whole
    object) with the ranges of one object closer than :data:`COALESCE_GAP` merged, and for
    each item ``(request index, start, end)`` of its bytes within that request's answer."""
    reqs: list[tuple[str, int | None, int | None]] = []
    spans: list[tuple[int, int, int]] = [(0, 0, 0)] * len(items)
    by_key: dict[str, list[int]] = {}
    for i, (key, off, _) in enumerate(items):
        if off < 0:
            spans[i] = (len(reqs), 0, -1)
            reqs.append((key, None, None))
        else:
            by_key.setdefault(key, []).append(i)
    for key, members in by_key.items():
        members.sort(key=lambda i: items[i][1])
        run: list[int] = []
        start = end = 0
        for i in [*members, None]:
            if i is not None:
                off, nb = items[i][1], items[i][2]
                if run and off - end <= COALESCE_GAP and max(end, off + nb) - start \
                        <= COALESCE_MAX:
                    run.append(i)
                    end = max(end, off + nb)
                    continue
            if run:
                for j in run:
                    spans[j] = (len(reqs), items[j][1] - start, items[j][1] - start + items[j][2])
                reqs.append((key, start, end))
            if i is not None:
                run, start, end = [i], items[i][1], items[i][1] + items[i][2]
    return reqs, spans
