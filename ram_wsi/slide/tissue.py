"""Tissue detection from a thumbnail, and sampling of start locations on tissue.

The usual recipe (CLAM, WSInfer...): a thumbnail of at most ``max_size`` pixels, HSV saturation,
median blur 7, Otsu threshold (never below a floor, so a blank slide has no tissue), a
morphological closing, and removal of connected components smaller than ``min_area`` of the
thumbnail. Masks are cached per process, keyed by path, modification time and ``max_size``; with
``cache_dir`` (or ``$RAM_WSI_TISSUE_CACHE``) also on disk as ``.npz``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import GlimpseSource, as_locations

__all__ = ["TissueMask", "mask_from_rgb", "otsu_threshold", "tissue_mask"]

_MEMO: dict[tuple, TissueMask] = {}
_MEMO_LOCK = threading.Lock()
_MEMO_MAX = 512


@dataclass
class TissueMask:
    """A boolean mask ``(h, w)`` over the whole slide (``(-1, -1)`` is its top-left corner)."""

    mask: np.ndarray
    slide_dimensions: tuple[int, int]
    threshold: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean())

    def sample(self, n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
        """``(n, 2)`` float32 locations ``(x, y)`` in ``[-1, 1]``, uniform over tissue (uniform
        over the slide if it has none)."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        h, w = self.mask.shape
        idx = np.flatnonzero(self.mask.reshape(-1))
        if idx.size == 0:
            return rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        pick = idx[rng.integers(idx.size, size=n)]
        py, px = np.divmod(pick, w)
        x = (px + rng.random(n)) / w * 2 - 1
        y = (py + rng.random(n)) / h * 2 - 1
        return np.stack([x, y], 1).astype(np.float32)

    def contains(self, loc: Any) -> np.ndarray:
        """Boolean ``(N,)``: does each location fall on tissue (outside the slide: no)."""
        locs = as_locations(loc)
        h, w = self.mask.shape
        px = np.floor((locs[:, 0] + 1) * 0.5 * w).astype(np.int64)
        py = np.floor((locs[:, 1] + 1) * 0.5 * h).astype(np.int64)
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        out = np.zeros(locs.shape[0], dtype=bool)
        out[ok] = self.mask[py[ok], px[ok]]
        return out

    def fraction_on_tissue(self, loc: Any) -> float:
        """Fraction of the given locations that fall on tissue."""
        c = self.contains(loc)
        return float(c.mean()) if c.size else 0.0


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (maximises the between-class variance)."""
    hist = np.bincount(values.reshape(-1).astype(np.int64), minlength=256)[:256].astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    p = hist / total
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    mu_t = mu[-1]
    denom = omega * (1 - omega)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(denom > 0, (mu_t * omega - mu) ** 2 / denom, 0.0)
    return float(np.argmax(between))


def mask_from_rgb(rgb: np.ndarray, *, min_saturation: float = 15.0, min_area: float = 5e-4,
                  closing: int = 2) -> tuple[np.ndarray, float]:
    """Tissue mask of an ``(h, w, 3)`` uint8 thumbnail and the threshold used."""
    from scipy import ndimage

    rgb = rgb[..., :3].astype(np.float32)
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6) * 255.0, 0.0).astype(np.uint8)
    sat = ndimage.median_filter(sat, size=7, mode="nearest")
    thr = max(otsu_threshold(sat), min_saturation)
    mask = sat > thr
    if closing > 0:
        st = ndimage.generate_binary_structure(2, 1)
        mask = ndimage.binary_closing(mask, structure=st, iterations=closing,
                                      border_value=0) | mask
    lab, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(lab.reshape(-1))
        keep = sizes >= max(1, min_area * mask.size)
        keep[0] = False
        mask = keep[lab]
    return mask, thr


def _disk_key(src: GlimpseSource, max_size: int) -> str:
    raw = f"{os.path.abspath(src.path)}|{src.mtime()}|{max_size}"
    return hashlib.sha1(raw.encode()).hexdigest()[:20]


def tissue_mask(source: GlimpseSource | str | os.PathLike, max_size: int = 2048, *,
                cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> TissueMask:
    """Tissue mask of a slide from a thumbnail of at most ``max_size`` pixels (cached)."""
    if not isinstance(source, GlimpseSource):
        from . import open_source

        source = open_source(source)
    key = None
    if source.path is not None:
        key = (os.path.abspath(source.path), source.mtime(), int(max_size),
               tuple(sorted(kwargs.items())))
        with _MEMO_LOCK:
            hit = _MEMO.get(key)
        if hit is not None:
            return hit
    cache_dir = cache_dir or os.environ.get("RAM_WSI_TISSUE_CACHE")
    disk = None
    if cache_dir and source.path is not None and not kwargs:
        disk = Path(cache_dir) / f"tissue-{_disk_key(source, max_size)}.npz"
        if disk.exists():
            try:
                z = np.load(disk)
                tm = TissueMask(z["mask"].astype(bool), tuple(int(v) for v in z["dims"]),
                                float(z["thr"]))
                _remember(key, tm)
                return tm
            except (OSError, ValueError, KeyError):
                pass
    mask, thr = mask_from_rgb(source.thumbnail(max_size), **kwargs)
    tm = TissueMask(mask, tuple(source.dimensions), thr)
    if disk is not None:
        from ..io_utils import atomic_path

        disk.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(disk) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, mask=mask, dims=np.array(tm.slide_dimensions), thr=thr)
    _remember(key, tm)
    return tm


def _remember(key: tuple | None, tm: TissueMask) -> None:
    if key is None:
        return
    with _MEMO_LOCK:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = tm
