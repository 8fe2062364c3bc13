"""Glimpses from an OME-Zarr store (NGFF 0.5 multiscales on a zarr v3 group; 0.4-style
top-level ``multiscales`` attributes are read too).

Levels are ``multiscales[0].datasets[*].path``; downsamples and the pixel size come from each
dataset's ``scale`` transformation (times the multiscale-level one, if any): downsample of level
``l`` along an axis = ``scale_l / scale_0``, and the mpp is ``scale_0`` when the axis unit is a
length and the size passes :func:`~ram_wsi.slide.units.slide_mpp` (at most 10 um). Blocks are
the arrays' chunks (a sharded array's: its inner chunks), read lazily and kept in the process's
bounded block cache; missing chunks (and shards) read as the array's fill value (white for
stores this package writes).

A store named by a URI (``s3://``, ``gs://``, ``az://``, ``http(s)://``: :mod:`.remote`) is
opened through zarr's FsspecStore in two round trips (the root ``zarr.json`` with its version,
then every level's metadata together) and read by the same decoder. Where latency is the
cost, reads are batched: a glimpse first gathers the chunks of all its scales and all its
locations (a batch of episodes, the M rollouts of a scoring run) that the cache lacks and
fetches them together (:func:`._zarr_decode.read_chunks`: at most two round trips), then
assembles from them as a local read does; any region read (a thumbnail) does the same.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideError
from ..retina import RetinaSpec
from . import _zarr_decode
from ._compositing import channels3
from ._plan import place_windows
from ._zarr_decode import zarr_error
from .base import GlimpseSource, SlideInfo, as_locations, outside_to_padding
from .cache import block_cache, handle_pool
from .remote import RemoteStore, is_remote, storage_error
from .units import MppRule, slide_mpp

__all__ = ["ZarrSource", "read_multiscales"]

def _scale_of(transforms: list[dict] | None, ndim: int) -> np.ndarray:
    s = np.ones(ndim)
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            s = s * np.asarray(t["scale"], dtype=np.float64)
    return s


def read_multiscales(path: str, storage_options: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Parse a store's NGFF multiscales metadata without opening arrays (a local directory or
    a remote URI). Raises SlideError."""
    if is_remote(path):
        store = RemoteStore(path, storage_options)
        _, raw = store.root()
        if raw is None:
            raise zarr_error(path, store.why_missing())
        return _multiscales(path, raw)
    p = Path(path)
    if not p.exists():
        raise zarr_error(path, "no such file or directory")
    if not p.is_dir():
        raise zarr_error(path, "not a zarr store (not a directory)")
    zj = p / "zarr.json"
    if not zj.exists():
        raise zarr_error(path, "not a zarr v3 store (no zarr.json)")
    try:
        raw = zj.read_bytes()
    except OSError as e:
        raise zarr_error(path, "cannot read zarr.json", e) from e
    return _multiscales(path, raw)


def _multiscales(path: str, raw: bytes) -> dict[str, Any]:
    """The first multiscale of a root ``zarr.json``'s bytes. Raises SlideError."""
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise zarr_error(path, "zarr.json is not valid JSON", e) from e
    if not isinstance(meta, dict):
        raise zarr_error(path, "zarr.json is not a JSON object (not zarr v3 metadata)")
    if meta.get("node_type") != "group":
        raise zarr_error(path, "zarr.json does not describe a group (OME-Zarr needs a group)")
    attrs = meta.get("attributes") or {}
    ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if not ms or not isinstance(ms, list) or not ms[0].get("datasets"):
        raise zarr_error(path, "the zarr group has no OME-NGFF 'multiscales' metadata "
                               "(not an OME-Zarr image)")
    return ms[0]


def _open(path: str, storage_options: dict[str, Any] | None = None,
          root_json: bytes | None = None) -> dict[str, Any]:
    """The handle of a store: its arrays, geometry and fast readers (a remote store's
    ``root_json``, when its source fetched it along with the version, is not fetched again)."""
    import zarr

    if is_remote(path):
        ms, arrays, remote = _open_remote(path, storage_options, root_json)
    else:
        ms, remote = read_multiscales(path), None
        try:
            group = zarr.open_group(path, mode="r")
            arrays = [group[str(d["path"])] for d in ms["datasets"]]
        except Exception as e:  # zarr raises many types for broken stores
            raise zarr_error(path, "cannot open the multiscale arrays", e) from e
    axes = ms.get("axes") or [{"name": n} for n in ("c", "y", "x")]
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    names = [str(a.get("name", "")).lower() for a in axes]
    if "x" not in names or "y" not in names:
        raise zarr_error(path, f"multiscales axes {names} have no 'x' and 'y'")
    ndim = len(names)
    ix, iy = names.index("x"), names.index("y")
    ic = next((i for i, a in enumerate(axes) if a.get("type") == "channel"
               or str(a.get("name", "")).lower() in ("c", "channel")), None)
    glob = _scale_of(ms.get("coordinateTransformations"), ndim)
    scales = [_scale_of(d.get("coordinateTransformations"), ndim) * glob
              for d in ms["datasets"]]
    for i, a in enumerate(arrays):
        if a.ndim != ndim:
            raise zarr_error(path, f"level {i} has {a.ndim} dimensions, axes say {ndim}")
    unit = axes[ix].get("unit")
    if remote is None:
        fast = [_zarr_decode.fast_reader(a, Path(path) / str(d["path"]), ic) for a, d in
                zip(arrays, ms["datasets"])]
    else:
        fast = [_zarr_decode.fast_reader(a, str(d["path"]), ic, remote) for a, d in
                zip(arrays, ms["datasets"])]
    return {"arrays": arrays, "scales": scales, "ix": ix, "iy": iy, "ic": ic,
            "unit": unit, "names": names, "name": ms.get("name"), "fast": fast,
            "remote": remote}


def _open_remote(url: str, options: dict[str, Any] | None, root_json: bytes | None
                 ) -> tuple[dict[str, Any], list[Any], RemoteStore]:
    """A remote store's multiscales, its level arrays (zarr arrays over its FsspecStore,
    built from metadata fetched together: one round trip for every level) and the store."""
    from zarr.core.array import Array, AsyncArray
    from zarr.core.metadata.v3 import ArrayV3Metadata
    from zarr.storage import StorePath

    remote = RemoteStore(url, options)
    if root_json is None:
        _, root_json = remote.root()
        if root_json is None:
            raise zarr_error(url, remote.why_missing())
    ms = _multiscales(url, root_json)
    paths = [str(d["path"]).strip("/") for d in ms["datasets"]]
    arrays = []
    for p, raw in zip(paths, remote.get_many([(f"{p}/zarr.json", None, None) for p in paths])):
        if raw is None:
            raise zarr_error(url, f"level {p!r} of the multiscales has no array (no "
                                  f"{remote.key_url(p + '/zarr.json')})")
        try:
            meta = json.loads(raw)
            if meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
                raise ValueError("not a zarr v3 array")
            arrays.append(Array(AsyncArray(metadata=ArrayV3Metadata.from_dict(meta),
                                           store_path=StorePath(remote.store, p))))
        except Exception as e:
            raise zarr_error(url, f"cannot open level {p!r} of the multiscales", e,
                             file=remote.key_url(p + "/zarr.json")) from e
    return ms, arrays, remote


class ZarrSource(GlimpseSource):
    """An OME-Zarr image (``(c, y, x)`` or any NGFF axis order; 1, 3 or 4 channels; uint8,
    uint16 or float in [0, 1]).

    Raises:
        SlideError: missing path, a directory that is not a zarr store, a group without
            multiscales metadata, arrays that do not match it, a zero-sized level, or a chunk
            that cannot be decoded, or a truncated or corrupt shard (index out of bounds,
            checksum mismatch) -- naming the store, the chunk or shard file and the cause.
    """

    backend = "zarr"

    def __init__(self, path: str | os.PathLike, **settings: Any):
        super().__init__(os.fspath(path), **settings)
        _ = self.info  # open once to validate (an unpickled copy does not: base._rebuild)

    @property
    def remote(self) -> bool:
        """Whether the store is named by a URI (object storage, a web server)."""
        return is_remote(self._path)

    def _storage_options(self) -> dict[str, Any] | None:
        """This source's own storage options (``open_source(url, storage_options=...)``),
        else None: the process's (:func:`~ram_wsi.slide.remote.set_storage_options`)."""
        return self._settings.get("storage_options")

    def mtime(self) -> float:
        """A store is a directory: its root ``zarr.json`` is what a rewrite changes. A remote
        store's version (modification time, else ETag) comes with the ``zarr.json`` itself,
        fetched together and kept for the open that follows."""
        if self.remote:
            stamp, raw = RemoteStore(self._path, self._storage_options()).root()
            self.__dict__["_root_json"] = raw
            return stamp
        meta = Path(self._path) / "zarr.json"
        try:
            return meta.stat().st_mtime
        except OSError:
            return super().mtime()

    def _handle(self):
        def opener() -> dict[str, Any]:
            return _open(self._path, self._storage_options(),
                         self.__dict__.pop("_root_json", None))

        return handle_pool().use(self._cache_key(), opener, None)

    def _open_info(self) -> SlideInfo:
        with self._handle() as h:
            ix, iy = h["ix"], h["iy"]
            dims = [(int(a.shape[ix]), int(a.shape[iy])) for a in h["arrays"]]
            blocks = [(int(a.chunks[ix]), int(a.chunks[iy])) for a in h["arrays"]]
            s0 = h["scales"][0]
            axis = [(float(s[ix] / s0[ix]), float(s[iy] / s0[iy])) for s in h["scales"]]
            unit = h["unit"]
            # No unit: a scale in pixels (no mpp). A unit: the one rule (a store converted
            # from a 72-dpi placeholder says 352.78 micrometres; that is no microscope's).
            rule = slide_mpp(s0[ix], s0[iy], unit) if isinstance(unit, str) else MppRule(None)
            dtype = str(h["arrays"][0].dtype)
            nch = 1 if h["ic"] is None else int(h["arrays"][0].shape[h["ic"]])
        for i, (dx, dy) in enumerate(axis):
            if not (dx > 0 and dy > 0 and np.isfinite(dx) and np.isfinite(dy)):
                raise zarr_error(self._path, f"level {i} has an invalid scale transformation")
        return SlideInfo(dimensions=dims[0], level_dimensions=dims, block_sizes=blocks,
                         mpp=rule.mpp, mpp_note=rule.note, axis_downsamples=axis,
                         properties={"ngff.name": h["name"], "dtype": dtype, "channels": nch,
                                     "axes": h["names"], "unit": unit})

    def _read_block(self, level: int, bx: int, by: int) -> np.ndarray:
        info = self.info
        bw, bh = info.block_sizes[level]
        lw, lh = info.level_dimensions[level]
        w, h = min(bw, lw - bx * bw), min(bh, lh - by * bh)
        if w <= 0 or h <= 0:
            return np.full((3, bh, bw), 255, dtype=np.uint8)
        try:
            with self._handle() as hd:
                fast = hd["fast"][level]
                if fast is not None:
                    data = self._read_fast(fast, hd, level, bx, by)
                    if data is not None:
                        return self._as_block(data, level, bx, by)
                arr = hd["arrays"][level]
                sel, keep = _selection(hd, arr.ndim, slice(bx * bw, bx * bw + w),
                                       slice(by * bh, by * bh + h))
                data = np.asarray(arr[sel])
        except SlideError:
            raise
        except Exception as e:
            what = f"level {level} chunk ({by}, {bx})"
            if self.remote:  # zarr's own read of a remote store: say why, as the decoder does
                raise storage_error(self._path, e, what) from e
            raise zarr_error(self._path, f"cannot read {what}", e) from e
        out = np.full((3, bh, bw), 255, dtype=np.uint8)
        data = _to_uint8(_as_cyx(data, keep))
        out[:, :h, :w] = data[:3] if data.shape[0] in (2, 3) else channels3(data)
        return out

    def _as_block(self, data: np.ndarray, level: int, bx: int, by: int) -> np.ndarray:
        """A decoded ``(3, bh, bw)``-or-smaller chunk as the level's block: white beyond the
        level's edge (the chunk itself when it fills the block)."""
        bw, bh = self.info.block_sizes[level]
        lw, lh = self.info.level_dimensions[level]
        w, h = min(bw, lw - bx * bw), min(bh, lh - by * bh)
        if (h, w) == (bh, bw) and data.flags.c_contiguous:
            return data  # the decoded chunk itself: no copy
        out = np.full((3, bh, bw), 255, dtype=np.uint8)
        out[:, :h, :w] = data[:, :h, :w]
        return out

    def _read_fast(self, fast: _zarr_decode.FastReader, hd: dict[str, Any], level: int,
                   bx: int, by: int) -> np.ndarray | None:
        """The decoded chunk ``(by, bx)`` as ``(3, bh, bw)`` uint8, or None to fall back."""
        data = _zarr_decode.read_chunk(fast, self._path, level, hd["ix"], hd["iy"], bx, by,
                                      self._counts, self._stamp or 0.0)
        return _chunk_rgb(data, hd, fast)

    # ------------------------------------------------------------------ batched remote reads
    def _pending(self) -> dict[tuple[int, int, int], np.ndarray] | None:
        """The blocks fetched for the read in progress in this thread (None outside one)."""
        tls = self.__dict__.get("_tls")
        return None if tls is None else getattr(tls, "blocks", None)

    @contextmanager
    def _batch(self, blocks: set[tuple[int, int, int]], use_cache: bool) -> Iterator[None]:
        """Within: the file blocks ``(level, bx, by)`` are at hand -- those the cache lacks
        fetched now, together (:func:`._zarr_decode.read_chunks`) -- so that the reads inside
        assemble from them without one request each. Nested batches add to the outer one."""
        tls = self.__dict__.setdefault("_tls", threading.local())
        outer = getattr(tls, "blocks", None)
        pending = outer if outer is not None else {}
        tls.blocks = pending
        try:
            self._fetch(blocks - pending.keys(), pending, use_cache)
            yield
        finally:
            if outer is None:
                tls.blocks = None

    def _block(self, level: int, bx: int, by: int, use_cache: bool = True) -> np.ndarray:
        pending = self._pending()
        if pending:
            blk = pending.get((level, bx, by))
            if blk is not None:
                return blk
        return super()._block(level, bx, by, use_cache)

    def _fetch(self, blocks: set[tuple[int, int, int]],
               pending: dict[tuple[int, int, int], np.ndarray], use_cache: bool) -> None:
        """Put ``blocks`` into ``pending``: from the cache, else fetched in one batch, decoded,
        counted and cached as :meth:`_block` would (levels zarr reads itself are left to it)."""
        if not blocks:
            return
        cache, ck = block_cache(), self._cache_key()
        jobs = []
        with self._handle() as hd:
            for level, bx, by in sorted(blocks):
                blk = cache.get((ck, level, bx, by))
                if blk is not None:
                    pending[level, bx, by] = blk
                elif hd["fast"][level] is not None:
                    jobs.append((hd["fast"][level], level, bx, by))
            if not jobs:
                return
            try:
                got = _zarr_decode.read_chunks(jobs, self._path, hd["ix"], hd["iy"],
                                               self._counts, self._stamp or 0.0)
            except SlideError:
                raise
            except Exception as e:
                raise zarr_error(self._path, "cannot read a batch of chunks", e) from e
            for fast, level, bx, by in jobs:
                data = _chunk_rgb(got[level, bx, by], hd, fast)
                if data is None:
                    continue  # an odd channel count: zarr's path reads it
                blk = np.ascontiguousarray(self._as_block(data, level, bx, by))
                self._count(blocks_decoded=1, pixels_decoded=self._block_pixels(level, bx, by))
                pending[level, bx, by] = cache.put((ck, level, bx, by), blk) if use_cache \
                    else blk

    def _region_blocks(self, level: int, x0: np.ndarray, y0: np.ndarray, w: int, h: int
                       ) -> set[tuple[int, int, int]]:
        """The file blocks under regions ``(x0, y0, w, h)`` of ``level`` (none for a built
        level or a region wholly outside)."""
        lv = self.read_levels
        if lv.built(level):
            return set()
        (lw, lh), (bw, bh) = lv.dims[level], lv.blocks[level]
        out: set[tuple[int, int, int]] = set()
        for x, y in zip(np.asarray(x0).reshape(-1).tolist(), np.asarray(y0).reshape(-1).tolist()):
            xa, xb, ya, yb = max(x, 0), min(x + w, lw), max(y, 0), min(y + h, lh)
            if xa >= xb or ya >= yb:
                continue
            out.update((level, bx, by) for by in range(ya // bh, (yb - 1) // bh + 1)
                       for bx in range(xa // bw, (xb - 1) // bw + 1))
        return out

    def read_regions(self, level: int, x0: np.ndarray, y0: np.ndarray, w: int, h: int,
                     use_cache: bool = True) -> np.ndarray:
        """As :meth:`GlimpseSource.read_regions`; on a remote store the blocks under all
        the regions are fetched together first."""
        if not self.remote:
            return super().read_regions(level, x0, y0, w, h, use_cache)
        with self._batch(self._region_blocks(level, x0, y0, w, h), use_cache):
            return super().read_regions(level, x0, y0, w, h, use_cache)

    def glimpse(self, loc: Any, spec: RetinaSpec, *, units: str = "px"):
        """As :meth:`GlimpseSource.glimpse`; on a remote store the blocks of every scale at
        every location are fetched together first (one batch: the glimpse's latency is one
        or two round trips, whatever its scales and locations)."""
        if not self.remote:
            return super().glimpse(loc, spec, units=units)
        with self._batch(self._glimpse_blocks(loc, self._px_spec(spec, units)), True):
            return super().glimpse(loc, spec, units=units)

    def _glimpse_blocks(self, loc: Any, spec: RetinaSpec) -> set[tuple[int, int, int]]:
        """The file blocks :meth:`glimpse` will read for ``loc`` (its own window placement)."""
        locs = as_locations(loc)
        n, g = locs.shape[0], spec.patch
        if n == 0:
            return set()
        w0, h0 = self.dimensions
        pxx = (locs[:, 0] + 1.0) * (0.5 * w0)
        pxy = (locs[:, 1] + 1.0) * (0.5 * h0)
        out: set[tuple[int, int, int]] = set()
        for group in self._plan(spec, n):
            p = group.first
            x0, y0, left, top = place_windows(group, pxx, pxy, g)
            if not p.int_factor:
                outside_to_padding(group, x0, y0, left, top, g)
            for i, q in enumerate(group.scales):
                out |= self._region_blocks(q.level, x0[i], y0[i], p.region_w, p.region_h)
        return out


def _chunk_rgb(data: np.ndarray, hd: dict[str, Any], fast: _zarr_decode.FastReader
               ) -> np.ndarray | None:
    """A decoded chunk (array axis order) as ``(3, h, w)`` uint8, or None (an odd channel
    count: zarr's path reads it)."""
    sel, keep = _selection(hd, len(fast.chunks), slice(None), slice(None))
    data = _as_cyx(data[sel], keep)
    if data.shape[0] == 3:
        return data
    return None if data.shape[0] not in (1, 4) else channels3(data)


def _selection(hd: dict[str, Any], ndim: int, xs: slice, ys: slice
               ) -> tuple[tuple[Any, ...], list[int]]:
    """Index of an ``ndim`` array (x and y slices, every channel, 0 on other axes) and the axes
    it keeps, channel first when there is one."""
    sel: list[Any] = [0] * ndim
    sel[hd["ix"]], sel[hd["iy"]] = xs, ys
    keep = [hd["iy"], hd["ix"]]
    if hd["ic"] is not None:
        sel[hd["ic"]] = slice(None)
        keep = [hd["ic"]] + keep
    return tuple(sel), keep


def _as_cyx(data: np.ndarray, keep: list[int]) -> np.ndarray:
    """What :func:`_selection` picked (its axes still in their original order) as ``(c, y, x)``
    (``c = 1`` without a channel axis)."""
    if len(keep) == 2:
        return data[None]
    order = sorted(keep)
    return np.transpose(data, [order.index(a) for a in keep])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.uint16:
        return ((x.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        return (np.clip(np.nan_to_num(x, nan=1.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.clip(x, 0, 255).astype(np.uint8)
