"""Alpha over white, the one implementation: every reader that meets transparent pixels (an
OpenSlide region, an RGBA or grey OME-Zarr chunk) turns them into RGB here, so a transparent
pixel is the same white, rounded the same way, whatever the backend."""

from __future__ import annotations

import numpy as np

__all__ = ["channels3", "composite_over_white", "over_white"]


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Non-premultiplied uint8 colour ``rgb`` over white with uint8 ``alpha`` (broadcast
    against it): ``rgb * a + 255 * (1 - a)``, rounded to the nearest uint8."""
    a = alpha.astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """``(h, w, 4)`` non-premultiplied RGBA uint8 -> ``(h, w, 3)`` RGB uint8 over white
    (``rgb * a + 255 * (1 - a)``, rounded). Transparent pixels become white."""
    rgb = rgba[..., :3]
    a = rgba[..., 3:4]
    if a.min() == 255:
        return np.ascontiguousarray(rgb)
    return over_white(rgb, a)


def channels3(data: np.ndarray) -> np.ndarray:
    """``(1, h, w)`` grey or ``(4, h, w)`` RGBA uint8 (channels first) -> ``(3, h, w)`` RGB
    uint8: grey repeated, RGBA over white."""
    if data.shape[0] == 1:
        return np.repeat(data, 3, axis=0)
    return over_white(data[:3], data[3:4])
