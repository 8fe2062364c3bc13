"""The needle scene: the benchmark for classifying gigapixel slides from a few glimpses.

One lesion, a darker purple disk ``lesion_size`` level-0 pixels wide (a dark spot even on a
thumbnail), filled with a fine pattern of period ``period`` level-0 pixels: class 0 a square
lattice of round dots, class 1 parallel stripes (0, 45, 90 or 135 degrees, by the seed). Both
patterns ink the same fraction of the area (:data:`NEEDLE_INK_FRACTION`), each class in its own
ink and ground colours balanced so that their mean colour is the same: *where* the lesion is
shows at low resolution, *what* it is only at level 0 and 1. The pattern is drawn consistently
across levels: a level of downsample ``f < period`` averages the ``f x f`` level-0 pixels under
each of its pixels (exactly); levels with ``f >= period`` show the exact mean colour of the
pattern, the same for both classes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .blobs import DARK, BlobScene

__all__ = ["NEEDLE_CLASSES", "NEEDLE_INK_FRACTION", "NeedleScene", "pattern_table",
           "pooled_table"]

NEEDLE_CLASSES = ("dots", "stripes")
NEEDLE_INK_FRACTION = 0.35  # the share of a needle pattern's area that is ink, both classes
NEEDLE_ANGLES = (0, 45, 90, 135)
LESION = np.array([150, 86, 162], dtype=np.float32)  # the needle lesion's base colour
# Each needle class inks its pattern in its own colour on its own ground, chosen so that the
# mean colour is the same (ground * (1 - ink) + ink colour * ink, at the ink fraction): the
# class shows in the pixels' colours and shapes at levels 0-1, not in any pooled colour.
NEEDLE_INK = (np.array([40, 30, 130], dtype=np.float32),   # dots: blue-violet
              np.array([110, 10, 70], dtype=np.float32))   # stripes: red-violet


def pattern_table(label: int, angle: int, period: int) -> np.ndarray:
    """Ink (``[0, 1]``) of the level-0 pixels of one ``period x period`` cell of a needle
    pattern: label 0 a round dot in the middle of the cell, label 1 a stripe (``angle`` 0:
    horizontal, 90: vertical, 45 / 135: diagonal; its ink depends on ``y``, ``x``, ``x + y`` or
    ``x - y`` modulo ``period``, so the pattern repeats on the pixel grid every ``period``
    pixels along both axes). Edges ramp over one pixel; the size of the dot or stripe is solved
    for so that the cell's mean ink is :data:`NEEDLE_INK_FRACTION` (to ~1e-12)."""
    p = int(period)
    j, i = np.mgrid[0:p, 0:p].astype(np.float64)  # j: row (y), i: column (x)
    if label == 0:
        dist = np.hypot(i + 0.5 - p / 2, j + 0.5 - p / 2)
    else:
        t = {0: j, 90: i, 45: (i + j) % p, 135: (i - j) % p}[int(angle)]
        dist = np.abs(t + 0.5 - p / 2)

    def table(r: float) -> np.ndarray:
        return np.clip(r + 0.5 - dist, 0.0, 1.0)

    lo, hi = -0.5, float(p)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if table(mid).mean() < NEEDLE_INK_FRACTION else (lo, mid)
    return table(0.5 * (lo + hi))


def pooled_table(table: np.ndarray, f: int) -> np.ndarray:
    """``out[a, b]``: the mean ink of the ``f x f`` level-0 pixels from ``(row a, column b)``
    of the periodic ``table`` on (what one pixel of a level of downsample ``f`` averages)."""
    acc = np.zeros_like(table)
    for dy in range(f):
        for dx in range(f):
            acc += np.roll(table, (-dy, -dx), axis=(0, 1))
    return acc / (f * f)


class NeedleScene(BlobScene):
    """A patterned lesion in tissue (module docstring). A slide's lesion is at the same place
    whatever its label: class and stripe angle are drawn from the seed whatever ``label`` says,
    so that slides of one seed differ in their class only."""

    kind: ClassVar[str] = "needle"
    class_names: ClassVar[tuple[str, ...]] = NEEDLE_CLASSES
    params: ClassVar[dict[str, Any]] = {"lesion_size": 1024, "period": 8, **BlobScene.params}
    LIBRARY_TEXTURES: ClassVar[bool] = True

    def __init__(self, width: int, height: int, *, seed: int, label: int | None, tile: int,
                 data_dir: Any = None, lesion_size: int = 1024, period: int = 8,
                 tissue_blobs: int | None = None):
        self.period = int(period)
        self.lesion_size = int(lesion_size)
        self._pooled: dict[int, np.ndarray] = {}
        super().__init__(width, height, seed=seed, label=label, tile=tile,
                         tissue_blobs=tissue_blobs)

    def choose_target(self, rng: np.random.Generator, label: int | None) -> None:
        drawn, angle = int(rng.integers(2)), int(rng.integers(len(NEEDLE_ANGLES)))
        if label is not None and int(label) not in (0, 1):
            raise ValueError(f"a needle slide's label is 0 (dots) or 1 (stripes), got {label}")
        if self.period < 1 or self.lesion_size < 1:
            raise ValueError(f"period and lesion_size must be >= 1, got {self.period}, "
                             f"{self.lesion_size}")
        self.label = drawn if label is None else int(label)
        self.angle = NEEDLE_ANGLES[angle]
        self.tsize = self.lesion_size
        self._table = pattern_table(self.label, self.angle, self.period)

    def target_reach(self, level: int) -> float:
        return 0.5 * self.tsize + 2**level  # the soft edge reaches half a level pixel further

    def _lesion_ink(self, level: int, qx: np.ndarray, qy: np.ndarray) -> np.ndarray | float:
        """Mean ink of the level pixels ``qy`` (rows) x ``qx`` (columns) of ``level``: the
        exact mean of the level-0 pixels under each (``f < period``), else the pattern's mean."""
        f, p = 2**level, self.period
        if f >= p:
            return NEEDLE_INK_FRACTION
        pooled = self._pooled.get(f)
        if pooled is None:
            pooled = self._pooled[f] = pooled_table(self._table, f)
        return pooled[np.ix_((qy * f) % p, (qx * f) % p)].astype(np.float32)

    def draw_target(self, img: np.ndarray, level: int, tx: int, ty: int, px: np.ndarray,
                    py: np.ndarray) -> np.ndarray:
        """The lesion disk, its pattern in the class's ink on the class's ground, with a soft
        edge one level pixel wide (as the tissue border)."""
        f, t = 2**level, self.tile
        reach = 0.5 * self.tsize + f  # the disk and its soft edge, in level-0 pixels
        if (px.max() < self.tx - reach or px.min() > self.tx + reach
                or py.max() < self.ty - reach or py.min() > self.ty + reach):
            return img
        d = np.hypot((px - self.tx)[None, :], (py - self.ty)[:, None])
        a = np.clip((0.5 * self.tsize - d) / f + 0.5, 0, 1).astype(np.float32)[..., None]
        qx = tx * t + np.arange(t, dtype=np.int64)
        qy = ty * t + np.arange(t, dtype=np.int64)
        ink = self._lesion_ink(level, qx, qy)
        ink = ink[..., None] if isinstance(ink, np.ndarray) else np.float32(ink)
        ink_rgb = NEEDLE_INK[self.label]
        ground = (LESION * (1 - NEEDLE_INK_FRACTION) + DARK * NEEDLE_INK_FRACTION
                  - ink_rgb * NEEDLE_INK_FRACTION) / (1 - NEEDLE_INK_FRACTION)
        lesion = ground * (1 - ink) + ink_rgb * ink
        return img * (1 - a) + lesion * a

    def meta(self, *, seed: int, mpp: float | None) -> dict[str, Any]:
        """The blob scene's, plus the class names and the pattern."""
        return {**super().meta(seed=seed, mpp=mpp), "class_names": list(NEEDLE_CLASSES),
                "lesion_size_px": self.tsize, "period_px": self.period,
                "ink_fraction": NEEDLE_INK_FRACTION, "pattern": NEEDLE_CLASSES[self.label],
                "stripe_angle_deg": self.angle if self.label == 1 else None}
