"""A plain image (PNG, JPEG, a stripped -- non-tiled, single-page -- TIFF, ...) as a one-level
slide.

What openslide-python's ``ImageSlide`` is to ``OpenSlide``: real folders of slides also hold
plain images (a stripped TIFF of a few MB is common), and :func:`ram_wsi.slide.open_source`
falls back to this source when OpenSlide does not recognise a file that Pillow can open. The
image is one level, decoded whole (Pillow cannot decode a part) once into the process's block
cache as blocks of :data:`BLOCK` pixels -- blocks, not one image-sized entry, so that an image
larger than the cache still fills most of it instead of being decoded again for every read --
then glimpses, thumbnails and counters work as on any slide, and its coarser levels are built
once as a pyramid's (:mod:`ram_wsi.slide._levels`). Alpha is composited over white; greyscale and
16-bit images become 8-bit RGB. The physical pixel size comes from the file's own resolution
fields with their unit (TIFF ``ResolutionUnit``, JPEG's JFIF or EXIF unit, PNG's pHYs), through
the one rule of :mod:`ram_wsi.slide.units`: a length unit and >= 2,540 dpi (<= 10 um per
pixel), else no mpp. Pillow's ``dpi`` is not used as such: it reports 72 dpi for a JPEG whose
EXIF it cannot read, and dots per inch for a unitless resolution.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import SlideError
from .base import GlimpseSource, SlideInfo
from .units import mpp_from_resolution

__all__ = ["MAX_PIXELS", "ImageSource", "is_plain_image"]

MAX_PIXELS = 1 << 28  # ~268 Mpx: beyond that a plain image should be converted to a pyramid
BLOCK = 256  # side of the blocks the decoded image is cached as


def is_plain_image(path: str | os.PathLike) -> bool:
    """Whether the file is an image for this source: Pillow recognises its header (nothing is
    decoded) and, for a TIFF, it is not tiled -- a tiled TIFF that OpenSlide refused is a
    damaged slide, which must stay an error rather than open as its first page."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if not (im.size[0] > 0 and im.size[1] > 0):
                return False
            tiff = im.format == "TIFF"
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    if not tiff:
        return True
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            return len(tf.pages) == 1 and not tf.pages[0].is_tiled
    except Exception:  # noqa: BLE001 - an unreadable TIFF is not a plain image
        return False


class ImageSource(GlimpseSource):
    """A plain image file as a single-level :class:`GlimpseSource`.

    Raises:
        SlideError: the file cannot be read as an image, is truncated or corrupt (checked on
            open), or is larger than :data:`MAX_PIXELS` -- naming the file and the cause.
    """

    backend = "image"

    def __init__(self, path: str | os.PathLike, **settings: Any):
        super().__init__(os.fspath(path), **settings)
        _ = self.info  # open once to validate (an unpickled copy does not: base._rebuild)

    def _open_info(self) -> SlideInfo:
        from PIL import Image

        try:
            with Image.open(self._path) as im:
                w, h = im.size
                fmt, mode = im.format, im.mode
                rule = mpp_from_resolution(*_resolution(im))
                im.verify()  # PNG CRCs, truncation: fail now, not at the first glimpse
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
            raise SlideError(self._path, f"not a readable image: {type(e).__name__}: {e}"
                             ) from None
        if w * h > MAX_PIXELS:
            raise SlideError(self._path, f"a plain {fmt} image of {w}x{h} pixels is too large "
                                         f"to read whole; convert it to a pyramid "
                                         f"(ram-wsi convert) first")
        return SlideInfo(dimensions=(w, h), level_dimensions=[(w, h)],
                         block_sizes=[(BLOCK, BLOCK)],
                         mpp=rule.mpp, mpp_note=rule.note,
                         properties={"image.format": fmt, "image.mode": mode})

    def _read_block(self, level: int, bx: int, by: int) -> np.ndarray:
        """Block ``(bx, by)``: the image is decoded whole, the block returned and every other
        block put into the cache (:meth:`GlimpseSource._share_blocks`), so that one decode
        serves the slide. Counts the file's bytes once per decode."""
        from PIL import Image

        w, h = self.info.dimensions
        nx, ny = -(-w // BLOCK), -(-h // BLOCK)
        if level != 0 or not (0 <= bx < nx and 0 <= by < ny):
            return np.full((3, BLOCK, BLOCK), 255, np.uint8)
        try:
            with Image.open(self._path) as im:
                im.load()
                rgb = _as_rgb(im)
        except Exception as e:  # noqa: BLE001
            raise SlideError(self._path, f"cannot decode the image: {type(e).__name__}: {e}"
                             ) from None
        try:
            self._count(bytes_read=os.path.getsize(self._path))
        except OSError:
            pass
        pad = np.full((3, ny * BLOCK, nx * BLOCK), 255, np.uint8)
        for c in range(3):  # channel by channel: 2.5x faster than one transposed copy
            pad[c, :h, :w] = rgb[..., c]
        blocks = {(i, j): np.ascontiguousarray(pad[:, j * BLOCK:(j + 1) * BLOCK,
                                                   i * BLOCK:(i + 1) * BLOCK])
                  for j in range(ny) for i in range(nx)}
        mine = blocks.pop((bx, by))
        self._share_blocks(0, blocks)
        return mine


_TIFF_UNITS = {1: None, 2: "inch", 3: "centimeter"}  # ResolutionUnit; absent: inch (the spec)


def _resolution(im: Any) -> tuple[Any, Any, str | None]:
    """``(x, y, unit)``: the file's pixels per ``unit`` as it states them, ``(None, None,
    None)`` when it states none. Read from each format's own fields, so that a unitless
    resolution stays unitless."""
    info = im.info
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", {})
        if 282 in tags and 283 in tags:
            return tags[282], tags[283], _TIFF_UNITS.get(int(tags.get(296, 2)))
        return None, None, None
    if im.format in ("JPEG", "MPO"):
        unit = info.get("jfif_unit")
        if unit in (1, 2) and info.get("jfif_density"):
            x, y = info["jfif_density"]
            return x, y, "inch" if unit == 1 else "centimeter"
        try:
            exif = im.getexif()
        except Exception:  # noqa: BLE001 -- unreadable EXIF: no resolution stated
            return None, None, None
        if 282 in exif and 283 in exif:
            return exif[282], exif[283], _TIFF_UNITS.get(int(exif.get(296, 2)))
        return None, None, None
    dpi = info.get("dpi")  # PNG (pHYs in metres: Pillow gives dpi only then), BMP ...
    if dpi:
        return dpi[0], dpi[1], "inch"
    return None, None, None


def _as_rgb(im) -> np.ndarray:
    """``(h, w, 3)`` uint8 of any Pillow image: alpha over white, 16-bit scaled to 8-bit."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a / (65535.0 if a.max() > 255 else 255.0) * 255.0 + 0.5, 0, 255)
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)
    if "A" in im.getbands() or im.mode == "P" and "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return (rgba[..., :3] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    if im.mode == "RGB":
        return np.asarray(im)  # convert("RGB") would copy the whole image once more
    return np.asarray(im.convert("RGB"), dtype=np.uint8)
