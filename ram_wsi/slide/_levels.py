"""The levels a :class:`~ram_wsi.slide.base.GlimpseSource` reads from (private): the file's own,
plus coarser ones it builds when the file's pyramid stops too early.

Why: a slide with one level (plain images, small-region SVS, small DICOMs, the GlaS fields) or a
shallow one (its coarsest level still wider than a block) has nothing to read a coarse scale
from but its finest pixels. Each coarse window then decoded a level-0 area many times the
slide (CMU-1-Small-Region: 43 Mpx per decision, 6.5x the slide) and was area-resampled over a
span of thousands of taps (a 16x16 slide: 1.1 s of glimpses). The source instead builds the
missing levels once, as a pyramid writer would: each the exact 2x2 mean of the one below
(white padding at odd edges, rounded half up: :func:`mean2x2`, the converter's arithmetic),
down to one pixel, in blocks of :data:`BUILT_BLOCK` kept in the process's bounded block cache.
A built block is made from the four blocks under it, so the first coarse read decodes each
pixel of the slide once, and every later one costs what it costs on a pyramid.

:func:`assemble` cuts regions out of any level's blocks, the file's or built ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

__all__ = ["BUILT_BLOCK", "ReadLevels", "assemble", "mean2x2", "read_levels"]

BUILT_BLOCK = 256
"""Side of a built level's blocks (and the coarsest file level's side above which a pyramid
counts as shallow: the pyramid writers here stop at one 256-px chunk or tile)."""


@dataclasses.dataclass(frozen=True)
class ReadLevels:
    """Every level a source reads: the file's ``files`` levels, then the built ones.

    ``base`` is the file level the built ones are made from (the coarsest), None when none
    are built; level ``base + k`` (``k >= 1``, beyond the file's) is ``base`` averaged ``2^k``
    times. Lists are indexed by level, the file's levels first."""

    dims: list[tuple[int, int]]  # (W, H), level pixels
    downsamples: list[float]  # what choose_level picks from
    axis: list[tuple[float, float]]  # per-axis (dx, dy): the geometry
    blocks: list[tuple[int, int]]  # (bw, bh): the unit of decoding (file) or building
    files: int  # how many are the file's
    base: int | None  # the file level the built ones come from

    def built(self, level: int) -> bool:
        """Whether ``level`` is built here (not the file's)."""
        return level >= self.files


def read_levels(dims: list[tuple[int, int]], downsamples: list[float],
                axis: list[tuple[float, float]], blocks: list[tuple[int, int]],
                build: bool = True) -> ReadLevels:
    """The file's levels, extended when the pyramid is single-level or shallow (its coarsest
    level wider than :data:`BUILT_BLOCK`) and ``build`` is set: halving from the coarsest
    (rounding up, white padding) until one pixel remains. Downsamples of built levels are exact
    (``2^k`` times the base's): a built pixel covers exactly ``2^k`` base pixels."""
    dims, downs, axis, blocks = list(dims), list(downsamples), list(axis), list(blocks)
    files = len(dims)
    base = files - 1
    bw, bh = dims[base]
    if not build or (files > 1 and max(bw, bh) <= BUILT_BLOCK) or max(bw, bh) <= 1:
        return ReadLevels(dims, downs, axis, blocks, files, None)
    dx, dy = axis[base]
    k = 0
    while max(dims[-1]) > 1:
        k += 1
        w, h = dims[-1]
        dims.append((-(-w // 2), -(-h // 2)))
        downs.append(downsamples[base] * 2**k)
        axis.append((dx * 2**k, dy * 2**k))
        blocks.append((BUILT_BLOCK, BUILT_BLOCK))
    return ReadLevels(dims, downs, axis, blocks, files, base)


def mean2x2(block: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` uint8 -> ``(C, ceil(H/2), ceil(W/2))``: exact 2x2 means rounded half up,
    an odd edge padded with white (the outside of a slide). The one arithmetic of every level
    this package makes: ``convert``'s stores and the levels sources build agree to the bit."""
    c, hh, ww = block.shape
    if hh % 2 or ww % 2:
        block = np.pad(block, ((0, 0), (0, hh % 2), (0, ww % 2)), constant_values=255)
        c, hh, ww = block.shape
    # Row pairs, then column pairs, in uint16: strided adds, ~35x faster than a reshape+sum
    # over two axes (0.4 vs 14 ms for a 512^2 RGB block).
    rows = block.reshape(c, hh // 2, 2, ww)
    pairs = np.add(rows[:, :, 0], rows[:, :, 1], dtype=np.uint16).reshape(c, hh // 2, ww // 2, 2)
    total = np.add(pairs[..., 0], pairs[..., 1])
    total += 2
    total >>= 2
    return total.astype(np.uint8)


def assemble(fetch: Callable[[int, int], np.ndarray], dims: tuple[int, int],
             block: tuple[int, int], x0: np.ndarray, y0: np.ndarray, w: int,
             h: int) -> np.ndarray:
    """``(N, 3, h, w)`` uint8 regions at ``(x0, y0)`` (``(N,)`` int64 each, level pixels) of a
    level of ``dims`` ``(W, H)`` stored as ``block`` ``(bw, bh)`` blocks, ``fetch(bx, by)``
    giving one ``(3, bh, bw)``. The outside is white and fetches nothing.

    Blocks are fetched once per call however many regions share them, and only the
    intersections are copied (no per-pixel Python)."""
    n = x0.shape[0]
    out = np.full((n, 3, h, w), 255, dtype=np.uint8)
    (lw, lh), (bw, bh) = dims, block
    # Python ints from here on: numpy scalars make this loop several times slower.
    xs0, ys0 = x0.tolist(), y0.tolist()
    xa = [min(max(v, 0), lw) for v in xs0]
    xb = [min(max(v + w, 0), lw) for v in xs0]
    ya = [min(max(v, 0), lh) for v in ys0]
    yb = [min(max(v + h, 0), lh) for v in ys0]
    blocks: dict[tuple[int, int], np.ndarray] = {}

    def get(bx: int, by: int) -> np.ndarray:
        blk = blocks.get((bx, by))
        if blk is None:
            blk = blocks[(bx, by)] = fetch(bx, by)
        return blk

    for i in range(n):
        ra, rb, ca, cb = ya[i], yb[i], xa[i], xb[i]
        if ca >= cb or ra >= rb:
            continue
        ox, oy = xs0[i], ys0[i]
        by0, bx0 = ra // bh, ca // bw
        if by0 == (rb - 1) // bh and bx0 == (cb - 1) // bw:
            # Inside one block (most regions of a small window): one copy, no inner loops.
            ty, tx = by0 * bh, bx0 * bw
            out[i, :, ra - oy:rb - oy, ca - ox:cb - ox] = \
                get(bx0, by0)[:, ra - ty:rb - ty, ca - tx:cb - tx]
            continue
        dst = out[i]
        for by in range(by0, (rb - 1) // bh + 1):
            ys, ye = max(ra, by * bh), min(rb, (by + 1) * bh)
            for bx in range(bx0, (cb - 1) // bw + 1):
                xs, xe = max(ca, bx * bw), min(cb, (bx + 1) * bw)
                dst[:, ys - oy:ye - oy, xs - ox:xe - ox] = \
                    get(bx, by)[:, ys - by * bh:ye - by * bh, xs - bx * bw:xe - bx * bw]
    return out
