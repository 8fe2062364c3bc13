"""Synthetic whole-slide images of any size, written tile by tile in small memory.

A slide is white background, a few pinkish textured tissue blobs, and one *target* at a random
place inside tissue. Everything follows from ``seed``. A sidecar JSON (``<path>.json``) records
the label, the target centre (level-0 pixels and ``[-1, 1]``), its size, and the geometry.

Two kinds of target (``kind=``):

* ``"digit"``: a real MNIST digit drawn as a dark stain a few hundred level-0 pixels wide
  (10 classes).
* ``"needle"``: the benchmark for classifying gigapixel slides from a few glimpses. One lesion,
  a darker purple disk ``lesion_size`` level-0 pixels wide (a dark spot even on a thumbnail),
  filled with a fine pattern of period ``period`` level-0 pixels: class 0 a square lattice of
  round dots, class 1 parallel stripes (0, 45, 90 or 135 degrees, by the seed). Both patterns
  ink the same fraction of the area (:data:`NEEDLE_INK_FRACTION`), each class in its own ink
  and ground colours balanced so that their mean colour is the same: *where* the lesion is shows at low resolution, *what* it is only at level 0 and 1. The
  pattern is drawn consistently across levels: a level of downsample ``f < period`` averages the
  ``f x f`` level-0 pixels under each of its pixels (exactly); levels with ``f >= period`` show the
  exact mean colour of the pattern, the same for both classes.

:class:`ram_wsi.slide.procedural.ProceduralSource` serves the same pixels without writing
anything (``procedural:needle?size=131072&seed=3``): writers and source share
:meth:`_Scene.tile_pixels`.

Speed (131,072^2 in a minute or so): tissue is a smooth field on a coarse grid, thresholded;
tiles are classified per level from samples of the field. All-white tiles are one encoded tile
reused; all-tissue tiles are one of a few precomputed texture tiles (encoded once per level and
variant, and hard-linked in zarr stores); only tiles on a tissue border or on the target are
composed and encoded. Levels are drawn procedurally at their own resolution (2x steps, texture
2x2-mean-pooled), so they agree with level 0 only approximately. For pixel-exact pyramids of a
given image use :func:`write_pyramid_tiff` / :func:`write_pyramid_zarr`, which build levels as
:func:`ram_wsi.retina.build_pyramid` does (2x2 means).

Formats: ``fmt="tiff"``: a BigTIFF with one tiled page per level (successive IFDs, JPEG or
uncompressed, resolution tags in pixels/cm) that OpenSlide's generic-tiff reader opens as a
multi-level slide with ``openslide.mpp-x``; ``fmt="zarr"``: OME-Zarr NGFF 0.5 (zarr v3).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..io_utils import atomic_path
from .ngff import create_level_array, default_compressor, ngff_attributes, publish_mode

__all__ = [
    "KINDS",
    "NEEDLE_CLASSES",
    "NEEDLE_INK_FRACTION",
    "pyramid_images",
    "write_pyramid_tiff",
    "write_pyramid_zarr",
    "write_synthetic_slide",
]

_WHITE = 255
_DARK = np.array([60, 20, 95], dtype=np.float32)
_LESION = np.array([150, 86, 162], dtype=np.float32)  # the needle lesion's base colour
# Each needle class inks its pattern in its own colour on its own ground, chosen so that the
# mean colour is the same (ground * (1 - ink) + ink colour * ink, at the ink fraction): the
# class shows in the pixels' colours and shapes at levels 0-1, not in any pooled colour.
_NEEDLE_INK = (np.array([40, 30, 130], dtype=np.float32),   # dots: blue-violet
               np.array([110, 10, 70], dtype=np.float32))   # stripes: red-violet

KINDS = ("digit", "needle")
NEEDLE_CLASSES = ("dots", "stripes")
NEEDLE_INK_FRACTION = 0.35  # the share of a needle pattern's area that is ink, both classes
_NEEDLE_ANGLES = (0, 45, 90, 135)
_CLASS_BLOCK = 8  # _Scene.tile_class classifies blocks of 8 x 8 tiles at once


# ----------------------------------------------------------------------------- pyramids of images
def pyramid_images(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels`` uint8 ``(H_l, W_l, 3)`` levels of ``image`` made as
    :func:`ram_wsi.retina.build_pyramid` makes them (white padding, exact 2x2 means), rounded."""
    import torch

    from ..retina import RetinaSpec, build_pyramid

    img = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float() / 255
    pyr = build_pyramid(img[None], RetinaSpec(1, 1, 2.0, float(2 ** (levels - 1))), fill=1.0)
    h, w = image.shape[:2]
    out = []
    for i in range(levels):
        lv = pyr.level(i)[0, :, :-(-h // 2**i), :-(-w // 2**i)]
        out.append((lv * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    return out


def _encoder(compression: str, quality: int):
    if compression == "jpeg":
        import imagecodecs

        def enc(t: np.ndarray) -> bytes:
            return imagecodecs.jpeg_encode(t, level=quality, colorspace="RGB",
                                           outcolorspace="YCBCR", subsampling=(2, 2))
        return enc
    if compression in ("none", None):
        return lambda t: np.ascontiguousarray(t).tobytes()
    raise ValueError(f"compression must be 'jpeg' or 'none', got {compression!r}")


def _tiff_writer_kwargs(compression: str, quality: int, tile: int, mpp: float | None,
                        level: int) -> dict[str, Any]:
    kw: dict[str, Any] = {"tile": (tile, tile), "photometric": "rgb", "metadata": None,
                          "subfiletype": 0 if level == 0 else 1}
    if compression == "jpeg":
        kw.update(compression="jpeg", compressionargs={"level": quality}, subsampling=(2, 2))
    if mpp:
        res = 1e4 / (mpp * 2**level)  # pixels per centimetre
        kw.update(resolution=(res, res), resolutionunit="CENTIMETER")
    if level == 0:
        kw["description"] = "ram_wsi synthetic slide"
    return kw


def _tiles_of(arr: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    h, w = arr.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), _WHITE, dtype=np.uint8)
            part = arr[y:y + tile, x:x + tile]
            t[:part.shape[0], :part.shape[1]] = part
            yield t


def write_pyramid_tiff(path: str | os.PathLike, image: np.ndarray, *, levels: int = 3,
                       tile: int = 64, compression: str = "none", quality: int = 95,
                       mpp: float | None = 0.5) -> Path:
    """Write ``image`` (``(H, W, 3)`` uint8) as a tiled pyramidal TIFF OpenSlide opens, levels
    from :func:`pyramid_images` (the in-memory retina's own pyramid)."""
    import tifffile

    enc = _encoder(compression, quality)
    path = Path(path)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for i, lv in enumerate(pyramid_images(image, levels)):
            tw.write((enc(t) for t in _tiles_of(lv, tile)), shape=lv.shape, dtype=np.uint8,
                     **_tiff_writer_kwargs(compression, quality, tile, mpp, i))
    publish_mode(path)
    return path


def write_pyramid_zarr(path: str | os.PathLike, image: np.ndarray, *, levels: int = 3,
                       chunk: int = 64, mpp: float | None = 0.5) -> Path:
    """Write ``image`` as OME-Zarr (NGFF 0.5) with :func:`pyramid_images`'s levels."""
    import zarr

    path = Path(path)
    with atomic_path(path, is_dir=True) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for i, lv in enumerate(pyramid_images(image, levels)):
            arr = create_level_array(group, i, lv.shape[1], lv.shape[0], chunk)
            arr[:] = lv.transpose(2, 0, 1)
        group.attrs.update(ngff_attributes(levels, mpp, name=path.stem))
    publish_mode(path)
    return path


# ----------------------------------------------------------------------------- digits
_DIGITS: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # MNIST train split, by directory


def _train_digits(directory: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The train split of ``directory`` (:func:`ram_wsi.data.mnist.load_mnist`), read once;
    None when there is no directory or no readable MNIST in it."""
    from ..data.mnist import load_mnist

    if directory is None:
        return None
    key = str(directory)
    if key not in _DIGITS:
        try:
            _DIGITS[key] = load_mnist(directory, "train")
        except DataError:
            return None
    return _DIGITS[key]


def _digit(rng: np.random.Generator, label: int | None, mnist_dir: Any) -> tuple[np.ndarray, int]:
    from ..data.mnist import default_mnist_dir

    directory = Path(mnist_dir) if mnist_dir else default_mnist_dir()
    digits = _train_digits(directory)
    if digits is None:
        # No MNIST here: draw the numeral with PIL's font so the slide is still labelled.
        from PIL import Image, ImageDraw

        label = int(rng.integers(10)) if label is None else int(label)
        im = Image.new("L", (28, 28), 0)
        ImageDraw.Draw(im).text((9, 7), str(label), fill=255)
        return np.asarray(im), label
    images, labels = digits
    if label is None:
        idx = int(rng.integers(len(labels)))
    else:
        cand = np.flatnonzero(labels == int(label))
        if cand.size == 0:
            raise DataError(directory, f"no digit with label {label}")
        idx = int(cand[rng.integers(cand.size)])
    return images[idx], int(labels[idx])


# ----------------------------------------------------------------------------- the scene
def _bilinear(grid: np.ndarray, gy: np.ndarray, gx: np.ndarray, cval: float | None) -> np.ndarray:
    """Separable bilinear sample of ``grid`` at row coords ``gy`` (h,) x col coords ``gx`` (w,)
    (grid index units); outside: ``cval`` (None: clamp to the edge). Four gathers, no BLAS (a
    tiny sgemm under a busy OpenBLAS thread pool costs tens of milliseconds)."""
    h, w = grid.shape
    gy = np.asarray(gy, np.float64)
    gx = np.asarray(gx, np.float64)
    iy0, ix0 = np.floor(gy).astype(np.int64), np.floor(gx).astype(np.int64)
    ty, tx = (gy - iy0).astype(np.float32), (gx - ix0).astype(np.float32)
    g = grid.astype(np.float32, copy=False)
    if cval is not None:
        g = np.pad(g, 1, constant_values=cval)
        iy0, ix0 = iy0 + 1, ix0 + 1
        h, w = h + 2, w + 2
    iy1, ix1 = np.clip(iy0 + 1, 0, h - 1), np.clip(ix0 + 1, 0, w - 1)
    iy0, ix0 = np.clip(iy0, 0, h - 1), np.clip(ix0, 0, w - 1)
    top = g[iy0][:, ix0] * (1 - tx) + g[iy0][:, ix1] * tx
    bot = g[iy1][:, ix0] * (1 - tx) + g[iy1][:, ix1] * tx
    return top * (1 - ty)[:, None] + bot * ty[:, None]


def _level_shape(width: int, height: int, level: int) -> tuple[int, int]:
    """``(W_l, H_l)`` of a synthetic slide's level ``l`` (halving, rounding up)."""
    return -(-int(width) // 2**level), -(-int(height) // 2**level)


def _level_count(width: int, height: int, tile: int) -> int:
    """Levels a synthetic slide has: halve until the level fits in one tile."""
    n = 1
    while max(_level_shape(width, height, n - 1)) > tile:
        n += 1
    return n


def _pattern_table(label: int, angle: int, period: int) -> np.ndarray:
    """Ink (``[0, 1]``) of the level-0 pixels of one ``period x period`` cell of a needle
    pattern: label 0 a round dot in the middle of the cell, label 1 a stripe (``angle`` 0:
    horizontal, 90: vertical, 45 / 135: diagonal; its ink depends on ``y``, ``x``, ``x + y`` or
    ``x - y`` modulo ``period``, so the pattern repeats on the pixel grid every ``period``
    pixels along both axes). Edges ramp over one pixel; the size of the dot or stripe is solved
    for so that the cell's mean ink is :data:`NEEDLE_INK_FRACTION` (to ~1e-12)."""
    p = int(period)
    j, i = np.mgrid[0:p, 0:p].astype(np.float64)  # j: row (y), i: column (x)
    if label == 0:
        dist = np.hypot(i + 0.5 - p / 2, j + 0.5 - p / 2)
    else:
        t = {0: j, 90: i, 45: (i + j) % p, 135: (i - j) % p}[int(angle)]
        dist = np.abs(t + 0.5 - p / 2)

    def table(r: float) -> np.ndarray:
        return np.clip(r + 0.5 - dist, 0.0, 1.0)

    lo, hi = -0.5, float(p)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if table(mid).mean() < NEEDLE_INK_FRACTION else (lo, mid)
    return table(0.5 * (lo + hi))


def _pooled_table(table: np.ndarray, f: int) -> np.ndarray:
    """``out[a, b]``: the mean ink of the ``f x f`` level-0 pixels from ``(row a, column b)``
    of the periodic ``table`` on (what one pixel of a level of downsample ``f`` averages)."""
    acc = np.zeros_like(table)
    for dy in range(f):
        for dx in range(f):
            acc += np.roll(table, (-dy, -dx), axis=(0, 1))
    return acc / (f * f)


TEXTURE_LIBRARY = 16  # textures a needle scene picks its VARIANTS from (process-wide)
_LIBRARY: dict[tuple, np.ndarray] = {}
_LIBRARY_LOCK = threading.Lock()


def _make_texture(rng: np.random.Generator, t: int) -> np.ndarray:
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


def _pool_texture(tex: np.ndarray, level: int, t: int) -> np.ndarray:
    """``tex`` 2x2-mean-pooled ``level`` times and tiled back to ``(t, t, 3)``."""
    f = 2**level
    if f >= t:
        small = tex.reshape(-1, 3).mean(0)[None, None]
    else:
        small = tex.reshape(t // f, f, t // f, f, 3).mean((1, 3))
    reps = t // small.shape[0]
    return np.tile(small, (reps, reps, 1))


def _library_texture(t: int, lib_id: int, level: int) -> np.ndarray:
    """Texture ``lib_id`` of the process-wide library at ``level`` (read-only, shared)."""
    key = ("float", t, lib_id, level)
    out = _LIBRARY.get(key)
    if out is None:
        base_key = ("float", t, lib_id, 0)
        base = _LIBRARY.get(base_key)
        if base is None:
            base = _make_texture(np.random.default_rng([7_331, lib_id, t]), t)
        out = base if level == 0 else _pool_texture(base, level, t)
        out.flags.writeable = False
        with _LIBRARY_LOCK:
            _LIBRARY.setdefault(base_key, base)
            out = _LIBRARY.setdefault(key, out)
    return out


def shared_tile(key: tuple, make) -> np.ndarray:
    """The process-wide read-only array for ``key`` (:meth:`_Scene.shared_key`), made once."""
    out = _LIBRARY.get(key)
    if out is None:
        out = make()
        out.flags.writeable = False
        with _LIBRARY_LOCK:
            out = _LIBRARY.setdefault(key, out)
    return out


class _Scene:
    """A deterministic synthetic slide, drawn at any level and tile."""

    GRID = 256  # coarse field resolution along the longer side
    VARIANTS = 4

    def __init__(self, width: int, height: int, *, seed: int, label: int | None, tile: int,
                 target_size: int | None, mnist_dir: Any, tissue_blobs: int | None,
                 kind: str = "digit", lesion_size: int = 1024, period: int = 8):
        from scipy import ndimage

        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.w, self.h, self.tile = int(width), int(height), int(tile)
        rng = np.random.default_rng(seed)
        self.cell = max(self.w, self.h) / self.GRID
        gw, gh = int(np.ceil(self.w / self.cell)), int(np.ceil(self.h / self.cell))
        yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float64) + 0.5
        field = np.zeros((gh, gw))
        nb = int(tissue_blobs or rng.integers(2, 5))
        for _ in range(nb):
            cx, cy = rng.uniform(0.22, 0.78) * gw, rng.uniform(0.22, 0.78) * gh
            sx, sy = rng.uniform(0.08, 0.16) * gw, rng.uniform(0.08, 0.16) * gh
            th = rng.uniform(0, np.pi)
            u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / sx
            v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / sy
            field += np.exp(-0.5 * (u * u + v * v))
        noise = ndimage.gaussian_filter(rng.standard_normal((gh, gw)), 6, mode="wrap")
        field += 0.25 * noise / (np.abs(noise).max() + 1e-9)
        self.field = field.astype(np.float32)
        self.thr = 0.5
        # Largest change of the bilinear field within one cell: margin for tile classification.
        self.slack = float(max(np.abs(np.diff(field, axis=0)).max(initial=0),
                               np.abs(np.diff(field, axis=1)).max(initial=0))) + 0.02
        if kind == "digit":
            self.textures = [self._texture(rng) for _ in range(self.VARIANTS)]
            self.lib_ids: list[int] | None = None
        else:
            # Textures from a process-wide library: thousands of procedural slides then share a
            # few MB of texture tiles instead of holding ~40 MB each.
            self.textures = None
            self.lib_ids = [int(v) for v in rng.choice(TEXTURE_LIBRARY, self.VARIANTS,
                                                         replace=False)]
        self._tex_levels: dict[int, list[np.ndarray]] = {}
        self._tiles_u8: dict[tuple[int, int], np.ndarray] = {}
        self._classes: dict[tuple[int, int, int], np.ndarray] = {}
        if kind == "digit":
            # The target: a digit fully inside tissue.
            self.digit, self.label = _digit(rng, label, mnist_dir)
            self.tsize = int(target_size or max(64, min(320, min(self.w, self.h) // 8)))
        else:
            # The lesion: class and stripe angle are drawn whatever ``label`` says, so that
            # slides of one seed differ in their class only (same tissue, same position).
            drawn, angle = int(rng.integers(2)), int(rng.integers(len(_NEEDLE_ANGLES)))
            if label is not None and int(label) not in (0, 1):
                raise ValueError(f"a needle slide's label is 0 (dots) or 1 (stripes), got {label}")
            self.label = drawn if label is None else int(label)
            self.angle = _NEEDLE_ANGLES[angle]
            self.period = int(period)
            self.tsize = int(lesion_size)
            if self.period < 1 or self.tsize < 1:
                raise ValueError(f"period and lesion_size must be >= 1, got {period}, "
                                 f"{lesion_size}")
            self._table = _pattern_table(self.label, self.angle, self.period)
            self._pooled: dict[int, np.ndarray] = {}
        margin = int(np.ceil(0.75 * self.tsize / self.cell)) + 1
        inside = ndimage.minimum_filter(field, size=2 * margin + 1, mode="constant", cval=-1)
        ok = np.argwhere(inside > self.thr + self.slack)
        if ok.size == 0:
            ok = np.argwhere(inside >= inside.max())
        gy, gx = ok[rng.integers(len(ok))]
        self.tx = float((gx + rng.uniform(0.25, 0.75)) * self.cell)
        self.ty = float((gy + rng.uniform(0.25, 0.75)) * self.cell)
        self.tx = float(np.clip(self.tx, self.tsize, self.w - self.tsize))
        self.ty = float(np.clip(self.ty, self.tsize, self.h - self.tsize))

    def _texture(self, rng: np.random.Generator) -> np.ndarray:
        return _make_texture(rng, self.tile)

    def shared_key(self, level: int, cls: int, variant: int | None) -> tuple | None:
        """A process-wide key for a white or texture tile of a library-textured scene (equal
        keys, equal pixels), None when the tile is this scene's own."""
        if cls == 0:
            return ("white", self.tile)
        if cls == 1 and self.lib_ids is not None and variant is not None:
            return ("texture", self.tile, self.lib_ids[int(variant)], int(level))
        return None

    def texture(self, level: int, variant: int) -> np.ndarray:
        """Texture tile of ``level``: variant 2x2-mean-pooled ``level`` times, tiled back."""
        if self.lib_ids is not None:
            return _library_texture(self.tile, self.lib_ids[variant], level)
        if level not in self._tex_levels:
            self._tex_levels[level] = [_pool_texture(tex, level, self.tile)
                                       for tex in self.textures]
        return self._tex_levels[level][variant]

    def variant(self, level: int, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
        return ((tx * 73856093) ^ (ty * 19349663) ^ (level * 83492791)) % self.VARIANTS

    def level_shape(self, level: int) -> tuple[int, int]:
        return _level_shape(self.w, self.h, level)

    def classify(self, level: int, rows: tuple[int, int] | None = None,
                 cols: tuple[int, int] | None = None) -> np.ndarray:
        """Per tile of ``level``: 0 all white, 1 all tissue (and not on the target), 2 compose.
        ``rows`` / ``cols``: only tile rows ``[r0, r1)`` / columns ``[c0, c1)`` (the same values
        as that part of the whole level: every tile's samples are computed alone)."""
        lw, lh = self.level_shape(level)
        t, f = self.tile, 2**level
        nx, ny = -(-lw // t), -(-lh // t)
        r0, r1 = (0, ny) if rows is None else (max(0, int(rows[0])), min(ny, int(rows[1])))
        c0, c1 = (0, nx) if cols is None else (max(0, int(cols[0])), min(nx, int(cols[1])))
        nr, nc = max(r1 - r0, 0), max(c1 - c0, 0)
        span = t * f / self.cell  # tile width in cells
        if span > 32:  # few tiles at such levels: compose them all
            return np.full((nr, nc), 2, np.int8)
        s = int(max(9, np.ceil(span) + 2))  # samples at most one cell apart
        off = (np.arange(s) / (s - 1)) * t * f  # level-0 offsets of samples inside a tile
        gx = ((np.arange(c0, c1)[:, None] * t * f + off[None]) / self.cell - 0.5).reshape(-1)
        gy = ((np.arange(r0, r1)[:, None] * t * f + off[None]) / self.cell - 0.5).reshape(-1)
        vals = _bilinear(self.field, gy, gx, None).reshape(nr, s, nc, s)
        lo, hi = vals.min((1, 3)), vals.max((1, 3))
        cls = np.full((nr, nc), 2, np.int8)
        cls[hi < self.thr - self.slack] = 0
        cls[lo > self.thr + self.slack] = 1
        # Tiles cut by the level border, and tiles on the target, are composed.
        if lw % t and c1 == nx and nc:
            cls[:, -1] = np.where(cls[:, -1] == 0, 0, 2)
        if lh % t and r1 == ny and nr:
            cls[-1, :] = np.where(cls[-1, :] == 0, 0, 2)
        half = 0.5 * self.tsize
        if self.kind == "needle":
            half += f  # the lesion's soft edge reaches half a level pixel further
        x0, x1 = (self.tx - half) / f // t, (self.tx + half) / f // t
        y0, y1 = (self.ty - half) / f // t, (self.ty + half) / f // t
        ya, yb = int(max(y0, 0)) - r0, int(y1) + 1 - r0
        xa, xb = int(max(x0, 0)) - c0, int(x1) + 1 - c0
        if yb > 0 and ya < nr and xb > 0 and xa < nc:
            cls[max(ya, 0):yb, max(xa, 0):xb] = 2
        return cls

    def tile_class(self, level: int, tx: int, ty: int) -> tuple[int, int]:
        """``(class, variant)`` of tile ``(tx, ty)`` of ``level`` (:meth:`classify`'s class,
        computed for a block of ``_CLASS_BLOCK^2`` tiles at a time and kept)."""
        b = _CLASS_BLOCK
        by, bx = int(ty) // b, int(tx) // b
        cls = self._classes.get((level, by, bx))
        if cls is None:
            cls = self._classes[(level, by, bx)] = self.classify(
                level, (by * b, (by + 1) * b), (bx * b, (bx + 1) * b))
        return (int(cls[int(ty) - by * b, int(tx) - bx * b]),
                int(self.variant(level, np.int64(tx), np.int64(ty))))

    def tile_pixels(self, level: int, tx: int, ty: int, cls: int | None = None,
             variant: int | None = None) -> np.ndarray:
        """The ``(tile, tile, 3)`` uint8 pixels of tile ``(tx, ty)`` of ``level``, chosen as
        every writer and :class:`~ram_wsi.slide.procedural.ProceduralSource` choose them: class 0
        the white tile, class 1 the level's texture ``variant`` (both shared and read-only),
        class 2 :meth:`draw`. ``cls`` / ``variant``: :meth:`tile_class`'s, when known."""
        if cls is None:
            cls, variant = self.tile_class(level, tx, ty)
        if cls == 0:
            key = (-1, 0)
        elif cls == 1:
            if variant is None:
                variant = int(self.variant(level, np.int64(tx), np.int64(ty)))
            key = (level, int(variant))
        else:
            return self.draw(level, tx, ty)
        t = self.tile

        def make() -> np.ndarray:
            return (np.full((t, t, 3), _WHITE, np.uint8) if cls == 0 else
                    np.clip(self.texture(level, key[1]) + 0.5, 0, 255).astype(np.uint8))

        shared = self.shared_key(level, cls, variant)
        if shared is not None:
            return shared_tile(("hwc", *shared), make)
        out = self._tiles_u8.get(key)
        if out is None:
            out = make()
            out.flags.writeable = False
            self._tiles_u8[key] = out
        return out

    def _lesion_ink(self, level: int, qx: np.ndarray, qy: np.ndarray) -> np.ndarray | float:
        """Mean ink of the level pixels ``qy`` (rows) x ``qx`` (columns) of ``level``: the
        exact mean of the level-0 pixels under each (``f < period``), else the pattern's mean."""
        f, p = 2**level, self.period
        if f >= p:
            return NEEDLE_INK_FRACTION
        pooled = self._pooled.get(f)
        if pooled is None:
            pooled = self._pooled[f] = _pooled_table(self._table, f)
        return pooled[np.ix_((qy * f) % p, (qx * f) % p)].astype(np.float32)

    def draw(self, level: int, tx: int, ty: int) -> np.ndarray:
        """The ``(tile, tile, 3)`` uint8 tile ``(tx, ty)`` of ``level`` (white outside)."""
        t, f = self.tile, 2**level
        lw, lh = self.level_shape(level)
        px = (tx * t + np.arange(t) + 0.5) * f  # level-0 centres of the tile's pixels
        py = (ty * t + np.arange(t) + 0.5) * f
        field = _bilinear(self.field, py / self.cell - 0.5, px / self.cell - 0.5, None)
        # A ramp one level pixel wide (in field units) keeps borders smooth at every level.
        ramp = max(0.01, 0.05 * f / max(self.cell, 1.0))
        alpha = np.clip((field - self.thr) / ramp + 0.5, 0, 1)[..., None]
        tex = self.texture(level, int(self.variant(level, np.int64(tx), np.int64(ty))))
        img = 255.0 * (1 - alpha) + tex * alpha
        if self.kind == "needle":
            img = self._draw_lesion(img, level, tx, ty, px, py)
        else:
            img = self._draw_digit(img, f, px, py)
        out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        if (tx + 1) * t > lw:
            out[:, lw - tx * t:] = _WHITE
        if (ty + 1) * t > lh:
            out[lh - ty * t:, :] = _WHITE
        return out

    def _draw_digit(self, img: np.ndarray, f: int, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        dsc = self.digit.shape[0] / self.tsize
        dy = (py - self.ty) * dsc + self.digit.shape[0] / 2 - 0.5
        dx = (px - self.tx) * dsc + self.digit.shape[1] / 2 - 0.5
        if (dy.max() > -1 and dy.min() < self.digit.shape[0] and dx.max() > -1
                and dx.min() < self.digit.shape[1]):
            if f * dsc > 1:  # a coarse level: pool the digit so it is not aliased
                from scipy import ndimage

                dig = ndimage.uniform_filter(self.digit.astype(np.float32), size=int(f * dsc))
            else:
                dig = self.digit.astype(np.float32)
            d = _bilinear(dig / 255.0, dy, dx, 0.0)[..., None] * 0.9
            img = img * (1 - d) + _DARK * d
        return img

    def _draw_lesion(self, img: np.ndarray, level: int, tx: int, ty: int, px: np.ndarray,
                     py: np.ndarray) -> np.ndarray:
        f, t = 2**level, self.tile
        reach = 0.5 * self.tsize + f  # the disk and its soft edge, in level-0 pixels
        if (px.max() < self.tx - reach or px.min() > self.tx + reach
                or py.max() < self.ty - reach or py.min() > self.ty + reach):
            return img
        d = np.hypot((px - self.tx)[None, :], (py - self.ty)[:, None])
        # Soft edge one level pixel wide, as the tissue border.
        a = np.clip((0.5 * self.tsize - d) / f + 0.5, 0, 1).astype(np.float32)[..., None]
        qx = tx * t + np.arange(t, dtype=np.int64)
        qy = ty * t + np.arange(t, dtype=np.int64)
        ink = self._lesion_ink(level, qx, qy)
        ink = ink[..., None] if isinstance(ink, np.ndarray) else np.float32(ink)
        ink_rgb = _NEEDLE_INK[self.label]
        ground = (_LESION * (1 - NEEDLE_INK_FRACTION) + _DARK * NEEDLE_INK_FRACTION
                  - ink_rgb * NEEDLE_INK_FRACTION) / (1 - NEEDLE_INK_FRACTION)
        lesion = ground * (1 - ink) + ink_rgb * ink
        return img * (1 - a) + lesion * a

    def levels(self) -> int:
        return _level_count(self.w, self.h, self.tile)

    def meta(self, *, seed: int, mpp: float | None) -> dict[str, Any]:
        """What a sidecar says about the slide itself (not about a file): the label and the
        target, the geometry, the kind (and, for a needle, its class names and pattern)."""
        m: dict[str, Any] = {
            "seed": seed, "label": self.label, "size": [self.w, self.h], "mpp": mpp,
            "levels": self.levels(), "tile": self.tile,
            "target_center_px": [self.tx, self.ty],
            "target_center_loc": [self.tx / self.w * 2 - 1, self.ty / self.h * 2 - 1],
            "target_size_px": self.tsize, "kind": self.kind,
        }
        if self.kind == "needle":
            m.update(class_names=list(NEEDLE_CLASSES), lesion_size_px=self.tsize,
                     period_px=self.period, ink_fraction=NEEDLE_INK_FRACTION,
                     pattern=NEEDLE_CLASSES[self.label],
                     stripe_angle_deg=self.angle if self.label == 1 else None)
        return m


def _tile_stream(scene: _Scene, level: int, enc, stats: dict[str, int]) -> Iterator[bytes]:
    cls = scene.classify(level)
    ny, nx = cls.shape
    white = enc(scene.tile_pixels(level, 0, 0, 0))
    full: dict[int, bytes] = {}
    for ty in range(ny):
        row = cls[ty]
        var = scene.variant(level, np.arange(nx, dtype=np.int64), np.int64(ty))
        for tx in range(nx):
            c = row[tx]
            if c == 0:
                stats["white"] += 1
                yield white
            elif c == 1:
                v = int(var[tx])
                b = full.get(v)
                if b is None:
                    b = full[v] = enc(scene.tile_pixels(level, tx, ty, 1, v))
                stats["tissue"] += 1
                yield b
            else:
                stats["composed"] += 1
                yield enc(scene.tile_pixels(level, tx, ty, 2))


def _write_tiff(scene: _Scene, path: Path, compression: str, quality: int,
                mpp: float | None, stats: dict[str, int]) -> None:
    import tifffile

    enc = _encoder(compression, quality)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for lvl in range(scene.levels()):
            lw, lh = scene.level_shape(lvl)
            tw.write(_tile_stream(scene, lvl, enc, stats), shape=(lh, lw, 3), dtype=np.uint8,
                     **_tiff_writer_kwargs(compression, quality, scene.tile, mpp, lvl))


def _write_zarr(scene: _Scene, path: Path, mpp: float | None, stats: dict[str, int]) -> None:
    """Chunks are encoded here (the converter's default codec, exactly as the arrays declare it)
    and written as files: zarr's per-write machinery costs ~7 ms a chunk, which is minutes at
    131k^2. White chunks are not written (fill value), identical tissue chunks are hard links."""
    import numcodecs
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    t = scene.tile
    nlev = scene.levels()
    comp = default_compressor()  # what convert writes: benchmarks read what users read
    blosc = numcodecs.Blosc(cname=str(comp.cname.value), clevel=int(comp.clevel),
                            shuffle=numcodecs.Blosc.SHUFFLE)

    def put(chunk_file: Path, tile_hwc: np.ndarray) -> None:
        chunk_file.parent.mkdir(parents=True, exist_ok=True)
        chunk_file.write_bytes(blosc.encode(np.ascontiguousarray(tile_hwc.transpose(2, 0, 1))))

    def compose(lvl: int, ty: int, tx: int) -> None:
        put(path / str(lvl) / "c" / "0" / str(ty) / str(tx), scene.tile_pixels(lvl, tx, ty, 2))

    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:  # drawing and blosc release the GIL mostly
        for lvl in range(nlev):
            lw, lh = scene.level_shape(lvl)
            create_level_array(group, lvl, lw, lh, t, comp)
            cls = scene.classify(lvl)
            first_full: dict[int, Path] = {}
            jobs = []
            for ty, tx in zip(*np.nonzero(cls)):
                ty, tx = int(ty), int(tx)
                if cls[ty, tx] != 1:
                    jobs.append(pool.submit(compose, lvl, ty, tx))
                    stats["composed"] += 1
                    continue
                chunk_file = path / str(lvl) / "c" / "0" / str(ty) / str(tx)
                v = int(scene.variant(lvl, np.int64(tx), np.int64(ty)))
                src = first_full.get(v)
                stats["tissue"] += 1
                if src is not None:
                    chunk_file.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(src, chunk_file)
                        continue
                    except OSError:
                        pass
                put(chunk_file, scene.tile_pixels(lvl, tx, ty, 1, v))
                first_full[v] = chunk_file
            for j in jobs:
                j.result()
            stats["white"] += int((cls == 0).sum())
    group.attrs.update(ngff_attributes(nlev, mpp, name=path.name,
                                       extra={"synthetic": True}))


def _zarr_codec_name() -> str:
    comp = default_compressor()
    return f"blosc-{comp.cname.value}-{comp.clevel}"


def write_synthetic_slide(path: str | os.PathLike, size: int | tuple[int, int], *, seed: int = 0,
                          label: int | None = None, fmt: str = "tiff", tile: int = 256,
                          mpp: float | None = 0.25, compression: str = "jpeg", quality: int = 85,
                          target_size: int | None = None, tissue_blobs: int | None = None,
                          mnist_dir: str | os.PathLike | None = None, kind: str = "digit",
                          lesion_size: int = 1024, period: int = 8) -> dict[str, Any]:
    """Write a synthetic slide of ``size`` (``S`` or ``(W, H)``) level-0 pixels.

    Args:
        path: output file (``fmt="tiff"``) or store directory (``fmt="zarr"``).
        seed: everything (tissue, texture, target position, which digit) follows from it.
        label: the class of the target (digit: 0-9; needle: 0 dots, 1 stripes); random when
            None. A needle slide's lesion is at the same place whatever its label.
        tile: TIFF tile / zarr chunk size (a multiple of 16).
        mpp: micrometres per level-0 pixel written to the file (None: no physical units).
        compression: TIFF tiles: ``"jpeg"`` or ``"none"`` (zarr always uses the converter's blosc codec).
        target_size: width of the target in level-0 pixels (default ``min(320, S / 8)``).
        mnist_dir: where the MNIST idx files are (default
            :func:`ram_wsi.data.mnist.default_mnist_dir`: ``$RAM_WSI_MNIST``, else
            ``../shared/data/mnist``); without them the digit is a drawn numeral.
        kind: ``"digit"`` (an MNIST digit) or ``"needle"`` (a lesion whose pattern, dots or
            stripes, only shows at level 0 and 1; see the module docstring).
        lesion_size: needle: diameter of the lesion in level-0 pixels.
        period: needle: period of its pattern in level-0 pixels.

    Returns:
        The sidecar dict also written to ``<path>.json``: ``label``, ``target_center_px``,
        ``target_center_loc`` (``[-1, 1]``), ``target_size_px``, ``size``, ``mpp``, ``levels``,
        ``seed``, ``fmt``, ``kind``, ``tiles`` (how many were white / tissue / composed); a
        needle slide's also ``class_names`` (``["dots", "stripes"]``), ``lesion_size_px``,
        ``period_px``, ``pattern``, ``stripe_angle_deg``, ``ink_fraction``.
    """
    w, h = (size, size) if np.isscalar(size) else size
    if fmt not in ("tiff", "zarr"):
        raise ValueError(f"fmt must be 'tiff' or 'zarr', got {fmt!r}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    scene = _Scene(int(w), int(h), seed=seed, label=label, tile=tile, target_size=target_size,
                   mnist_dir=mnist_dir, tissue_blobs=tissue_blobs, kind=kind,
                   lesion_size=lesion_size, period=period)
    path = Path(path)
    stats = {"white": 0, "tissue": 0, "composed": 0}
    with atomic_path(path, is_dir=(fmt == "zarr")) as tmp:
        if fmt == "tiff":
            _write_tiff(scene, tmp, compression, quality, mpp, stats)
        else:
            _write_zarr(scene, tmp, mpp, stats)
    publish_mode(path)
    meta = {
        "path": str(path), "fmt": fmt, **scene.meta(seed=seed, mpp=mpp),
        "compression": compression if fmt == "tiff" else _zarr_codec_name(),
        "tiles": stats,
    }
    from ..io_utils import write_json

    write_json(str(path) + ".json", meta)
    publish_mode(str(path) + ".json")
    return meta
