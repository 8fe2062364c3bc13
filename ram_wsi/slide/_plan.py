"""The glimpse planner of :class:`~ram_wsi.slide.base.GlimpseSource` (private).

Per slide and retina, :func:`plan_retina` fixes once how every scale is read: its pyramid level,
residual factor and region size (a :class:`ScalePlan`), with scales alike gathered in a
:class:`ScaleGroup` so that they are read and resampled together. Per call,
:func:`select_groups` decides whether a group stays merged for the batch size, and
:func:`place_windows` computes every region's top-left corner and every window's corner in one
numpy expression per group.

Units: *level-0 pixels* are pixels of the full-resolution image; *level pixels* are pixels of
the scale's pyramid level, level pixel ``p`` covering level-0 ``[p * d, (p + 1) * d)`` for the
level's per-axis downsample ``d``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ..retina import RetinaSpec, choose_level, integer_factor, window_span

__all__ = ["ScaleGroup", "ScalePlan", "place_windows", "plan_retina", "select_groups"]

# A group of alike scales stays merged while ``n * k * region_w * region_h`` is at most this:
# bigger merged batches fall out of the CPU caches and run slower than per-scale calls.
MERGE_LIMIT = 60_000


@dataclasses.dataclass(frozen=True)
class ScalePlan:
    """How scale ``j`` of a retina is read from a slide (fixed per slide and retina)."""

    j: int  # the scale's index in the retina
    level: int  # the pyramid level it is read from
    downsample_x: float  # the level's per-axis downsample (level-0 pixels per level pixel)
    downsample_y: float
    factor_x: float  # residual factor: level pixels per output pixel
    factor_y: float
    int_factor: int  # the integer factor when the strided path applies, else 0
    region_w: int  # size of the region read, level pixels
    region_h: int
    half_x: float  # window half-width: level pixels (int_factor) or level-0 pixels (dense)
    half_y: float
    level_w: int  # size of the level, level pixels
    level_h: int
    margin: int = 0  # extra level pixels read on each side (sub-pixel shifted readers)


class ScaleGroup:
    """Scales read and resampled together (same region size, factors and margin).

    ``first`` is ``scales[0]``: the constants the group shares. Per-scale constants are ``(k, 1)``
    columns (``k = len(scales)``) so that one numpy expression places every window of every
    scale against ``(n,)`` locations: ``downsample_x``, ``downsample_y``, ``half_x``, ``half_y``
    float64 (units as in :class:`ScalePlan`), ``level_w``, ``level_h`` int64 (level pixels).
    ``js`` lists the scales' indices; ``j_slice`` is the slice of them when they are consecutive,
    else None.
    """

    __slots__ = (
        "downsample_x",
        "downsample_y",
        "first",
        "half_x",
        "half_y",
        "j_slice",
        "js",
        "level_h",
        "level_w",
        "scales",
    )

    def __init__(self, scales: list[ScalePlan]):
        self.scales = scales
        self.first = scales[0]

        def col(name: str) -> np.ndarray:
            return np.array([getattr(q, name) for q in scales], dtype=np.float64)[:, None]

        self.downsample_x = col("downsample_x")
        self.downsample_y = col("downsample_y")
        self.half_x = col("half_x")
        self.half_y = col("half_y")
        self.level_w = col("level_w").astype(np.int64)
        self.level_h = col("level_h").astype(np.int64)
        self.js = [q.j for q in scales]
        j0, k = self.js[0], len(scales)
        self.j_slice = slice(j0, j0 + k) if self.js == list(range(j0, j0 + k)) else None


def plan_retina(spec: RetinaSpec, level_downsamples: Sequence[float],
                axis_downsamples: Sequence[tuple[float, float]],
                level_dimensions: Sequence[tuple[int, int]],
                margin: Callable[[int], int]) -> list[tuple[ScaleGroup, list[ScaleGroup]]]:
    """Plan every scale of ``spec`` on a slide: per group of alike scales, the merged group and
    its scales one by one (``select_groups`` picks per call).

    ``level_downsamples`` choose the level (:func:`choose_level`), ``axis_downsamples`` (per
    level ``(W0 / W_l, H0 / H_l)``) and ``level_dimensions`` (``(W_l, H_l)``) give its geometry;
    ``margin(level)`` is the extra level pixels to read on each side of a region (1 for a reader
    whose regions start a sub-pixel off, else 0).

    A scale whose residual factor is an integer ``int_factor`` (and whose region fits in the
    level) reads a ``g * int_factor + 1 + 2 * margin`` square centred on the exact location, so
    that ``resample`` takes its strided path; any other reads the span
    :func:`window_span` names, clipped to the level.
    """
    g = spec.patch
    groups: dict[tuple, list[ScalePlan]] = {}
    for j in range(spec.scales):
        f = spec.pixel_factor(j)
        lvl = choose_level(f, level_downsamples)
        dsx, dsy = axis_downsamples[lvl]
        lw, lh = level_dimensions[lvl]
        fi = integer_factor(f / dsx, f / dsy, g)
        m = margin(lvl)
        if fi and g * fi + 1 + 2 * m <= min(lw, lh):
            # Centred on the exact location with width g * fi (level pixels).
            c = g * fi + 1 + 2 * m
            sp = ScalePlan(j, lvl, dsx, dsy, float(fi), float(fi), fi, c, c,
                           0.5 * g * fi, 0.5 * g * fi, lw, lh, m)
        else:
            rw = min(window_span(0.0, f / dsx, g)[1] + 2 * m, lw)
            rh = min(window_span(0.0, f / dsy, g)[1] + 2 * m, lh)
            half = 0.5 * spec.window(j)
            sp = ScalePlan(j, lvl, dsx, dsy, f / dsx, f / dsy, 0, rw, rh, half, half, lw, lh, m)
        key = (sp.region_w, sp.region_h, sp.factor_x, sp.factor_y, sp.int_factor, sp.margin)
        groups.setdefault(key, []).append(sp)
    return [(ScaleGroup(scs), [ScaleGroup([sp]) for sp in scs]) for scs in groups.values()]


def select_groups(plans: list[tuple[ScaleGroup, list[ScaleGroup]]], n: int) -> list[ScaleGroup]:
    """The groups to run for ``n`` locations: a group stays merged while the batch is small (one
    dispatch instead of k for the same arithmetic), else its scales run one by one."""
    out = []
    for group, singles in plans:
        p = group.first
        if len(singles) == 1 or n * len(singles) * p.region_w * p.region_h <= MERGE_LIMIT:
            out.append(group)
        else:
            out += singles
    return out


def place_windows(group: ScaleGroup, pxx: np.ndarray, pxy: np.ndarray, g: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where ``group``'s regions are read for centres ``(pxx, pxy)`` (``(n,)`` each, level-0
    pixels) and output patch size ``g``.

    Returns ``(x0, y0, left, top)``, each ``(k, n)``: ``x0, y0`` int64, the regions' top-left
    corners (level pixels, margin included); ``left, top`` float64, the windows' top-left corners
    (level pixels). An integer-factor group reads from the window's first pixel (the outside
    reads white); a dense one reads the span :func:`window_span` names, kept inside the level.
    """
    p = group.first
    if p.int_factor:
        left = pxx[None] / group.downsample_x - group.half_x
        top = pxy[None] / group.downsample_y - group.half_y
        x0 = np.floor(left).astype(np.int64) - p.margin
        y0 = np.floor(top).astype(np.int64) - p.margin
    else:
        left = (pxx[None] - group.half_x) / group.downsample_x
        top = (pxy[None] - group.half_y) / group.downsample_y
        x0 = window_span(left, p.factor_x, g)[0] - p.margin
        y0 = window_span(top, p.factor_y, g)[0] - p.margin
        # Only what lies inside the level: resample fills the rest white.
        x0 = np.minimum(np.maximum(x0, 0), group.level_w - p.region_w)
        y0 = np.minimum(np.maximum(y0, 0), group.level_h - p.region_h)
    return x0, y0, left, top
