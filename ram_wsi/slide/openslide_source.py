"""Glimpses from anything OpenSlide opens: Aperio SVS, generic tiled TIFF, DICOM, Hamamatsu, ...

Handles are opened lazily in the process that reads, kept in the process's bounded handle pool,
and share one ``openslide.OpenSlideCache``. Blocks are the file's own tiles (``tile-width`` /
``tile-height`` properties; 256 when the format does not say), read with ``read_region`` and
alpha-composited over white (OpenSlide returns non-premultiplied RGBA, alpha 0 outside the
scanned area).

Non-integer downsamples: OpenSlide addresses a level through level-0 coordinates divided by its
own (single) downsample, so a block at level pixel ``X`` is requested at ``round(X * d)``; when
``X * d`` is not an integer OpenSlide shifts by the fraction (at most ``0.5 / d`` level pixels).
Power-of-two pyramids are pixel-exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideError
from .base import GlimpseSource, SlideInfo
from .cache import handle_pool, openslide_cache

__all__ = ["OpenSlideSource", "composite_over_white"]


def composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` non-premultiplied RGBA uint8 -> ``(h, w, 3)`` RGB uint8 over white
    (``rgb * a + 255 * (1 - a)``, rounded). Transparent pixels become white."""
    rgb = rgba[..., :3]
    a = rgba[..., 3:4]
    if a.min() == 255:
        return np.ascontiguousarray(rgb)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a.astype(np.uint16)) + 127) // 255
    return out.astype(np.uint8)


def _resolve(path: str) -> str:
    """A DICOM slide may be named by its directory: OpenSlide wants one of its files."""
    p = Path(path)
    if p.is_dir():
        if (p / "zarr.json").exists():
            raise SlideError(path, "is a zarr store; open it with ZarrSource")
        dcm = sorted(p.glob("*.dcm"))
        if dcm:
            return str(dcm[0])
        raise SlideError(path, "is a directory but neither a zarr store (no zarr.json) nor a "
                               "DICOM slide (no .dcm files)")
    return path


def _open(path: str) -> Any:
    import openslide

    real = _resolve(path)
    if not os.path.exists(real):
        raise SlideError(path, "no such file")
    try:
        slide = openslide.OpenSlide(real)
    except openslide.OpenSlideUnsupportedFormatError as e:
        raise SlideError(path, f"not a slide OpenSlide can open (unsupported or unrecognised "
                               f"format): {e or 'no vendor recognised'}") from e
    except openslide.OpenSlideError as e:
        raise SlideError(path, f"OpenSlide cannot open it (corrupt or unsupported): {e}") from e
    except OSError as e:
        raise SlideError(path, f"cannot read the file: {e}") from e
    try:
        slide.set_cache(openslide_cache())
    except (AttributeError, openslide.OpenSlideError):  # OpenSlide < 4.0: private caches
        pass
    return slide


def _close(slide: Any) -> None:
    slide.close()


class OpenSlideSource(GlimpseSource):
    """A slide read through OpenSlide (``openslide-python``).

    Args:
        path: the slide file (a DICOM slide: any of its files, or their directory).

    Raises:
        SlideError: missing file, unrecognised or corrupt file, unsupported compression
            (on construction, which opens the file once to validate it), or a read that fails
            (corrupt tile data: on :meth:`glimpse`); always naming the file and the cause.
    """

    backend = "openslide"
    block_layout = "hwc"  # as OpenSlide gives pixels: no transposing copy per block

    def __init__(self, path: str | os.PathLike, *, _validate: bool = True, **settings: Any):
        super().__init__(os.fspath(path), **settings)
        if _validate:
            _ = self.info

    def _handle(self):
        return handle_pool().use(self._cache_key(), lambda: _open(self._path), _close)

    def _open_info(self) -> SlideInfo:
        with self._handle() as s:
            props = dict(s.properties)
            dims = [tuple(int(v) for v in d) for d in s.level_dimensions]
            downs = [float(d) for d in s.level_downsamples]
            blocks = []
            for i in range(len(dims)):
                tw = int(props.get(f"openslide.level[{i}].tile-width", 0) or 0)
                th = int(props.get(f"openslide.level[{i}].tile-height", 0) or 0)
                if tw <= 0 or th <= 0 or tw * th > 4096 * 4096:
                    tw = th = 256
                # Tiny tiles make many reads: group them into blocks of >= 256 px.
                tw *= max(1, -(-256 // tw))
                th *= max(1, -(-256 // th))
                blocks.append((tw, th))
        mpp = None
        try:
            mx = float(props["openslide.mpp-x"])
            my = float(props["openslide.mpp-y"])
            if mx > 0 and my > 0 and np.isfinite(mx) and np.isfinite(my):
                mpp = (mx, my)
        except (KeyError, ValueError):
            mpp = None
        keep = {k: v for k, v in props.items() if not k.startswith("openslide.level[")}
        return SlideInfo(dimensions=dims[0], level_dimensions=dims, block_sizes=blocks, mpp=mpp,
                         reported_downsamples=downs, properties=keep)

    def _read_block(self, level: int, bx: int, by: int) -> np.ndarray:
        import openslide

        info = self.info
        bw, bh = info.block_sizes[level]
        lw, lh = info.level_dimensions[level]
        d = info.reported_downsamples[level]
        w, h = min(bw, lw - bx * bw), min(bh, lh - by * bh)
        if w <= 0 or h <= 0:
            return np.full((bh, bw, 3), 255, dtype=np.uint8)
        x0, y0 = round(bx * bw * d), round(by * bh * d)
        try:
            with self._handle() as s:
                img = s.read_region((x0, y0), level, (w, h))
        except openslide.OpenSlideError as e:
            handle_pool().discard(self._cache_key())  # OpenSlide errors are sticky
            raise SlideError(self._path, f"reading level {level} at ({x0}, {y0}) failed "
                                         f"(corrupt tile data?): {e}") from e
        rgb = composite_over_white(np.asarray(img))
        if (h, w) == (bh, bw):
            return rgb
        out = np.full((bh, bw, 3), 255, dtype=np.uint8)
        out[:h, :w] = rgb
        return out

    def read_level0_rgba(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """OpenSlide's own ``read_region((x, y), 0, (w, h))`` as RGBA uint8 (for conversion
        checks)."""
        import openslide

        try:
            with self._handle() as s:
                return np.asarray(s.read_region((x, y), 0, (w, h)))
        except openslide.OpenSlideError as e:
            handle_pool().discard(self._cache_key())
            raise SlideError(self._path, f"reading failed: {e}") from e
