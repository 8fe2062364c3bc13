"""Glimpses from anything OpenSlide opens: Aperio SVS, generic tiled TIFF, DICOM, Hamamatsu, ...

Regions are read directly: a glimpse's region of ``level`` at level pixel ``(x, y)`` is one
``read_region((round(x * d), round(y * d)), level, (w, h))`` (``d`` the level's reported
downsample), alpha-composited over white (OpenSlide returns non-premultiplied RGBA, alpha 0
outside the scanned area and outside the level). OpenSlide's own process-wide
``openslide.OpenSlideCache`` (:func:`~ram_wsi.slide.cache.openslide_cache`, set on every handle)
is this backend's one bounded tile cache; the package's decoded-block cache is not used for
OpenSlide regions. Why, measured on JPEG-tiled pyramidal TIFFs:

* ``read_region`` costs what it paints, not what it decodes: a whole 256x256 tile ~1,350 us of
  CPU (painting + RGBA conversion), a 33x33 region ~150-220 us with OpenSlide's cache empty and
  ~40 us from its cache. Reading whole blocks to cut ~33x33 regions out of them was ~8x dearer
  per cold glimpse.
* Handles are per level: libtiff re-reads a level's directory (whose tile-offset table grows
  with the slide) whenever consecutive reads of one handle switch level, so levels 0, 2, 4
  read alternately through one handle cost 429 us/read on a 131k^2 TIFF vs 222 us on a handle
  that stays on one level (244 vs 214 on 8k^2): a per-glimpse cost growing with slide size.
  Each level gets its own OpenSlide object in the process's handle pool, keyed
  ``(source key, level)`` and opened lazily; metadata and level-0 reads use level 0's.

Handles: ``RAM_WSI_MAX_OPEN_SLIDES`` / :func:`~ram_wsi.slide.cache.set_max_open` bound open
*handles*, so a slide read at ``k`` levels holds up to ``k`` (at most its level count; a
3-scale glimpse on a 2x pyramid typically 3) -- the default 192 keeps ~64 slides open at once
under such glimpses, as many as one handle per slide did. Raise it when glimpsing more slides
round-robin (an OpenSlide open costs ~0.5 ms for an 8k^2 TIFF, ~11 ms for a 131k^2 one).

``use_cache=False``: OpenSlide cannot bypass its cache for one read, so it simply reads (through
OpenSlide's cache, which is bounded).

Non-integer downsamples (real slides: 3.9995, 4.016, ...): OpenSlide addresses a level through
level-0 coordinates divided by its own (single) downsample ``d``, so level pixel ``x`` is
requested at ``X = round(x * d)`` and OpenSlide paints the level from ``X / d`` -- up to
``0.5 / d`` level pixels away -- interpolating bilinearly (cairo). The region is still read in
one call; :meth:`OpenSlideSource._region_offsets` reports that sub-pixel start and the glimpse
places its window accordingly (reading one pixel of margin), so geometry stays exact and the only
trace is OpenSlide's interpolation (a blur of at most a quarter pixel). Painting regions from
the file's tile corners instead -- exact inside the first tile only, shifted elsewhere -- cost
3x more cold and 10x more warm on such slides (an 8,191^2 TIFF: 216 vs 619 cold and 330 vs
3,220 warm glimpses/s). Levels with an integer downsample (level 0, power-of-two pyramids) are
pixel-exact and cheaper still (OpenSlide's interpolated painting costs ~100 us a read).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideError
from .base import GlimpseSource, SlideInfo
from .cache import handle_pool, openslide_cache

__all__ = ["OpenSlideSource", "composite_over_white"]


def composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` non-premultiplied RGBA uint8 -> ``(h, w, 3)`` RGB uint8 over white
    (``rgb * a + 255 * (1 - a)``, rounded). Transparent pixels become white."""
    rgb = rgba[..., :3]
    a = rgba[..., 3:4]
    if a.min() == 255:
        return np.ascontiguousarray(rgb)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a.astype(np.uint16)) + 127) // 255
    return out.astype(np.uint8)


def _raw_reader() -> Any:
    """``openslide.lowlevel._read_region`` (premultiplied native-endian ARGB into a caller's
    buffer) when this openslide-python has it and the machine is little-endian, else None.
    Reading straight into numpy skips the PIL image and its un-premultiplying copies (~10-25%
    of a small read); the public ``read_region`` is the fallback."""
    if sys.byteorder != "little":
        return None
    try:
        from openslide import lowlevel

        fn = lowlevel._read_region
        ptr = ctypes.POINTER(ctypes.c_uint32)
    except (ImportError, AttributeError):
        return None
    return fn, ptr


_RAW: Any = None  # (function, pointer type), False when unavailable; resolved on first read


def _read_rgba(slide: Any, x: int, y: int, level: int, w: int, h: int) -> tuple[np.ndarray, bool]:
    """OpenSlide's region ``(h, w, 4)`` uint8 and whether it is premultiplied BGRA (the raw
    path) rather than non-premultiplied RGBA (``read_region``)."""
    global _RAW
    if _RAW is None:
        _RAW = _raw_reader() or False
    osr = getattr(slide, "_osr", None)
    if _RAW and osr is not None:
        fn, ptr = _RAW
        buf = np.empty((h, w), dtype=np.uint32)
        fn(osr, buf.ctypes.data_as(ptr), x, y, level, w, h)
        return buf.view(np.uint8).reshape(h, w, 4), True
    return np.asarray(slide.read_region((x, y), level, (w, h))), False


def _level0(v: int, d: float) -> int:
    """The level-0 coordinate requested for level pixel ``v`` (rounded half up, as
    :meth:`OpenSlideSource._region_offsets` assumes)."""
    return math.floor(v * d + 0.5)


def _put(dst: np.ndarray, px: np.ndarray, bgra: bool) -> None:
    """Write ``(h, w, 4)`` pixels from :func:`_read_rgba` over white into ``(h, w, 3)`` ``dst``:
    premultiplied colour over white is ``c + 255 - a`` (exact, never above 255)."""
    a = px[..., 3]
    if not bgra:
        dst[...] = px[..., :3] if a.min() == 255 else composite_over_white(px)
    elif a.min() == 255:
        dst[...] = px[..., 2::-1]
    else:
        np.add(px[..., 2::-1], (255 - a)[..., None], out=dst)


def _resolve(path: str) -> str:
    """A DICOM slide may be named by its directory: OpenSlide wants one of its files."""
    p = Path(path)
    if p.is_dir():
        if (p / "zarr.json").exists():
            raise SlideError(path, "is a zarr store; open it with ZarrSource")
        dcm = sorted(p.glob("*.dcm"))
        if dcm:
            return str(dcm[0])
        raise SlideError(path, "is a directory but neither a zarr store (no zarr.json) nor a "
                               "DICOM slide (no .dcm files)")
    return path


def _open(path: str) -> Any:
    import openslide

    real = _resolve(path)
    if not os.path.exists(real):
        raise SlideError(path, "no such file")
    try:
        slide = openslide.OpenSlide(real)
    except openslide.OpenSlideUnsupportedFormatError as e:
        raise SlideError(path, f"not a slide OpenSlide can open (unsupported or unrecognised "
                               f"format): {e or 'no vendor recognised'}") from e
    except openslide.OpenSlideError as e:
        raise SlideError(path, f"OpenSlide cannot open it (corrupt or unsupported): {e}") from e
    except OSError as e:
        raise SlideError(path, f"cannot read the file: {e}") from e
    try:
        slide.set_cache(openslide_cache())
    except (AttributeError, openslide.OpenSlideError):  # OpenSlide < 4.0: private caches
        pass
    return slide


def _close(slide: Any) -> None:
    slide.close()


class OpenSlideSource(GlimpseSource):
    """A slide read through OpenSlide (``openslide-python``).

    Regions (and so glimpses) are read with one OpenSlide ``read_region`` each, through one
    handle per level, and cached only by OpenSlide's process-wide tile cache (see the module
    docstring). A slide read at ``k`` levels holds up to ``k`` entries of the process's handle
    pool (``max_open`` counts handles, not slides); :meth:`close` drops all of them.

    Args:
        path: the slide file (a DICOM slide: any of its files, or their directory).

    Raises:
        SlideError: missing file, unrecognised or corrupt file, unsupported compression
            (on construction, which opens the file once to validate it), or a read that fails
            (corrupt tile data: on :meth:`glimpse`); always naming the file and the cause.
    """

    backend = "openslide"

    def __init__(self, path: str | os.PathLike, *, _validate: bool = True, **settings: Any):
        super().__init__(os.fspath(path), **settings)
        if _validate:
            _ = self.info

    def _handle_key(self, level: int) -> tuple:
        return (self._cache_key(), int(level))

    def _handle(self, level: int = 0):
        """The process's OpenSlide handle of this slide for reads of ``level`` (opened lazily;
        metadata and level-0 reads share level 0's)."""
        return handle_pool().use(self._handle_key(level), lambda: _open(self._path), _close)

    def close(self) -> None:
        """Forget this source's open handles, one per level read (other sources of the same path
        reopen lazily)."""
        pool = handle_pool()
        levels = len(self._info.level_dimensions) if self._info is not None else 1
        for level in range(levels):
            pool.discard(self._handle_key(level))

    def _open_info(self) -> SlideInfo:
        with self._handle(0) as s:
            props = dict(s.properties)
            dims = [tuple(int(v) for v in d) for d in s.level_dimensions]
            downs = [float(d) for d in s.level_downsamples]
            blocks = []
            for i in range(len(dims)):
                tw = int(props.get(f"openslide.level[{i}].tile-width", 0) or 0)
                th = int(props.get(f"openslide.level[{i}].tile-height", 0) or 0)
                if tw <= 0 or th <= 0 or tw * th > 4096 * 4096:
                    tw = th = 256
                # Tiny tiles make many reads: group them into blocks of >= 256 px.
                tw *= max(1, -(-256 // tw))
                th *= max(1, -(-256 // th))
                blocks.append((tw, th))
        mpp = None
        try:
            mx = float(props["openslide.mpp-x"])
            my = float(props["openslide.mpp-y"])
            if mx > 0 and my > 0 and np.isfinite(mx) and np.isfinite(my):
                mpp = (mx, my)
        except (KeyError, ValueError):
            mpp = None
        keep = {k: v for k, v in props.items() if not k.startswith("openslide.level[")}
        return SlideInfo(dimensions=dims[0], level_dimensions=dims, block_sizes=blocks, mpp=mpp,
                         reported_downsamples=downs, properties=keep)

    def _read_error(self, level: int, x: int, y: int, e: Exception) -> SlideError:
        handle_pool().discard(self._handle_key(level))  # OpenSlide errors are sticky
        return SlideError(self._path, f"reading level {level} at level-0 ({x}, {y}) failed "
                                      f"(corrupt tile data?): {e}")

    def read_regions(self, level: int, x0: np.ndarray, y0: np.ndarray, w: int, h: int,
                     use_cache: bool = True) -> np.ndarray:
        """``(N, 3, h, w)`` uint8 regions of ``level`` with top-left corners ``(x0, y0)`` (level
        pixels; partly or wholly outside the level reads white): a transposed view of one
        ``(N, h, w, 3)`` array.

        Each region's part inside the level is one OpenSlide ``read_region((round(x * d),
        round(y * d)), level, (w', h'))`` through this level's own handle, composited over white
        (a region wholly outside costs no read); on a level with a non-integer ``d`` it starts
        :meth:`_region_offsets` away from ``(x, y)``. Cached by OpenSlide's process-wide tile
        cache only (never the package's block cache); ``use_cache=False`` reads the same way, as
        OpenSlide cannot bypass its cache for one read."""
        import openslide

        xs = np.asarray(x0, dtype=np.int64).reshape(-1)
        ys = np.asarray(y0, dtype=np.int64).reshape(-1)
        n = xs.shape[0]
        out = np.empty((n, h, w, 3), dtype=np.uint8)
        if n == 0 or w <= 0 or h <= 0:
            return out.transpose(0, 3, 1, 2)
        info = self.info
        lw, lh = info.level_dimensions[level]
        d = info.reported_downsamples[level]
        inside = (xs >= 0) & (ys >= 0) & (xs + w <= lw) & (ys + h <= lh)
        if not inside.all():
            out[~inside] = 255
        touch = (xs < lw) & (ys < lh) & (xs + w > 0) & (ys + h > 0)
        idx = np.flatnonzero(touch).tolist()
        if not idx:
            return out.transpose(0, 3, 1, 2)
        # Python ints: OpenSlide wants them, and numpy scalars slow the loop down.
        xl, yl = xs.tolist(), ys.tolist()
        rx = ry = 0
        try:
            with self._handle(level) as s:
                for i in idx:
                    x, y, dst = xl[i], yl[i], out[i]
                    xa, xb, ya, yb = max(x, 0), min(x + w, lw), max(y, 0), min(y + h, lh)
                    rx, ry = _level0(xa, d), _level0(ya, d)
                    _put(dst[ya - y:yb - y, xa - x:xb - x],
                         *_read_rgba(s, rx, ry, level, xb - xa, yb - ya))
        except openslide.OpenSlideError as e:
            raise self._read_error(level, rx, ry, e) from e
        return out.transpose(0, 3, 1, 2)

    def _region_offsets(self, level: int, x0: np.ndarray, y0: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray] | None:
        """OpenSlide reads level pixel ``X / d`` for a level-0 request ``X``: on a level whose
        downsample ``d`` is not an integer, the region asked for at level pixel ``x`` (requested
        at ``X = round(x * d)``) starts at ``X / d``, up to ``0.5 / d`` away, and OpenSlide
        interpolates it there. Returns that offset so the glimpse is placed exactly."""
        d = self.info.reported_downsamples[level]
        if float(d).is_integer():
            return None

        def off(v: np.ndarray) -> np.ndarray:
            a = np.maximum(np.asarray(v, dtype=np.int64), 0).astype(np.float64)
            return (np.floor(a * d + 0.5) - a * d) / d

        return off(x0), off(y0)

    def read_level0_rgba(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """OpenSlide's own ``read_region((x, y), 0, (w, h))`` as RGBA uint8 (for conversion
        checks)."""
        import openslide

        try:
            with self._handle(0) as s:
                return np.asarray(s.read_region((x, y), 0, (w, h)))
        except openslide.OpenSlideError as e:
            raise self._read_error(0, x, y, e) from e
