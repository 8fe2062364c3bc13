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
