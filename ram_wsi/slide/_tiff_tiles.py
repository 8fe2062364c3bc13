"""Decoding one TIFF level's tiles with tifffile, for :class:`~ram_wsi.slide.openslide_source.
OpenSlideSource`'s block reads of a single-level or shallow slide (private).

Why: such a slide's base level is decoded whole once per decision (the levels built from it,
:mod:`._levels`, need every pixel). OpenSlide decodes and paints a JPEG tile at ~20-45 ns per
pixel; tifffile with imagecodecs (the same libjpeg-turbo) decodes it at ~13 -- on a 2,220 x
2,967 one-level TIFF, OpenSlide's painting alone made a decision 1.8x a pyramid's.

Used only where the pixels are OpenSlide's to the bit: a tiled, 8-bit, 3-sample, interleaved
page of exactly the level's size, RGB or JPEG-coded YCbCr; and only after the first block has
been read both ways and found equal (:class:`TileReader` ``verified``). Anything else -- another
layout, a format tifffile does not read (DICOM, NDPI ...), a tile that fails to decode -- reads
through OpenSlide, whose error is the one reported. Pyramid levels are not read here: for their
small regions OpenSlide's direct reads are cheaper than whole tiles (see ``openslide_source``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["TileReader", "open_tiles"]


class TileReader:
    """One TIFF page's tiles: offsets, byte counts and tifffile's decoder, read with ``pread``
    on the reader's own descriptor (thread-safe: no shared file position).

    ``verified``: None until the first block was compared with OpenSlide's, then whether it
    matched (False: this reader is not used again)."""

    def __init__(self, path: str, page: Any):
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tiles_x = -(-self.width // self.tile_w)
        self.offsets = list(page.dataoffsets)
        self.counts = list(page.databytecounts)
        self.jpegtables = page.jpegtables
        self.decode: Callable[..., Any] = page.decode
        self.verified: bool | None = None
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        os.close(self.fd)

    def tile(self, tx: int, ty: int) -> np.ndarray:
        """Tile ``(tx, ty)`` as ``(tile_h, tile_w, 3)`` uint8 (an absent tile: white)."""
        i = ty * self.tiles_x + tx
        off, n = int(self.offsets[i]), int(self.counts[i])
        if n == 0:
            return np.full((self.tile_h, self.tile_w, 3), 255, np.uint8)
        data = os.pread(self.fd, n, off)
        if len(data) != n:
            raise OSError(f"short read of tile {i}: {len(data)} of {n} bytes")
        seg = self.decode(data, i, jpegtables=self.jpegtables)[0]
        return seg.reshape(self.tile_h, self.tile_w, 3)

    def read(self, x: int, y: int, w: int, h: int, out: np.ndarray) -> None:
        """Pixels ``[x, x + w) x [y, y + h)`` (inside the page) into ``out`` ``(h, w, 3)``."""
        tw, th = self.tile_w, self.tile_h
        for ty in range(y // th, (y + h - 1) // th + 1):
            ya, yb = max(y, ty * th), min(y + h, (ty + 1) * th)
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                xa, xb = max(x, tx * tw), min(x + w, (tx + 1) * tw)
                t = self.tile(tx, ty)
                out[ya - y:yb - y, xa - x:xb - x] = t[ya - ty * th:yb - ty * th,
                                                      xa - tx * tw:xb - tx * tw]


def open_tiles(path: str, width: int, height: int) -> TileReader | None:
    """A :class:`TileReader` of the page of ``path`` that is OpenSlide's level of ``width`` x
    ``height``, when its layout is one decoded exactly as OpenSlide does (module docstring);
    None otherwise (the caller reads through OpenSlide)."""
    if not os.path.isfile(path):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            for page in tf.pages:
                if _usable(page, width, height):
                    return TileReader(path, page)
    except Exception:  # noqa: BLE001 -- not a TIFF tifffile reads: OpenSlide reads it
        return None
    return None


def _usable(page: Any, width: int, height: int) -> bool:
    try:
        jpeg = int(page.compression) == 7
        photometric = int(page.photometric)
        return (bool(page.is_tiled) and int(page.imagewidth) == width
                and int(page.imagelength) == height and int(page.samplesperpixel) == 3
                and int(page.bitspersample) == 8 and int(page.planarconfig) == 1
                and int(getattr(page, "imagedepth", 1)) == 1
                and (photometric == 2 or (photometric == 6 and jpeg))
                and len(page.dataoffsets) == (-(-width // int(page.tilewidth))
                                              * -(-height // int(page.tilelength))))
    except (AttributeError, TypeError, ValueError):
        return False
