"""An in-memory image as a glimpse source: the reference the slide backends are tested against.

Its glimpses *are* :func:`ram_wsi.retina.glimpse`'s (same pyramid, same kernel, white fill), so a
slide written from the same pixels with 2x2-mean levels must serve the same glimpses.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import torch

from ..errors import SlideError
from ..retina import Pyramid, RetinaSpec, build_pyramid, glimpse, patch_levels
from .base import GlimpseSource, SlideInfo, as_locations

__all__ = ["ArraySource"]


class ArraySource(GlimpseSource):
    """Glimpses from an ``(H, W, 3)`` uint8 (0..255) or float (0..1) RGB image in memory.

    Args:
        image: ``(H, W, 3)`` array or tensor (``(3, H, W)`` tensors are accepted too).
        mpp: micrometres per pixel, if known (enables ``units="um"``).
        block: block size used by :meth:`read_regions` / thumbnails.

    Pickles by value (the image travels with it).
    """

    backend = "memory"

    def __init__(self, image: Any, *, mpp: float | None = None, block: int = 256,
                 path: str | None = None):
        super().__init__(path, mpp=mpp, block=block)
        if isinstance(image, torch.Tensor):
            t = image.detach().cpu()
            if t.dim() == 3 and t.shape[0] in (3, 4) and t.shape[-1] not in (3, 4):
                t = t.permute(1, 2, 0)
            image = t.numpy()
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise SlideError(path or "<memory>", f"expected an (H, W, 3) image, got {arr.shape}")
        arr = arr[..., :3]
        if arr.dtype == np.uint8:
            f = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0
        else:
            f = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
        self._image = f.contiguous()  # (3, H, W) float32 in [0, 1]
        self._mpp = mpp
        self._block_size = int(block)
        self._pyramids: dict[int, Pyramid] = {}
        self._levels: list[np.ndarray] | None = None
        self._uid = uuid.uuid4().hex  # cache key: never reused, unlike id()

    def __reduce__(self):
        image = self._image.permute(1, 2, 0).contiguous().numpy()
        return (_rebuild_array, (image, self._mpp, self._block_size, self._path))

    def _cache_key(self) -> tuple:
        return (self.backend, self._uid)

    def _level_arrays(self) -> list[np.ndarray]:
        if self._levels is None:
            _, h, w = self._image.shape
            top = 0
            while max(h, w) / 2**top > self._block_size:
                top += 1
            pyr = build_pyramid(self._image[None], RetinaSpec(1, 1, 2.0, float(2**top)),
                                fill=self.fill)
            levels = []
            for i in range(len(pyr.shapes)):
                lv = pyr.level(i)[0]
                hh, ww = -(-h // 2**i), -(-w // 2**i)
                levels.append((lv[:, :hh, :ww] * 255.0).round().clamp(0, 255)
                              .to(torch.uint8).numpy())
            self._levels = levels
        return self._levels

    def _open_info(self) -> SlideInfo:
        levels = self._level_arrays()
        dims = [(lv.shape[2], lv.shape[1]) for lv in levels]
        b = self._block_size
        return SlideInfo(
            dimensions=dims[0], level_dimensions=dims, block_sizes=[(b, b)] * len(dims),
            mpp=None if self._mpp is None else (float(self._mpp), float(self._mpp)),
            reported_downsamples=[float(2**i) for i in range(len(dims))],
            axis_downsamples=[(float(2**i), float(2**i)) for i in range(len(dims))],
            properties={"source": "in-memory array"})

    def _read_block(self, level: int, bx: int, by: int) -> np.ndarray:
        lv = self._level_arrays()[level]
        b = self._block_size
        out = np.full((3, b, b), 255, dtype=np.uint8)
        part = lv[:, by * b:(by + 1) * b, bx * b:(bx + 1) * b]
        out[:, :part.shape[1], :part.shape[2]] = part
        return out

    def pyramid(self, spec: RetinaSpec) -> Pyramid:
        """The 2x pyramid ``spec`` needs (built once per depth, white padding)."""
        top = max(patch_levels(spec))
        pyr = self._pyramids.get(top)
        if pyr is None:
            pyr = self._pyramids[top] = build_pyramid(self._image[None], spec, fill=self.fill)
        return pyr

    def glimpse(self, loc: Any, spec: RetinaSpec, *, units: str = "px") -> torch.Tensor:
        """Exactly ``ram_wsi.retina.glimpse(image, loc, spec, fill=1.0)`` for every location."""
        spec = self._px_spec(spec, units)
        locs = torch.from_numpy(as_locations(loc)).float()
        n = locs.shape[0]
        pyr = self.pyramid(spec)
        view = Pyramid(pyr.flat.expand(n, -1, -1), pyr.offsets, pyr.shapes, pyr.height,
                       pyr.width, pyr.fill)
        return glimpse(view, locs, spec, fill=self.fill).float()


def _rebuild_array(image, mpp, block, path):
    return ArraySource(image, mpp=mpp, block=block, path=path)
