"""Synthetic handwritten-looking digits: deterministic, fast, and needing no files or network.

Why: tests, smoke runs and CI must exercise the whole pipeline (tasks, retina, training) on
machines without MNIST, and the result must be the same everywhere for the same seed.

How: every digit class has a few *styles* (a 1 with or without a flag, an open or closed 4, ...),
each a handful of polylines and arcs in a unit box (``x`` right, ``y`` down, height 1). Each style
is rasterised once per call into a distance field (distance to the nearest stroke, in box units)
on a fine grid; all styles sit side by side in one atlas image. A digit is then one bilinear
lookup per output pixel: the pixel goes through a per-sample inverse affine (rotation, scale,
aspect, shear, translation) and a smooth random displacement (elastic distortion), lands in its
style's tile, and the looked-up distance becomes ink through an anti-aliased threshold at the
sample's stroke half-width. Because thickness is applied *after* the lookup, one atlas serves
every thickness, and the whole batch is a handful of tensor ops (no loop over digits).

Like MNIST, the glyph's height spans a 20-pixel box (for ``size=28``), its centre of mass sits at
the image centre (before the random translation), strokes are ~1 and the background 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["glyph_styles", "synthetic_digits"]

Polyline = list[tuple[float, float]]

_MARGIN = 0.3  # atlas tiles cover [-m, 1 + m]^2 of the unit box
_TILE = 48  # atlas pixels per tile side (~32 per unit: finer than the 20 px of an output digit)
_CHUNK = 4096  # samples rendered per pass, to bound memory for large n


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float) -> Polyline:
    """Points on an elliptical arc from angle ``a0`` to ``a1`` degrees (y down: 90 is the
    bottom, 270 the top; increasing angles run clockwise on screen)."""
    steps = max(2, math.ceil(abs(a1 - a0) / 10.0) + 1)
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(a0, a1, steps)]


def _figure_eight() -> Polyline:
    t = np.linspace(0.0, 2.0 * math.pi, 49)
    return [(0.5 + 0.26 * math.sin(2.0 * v), 0.5 - 0.46 * math.cos(v)) for v in t]


def glyph_styles() -> list[tuple[int, list[Polyline]]]:
    """The stroke definitions: ``(digit, polylines)`` per style, in a unit box, y down.

    A pure function (rebuilt on every call, no module state) so callers cannot alter it.
    """
    return [
        (0, [_arc(0.5, 0.5, 0.30, 0.46, 0, 360)]),
        (0, [_arc(0.5, 0.5, 0.27, 0.46, 250, 630)]),  # loop overlapping at the top
        (1, [[(0.5, 0.03), (0.5, 0.97)]]),
        (1, [[(0.32, 0.21), (0.52, 0.03), (0.5, 0.97)]]),  # with a flag
        (1, [[(0.32, 0.21), (0.52, 0.03), (0.5, 0.97)], [(0.3, 0.97), (0.7, 0.97)]]),
        (2, [_arc(0.5, 0.3, 0.28, 0.26, 195, 380) + [(0.18, 0.95), (0.84, 0.95)]]),
        (2, [_arc(0.5, 0.3, 0.28, 0.26, 195, 400) + [(0.56, 0.66), (0.34, 0.84), (0.18, 0.95),
                                                      (0.84, 0.93)]]),
        (3, [_arc(0.47, 0.27, 0.27, 0.24, 200, 450) + _arc(0.47, 0.73, 0.31, 0.24, 270, 520)]),
        (3, [[(0.2, 0.05), (0.78, 0.05), (0.45, 0.42)] + _arc(0.47, 0.7, 0.31, 0.27, 250, 510)]),
        (4, [[(0.64, 0.97), (0.64, 0.03), (0.14, 0.68), (0.88, 0.68)]]),
        (4, [[(0.22, 0.05), (0.17, 0.6), (0.86, 0.6)], [(0.66, 0.22), (0.66, 0.97)]]),  # open
        (5, [[(0.8, 0.05), (0.3, 0.05), (0.26, 0.46)] + _arc(0.48, 0.69, 0.3, 0.27, 240, 510)]),
        (5, [[(0.3, 0.07), (0.27, 0.46)] + _arc(0.48, 0.69, 0.3, 0.27, 240, 510),
             [(0.3, 0.06), (0.82, 0.03)]]),  # top bar as a separate stroke
        (6, [_arc(0.72, 0.62, 0.5, 0.58, 270, 180) + _arc(0.48, 0.71, 0.26, 0.25, 180, 540)]),
        (6, [[(0.68, 0.03), (0.3, 0.5)] + _arc(0.48, 0.71, 0.26, 0.25, 200, 560)]),
        (7, [[(0.15, 0.05), (0.85, 0.05), (0.42, 0.97)]]),
        (7, [[(0.15, 0.05), (0.85, 0.05), (0.42, 0.97)], [(0.38, 0.5), (0.8, 0.5)]]),  # crossed
        (8, [_arc(0.5, 0.26, 0.23, 0.23, 0, 360), _arc(0.5, 0.73, 0.29, 0.25, 0, 360)]),
        (8, [_figure_eight()]),
        (9, [_arc(0.5, 0.3, 0.27, 0.26, 0, 360), [(0.77, 0.3), (0.72, 0.97)]]),
        (9, [_arc(0.5, 0.3, 0.27, 0.26, 0, 360),
             [(0.77, 0.3), (0.76, 0.65), (0.62, 0.9), (0.45, 0.97)]]),
    ]


def _segments(polylines: list[Polyline]) -> np.ndarray:
    """``(S, 2, 2)`` segment endpoints of a style's polylines."""
    segs = []
    for line in polylines:
        pts = np.asarray(line, dtype=np.float64)
        segs.append(np.stack([pts[:-1], pts[1:]], axis=1))
    return np.concatenate(segs)


def _distance_atlas() -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Distance fields of every style side by side, plus per-style metadata.

    Returns ``atlas (1, 1, T, V*T)`` float32 (distance in box units), ``digit (V,)`` labels,
    ``centroid (V, 2)`` each style's ink centre of mass in box units (so digits can be centred by
    mass, as MNIST's are) and ``first (10,)``/count per class packed as ``(10, 2)``.
    """
    styles = glyph_styles()
    ax = np.linspace(-_MARGIN, 1.0 + _MARGIN, _TILE)
    gx, gy = np.meshgrid(ax, ax)  # (T, T), x along columns
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (P, 2)
    fields, centroids = [], []
    for _, lines in styles:  # a loop over ~20 styles, once per call
        seg = _segments(lines)
        a, b = seg[:, 0], seg[:, 1]  # (S, 2)
        ab = b - a
        ap = pts[:, None, :] - a[None]  # (P, S, 2)
        t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
        d = np.sqrt(((ap - t[..., None] * ab) ** 2).sum(-1).min(axis=1))  # (P,)
        ink = np.clip(0.06 - d, 0.0, None)  # a ~2.4 px stroke at 20 px per unit
        centroids.append((pts * ink[:, None]).sum(0) / ink.sum())
        fields.append(d.reshape(_TILE, _TILE))
    atlas = torch.from_numpy(np.concatenate(fields, axis=1).astype(np.float32))[None, None]
    digit = np.array([s[0] for s in styles], dtype=np.int64)
    counts = np.bincount(digit, minlength=10)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return atlas, digit, np.asarray(centroids), np.stack([first, counts], axis=1)


@dataclass
class _Draws:
    """Every random number of a batch of digits, drawn up front in a fixed order (so that
    chunking the rendering cannot change them), float32 where the pixels are computed."""

    labels: np.ndarray  # (n,) int64
    style: np.ndarray  # (n,) which glyph style of its class
    minv: np.ndarray  # (n, 2, 2) inverse linear map: pixel offset -> box offset
    shift: np.ndarray  # (n, 2) translation, output pixels
    half_width: np.ndarray  # (n,) stroke half-width, output pixels
    scale: np.ndarray  # (n,) output pixels per box unit
    coarse: np.ndarray  # (n, 2, 4, 4) elastic displacement grid, output pixels


def _draw(rng: np.random.Generator, n: int, px: float, first_count: np.ndarray) -> _Draws:
    """Labels (balanced, shuffled), styles, and each digit's affine, thickness and elastic
    field; ``px`` output pixels per MNIST pixel."""
    labels = rng.permutation(np.arange(n, dtype=np.int64) % 10)
    style = first_count[labels, 0] + np.floor(rng.random(n) * first_count[labels, 1]).astype(
        np.int64)
    theta = np.radians(rng.uniform(-15.0, 15.0, n))
    scale = rng.uniform(0.8, 1.1, n) * 20.0 * px  # output pixels per box unit (height)
    aspect = rng.uniform(0.85, 1.15, n)  # width / height
    shear = rng.uniform(-0.3, 0.3, n)  # slant: x += shear * y
    shift = rng.uniform(-2.0, 2.0, (n, 2)) * px
    half_width = 0.5 * rng.uniform(1.6, 3.2, n) * px
    coarse = rng.standard_normal((n, 2, 4, 4)) * 1.0 * px  # elastic field, in output pixels
    scale, half_width, shift, coarse = (a.astype(np.float32)
                                        for a in (scale, half_width, shift, coarse))
    minv = _inverse_maps(theta, shear, aspect, scale)  # from the float32 scale
    return _Draws(labels, style, minv, shift, half_width, scale, coarse)


def _inverse_maps(theta: np.ndarray, shear: np.ndarray, aspect: np.ndarray,
                  scale: np.ndarray) -> np.ndarray:
    """``(R(theta) Shear diag(aspect, 1) * scale)^-1`` per digit, float32 ``(n, 2, 2)``."""
    n = len(theta)
    c, s = np.cos(theta), np.sin(theta)
    rinv = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)  # R(-theta), (n, 2, 2)
    shinv = np.zeros((n, 2, 2))
    shinv[:, 0, 0], shinv[:, 0, 1], shinv[:, 1, 1] = 1.0, -shear, 1.0
    ainv = np.zeros((n, 2, 2))
    ainv[:, 0, 0], ainv[:, 1, 1] = 1.0 / aspect, 1.0
    return (ainv @ shinv @ rinv / scale[:, None, None]).astype(np.float32)


def synthetic_digits(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic digits, identical bit for bit for the same ``(n, seed, size)`` (on one
    platform and library version; across machines, float rounding may differ in the last bit).

    Args:
        n: number of digits. Classes are balanced (``n // 10`` or one more each) and shuffled.
        seed: the only source of randomness (no global RNG state is read or changed).
        size: image side in pixels; the geometry scales with it (20/28 of it is the digit box).

    Returns:
        ``(images float32 (n, size, size) in [0, 1], labels int64 (n,))``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    atlas, _, centroid, first_count = _distance_atlas()
    d = _draw(np.random.default_rng(seed), n, size / 28.0, first_count)
    images = np.empty((n, size, size), dtype=np.float32)
    raster = _Rasteriser(atlas, centroid.astype(np.float32), size)
    for lo in range(0, n, _CHUNK):  # a loop over chunks of thousands, not over digits
        sl = slice(lo, min(n, lo + _CHUNK))
        images[sl] = raster.render(d, sl)
    return images, d.labels


class _Rasteriser:
    """Renders digits by looking their pixels up in the styles' distance atlas."""

    def __init__(self, atlas: torch.Tensor, centroid: np.ndarray, size: int):
        self.atlas, self.centroid, self.size = atlas, centroid, size
        lin = torch.arange(size, dtype=torch.float32) + (0.5 - size / 2.0)  # offsets from centre
        self.pix_y, self.pix_x = torch.meshgrid(lin, lin, indexing="ij")  # (size, size)
        # Bicubic upsampling of the 4x4 elastic grid is separable: one (size, 4) matrix per
        # axis, applied with two small matmuls (several times faster than interpolating every
        # sample).
        self.smooth = F.interpolate(torch.eye(4)[:, None, :, None], size=(size, 1),
                                    mode="bicubic", align_corners=True)[:, 0, :, 0].T.contiguous()

    def render(self, d: _Draws, sl: slice) -> np.ndarray:
        """The ``(m, size, size)`` images of digits ``sl``."""
        fx, fy = self._tile_coords(d, sl)
        nstyles = len(self.centroid)
        st = torch.from_numpy(d.style[sl].astype(np.float32))[:, None, None]
        gx = (st * _TILE + fx * (_TILE - 1)) * (2.0 / (nstyles * _TILE - 1)) - 1.0
        gy = fy * 2.0 - 1.0
        m, size = sl.stop - sl.start, self.size
        grid = torch.stack([gx, gy], dim=-1).reshape(1, m * size, size, 2)
        dist = F.grid_sample(self.atlas, grid, mode="bilinear", align_corners=True)
        dist = dist.reshape(m, size, size)
        dist_px = dist * torch.from_numpy(d.scale[sl])[:, None, None]
        hw = torch.from_numpy(d.half_width[sl])[:, None, None]
        return (hw + 0.5 - dist_px).clamp_(0.0, 1.0).numpy()

    def _tile_coords(self, d: _Draws, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Each output pixel's position inside its digit's style tile, in ``[0, 1]`` (clamped:
        outside the tile is background): elastic displacement, translation, inverse affine."""
        smooth = self.smooth
        disp = torch.matmul(smooth, torch.matmul(torch.from_numpy(d.coarse[sl]), smooth.T))
        qx = self.pix_x - disp[:, 0] - torch.from_numpy(d.shift[sl, 0])[:, None, None]
        qy = self.pix_y - disp[:, 1] - torch.from_numpy(d.shift[sl, 1])[:, None, None]
        mi = torch.from_numpy(d.minv[sl])[:, :, :, None, None]  # (m, 2, 2, 1, 1)
        cen = torch.from_numpy(self.centroid[d.style[sl]])[:, :, None, None]  # (m, 2, 1, 1)
        span = 1.0 + 2.0 * _MARGIN
        fx = ((mi[:, 0, 0] * qx + mi[:, 0, 1] * qy + cen[:, 0] + _MARGIN) / span).clamp_(0.0, 1.0)
        fy = ((mi[:, 1, 0] * qx + mi[:, 1, 1] * qy + cen[:, 1] + _MARGIN) / span).clamp_(0.0, 1.0)
        return fx, fy
