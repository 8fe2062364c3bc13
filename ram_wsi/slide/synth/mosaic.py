"""The tissue scene: a slide paved with real H&E tiles, carcinoma against benign.

A slide is white glass with one irregular piece of tissue (at most ``tissue_um`` across, as a
biopsy or resection on a real slide; the rest of a large slide is empty, as on glass). The
tissue is paved with healthy-mucosa tiles (``H``) of one pool of a
:class:`~ram_wsi.slide.tile_pool.TilePool`, each flipped / rotated at random, in cells of one
tile (224 px at ``mpp``). On a ``carcinoma`` slide one contiguous, irregular region of
``region_min_um``..``region_max_um`` across is paved with adenocarcinoma tiles (``AC``); on a
``benign`` slide, with probability ``adenoma``, an equally large region of one adenoma type
(``S``, ``T`` or ``V``) -- so that "a region that differs" is not the cue: the agent must tell
carcinoma from adenoma and mucosa -- else nothing. Every tile was stain-normalised once
(:mod:`ram_wsi.slide.stain`); each slide then gets its own stain (an affine RGB change), so
colour varies between slides and carries no class.

The pyramid is a scanner's: every level is the area average of level 0 (up to rounding to
uint8). Levels 1..5 come from the pool's pooled tiles (exact: a cell of 224 px is 7 px at 32x,
and the tissue mask is constant on 32 px blocks, so no level pixel straddles a mask edge);
coarser levels average level 5. The stain is affine, so it commutes with the averaging.

The annotation is known exactly: the region's cells (``region_cells``, cell ``(cx, cy)`` covers
level-0 ``[cx * 224, (cx + 1) * 224)``), its bounding box as ``target_center_px`` /
``target_size_px`` (what the on-target measure and the dense baseline read), and its outline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import DataError
from ..stain import SlideStain
from ..tile_pool import ADENOMA_CLASSES, POOLS, TilePool, open_pool
from .blobs import bilinear
from .scene import COMPOSE, WHITE, WHITE_VALUE, Scene

__all__ = ["TISSUE_CLASSES", "TissueScene", "default_tiles_dir"]

TISSUE_CLASSES = ("benign", "carcinoma")
BLOCK = 32  # level-0 pixels per tissue-mask block: the mask is constant on these
FINE_LEVEL = 5  # 2**5 = BLOCK: the coarsest level drawn from pooled tiles directly
BAND = 256  # level-5 rows composed at a time for the coarser levels (bounded memory)
TILES_ENV = "RAM_WSI_TILES"


def default_tiles_dir() -> Path | None:
    """``$RAM_WSI_TILES``, else ``../shared/data/tissue/crc_tiles`` beside the working
    directory or the repository, if it exists."""
    env = os.environ.get(TILES_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[3]
    for base in (Path.cwd(), here):
        p = base.parent / "shared" / "data" / "tissue" / "crc_tiles"
        if p.is_dir():
            return p
    return None


def _hash(seed: int, a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """A uint64 hash of ``(seed, a, b, salt)`` per element (splitmix64's finaliser): random
    access to per-cell choices, the same whichever tile asks first."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             + a.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + b.astype(np.uint64) * np.uint64(0x94D049BB133111EB)
             + np.uint64(salt) * np.uint64(0xD6E8FEB86659FD93))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _turn(cell: np.ndarray, variant: int) -> np.ndarray:
    """A view of ``cell`` ``(c, c, 3)`` turned by ``variant`` in 0..7 (4 rotations, then a
    flip): pooling commutes with these, so every level shows the same turn."""
    x = np.rot90(cell, k=variant % 4)
    return x[:, ::-1] if variant >= 4 else x


def _dihedral(cells: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """``cells`` ``(n, c, c, 3)`` each turned by its ``variant`` (:func:`_turn`), vectorised
    per variant: for the many small cells of coarse levels."""
    out = np.empty_like(cells)
    for v in np.unique(variant):
        sel = variant == v
        x = np.rot90(cells[sel], k=int(v) % 4, axes=(-3, -2))
        out[sel] = x[..., ::-1, :] if v >= 4 else x
    return out


def _mosaic(pooled: np.ndarray, ids: np.ndarray, var: np.ndarray) -> np.ndarray:
    """The ``(rows * c, cols * c, 3)`` uint8 image of cells ``ids`` / ``var`` (``(rows,
    cols)``) taken from ``pooled`` ``(N, c, c, 3)``: one copy per cell for the few large cells
    of fine levels, one vectorised gather for the many small ones of coarse levels."""
    rows, cols = ids.shape
    c = pooled.shape[1]
    if ids.size > 16:
        cells = _dihedral(np.asarray(pooled[ids.ravel()]), var.ravel())
        return cells.reshape(rows, cols, c, c, 3).transpose(0, 2, 1, 3, 4).reshape(
            rows * c, cols * c, 3)
    out = np.empty((rows * c, cols * c, 3), np.uint8)
    for j in range(rows):
        for i in range(cols):
            out[j * c:(j + 1) * c, i * c:(i + 1) * c] = _turn(pooled[ids[j, i]], var[j, i])
    return out


class TissueScene(Scene):
    """A tissue-mosaic slide (module docstring). ``label`` 1 is carcinoma, 0 benign."""

    kind: ClassVar[str] = "tissue"
    class_names: ClassVar[tuple[str, ...]] = TISSUE_CLASSES
    params: ClassVar[dict[str, Any]] = {
        "tiles": None, "pool": "train", "split_seed": 0, "region_min_um": 1000.0,
        "region_max_um": 3000.0, "adenoma": 0.5, "tissue_um": 20000.0}
    text_params: ClassVar[tuple[str, ...]] = ("tiles", "pool")
    param_choices: ClassVar[dict[str, tuple[str, ...]]] = {"pool": POOLS}
    needs_mpp: ClassVar[bool] = True
    default_mpp: ClassVar[float] = 0.5
    draws_regions: ClassVar[bool] = True

    def __init__(self, width: int, height: int, *, seed: int, label: int | None, tile: int,
                 data_dir: Any = None, tiles: str | None = None, pool: str = "train",
                 split_seed: int = 0, region_min_um: float = 1000.0,
                 region_max_um: float = 3000.0, adenoma: float = 0.5,
                 tissue_um: float = 20000.0, mpp: float | None = None):
        super().__init__(width, height, tile)
        self._check(label, pool, region_min_um, region_max_um, adenoma, tissue_um, tile)
        directory = tiles or data_dir or default_tiles_dir()
        if directory is None:
            raise DataError("../shared/data/tissue/crc_tiles", "no tile folder: name one "
                            "(tiles=DIR, --tiles DIR or $RAM_WSI_TILES)")
        self.seed, self.mpp = int(seed), float(mpp or self.default_mpp)
        self.pool: TilePool = open_pool(str(directory), pool, int(split_seed))
        self.cell = self.pool.tile
        rng = np.random.default_rng([self.seed, 7])
        self.label = int(rng.integers(2)) if label is None else int(label)
        self.stain = SlideStain.draw(rng)
        self._grow_tissue(rng, tissue_um)
        self._place_region(rng, region_min_um, region_max_um, adenoma)

    @staticmethod
    def _check(label, pool, lo, hi, adenoma, tissue_um, tile) -> None:
        if label is not None and int(label) not in (0, 1):
            raise ValueError(f"a tissue slide's label is 0 (benign) or 1 (carcinoma), got {label}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if not 0 < lo <= hi:
            raise ValueError(f"need 0 < region_min_um <= region_max_um, got {lo}, {hi}")
        if not 0 <= adenoma <= 1:
            raise ValueError(f"adenoma is a probability in [0, 1], got {adenoma}")
        if not tissue_um > 0:
            raise ValueError(f"tissue_um must be > 0, got {tissue_um}")
        if tile % BLOCK:
            raise ValueError(f"a tissue slide's tile must be a multiple of {BLOCK}, got {tile}")

    # ----------------------------------------------------------------------- geometry
    def _grow_tissue(self, rng: np.random.Generator, tissue_um: float) -> None:
        """The tissue mask on 32 px blocks: an irregular piece at most ``tissue_um`` across
        (and 80 % of the slide), its outline a disk bent by a few harmonics and smooth noise."""
        nbx, nby = -(-self.w // BLOCK), -(-self.h // BLOCK)
        diameter = min(0.8 * min(self.w, self.h), tissue_um / self.mpp) / BLOCK
        r = 0.5 * diameter
        cx = rng.uniform(0.5 * nbx - 0.1 * (nbx - diameter), 0.5 * nbx + 0.1 * (nbx - diameter))
        cy = rng.uniform(0.5 * nby - 0.1 * (nby - diameter), 0.5 * nby + 0.1 * (nby - diameter))
        amp, phase = rng.uniform(0.04, 0.12, 4), rng.uniform(0, 2 * np.pi, 4)
        noise = rng.random((9, 9))
        x0, x1 = max(0, int(cx - 1.3 * r)), min(nbx, int(cx + 1.3 * r) + 1)
        y0, y1 = max(0, int(cy - 1.3 * r)), min(nby, int(cy + 1.3 * r) + 1)
        gx, gy = np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5
        dx, dy = gx[None, :] - cx, gy[:, None] - cy
        theta = np.arctan2(dy, dx)
        bend = 1 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(zip(amp, phase)))
        n = bilinear(noise, (gy - (cy - 1.3 * r)) / (2.6 * r) * 8, (gx - (cx - 1.3 * r))
                     / (2.6 * r) * 8, None)
        inside = np.hypot(dx, dy) / (r * bend) + 0.35 * (n - 0.5) < 1.0
        if not inside.any():  # a slide too small for an outline: one block at the centre
            inside[min(int(cy) - y0, inside.shape[0] - 1),
                   min(int(cx) - x0, inside.shape[1] - 1)] = True
        # Only the tissue's bounding box is kept: a 131,072^2 slide's whole block grid is
        # 16 MB, and a training run holds hundreds of scenes.
        self.block_grid = (nbx, nby)
        self.mask_origin = (x0, y0)
        self.mask = inside

    def tissue_blocks(self, bx0: int, by0: int, nbx: int, nby: int) -> np.ndarray:
        """Boolean ``(nby, nbx)``: which 32 px blocks from block ``(bx0, by0)`` are tissue
        (False outside the tissue's box and outside the slide)."""
        out = np.zeros((nby, nbx), bool)
        ox, oy = self.mask_origin
        mh, mw = self.mask.shape
        xa, xb = max(bx0, ox), min(bx0 + nbx, ox + mw)
        ya, yb = max(by0, oy), min(by0 + nby, oy + mh)
        if xa < xb and ya < yb:
            out[ya - by0:yb - by0, xa - bx0:xb - bx0] = self.mask[ya - oy:yb - oy,
                                                                   xa - ox:xb - ox]
        return out

    def _place_region(self, rng: np.random.Generator, lo_um: float, hi_um: float,
                      adenoma: float) -> None:
        """The region's class and cells: AC on carcinoma; on benign an adenoma type with
        probability ``adenoma``, else none. Its centre lies where tissue reaches furthest
        around (within reason), its outline is a bent disk, its cells those whose centre falls
        inside both it and the tissue."""
        from scipy import ndimage

        has_adenoma = rng.random() < adenoma
        diameter_px = rng.uniform(lo_um, hi_um) / self.mpp
        self.region_class = "AC" if self.label == 1 else (
            ADENOMA_CLASSES[int(rng.integers(len(ADENOMA_CLASSES)))] if has_adenoma else None)
        ncx, ncy = -(-self.w // self.cell), -(-self.h // self.cell)
        self.grid = (ncx, ncy)
        self.region_mask = np.zeros((ncy, ncx), bool)
        self.region_center = None
        self.region_diameter_px = float(diameter_px)
        if self.region_class is None:
            return
        depth = ndimage.distance_transform_edt(np.pad(self.mask, 1))[1:-1, 1:-1] * BLOCK
        want = 0.5 * diameter_px
        ok = np.flatnonzero(depth.ravel() >= min(want, 0.8 * depth.max()))
        pick = int(ok[rng.integers(len(ok))])
        cy, cx = (np.array(np.unravel_index(pick, depth.shape)) + 0.5
                  + self.mask_origin[::-1]) * BLOCK
        amp, phase = rng.uniform(0.05, 0.2, 3), rng.uniform(0, 2 * np.pi, 3)
        px = (np.arange(ncx) + 0.5) * self.cell
        py = (np.arange(ncy) + 0.5) * self.cell
        dx, dy = px[None, :] - cx, py[:, None] - cy
        theta = np.arctan2(dy, dx)
        bend = 1 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(zip(amp, phase)))
        inside = np.hypot(dx, dy) <= want * bend
        self.region_mask = inside & self._on_tissue(px, py)
        if not self.region_mask.any():  # a tiny region: at least the cell under its centre
            self.region_mask[int(cy // self.cell), int(cx // self.cell)] = True
        self.region_center = (float(cx), float(cy))

    def _on_tissue(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Boolean ``(len(py), len(px))``: is level-0 point ``(px[i], py[j])`` on tissue."""
        bx = (np.asarray(px) // BLOCK).astype(np.int64)
        by = (np.asarray(py) // BLOCK).astype(np.int64)
        x0, y0 = int(bx.min()), int(by.min())
        win = self.tissue_blocks(x0, y0, int(bx.max()) - x0 + 1, int(by.max()) - y0 + 1)
        return win[np.ix_(by - y0, bx - x0)]

    # ----------------------------------------------------------------------- cells
    def cell_tiles(self, cx: np.ndarray, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(tile index into the pool, dihedral variant 0..7)`` of cells ``(cx, cy)``
        (broadcast arrays): ``H`` outside the region, the region's class inside."""
        h = _hash(self.seed, cx, cy, 1)
        ids = self.pool.classes["H"][(h % np.uint64(len(self.pool.classes["H"]))).astype(np.int64)]
        if self.region_class is not None:
            ncx, ncy = self.grid
            inr = self.region_mask[np.clip(cy, 0, ncy - 1), np.clip(cx, 0, ncx - 1)]
            inr &= (cx >= 0) & (cx < ncx) & (cy >= 0) & (cy < ncy)
            pool = self.pool.classes[self.region_class]
            ids = np.where(inr, pool[(h % np.uint64(len(pool))).astype(np.int64)], ids)
        var = (_hash(self.seed, cx, cy, 2) % np.uint64(8)).astype(np.int64)
        return ids, var

    def _fine(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Float32 ``(h, w, 3)`` pixels of ``level`` <= 5 from level pixel ``(x0, y0)``: cells
        from the pool's pooled tiles, turned, stained, on white outside tissue."""
        f = 2 ** level
        c, b = self.cell // f, BLOCK // f
        cx = np.arange(x0 // c, (x0 + w - 1) // c + 1)
        cy = np.arange(y0 // c, (y0 + h - 1) // c + 1)
        ids, var = self.cell_tiles(cx[None, :], cy[:, None])
        img = _mosaic(self.pool.levels[level], ids, var)
        ox, oy = x0 - cx[0] * c, y0 - cy[0] * c
        img = self.stain.apply(img[oy:oy + h, ox:ox + w])
        bx, by = np.arange(x0, x0 + w) // b, np.arange(y0, y0 + h) // b
        win = self.tissue_blocks(int(bx[0]), int(by[0]), int(bx[-1] - bx[0]) + 1,
                                 int(by[-1] - by[0]) + 1)
        tissue = win[np.ix_(by - by[0], bx - bx[0])]
        return np.where(tissue[..., None], img, np.float32(WHITE_VALUE))

    def _coarse(self, level: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Float pixels of ``level`` > 5: the mean of the level-5 pixels under each, composed
        a band of rows at a time, over the tissue's box only: outside it every level-5 pixel
        is glass, and so is their mean (a 131,072^2 mosaic's glance composes the box of its
        level 5, not all 4,096^2 pixels: opening one took 0.7-2.2 s against 2.3-4.4 s, the
        pixels unchanged)."""
        k = 2 ** (level - FINE_LEVEL)
        out = np.full((h, w, 3), WHITE_VALUE, np.float32)
        (ox, oy), (mh, mw) = self.mask_origin, self.mask.shape  # level-5 px = mask blocks
        xa, xb = max(x0, ox // k), min(x0 + w, -(-(ox + mw) // k))
        ya, yb = max(y0, oy // k), min(y0 + h, -(-(oy + mh) // k))
        rows = max(1, BAND // k)
        for r in range(ya, yb, rows) if xa < xb else ():
            n = min(rows, yb - r)
            fine = self._fine(FINE_LEVEL, xa * k, r * k, (xb - xa) * k, n * k)
            out[r - y0:r - y0 + n, xa - x0:xb - x0] = fine.reshape(n, k, xb - xa, k, 3).mean((1, 3))
        return out

    # ----------------------------------------------------------------------- Scene hooks
    def classify(self, level: int, rows: tuple[int, int] | None = None,
                 cols: tuple[int, int] | None = None) -> np.ndarray:
        """:data:`WHITE` for tiles with no tissue block under them, else :data:`COMPOSE`
        (every tissue tile is its own mosaic: nothing repeats)."""
        r0, r1, c0, c1 = self.tile_span(level, rows, cols)
        per = self.tile * 2 ** level // BLOCK  # mask blocks per tile side
        win = self.tissue_blocks(c0 * per, r0 * per, (c1 - c0) * per, (r1 - r0) * per)
        anyt = win.reshape(r1 - r0, per, c1 - c0, per).any((1, 3))
        return np.where(anyt, COMPOSE, WHITE).astype(np.int8)

    def region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        render = self._fine if level <= FINE_LEVEL else self._coarse
        return np.clip(np.rint(render(level, x, y, w, h)), 0, 255).astype(np.uint8)

    def draw(self, level: int, tx: int, ty: int) -> np.ndarray:
        t = self.tile
        return self.whiten_outside(self.region(level, tx * t, ty * t, t, t), level, tx, ty)

    def meta(self, *, seed: int, mpp: float | None) -> dict[str, Any]:
        """The geometry, plus the class names, the region (class, cells, bounding box, centre),
        the tissue's extent, the stain and the tile pool."""
        out = {**super().meta(seed=seed, mpp=mpp), "class_names": list(TISSUE_CLASSES),
               "region_class": self.region_class, "cell_px": self.cell,
               "tiles": str(self.pool.directory), "pool": self.pool.pool,
               "split_seed": self.pool.seed, "stain": self.stain.as_dict(),
               "tissue_fraction": round(float(self.mask.sum()) / np.prod(self.block_grid), 6),
               "region_diameter_px": round(self.region_diameter_px, 1)}
        if self.region_class is None:
            return {**out, "region_cells": []}
        ry, rx = np.nonzero(self.region_mask)
        x0, x1 = rx.min() * self.cell, (rx.max() + 1) * self.cell
        y0, y1 = ry.min() * self.cell, (ry.max() + 1) * self.cell
        centre = [0.5 * (x0 + x1), 0.5 * (y0 + y1)]
        return {**out, "region_cells": np.stack([rx, ry], 1).tolist(),
                "target_center_px": centre,
                "target_center_loc": [2 * centre[0] / self.w - 1, 2 * centre[1] / self.h - 1],
                "target_size_px": [int(x1 - x0), int(y1 - y0)]}
