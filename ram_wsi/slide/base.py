"""The one interface every glimpse source implements.

A :class:`GlimpseSource` serves :func:`ram_wsi.retina.glimpse`'s glimpses from a slide without
loading it: for patch ``j`` it picks the pyramid level with :func:`~ram_wsi.retina.choose_level`,
reads only the level pixels :func:`~ram_wsi.retina.window_span` names, and hands them to
:func:`~ram_wsi.retina.resample` with the residual factor and a white fill. The cost of a glimpse
is therefore the cost of a few ``~(2g+2)^2`` regions, whatever the size of the slide.

By default regions are assembled from decoded *blocks* (the store's chunks) kept in one
bytes-bounded LRU per process (:mod:`ram_wsi.slide.cache`): a backend only has to decode one
block; assembling regions, white padding outside the image and batching are done here once.
A backend whose library reads small regions cheaply overrides :meth:`read_regions` instead
(OpenSlide: its cost follows the pixels it paints, and it has its own tile cache).

Per retina the plan (level, residual factor and region size of every scale) is computed once
per slide. Scales whose residual factor is an integer (a power-of-two retina on a 2x or 4x
pyramid) read their region from the window's first pixel so that ``resample`` takes its strided
path; scales alike are resampled in one call.

Single-level and shallow slides: the levels a source reads are the file's plus the coarser ones
it builds once, 2x2-averaged, into the block cache (:mod:`._levels`); a coarse scale reads a
built level as it would a pyramid's. What the counters report is what was decoded from the file
(built blocks are made from decoded ones, so they count nothing), each block clipped to the
level: a decision never counts more than the slide's own pixels.

Coordinates: ``loc`` is ``(N, 2)`` centres ``(x, y)`` in ``[-1, 1]`` of the level-0 image
(``(-1, -1)`` its top-left corner, ``+-1`` its border), ``x`` maps to ``(x + 1) / 2 * W``.
Level ``l`` has its own per-axis downsample ``W0 / W_l`` and ``H0 / H_l`` (non-integer ones such
as 4.016 are common); level pixel ``p`` covers level-0 ``[p * d, (p + 1) * d)``.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SlideError
from ..retina import RetinaSpec, choose_level, resample, window_span
from ._levels import BUILT_BLOCK, ReadLevels, assemble, mean2x2, read_levels
from ._plan import ScaleGroup, place_windows, plan_retina, select_groups
from .cache import block_cache

__all__ = ["COUNTERS", "GlimpseSource", "SlideInfo", "as_locations"]

COUNTERS = ("regions", "pixels_requested", "blocks_decoded", "pixels_decoded", "bytes_read")
"""What every source counts (:attr:`GlimpseSource.counters`): regions asked for and their
pixels; blocks (chunks, tiles) decoded and their pixels -- a block served from the cache costs
nothing, so a cold source counts what a first read of the slide really decodes -- and the
encoded bytes read from storage where the backend knows them (zarr: chunk bytes; OpenSlide:
an estimate from the file's mean bytes per pixel)."""


@dataclasses.dataclass
class SlideInfo:
    """What a backend reports about a slide when it is first opened."""

    dimensions: tuple[int, int]  # (W, H) of level 0
    level_dimensions: list[tuple[int, int]]
    block_sizes: list[tuple[int, int]]  # (bw, bh) per level: the unit of decoding and caching
    mpp: tuple[float, float] | None = None  # (x, y) micrometres per level-0 pixel
    mpp_note: str | None = None  # why a size the file states is not taken (units.slide_mpp)
    reported_downsamples: list[float] | None = None  # as the file states them (OpenSlide)
    axis_downsamples: list[tuple[float, float]] | None = None  # overrides W0/W_l, H0/H_l
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)


def as_locations(loc: Any) -> np.ndarray:
    """``(N, 2)`` float64 numpy array from a tensor, array or sequence of ``(x, y)``."""
    if isinstance(loc, torch.Tensor):
        loc = loc.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(loc, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 2:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"locations must be (N, 2) (x, y) in [-1, 1], got shape {arr.shape}")
    return arr


class GlimpseSource(abc.ABC):
    """A slide (or image) that serves multi-resolution glimpses lazily.

    Subclasses implement :meth:`_open_info` (read the geometry; raise :class:`SlideError`) and
    either :meth:`_read_block` (decode one block of a level; regions are assembled here) or
    their own :meth:`read_regions`. Everything else -- properties, glimpses, thumbnails,
    pickling as *path + settings* -- lives here.

    Raises:
        SlideError: naming the file and the cause, for anything wrong with the slide (missing,
            unreadable, corrupt, no physical units when ``units="um"`` is asked for).
    """

    backend = "abstract"
    fill = 1.0  # white: what a glimpse sees outside the slide
    builds_levels = True  # build the coarse levels a single-level or shallow file lacks

    def __init__(self, path: str | os.PathLike | None, **settings: Any):
        self._path = None if path is None else str(path)
        self._settings = dict(settings)
        self._info: SlideInfo | None = None
        self._stamp: float | None = None
        self._plans: dict[RetinaSpec, list[tuple[ScaleGroup, list[ScaleGroup]]]] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._read: ReadLevels | None = None

    # ----------------------------------------------------------------------- to implement
    @abc.abstractmethod
    def _open_info(self) -> SlideInfo:
        """Open the slide (lazily, through the process's handle pool) and describe it."""

    def _read_block(self, level: int, bx: int, by: int) -> np.ndarray:
        """Decode block ``(bx, by)`` of ``level`` as ``(3, bh, bw)`` uint8, white outside the
        level. Raises :class:`SlideError` if the file cannot be read. Needed by the default
        :meth:`read_regions` only."""
        raise NotImplementedError(f"{type(self).__name__} reads no blocks")

    def _region_offsets(self, level: int, x0: np.ndarray, y0: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray] | None:
        """Where the regions :meth:`read_regions` returns really start, minus ``(x0, y0)``, in
        level pixels (``(N,)`` each), or None when they start exactly there (most readers).
        OpenSlide on a level with a non-integer downsample reads from a sub-pixel position."""
        return None

    def _blocked(self, level: int, use_cache: bool) -> bool:
        """Whether reads of ``level`` are assembled from blocks here (every level of a
        block reader; a built level always). A reader of regions (OpenSlide) says which of its
        file levels it reads through blocks instead."""
        return True

    # ----------------------------------------------------------------------- pickling
    def __reduce__(self):
        # A source travels as path + settings; handles are reopened where it is used.
        return (_rebuild, (type(self), self._path, self._settings))

    # ----------------------------------------------------------------------- properties
    @property
    def info(self) -> SlideInfo:
        if self._info is None:
            # The file's mtime is part of every cache key: a rewritten slide is never served
            # from blocks (or a handle) of its previous version.
            self._stamp = self.mtime()
            info = self._open_info()
            for i, (w, h) in enumerate(info.level_dimensions):
                if w <= 0 or h <= 0:
                    raise SlideError(self._path or "<memory>",
                                     f"level {i} has a zero size ({w}x{h})")
            self._info = info
        return self._info

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(W, H)`` of level 0."""
        return tuple(self.info.dimensions)

    @property
    def level_count(self) -> int:
        return len(self.info.level_dimensions)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(d) for d in self.info.level_dimensions]

    @property
    def axis_downsamples(self) -> list[tuple[float, float]]:
        """Per-axis ``(W0 / W_l, H0 / H_l)`` of every level (what the geometry uses)."""
        info = self.info
        if info.axis_downsamples is not None:
            return list(info.axis_downsamples)
        w0, h0 = info.dimensions
        return [(w0 / w, h0 / h) for w, h in info.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        """One downsample per level (the file's own figure when it states one, else the mean of
        the per-axis ratios); :func:`choose_level` picks levels from these."""
        info = self.info
        if info.reported_downsamples is not None:
            return list(info.reported_downsamples)
        return [0.5 * (dx + dy) for dx, dy in self.axis_downsamples]

    @property
    def read_levels(self) -> ReadLevels:
        """The levels glimpses and thumbnails read: the file's, then those built from its
        coarsest when the file is single-level or shallow (:mod:`._levels`)."""
        if self._read is None:
            info = self.info
            self._read = read_levels(info.level_dimensions, self.level_downsamples,
                                     self.axis_downsamples, info.block_sizes,
                                     build=self.builds_levels)
        return self._read

    @property
    def mpp(self) -> float | None:
        """Micrometres per level-0 pixel (mean of x and y), or None when the slide does not
        say."""
        m = self.info.mpp
        return None if m is None else 0.5 * (m[0] + m[1])

    @property
    def metadata(self) -> dict[str, Any]:
        """A plain dict: geometry, backend, and whether physical units are available."""
        info = self.info
        has_mpp = info.mpp is not None
        return {
            "backend": self.backend,
            "path": self._path,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": self.level_downsamples,
            "levels_built": len(self.read_levels.dims) - self.read_levels.files,
            "block_sizes": [list(b) for b in info.block_sizes],
            "mpp": self.mpp,
            "mpp_xy": None if not has_mpp else list(info.mpp),
            "physical_units": has_mpp,
            "mpp_note": info.mpp_note,
            "units": ("micrometres available: glimpse(..., units='um') works" if has_mpp else
                      "no physical units: the slide states no usable mpp"
                      + (f" ({info.mpp_note})" if info.mpp_note else "")
                      + "; only units='px' works"),
            "properties": dict(info.properties),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"

    # ----------------------------------------------------------------------- counting
    @property
    def counters(self) -> dict[str, int]:
        """A copy of this source's read counters (:data:`COUNTERS`), since it was created or
        :meth:`reset_counters` was called: how "pixels read per slide" is measured."""
        return dict(self._counts)

    def reset_counters(self) -> dict[str, int]:
        """Zero the counters; returns their values before."""
        before = dict(self._counts)
        self._counts = dict.fromkeys(COUNTERS, 0)
        return before

    def _count(self, **amounts: int) -> None:
        counts = self._counts
        for key, value in amounts.items():
            counts[key] += int(value)

    # ----------------------------------------------------------------------- reading
    def _cache_key(self) -> tuple:
        if self._stamp is None:
            self._stamp = self.mtime()
        return (self.backend, self._path, self._stamp)

    def _block(self, level: int, bx: int, by: int, use_cache: bool = True) -> np.ndarray:
        """Block ``(bx, by)`` of file ``level``, from the cache when it holds it, else decoded
        (and counted: the block's pixels inside the level). ``use_cache=False`` (a read done
        once: a conversion, a benchmark's naive read) does not fill the cache."""
        cache = block_cache()
        key = (self._cache_key(), level, bx, by)
        blk = cache.get(key)
        if blk is None:
            blk = np.ascontiguousarray(self._read_block(level, bx, by))
            self._count(blocks_decoded=1, pixels_decoded=self._block_pixels(level, bx, by))
            if use_cache:
                blk = cache.put(key, blk)
        return blk

    def _built(self, level: int, bx: int, by: int, use_cache: bool = True) -> np.ndarray:
        """Block ``(bx, by)`` of built ``level``, from the cache or made now (counting nothing
        itself: what it is made of was counted when decoded)."""
        cache = block_cache()
        key = (self._cache_key(), level, bx, by)
        blk = cache.get(key)
        if blk is None:
            blk = np.ascontiguousarray(self._build_block(level, bx, by, use_cache))
            if use_cache:
                blk = cache.put(key, blk)
        return blk

    def _block_pixels(self, level: int, bx: int, by: int) -> int:
        """Pixels of file block ``(bx, by)`` that lie inside ``level`` (what it holds of the
        slide: an edge block's padding is not the slide's)."""
        lw, lh = self.info.level_dimensions[level]
        bw, bh = self.info.block_sizes[level]
        return max(0, min(bw, lw - bx * bw)) * max(0, min(bh, lh - by * bh))

    def _share_blocks(self, level: int, blocks: dict[tuple[int, int], np.ndarray]) -> None:
        """Put blocks a backend decoded along with the one asked for (a plain image decodes
        whole) into the cache, counting their pixels (not as more decodes)."""
        cache, key = block_cache(), self._cache_key()
        for (bx, by), blk in blocks.items():
            cache.put((key, level, bx, by), np.ascontiguousarray(blk))
            self._count(pixels_decoded=self._block_pixels(level, bx, by))

    def _build_block(self, level: int, bx: int, by: int, use_cache: bool) -> np.ndarray:
        """Block ``(bx, by)`` of built ``level``: the 2x2 mean of the ``2B x 2B`` region under
        it one level down (white outside), itself read from blocks (built or the file's)."""
        b = BUILT_BLOCK
        below = self._level_region(level - 1, 2 * b * bx, 2 * b * by, 2 * b, 2 * b, use_cache)
        return mean2x2(below)

    def _level_region(self, level: int, x: int, y: int, w: int, h: int,
                      use_cache: bool) -> np.ndarray:
        """One ``(3, h, w)`` region read for building a coarser level (not asked for by a
        caller, so not counted as a region requested)."""
        xs, ys = np.array([x], np.int64), np.array([y], np.int64)
        if self._blocked(level, use_cache):
            return self._from_blocks(level, xs, ys, w, h, use_cache)[0]
        out = self.read_regions(level, xs, ys, w, h, use_cache)[0]
        self._count(regions=-1, pixels_requested=-w * h)  # a region reader counted it
        return out

    def read_regions(self, level: int, x0: np.ndarray, y0: np.ndarray, w: int, h: int,
                     use_cache: bool = True) -> np.ndarray:
        """``(N, 3, h, w)`` uint8 regions of ``level`` (any of :attr:`read_levels`: the file's
        or a built one) with top-left corners ``(x0, y0)`` (level pixels, integers, may lie
        partly or wholly outside: the outside is white, and costs no decoding)."""
        x0 = np.asarray(x0, dtype=np.int64).reshape(-1)
        y0 = np.asarray(y0, dtype=np.int64).reshape(-1)
        n = x0.shape[0]
        self._count(regions=n, pixels_requested=n * w * h)
        return self._from_blocks(level, x0, y0, w, h, use_cache)

    def _from_blocks(self, level: int, x0: np.ndarray, y0: np.ndarray, w: int, h: int,
                     use_cache: bool) -> np.ndarray:
        """Regions of a file level through :meth:`_assemble` (which a backend may override
        for its own levels); of a built level always through this class's."""
        if self.read_levels.built(level):
            return GlimpseSource._assemble(self, level, x0, y0, w, h, use_cache)
        return self._assemble(level, x0, y0, w, h, use_cache)

    def _assemble(self, level: int, x0: np.ndarray, y0: np.ndarray, w: int, h: int,
                  use_cache: bool = True) -> np.ndarray:
        """:meth:`read_regions` from blocks (:func:`._levels.assemble`), uncounted."""
        lv = self.read_levels
        fetch = self._built if lv.built(level) else self._block
        return assemble(lambda bx, by: fetch(level, bx, by, use_cache), lv.dims[level],
                        lv.blocks[level], x0, y0, w, h)

    def read_region(self, level: int, x: int, y: int, w: int, h: int,
                    use_cache: bool = True) -> np.ndarray:
        """One ``(3, h, w)`` uint8 region of ``level`` at level pixel ``(x, y)``; white outside."""
        return self.read_regions(level, np.array([x]), np.array([y]), w, h, use_cache)[0]

    def _px_spec(self, spec: RetinaSpec, units: str) -> RetinaSpec:
        if units == "px":
            return spec
        if units != "um":
            raise ValueError(f"units must be 'px' or 'um', got {units!r}")
        mpp = self.mpp
        if mpp is None:
            why = f" ({self.info.mpp_note})" if self.info.mpp_note else ""
            raise SlideError(self._path or "<memory>",
                             f"the slide has no mpp (no physical pixel size{why}), so a retina "
                             "in micrometres (units='um') cannot be used; use units='px'")
        return dataclasses.replace(spec, base=spec.base / mpp)

    def glimpse(self, loc: Any, spec: RetinaSpec, *, units: str = "px") -> torch.Tensor:
        """Glimpses at ``loc`` (``(N, 2)`` ``(x, y)`` in ``[-1, 1]``): ``(N, k, 3, g, g)`` float32
        in ``[0, 1]``, white outside the slide.

        ``spec.base`` is the width of one output pixel of patch 0 in level-0 pixels
        (``units="px"``) or in micrometres (``units="um"``; raises :class:`SlideError` when the
        slide has no mpp). Patch ``j`` is read from level ``choose_level(f_j, level_downsamples)``
        and resampled with :func:`ram_wsi.retina.resample`, exactly as in memory.
        """
        spec = self._px_spec(spec, units)
        locs = as_locations(loc)
        n, k, g = locs.shape[0], spec.scales, spec.patch
        out = torch.empty((n, k, 3, g, g), dtype=torch.float32)
        if n == 0:
            return out
        w0, h0 = self.dimensions
        pxx = (locs[:, 0] + 1.0) * (0.5 * w0)
        pxy = (locs[:, 1] + 1.0) * (0.5 * h0)
        for group in self._plan(spec, n):
            p, kg = group.first, len(group.scales)
            # Regions' top-left corners and windows' top-left corners, level pixels, (kg, n).
            x0, y0, left, top = place_windows(group, pxx, pxy, g)
            cl, ct = left - x0, top - y0  # window corners in region pixels, (kg, n)
            if not p.int_factor:
                outside_to_padding(group, x0, y0, left, top, g)
            regions = [self.read_regions(q.level, x0[i], y0[i], p.region_w, p.region_h)
                       for i, q in enumerate(group.scales)]
            if p.margin:  # the reader's regions start a sub-pixel off (the plan probed it)
                for i, q in enumerate(group.scales):
                    ex, ey = self._region_offsets(q.level, x0[i], y0[i])
                    cl[i] -= ex
                    ct[i] -= ey
            # Windows ordered (location, scale): a group of consecutive scales lands in ``out``
            # as one slice.
            src = np.stack(regions, 1).reshape((n * kg,) + regions[0].shape[1:]) \
                if kg > 1 else regions[0]
            # Sub-pixel region offsets can push a corner out of [0, 1): resample then checks
            # and takes the dense path where the strided one does not apply.
            res = resample(torch.from_numpy(src).to(torch.float32),
                           torch.from_numpy(cl.T.reshape(-1)), torch.from_numpy(ct.T.reshape(-1)),
                           p.factor_x, p.factor_y, g, fill=255.0 * self.fill,
                           aligned=bool(p.int_factor) and not p.margin)
            res = res.mul_(1.0 / 255.0).clamp_(0.0, 1.0).view(n, kg, 3, g, g)
            if group.j_slice is not None:
                out[:, group.j_slice] = res
            else:
                out[:, group.js] = res
        return out

    def _plan(self, spec: RetinaSpec, n: int) -> list[ScaleGroup]:
        """The groups of scales to read for ``n`` locations (:func:`._plan.select_groups`) from
        this slide's plan of ``spec`` (:func:`._plan.plan_retina`, cached per retina)."""
        plans = self._plans.get(spec)
        if plans is None:
            lv = self.read_levels
            plans = self._plans[spec] = plan_retina(spec, lv.downsamples, lv.axis, lv.dims,
                                                    self._margin)
        return select_groups(plans, n)

    def _margin(self, level: int) -> int:
        """Extra level pixels to read on each side of a region of ``level``: 1 for a reader
        whose regions start a sub-pixel off (so that the shifted window still lies inside what
        was read), else 0."""
        if self._blocked(level, True):
            return 0
        z = np.zeros(1, np.int64)
        return 0 if self._region_offsets(level, z, z) is None else 1

    def thumbnail(self, max_size: int = 2048) -> np.ndarray:
        """``(h, w, 3)`` uint8 view of the whole slide, longest side ``<= max_size``, read from
        the coarsest level that still has at least that resolution. On a pyramid it bypasses
        the cache (a level read once); on a single-level or shallow slide it reads through it,
        building the coarse levels the glimpses will read: the slide is decoded once."""
        w0, h0 = self.dimensions
        factor = max(w0, h0) / float(max_size)
        lv = self.read_levels
        lvl = choose_level(max(factor, 1.0), lv.downsamples)
        lw, lh = lv.dims[lvl]
        img = self.read_region(lvl, 0, 0, lw, lh,
                               use_cache=lv.base is not None).transpose(1, 2, 0)
        scale = max_size / float(max(lw, lh))
        if scale < 1.0:
            from PIL import Image

            tw, th = max(1, round(lw * scale)), max(1, round(lh * scale))
            img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(
                (tw, th), Image.Resampling.BOX))
        return np.ascontiguousarray(img)

    def mtime(self) -> float:
        """Modification time of the slide's path (part of every cache key), 0 if none; a backend
        whose slide is a directory says which file in it changes (ZarrSource: ``zarr.json``)."""
        if self._path is None:
            return 0.0
        try:
            return Path(self._path).stat().st_mtime
        except OSError:
            return 0.0

    def close(self) -> None:
        """Forget this source's open handle (other sources of the same path reopen lazily)."""
        from .cache import handle_pool

        handle_pool().discard(self._cache_key())


def outside_to_padding(group: ScaleGroup, x0: np.ndarray, y0: np.ndarray, left: np.ndarray,
                        top: np.ndarray, g: int) -> None:
    """Move the regions of windows lying wholly outside their level (a dense group keeps its
    regions inside the level, so such a window would read -- and decode -- the level's edge
    for nothing) wholly outside too, in place: they then read as white, decoding nothing, and
    the window, all outside, sees white either way."""
    p = group.first
    fx, cx = window_span(left, p.factor_x, g)
    fy, cy = window_span(top, p.factor_y, g)
    out = ((fx >= group.level_w) | (fx + cx <= 0) | (fy >= group.level_h) | (fy + cy <= 0))
    if out.any():
        x0[out] = -p.region_w
        y0[out] = -p.region_h


def _rebuild(cls, path, settings):
    # An unpickled source must not open its file (constructors open once to validate): the copy
    # opens lazily in the process that reads it.
    source = cls.__new__(cls)
    GlimpseSource.__init__(source, path, **settings)
    return source
