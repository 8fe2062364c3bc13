"""Glimpses from anything OpenSlide opens: Aperio SVS, generic tiled TIFF, DICOM, Hamamatsu, ...

Regions are read directly: a glimpse's region of ``level`` at level pixel ``(x, y)`` is one
``read_region((round(x * d), round(y * d)), level, (w, h))`` (``d`` the level's reported
downsample), alpha-composited over white (OpenSlide returns non-premultiplied RGBA, alpha 0
outside the scanned area and outside the level). OpenSlide's own process-wide
``openslide.OpenSlideCache`` (:func:`openslide_cache`, set on every handle; its size
``RAM_WSI_OPENSLIDE_CACHE_BYTES``, default 256 MiB -- 64 MiB cost a third of the slide actors'
episodes/s -- or ``set_cache_bytes(openslide_bytes=...)``) is this backend's bounded tile cache;
the package's decoded-block cache is not used for the regions of a pyramid's levels. Why,
measured on JPEG-tiled pyramidal TIFFs:

* ``read_region`` costs what it paints, not what it decodes: a whole 256x256 tile ~1,350 us of
  CPU (painting + RGBA conversion), a 33x33 region ~150-220 us with OpenSlide's cache empty and
  ~40 us from its cache. Reading whole blocks to cut ~33x33 regions out of them was ~8x dearer
  per cold glimpse.
* Handles are per level: libtiff re-reads a level's directory (whose tile-offset table grows
  with the slide) whenever consecutive reads of one handle switch level, so levels 0, 2, 4
  read alternately through one handle cost 429 us/read on a 131k^2 TIFF vs 222 us on a handle
  that stays on one level (244 vs 214 on 8k^2): a per-glimpse cost growing with slide size.
  Each level gets its own OpenSlide object in the process's handle pool, keyed
  ``(source key, level)`` and opened lazily, once it has been read ``shared_reads`` times
  (default 8; until then level 0's handle reads it): opening a handle costs what a few hundred
  switches do on a 131k^2 TIFF, so one decision on a cold slide (4 glimpses x 4 scales) opens
  the file once -- 20 ms against 49 ms with a handle per level from the first read.
  Metadata and level-0 reads use level 0's.

Handles: ``RAM_WSI_MAX_OPEN_SLIDES`` / :func:`~ram_wsi.slide.cache.set_max_open` bound open
*handles*, so a slide read at ``k`` levels holds up to ``k`` (at most its level count; a
3-scale glimpse on a 2x pyramid typically 3) -- the default 192 keeps ~64 slides open at once
under such glimpses, as many as one handle per slide did. Raise it when glimpsing more slides
round-robin (an OpenSlide open costs ~0.5 ms for an 8k^2 TIFF, ~11 ms for a 131k^2 one).

``use_cache=False``: OpenSlide cannot bypass its cache for one read, so it simply reads (through
OpenSlide's cache, which is bounded).

Single-level and shallow slides (small-region SVS, small DICOMs, one-level TIFFs) are the
exception: their coarse scales read levels the source builds (:mod:`._levels`), and the file
level those are built from is read through the block cache in blocks (:meth:`OpenSlideSource.
_blocked`): the thumbnail decodes it whole once, and its blocks then serve the built levels and
the fine glimpses without OpenSlide decoding -- and the counters counting -- it again.

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

import os
from typing import Any

import numpy as np

from ..errors import SlideError
from . import _openslide_lowlevel as _ll
from ._compositing import composite_over_white
from ._tiff_tiles import open_tiles
from .base import GlimpseSource, SlideInfo
from .cache import drop_process_wide, env_int, handle_pool, process_wide, register_backend_cache
from .units import slide_mpp

__all__ = ["OpenSlideSource", "composite_over_white", "openslide_cache"]

# OpenSlide's tile cache is this backend's only one; it is registered with the package's cache
# controls (set_cache_bytes(openslide_bytes=...), cache_settings, clear_caches) below.
_cache_bytes = [env_int("RAM_WSI_OPENSLIDE_CACHE_BYTES", 256 << 20)]


def openslide_cache() -> Any:
    """The process-wide ``openslide.OpenSlideCache`` set on every OpenSlide handle."""
    def make() -> Any:
        import openslide

        return openslide.OpenSlideCache(max(0, _cache_bytes[0]))

    return process_wide("openslide", make)


def _resize_openslide_cache(nbytes: int) -> None:
    # An OpenSlideCache cannot be resized: drop it and every handle that holds it.
    _cache_bytes[0] = int(nbytes)
    drop_process_wide("openslide")
    handle_pool().clear()


register_backend_cache("openslide", lambda: _cache_bytes[0], _resize_openslide_cache)


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

    def __init__(self, path: str | os.PathLike, **settings: Any):
        super().__init__(os.fspath(path), **settings)
        _ = self.info  # open once to validate (an unpickled copy does not: base._rebuild)

    @property
    def _shared_reads(self) -> int:
        """Reads of a level through level 0's handle before it gets its own (setting
        ``shared_reads``, else ``$RAM_WSI_OPENSLIDE_SHARED_READS``, default 8)."""
        v = self._settings.get("shared_reads")
        return int(v) if v is not None else env_int("RAM_WSI_OPENSLIDE_SHARED_READS", 8)

    @property
    def _level_reads(self) -> dict[int, int]:
        if self._reads is None:
            self._reads = {}
        return self._reads

    _reads: dict[int, int] | None = None  # read_regions calls per level (handle choice)
    _bpp: float | None = None  # encoded bytes per level pixel, for the bytes_read estimate

    def _handle_key(self, level: int) -> tuple:
        return (self._cache_key(), int(level))

    def _handle(self, level: int = 0):
        """The process's OpenSlide handle of this slide for reads of ``level`` (opened lazily;
        metadata and level-0 reads share level 0's)."""
        return handle_pool().use(self._handle_key(level), lambda: _ll.open_slide(self._path, openslide_cache()),
                                 _ll.close_slide)

    def close(self) -> None:
        """Forget this source's open handles, one per level read (other sources of the same path
        reopen lazily)."""
        pool = handle_pool()
        levels = len(self._info.level_dimensions) if self._info is not None else 1
        for level in range(levels):
            pool.discard(self._handle_key(level))
            pool.discard((self._cache_key(), "tiles", level))

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
        # OpenSlide passes a TIFF's placeholder 72 dpi on as 352.78 um/px: the one rule decides.
        rule = slide_mpp(props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))
        keep = {k: v for k, v in props.items() if not k.startswith("openslide.level[")}
        return SlideInfo(dimensions=dims[0], level_dimensions=dims, block_sizes=blocks,
                         mpp=rule.mpp, mpp_note=rule.note, reported_downsamples=downs,
                         properties=keep)

    def _reader(self, level: int) -> int:
        """Which level's handle reads ``level`` now: level 0's shared one for the first
        ``shared_reads`` calls on a level, then the level's own. One decision on a cold slide
        (a few reads per level) then opens the file once -- an open costs ~0.5 ms on an 8k^2
        TIFF but ~9 ms on a 131k^2 one (tile tables) -- while a level read on and on gets the
        handle that never switches directory."""
        if level == 0:
            return 0
        reads = self._level_reads
        reads[level] = n = reads.get(level, 0) + 1
        return level if n > self._shared_reads else 0

    def _blocked(self, level: int, use_cache: bool) -> bool:
        """Levels read through the block cache rather than one OpenSlide read per region:
        those built beyond the file's, and -- on a single-level or shallow slide -- the level
        they are built from, when its downsample is an integer (level 0 always): the thumbnail
        decodes it whole anyway, and its cached blocks then serve the built levels and the
        fine glimpses without OpenSlide decoding (and our counters counting) them again.
        ``use_cache=False`` (a conversion) keeps OpenSlide's own reads."""
        lv = self.read_levels
        if lv.built(level):
            return True
        return (use_cache and level == lv.base
                and float(self.info.reported_downsamples[level]).is_integer())

    def _read_block(self, level: int, bx: int, by: int) -> np.ndarray:
        """Block ``(bx, by)`` of a level read through blocks (:meth:`_blocked`): its part inside
        the level (none when it has none), white around it, decoded by tifffile where that is
        OpenSlide's to the bit (:mod:`._tiff_tiles`: 3x faster), else by one OpenSlide read;
        bytes estimated as :meth:`_count_reads` does."""
        info = self.info
        bw, bh = info.block_sizes[level]
        lw, lh = info.level_dimensions[level]
        x, y = bx * bw, by * bh
        w, h = min(bw, lw - x), min(bh, lh - y)
        out = np.full((bh, bw, 3), 255, dtype=np.uint8)
        if w > 0 and h > 0:
            if not self._read_tiles(level, x, y, w, h, out[:h, :w]):
                self._read_openslide(level, x, y, w, h, out[:h, :w])
            self._count(bytes_read=round(w * h * self._bytes_per_pixel()))
        return out.transpose(2, 0, 1)

    def _read_openslide(self, level: int, x: int, y: int, w: int, h: int,
                        dst: np.ndarray) -> None:
        """One OpenSlide read of level pixels ``[x, x + w) x [y, y + h)`` into ``dst``."""
        import openslide

        d = self.info.reported_downsamples[level]
        rx, ry = _ll.level0_coordinate(x, d), _ll.level0_coordinate(y, d)
        reader = self._reader(level)
        try:
            with self._handle(reader) as s:
                _ll.put_over_white(dst, *_ll.read_rgba(s, rx, ry, level, w, h))
        except openslide.OpenSlideError as e:
            raise self._read_error(reader, rx, ry, e) from e

    def _read_tiles(self, level: int, x: int, y: int, w: int, h: int,
                    dst: np.ndarray) -> bool:
        """The same pixels decoded from the file's tiles by tifffile, when the level's page
        allows it and its first block matched OpenSlide's read (checked here, once); False:
        read through OpenSlide."""
        lw, lh = self.info.level_dimensions[level]
        with handle_pool().use((self._cache_key(), "tiles", level),
                               lambda: open_tiles(self._path, lw, lh),
                               lambda r: r.close() if r is not None else None) as tiles:
            if tiles is None or tiles.verified is False:
                return False
            try:
                tiles.read(x, y, w, h, dst)
            except Exception:  # noqa: BLE001 -- OpenSlide reads it and reports what is wrong
                tiles.verified = False
                return False
            if tiles.verified is None:
                ref = np.empty_like(dst)
                self._read_openslide(level, x, y, w, h, ref)
                tiles.verified = bool(np.array_equal(ref, dst))
                if not tiles.verified:
                    dst[...] = ref
        return True

    def _read_error(self, level: int, x: int, y: int, e: Exception) -> SlideError:
        handle_pool().discard(self._handle_key(level))  # OpenSlide errors are sticky
        return _ll.openslide_error(self._path, e, f"reading level {level} at level-0 ({x}, {y})")

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

        if self._blocked(level, use_cache):
            return super().read_regions(level, x0, y0, w, h, use_cache)
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
        self._count_reads(level, xs[touch], ys[touch], w, h, n)
        if not idx:
            return out.transpose(0, 3, 1, 2)
        # Python ints: OpenSlide wants them, and numpy scalars slow the loop down.
        xl, yl = xs.tolist(), ys.tolist()
        rx = ry = 0
        read_rgba, put, level0 = _ll.read_rgba, _ll.put_over_white, _ll.level0_coordinate
        reader = self._reader(level)
        try:
            with self._handle(reader) as s:
                for i in idx:
                    x, y, dst = xl[i], yl[i], out[i]
                    xa, xb, ya, yb = max(x, 0), min(x + w, lw), max(y, 0), min(y + h, lh)
                    rx, ry = level0(xa, d), level0(ya, d)
                    put(dst[ya - y:yb - y, xa - x:xb - x],
                        *read_rgba(s, rx, ry, level, xb - xa, yb - ya))
        except openslide.OpenSlideError as e:
            raise self._read_error(reader, rx, ry, e) from e
        return out.transpose(0, 3, 1, 2)

    def _count_reads(self, level: int, xs: np.ndarray, ys: np.ndarray, w: int, h: int,
                     n: int) -> None:
        """Count a call's regions and the file tiles they touch (what a cold OpenSlide read
        decodes: its own tile cache is not visible from here; each tile's pixels inside the
        level), bytes estimated from the file's mean encoded bytes per level pixel."""
        info = self.info
        lw, lh = info.level_dimensions[level]
        props = info.properties
        tw = int(props.get(f"openslide.level[{level}].tile-width", 0) or 0) or 256
        th = int(props.get(f"openslide.level[{level}].tile-height", 0) or 0) or 256
        tiles: set[tuple[int, int]] = set()
        for x, y in zip(np.clip(xs, 0, lw - 1).tolist(), np.clip(ys, 0, lh - 1).tolist()):
            xe, ye = min(x + w, lw) - 1, min(y + h, lh) - 1
            tiles.update((tx, ty) for tx in range(x // tw, xe // tw + 1)
                         for ty in range(y // th, ye // th + 1))
        # Each tile's part inside the level: a 16x16 slide is 256 pixels, whatever its tiles.
        decoded = sum(min(tw, lw - tx * tw) * min(th, lh - ty * th) for tx, ty in tiles)
        self._count(regions=n, pixels_requested=n * w * h, blocks_decoded=len(tiles),
                    pixels_decoded=decoded,
                    bytes_read=round(decoded * self._bytes_per_pixel()))

    def _bytes_per_pixel(self) -> float:
        if self._bpp is None:
            try:
                size = os.path.getsize(self._path)
            except OSError:
                size = 0
            total = sum(w * h for w, h in self.info.level_dimensions)
            self._bpp = size / max(total, 1)
        return self._bpp

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
