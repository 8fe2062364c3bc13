"""The one rule for a slide's physical pixel size (micrometres per pixel, "mpp"), shared by every
reader (OpenSlide, plain images, OME-Zarr) and so by ``convert``, ``score`` and training.

Why a rule: image files carry resolutions that are not a microscope's. TIFF's and JPEG's
writers put 72 (or 96, 300) dpi in by default; OpenSlide turns ``boxes.tiff``'s 72 dpi into
352.78 um/px, which a micrometre retina would read at 1/1,400 of a scanned slide's scale and
``convert`` would write into the OME-Zarr scale. A resolution is a physical pixel size only when

* its unit is a length (inch, centimetre, millimetre, micrometre ...; "none" or an unknown
  unit is an aspect ratio), and
* it is at most :data:`MAX_MPP` (10 um/px, i.e. at least 2,540 dpi): a 1x objective on a
  scanner gives ~10 um/px; anything coarser is a placeholder (or a photograph of the glass).

Otherwise the slide has *no* mpp: its metadata says so (and why), ``results.csv``'s ``mpp`` is
empty, ``convert`` writes a scale in pixels, and a retina in micrometres raises ``SlideError``
or falls back to ``fallback_mpp`` where the caller offers one.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MAX_MPP", "MppRule", "mpp_from_resolution", "slide_mpp"]

MAX_MPP = 10.0
"""Coarsest pixel size taken as physical, micrometres (2,540 dpi)."""

# Micrometres per unit of length, by the names TIFF, JPEG, PNG and NGFF use.
_UM_PER_UNIT = {
    "inch": 25400.0, "in": 25400.0, "centimeter": 1e4, "centimetre": 1e4, "cm": 1e4,
    "millimeter": 1e3, "millimetre": 1e3, "mm": 1e3, "meter": 1e6, "metre": 1e6, "m": 1e6,
    "micrometer": 1.0, "micrometre": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0,
    "nanometer": 1e-3, "nanometre": 1e-3, "nm": 1e-3, "angstrom": 1e-4,
}


class MppRule:
    """What :func:`slide_mpp` decided: ``mpp`` ``(x, y)`` or None, and ``note``, why a stated
    size was not taken (None when it was, or when nothing was stated)."""

    __slots__ = ("mpp", "note")

    def __init__(self, mpp: tuple[float, float] | None, note: str | None = None):
        self.mpp = mpp
        self.note = note

    def __repr__(self) -> str:
        return f"MppRule(mpp={self.mpp!r}, note={self.note!r})"


def slide_mpp(x: Any, y: Any, unit: str | None = "micrometer") -> MppRule:
    """The rule (module docstring): ``(x, y)`` is a pixel's size in ``unit`` per pixel
    (``"micrometer"`` for OpenSlide's ``mpp-x``; a length unit such as ``"millimeter"`` for
    DICOM's spacing or an NGFF scale). Returns the mpp in micrometres, or None with a note.

    Anything missing, non-numeric, non-finite or not positive is no mpp without a note (the
    slide states none)."""
    pair = _positive(x, y)
    if pair is None:
        return MppRule(None)
    fx, fy = pair
    k = _UM_PER_UNIT.get(str(unit).strip().lower()) if unit is not None else None
    if k is None:
        return MppRule(None, f"the pixel size {fx:g} x {fy:g} has no length unit "
                             f"({unit or 'none'}): an aspect ratio, not a physical size")
    mx, my = fx * k, fy * k
    if max(mx, my) > MAX_MPP:
        dpi = 25400.0 / max(mx, my)
        return MppRule(None, f"the stated {mx:.6g} um/px ({dpi:.4g} dpi) is coarser than "
                             f"{MAX_MPP:g} um/px (2,540 dpi): a placeholder resolution (TIFF/"
                             "JPEG writers default to 72 dpi), not a microscope's")
    return MppRule((mx, my))


def mpp_from_resolution(xres: Any, yres: Any, unit: str | None) -> MppRule:
    """:func:`slide_mpp` of a resolution in pixels per ``unit`` (TIFF ``XResolution`` with
    ``ResolutionUnit``, JPEG's JFIF density, PNG's pHYs): ``unit`` None or ``"none"`` is an
    aspect ratio, never a size."""
    pair = _positive(xres, yres)
    if pair is None:
        return MppRule(None)
    return slide_mpp(1.0 / pair[0], 1.0 / pair[1], unit)


def _positive(x: Any, y: Any) -> tuple[float, float] | None:
    """``(x, y)`` as floats when both are finite and positive (what a file states as a size
    or a resolution), else None (it states none)."""
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        return None
    if math.isfinite(fx) and math.isfinite(fy) and fx > 0 and fy > 0:
        return fx, fy
    return None
