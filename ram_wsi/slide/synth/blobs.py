"""The scene the digit and needle slides share: white background, a few pinkish textured tissue
blobs, and one *target* at a random place inside tissue; subclasses say what the target is
(:meth:`BlobScene.choose_target`) and how it is drawn (:meth:`BlobScene.draw_target`).

Speed (131,072^2 in a minute or so): tissue is a smooth field on a coarse grid, thresholded;
tiles are classified per level from samples of the field (white, all tissue, or composed: on a
tissue border or on the target). Levels are drawn procedurally at their own resolution (2x
steps, texture 2x2-mean-pooled), so they agree with level 0 only approximately.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .scene import COMPOSE, TEXTURE, WHITE, Scene
from .textures import TEXTURE_LIBRARY, library_texture, make_texture, pool_texture

__all__ = ["DARK", "BlobScene", "bilinear"]

DARK = np.array([60, 20, 95], dtype=np.float32)  # a stain at full ink (digits, needle ground)


def bilinear(grid: np.ndarray, gy: np.ndarray, gx: np.ndarray, cval: float | None) -> np.ndarray:
    """Separable bilinear sample of ``grid`` at row coords ``gy`` (h,) x col coords ``gx`` (w,)
    (grid index units); outside: ``cval`` (None: clamp to the edge). Four gathers, no BLAS (a
    tiny sgemm under a busy OpenBLAS thread pool costs tens of milliseconds)."""
    h, w = grid.shape
    gy = np.asarray(gy, np.float64)
    gx = np.asarray(gx, np.float64)
    iy0, ix0 = np.floor(gy).astype(np.int64), np.floor(gx).astype(np.int64)
    ty, tx = (gy - iy0).astype(np.float32), (gx - ix0).astype(np.float32)
    g = grid.astype(np.float32, copy=False)
    if cval is not None:
        g = np.pad(g, 1, constant_values=cval)
        iy0, ix0 = iy0 + 1, ix0 + 1
        h, w = h + 2, w + 2
    iy1, ix1 = np.clip(iy0 + 1, 0, h - 1), np.clip(ix0 + 1, 0, w - 1)
    iy0, ix0 = np.clip(iy0, 0, h - 1), np.clip(ix0, 0, w - 1)
    top = g[iy0][:, ix0] * (1 - tx) + g[iy0][:, ix1] * tx
    bot = g[iy1][:, ix0] * (1 - tx) + g[iy1][:, ix1] * tx
    return top * (1 - ty)[:, None] + bot * ty[:, None]


class BlobScene(Scene):
    """Tissue blobs on white and one target of ``self.tsize`` level-0 pixels centred at
    ``(self.tx, self.ty)``, fully inside tissue. Everything follows from ``seed``, drawn in a
    fixed order: tissue, textures, the target (:meth:`choose_target`), its place."""

    GRID: ClassVar[int] = 256  # coarse field resolution along the longer side
    VARIANTS: ClassVar[int] = 4
    LIBRARY_TEXTURES: ClassVar[bool] = False  # textures from the process-wide library
    params: ClassVar[dict[str, Any]] = {"tissue_blobs": None}
    tsize: int

    def __init__(self, width: int, height: int, *, seed: int, label: int | None, tile: int,
                 tissue_blobs: int | None = None):
        super().__init__(width, height, tile)
        rng = np.random.default_rng(seed)
        field = self._grow_tissue(rng, tissue_blobs)
        self._pick_textures(rng)
        self.choose_target(rng, label)
        self._place_target(rng, field)

    # ----------------------------------------------------------------------- hooks
    def choose_target(self, rng: np.random.Generator, label: int | None) -> None:
        """Set ``self.label`` and ``self.tsize`` (and whatever the target needs), drawing from
        ``rng``."""
        raise NotImplementedError(f"{type(self).__name__}.choose_target")

    def target_reach(self, level: int) -> float:
        """Half the width, in level-0 pixels, of what :meth:`draw_target` draws on ``level``."""
        return 0.5 * self.tsize

    def draw_target(self, img: np.ndarray, level: int, tx: int, ty: int, px: np.ndarray,
                    py: np.ndarray) -> np.ndarray:
        """``img`` (float ``(tile, tile, 3)``, tile ``(tx, ty)`` of ``level`` whose pixel
        centres are at level-0 columns ``px`` and rows ``py``) with the target drawn on it."""
        raise NotImplementedError(f"{type(self).__name__}.draw_target")

    # ----------------------------------------------------------------------- drawing seed
    def _grow_tissue(self, rng: np.random.Generator, tissue_blobs: int | None) -> np.ndarray:
        """The tissue field: a few Gaussian blobs and smooth noise on a coarse grid of
        ``self.cell`` level-0 pixels, tissue where it exceeds ``self.thr``; returned in float64
        (where the target is placed), kept in float32 (what is drawn)."""
        from scipy import ndimage

        self.cell = max(self.w, self.h) / self.GRID
        gw, gh = int(np.ceil(self.w / self.cell)), int(np.ceil(self.h / self.cell))
        yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float64) + 0.5
        field = np.zeros((gh, gw))
        for _ in range(int(tissue_blobs or rng.integers(2, 5))):
            cx, cy = rng.uniform(0.22, 0.78) * gw, rng.uniform(0.22, 0.78) * gh
            sx, sy = rng.uniform(0.08, 0.16) * gw, rng.uniform(0.08, 0.16) * gh
            th = rng.uniform(0, np.pi)
            u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / sx
            v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / sy
            field += np.exp(-0.5 * (u * u + v * v))
        noise = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), 6, mode="wrap")
        field += 0.25 * noise / (np.abs(noise).max() + 1e-9)
        self.field = field.astype(np.float32)
        self.thr = 0.5
        # Largest change of the bilinear field within one cell: margin for tile classification.
        self.slack = float(max(np.abs(np.diff(field, axis=0)).max(initial=0),
                               np.abs(np.diff(field, axis=1)).max(initial=0))) + 0.02
        return field

    def _pick_textures(self, rng: np.random.Generator) -> None:
        """The scene's own ``VARIANTS`` textures, or (library scenes) which of the library's:
        thousands of procedural slides then share a few MB of texture tiles instead of holding
        ~40 MB each."""
        self._tex_levels: dict[int, list[np.ndarray]] = {}
        if self.LIBRARY_TEXTURES:
            self.textures: list[np.ndarray] | None = None
            self.lib_ids: list[int] | None = [
                int(v) for v in rng.choice(TEXTURE_LIBRARY, self.VARIANTS, replace=False)]
        else:
            self.textures = [make_texture(rng, self.tile) for _ in range(self.VARIANTS)]
            self.lib_ids = None

    def _place_target(self, rng: np.random.Generator, field: np.ndarray) -> None:
        """``(self.tx, self.ty)``: a random grid cell whose neighbourhood (the target and a
        margin) is all tissue, or the most inside one when none is."""
        from scipy import ndimage

        margin = int(np.ceil(0.75 * self.tsize / self.cell)) + 1
        inside = ndimage.minimum_filter(field, size=2 * margin + 1, mode="constant", cval=-1)
        ok = np.argwhere(inside > self.thr + self.slack)
        if ok.size == 0:
            ok = np.argwhere(inside >= inside.max())
        gy, gx = ok[rng.integers(len(ok))]
        tx = float((gx + rng.uniform(0.25, 0.75)) * self.cell)
        ty = float((gy + rng.uniform(0.25, 0.75)) * self.cell)
        self.tx = float(np.clip(tx, self.tsize, self.w - self.tsize))
        self.ty = float(np.clip(ty, self.tsize, self.h - self.tsize))

    # ----------------------------------------------------------------------- Scene
    def shared_key(self, level: int, cls: int, variant: int | None) -> tuple | None:
        if cls == TEXTURE and self.lib_ids is not None and variant is not None:
            return ("texture", self.tile, self.lib_ids[int(variant)], int(level))
        return super().shared_key(level, cls, variant)

    def texture(self, level: int, variant: int) -> np.ndarray:
        """Texture tile of ``level``: variant 2x2-mean-pooled ``level`` times, tiled back."""
        if self.lib_ids is not None:
            return library_texture(self.tile, self.lib_ids[variant], level)
        if level not in self._tex_levels:
            self._tex_levels[level] = [pool_texture(tex, level, self.tile)
                                       for tex in self.textures]
        return self._tex_levels[level][variant]

    def classify(self, level: int, rows: tuple[int, int] | None = None,
                 cols: tuple[int, int] | None = None) -> np.ndarray:
        """Per tile of ``level``: white, all tissue (and not on the target), or composed.
        Every tile's samples are computed alone, so a block equals that part of the level."""
        span = self.tile * 2**level / self.cell  # tile width in cells
        r0, r1, c0, c1 = self.tile_span(level, rows, cols)
        if span > 32:  # few tiles at such levels: compose them all
            return np.full((r1 - r0, c1 - c0), COMPOSE, np.int8)
        cls = self._classify_tissue(level, span, r0, r1, c0, c1)
        self._compose_cut_tiles(cls, level, r1, c1)
        self._compose_target_tiles(cls, level, r0, c0)
        return cls

    def _classify_tissue(self, level: int, span: float, r0: int, r1: int, c0: int,
                         c1: int) -> np.ndarray:
        """White where the field stays below the threshold over a tile, tissue where it stays
        above, composed where it may cross (samples at most one cell apart, ``slack`` margin)."""
        t, f = self.tile, 2**level
        nr, nc = r1 - r0, c1 - c0
        s = int(max(9, np.ceil(span) + 2))
        off = (np.arange(s) / (s - 1)) * t * f  # level-0 offsets of samples inside a tile
        gx = ((np.arange(c0, c1)[:, None] * t * f + off[None]) / self.cell - 0.5).reshape(-1)
        gy = ((np.arange(r0, r1)[:, None] * t * f + off[None]) / self.cell - 0.5).reshape(-1)
        vals = bilinear(self.field, gy, gx, None).reshape(nr, s, nc, s)
        lo, hi = vals.min((1, 3)), vals.max((1, 3))
        cls = np.full((nr, nc), COMPOSE, np.int8)
        cls[hi < self.thr - self.slack] = WHITE
        cls[lo > self.thr + self.slack] = TEXTURE
        return cls

    def _compose_cut_tiles(self, cls: np.ndarray, level: int, r1: int, c1: int) -> None:
        """Tiles cut by the level's right or bottom border are composed (unless white)."""
        lw, lh = self.level_shape(level)
        nx, ny = self.tile_grid(level)
        if lw % self.tile and c1 == nx and cls.shape[1]:
            cls[:, -1] = np.where(cls[:, -1] == WHITE, WHITE, COMPOSE)
        if lh % self.tile and r1 == ny and cls.shape[0]:
            cls[-1, :] = np.where(cls[-1, :] == WHITE, WHITE, COMPOSE)

    def _compose_target_tiles(self, cls: np.ndarray, level: int, r0: int, c0: int) -> None:
        """Tiles under the target (:meth:`target_reach`) are composed."""
        t, f = self.tile, 2**level
        half = self.target_reach(level)
        x0, x1 = (self.tx - half) / f // t, (self.tx + half) / f // t
        y0, y1 = (self.ty - half) / f // t, (self.ty + half) / f // t
        ya, yb = int(max(y0, 0)) - r0, int(y1) + 1 - r0
        xa, xb = int(max(x0, 0)) - c0, int(x1) + 1 - c0
        nr, nc = cls.shape
        if yb > 0 and ya < nr and xb > 0 and xa < nc:
            cls[max(ya, 0):yb, max(xa, 0):xb] = COMPOSE

    def draw(self, level: int, tx: int, ty: int) -> np.ndarray:
        """The ``(tile, tile, 3)`` uint8 tile ``(tx, ty)`` of ``level`` (white outside)."""
        t, f = self.tile, 2**level
        px = (tx * t + np.arange(t) + 0.5) * f  # level-0 centres of the tile's pixels
        py = (ty * t + np.arange(t) + 0.5) * f
        field = bilinear(self.field, py / self.cell - 0.5, px / self.cell - 0.5, None)
        # A ramp one level pixel wide (in field units) keeps borders smooth at every level.
        ramp = max(0.01, 0.05 * f / max(self.cell, 1.0))
        alpha = np.clip((field - self.thr) / ramp + 0.5, 0, 1)[..., None]
        tex = self.texture(level, int(self.variant(level, np.int64(tx), np.int64(ty))))
        img = 255.0 * (1 - alpha) + tex * alpha
        img = self.draw_target(img, level, tx, ty, px, py)
        return self.whiten_outside(np.clip(img + 0.5, 0, 255).astype(np.uint8), level, tx, ty)

    def meta(self, *, seed: int, mpp: float | None) -> dict[str, Any]:
        """The base's geometry and kind, and the target (centre in level-0 pixels and in
        ``[-1, 1]``, size)."""
        return {**super().meta(seed=seed, mpp=mpp),
                "target_center_px": [self.tx, self.ty],
                "target_center_loc": [self.tx / self.w * 2 - 1, self.ty / self.h * 2 - 1],
                "target_size_px": self.tsize}
