"""Tissue textures of the synthetic slides: a pink stroma with purple nuclei, pooled 2x2 per
level as a pyramid would, and a process-wide library of them that needle scenes draw from (so
thousands of procedural slides share a few MB of textures)."""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["TEXTURE_LIBRARY", "library_texture", "make_texture", "pool_texture"]

TEXTURE_LIBRARY = 16  # textures a library-textured scene picks its VARIANTS from (process-wide)
_LIBRARY: dict[tuple, np.ndarray] = {}
_LIBRARY_LOCK = threading.Lock()


def make_texture(rng: np.random.Generator, t: int) -> np.ndarray:
    """A ``(t, t, 3)`` float32 tissue texture: a pink stroma with purple nuclei."""
    from scipy import ndimage

    base = np.array([236, 178, 206], dtype=np.float32)
    low = ndimage.gaussian_filter(rng.standard_normal((t, t)), t / 24, mode="wrap")
    low = low / (np.abs(low).max() + 1e-9)
    img = base[None, None] + low[..., None] * np.array([10, 18, 12], np.float32)
    nuclei = np.zeros((t, t), np.float32)
    n = int(rng.integers(t * t // 1200, t * t // 700 + 2))
    ys, xs = rng.integers(0, t, n), rng.integers(0, t, n)
    nuclei[ys, xs] = 1.0
    nuclei = ndimage.gaussian_filter(nuclei, 2.2, mode="wrap")
    nuclei = np.clip(nuclei / (nuclei.max() + 1e-9) * 1.6, 0, 1)
    img = img * (1 - 0.55 * nuclei[..., None]) + \
        np.array([110, 50, 140], np.float32) * 0.55 * nuclei[..., None]
    return np.clip(img, 0, 255).astype(np.float32)


def pool_texture(tex: np.ndarray, level: int, t: int) -> np.ndarray:
    """``tex`` 2x2-mean-pooled ``level`` times and tiled back to ``(t, t, 3)``."""
    f = 2**level
    if f >= t:
        small = tex.reshape(-1, 3).mean(0)[None, None]
    else:
        small = tex.reshape(t // f, f, t // f, f, 3).mean((1, 3))
    reps = t // small.shape[0]
    return np.tile(small, (reps, reps, 1))


def library_texture(t: int, lib_id: int, level: int) -> np.ndarray:
    """Texture ``lib_id`` of the process-wide library at ``level`` (read-only, shared)."""
    key = ("float", t, lib_id, level)
    out = _LIBRARY.get(key)
    if out is None:
        base_key = ("float", t, lib_id, 0)
        base = _LIBRARY.get(base_key)
        if base is None:
            base = make_texture(np.random.default_rng([7_331, lib_id, t]), t)
        out = base if level == 0 else pool_texture(base, level, t)
        out.flags.writeable = False
        with _LIBRARY_LOCK:
            _LIBRARY.setdefault(base_key, base)
            out = _LIBRARY.setdefault(key, out)
    return out
