"""Glimpses from an OME-Zarr store (NGFF 0.5 multiscales on a zarr v3 group; 0.4-style
top-level ``multiscales`` attributes are read too).

Levels are ``multiscales[0].datasets[*].path``; downsamples and the pixel size come from each
dataset's ``scale`` transformation (times the multiscale-level one, if any): downsample of level
``l`` along an axis = ``scale_l / scale_0``, and the mpp is ``scale_0`` when the axis unit is a
length and the size passes :func:`~ram_wsi.slide.units.slide_mpp` (at most 10 um). Blocks are the arrays' chunks (a sharded array's: its inner chunks), read lazily and kept in
the process's bounded block cache; missing chunks (and shards) read as the array's fill value
(white for stores this package writes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideError
from . import _zarr_decode
from ._zarr_decode import zarr_error
from .base import GlimpseSource, SlideInfo
from .cache import handle_pool
from .units import MppRule, slide_mpp

__all__ = ["ZarrSource", "read_multiscales"]

def _scale_of(transforms: list[dict] | None, ndim: int) -> np.ndarray:
    s = np.ones(ndim)
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            s = s * np.asarray(t["scale"], dtype=np.float64)
    return s


def read_multiscales(path: str) -> dict[str, Any]:
    """Parse a store's NGFF multiscales metadata without opening arrays. Raises SlideError."""
    p = Path(path)
    if not p.exists():
        raise zarr_error(path, "no such file or directory")
    if not p.is_dir():
        raise zarr_error(path, "not a zarr store (not a directory)")
    zj = p / "zarr.json"
    if not zj.exists():
        raise zarr_error(path, "not a zarr v3 store (no zarr.json)")
    try:
        meta = json.loads(zj.read_text())
    except (OSError, ValueError) as e:
        raise zarr_error(path, "zarr.json is not valid JSON", e) from e
    if meta.get("node_type") != "group":
        raise zarr_error(path, "zarr.json does not describe a group (OME-Zarr needs a group)")
    attrs = meta.get("attributes") or {}
    ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if not ms or not isinstance(ms, list) or not ms[0].get("datasets"):
        raise zarr_error(path, "the zarr group has no OME-NGFF 'multiscales' metadata "
                               "(not an OME-Zarr image)")
    return ms[0]


def _open(path: str) -> dict[str, Any]:
    import zarr

    ms = read_multiscales(path)
    axes = ms.get("axes") or [{"name": n} for n in ("c", "y", "x")]
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    names = [str(a.get("name", "")).lower() for a in axes]
    if "x" not in names or "y" not in names:
        raise zarr_error(path, f"multiscales axes {names} have no 'x' and 'y'")
    ndim = len(names)
    ix, iy = names.index("x"), names.index("y")
    ic = next((i for i, a in enumerate(axes) if a.get("type") == "channel"
               or str(a.get("name", "")).lower() in ("c", "channel")), None)
    try:
        group = zarr.open_group(path, mode="r")
        arrays = [group[str(d["path"])] for d in ms["datasets"]]
    except Exception as e:  # zarr raises many types for broken stores
        raise zarr_error(path, "cannot open the multiscale arrays", e) from e
    glob = _scale_of(ms.get("coordinateTransformations"), ndim)
    scales = [_scale_of(d.get("coordinateTransformations"), ndim) * glob
              for d in ms["datasets"]]
    for i, a in enumerate(arrays):
        if a.ndim != ndim:
            raise zarr_error(path, f"level {i} has {a.ndim} dimensions, axes say {ndim}")
    unit = axes[ix].get("unit")
    fast = [_zarr_decode.fast_reader(a, Path(path) / str(d["path"]), ic) for a, d in
            zip(arrays, ms["datasets"])]
    return {"group": group, "arrays": arrays, "scales": scales, "ix": ix, "iy": iy, "ic": ic,
            "unit": unit, "names": names, "name": ms.get("name"), "fast": fast}


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

    def mtime(self) -> float:
        """A store is a directory: its root ``zarr.json`` is what a rewrite changes."""
        meta = Path(self._path) / "zarr.json"
        try:
            return meta.stat().st_mtime
        except OSError:
            return super().mtime()

    def _handle(self):
        return handle_pool().use(self._cache_key(), lambda: _open(self._path), None)

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
                        if (h, w) == (bh, bw) and data.flags.c_contiguous:
                            return data  # the decoded chunk itself: no copy
                        out = np.full((3, bh, bw), 255, dtype=np.uint8)
                        out[:, :h, :w] = data[:, :h, :w]
                        return out
                arr = hd["arrays"][level]
                sel, keep = _selection(hd, arr.ndim, slice(bx * bw, bx * bw + w),
                                       slice(by * bh, by * bh + h))
                data = np.asarray(arr[sel])
        except SlideError:
            raise
        except Exception as e:
            raise zarr_error(self._path, f"cannot read level {level} chunk ({by}, {bx})", e) from e
        out = np.full((3, bh, bw), 255, dtype=np.uint8)
        data = _to_uint8(_as_cyx(data, keep))
        out[:, :h, :w] = data[:3] if data.shape[0] in (2, 3) else _channels3(data)
        return out

    def _read_fast(self, fast: _zarr_decode.FastReader, hd: dict[str, Any], level: int,
                   bx: int, by: int) -> np.ndarray | None:
        """The decoded chunk ``(by, bx)`` as ``(3, bh, bw)`` uint8, or None to fall back."""
        data = _zarr_decode.read_chunk(fast, self._path, level, hd["ix"], hd["iy"], bx, by,
                                      self._counts)
        sel, keep = _selection(hd, len(fast.chunks), slice(None), slice(None))
        data = _as_cyx(data[sel], keep)
        if data.shape[0] == 3:
            return data
        return None if data.shape[0] not in (1, 4) else _channels3(data)


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


def _channels3(data: np.ndarray) -> np.ndarray:
    if data.shape[0] == 1:
        return np.repeat(data, 3, axis=0)
    a = data[3:4].astype(np.uint16)
    return ((data[:3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.uint16:
        return ((x.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        return (np.clip(np.nan_to_num(x, nan=1.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.clip(x, 0, 255).astype(np.uint8)
