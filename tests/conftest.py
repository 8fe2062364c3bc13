"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _write_levels_tiff(path: Path, img: np.ndarray, dims: list[tuple[int, int]]
                       ) -> list[np.ndarray]:
    """A tiled (64 px) TIFF OpenSlide opens: ``img`` and its box-resized copies of ``dims``
    ``(W, H)`` as the levels -- any downsample, non-integer ones included. Returns the levels."""
    import tifffile
    from PIL import Image

    levels = [img] + [np.asarray(Image.fromarray(img).resize(d, Image.Resampling.BOX))
                      for d in dims]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, lv in enumerate(levels):
            tw.write(lv, tile=(64, 64), photometric="rgb", metadata=None,
                     subfiletype=0 if i == 0 else 1)
    return levels


@pytest.fixture
def levels_tiff():
    """``levels_tiff(path, img, dims) -> levels``: see :func:`_write_levels_tiff`."""
    return _write_levels_tiff


@pytest.fixture
def regions_read(monkeypatch):
    """``watch(source) -> seen``: from now on (until the test ends or ``monkeypatch.undo()``),
    every ``read_regions`` call on the source's class appends ``(level, w, h)`` to ``seen`` and
    reads as before -- what a glimpse plan really reads."""

    def watch(src) -> list[tuple[int, int, int]]:
        seen: list[tuple[int, int, int]] = []
        orig = type(src).read_regions

        def spy(self, level, x0, y0, w, h, use_cache=True):
            seen.append((level, w, h))
            return orig(self, level, x0, y0, w, h, use_cache)

        monkeypatch.setattr(type(src), "read_regions", spy)
        return seen

    return watch
