"""The retina: one definition of a glimpse, shared by every backend.

A glimpse at centre ``l = (x, y)`` is ``k`` square patches of ``g x g`` output pixels. Patch ``j``
covers a square of ``g * s**j`` *base pixels* centred on ``l``; every patch is resampled to
``g x g`` with an area (box) filter, which anti-aliases the wide patches and equals bilinear
interpolation for the first one.

Coordinates (the paper's): ``x`` runs left to right, ``y`` top to bottom, both in ``[-1, 1]``;
``(-1, -1)`` is the top-left *corner* of the image and ``+-1`` its border (``grid_sample``'s
``align_corners=False`` convention). A source pixel ``p`` covers ``[p, p + 1)`` in continuous
pixel coordinates, so ``x`` maps to ``(x + 1) / 2 * W``. Images need not be square: a patch is
square in pixels, not in normalised units.

How a patch is made, on every backend: patch ``j`` needs ``f_j = base * s**j`` source pixels per
output pixel. It is read from the coarsest pyramid level whose downsample ``d`` does not exceed
``f_j`` (so no resolution is lost), and the residual factor ``f_j / d`` (in ``[1, 2)`` for a 2x
pyramid) is applied with a separable box filter: output pixel ``(i, j)`` is
``sum_{a,b} Wy[i, a] * level[a, b] * Wx[j, b]``, where ``Wy``/``Wx`` hold the overlap of each
output pixel's box with each level pixel. That is area averaging for any float factor (1.5, 4.016
...), exact bilinear interpolation at factor 1, sub-pixel centres, and a fill value outside the
image. Only the ``K x K`` level pixels under the window are touched, ``K ~ 2g + 2`` at most, so
the cost of a glimpse does not grow with the image.

In memory the pyramid is built once per batch of images (exact 2x2 means after padding with the
fill value) and every scale of every image is one gather from a flat buffer of all levels plus two
batched matmuls -- no Python loop over the batch or the scales. Slide readers fetch each scale's
region from the file's own levels and call the same :func:`resample`, which is why memory, TIFF
and OME-Zarr serve the same glimpses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError


class RetinaSpecError(ConfigError):
    """An impossible retina (a ``ValueError``, as :class:`ConfigError` is). ``field`` names the
    :class:`RetinaSpec` field and ``reason`` says why, so a config can report it under its own
    key without parsing the message."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason, key=f"retina.{field}")
        self.field = field
        self.reason = reason

__all__ = [
    "Pyramid",
    "RetinaSpec",
    "RetinaSpecError",
    "build_pyramid",
    "choose_level",
    "glimpse",
    "integer_factor",
    "loc_to_pixels",
    "patch_levels",
    "pixels_to_loc",
    "resample",
    "window_span",
]


@dataclass(frozen=True)
class RetinaSpec:
    """Geometry of a glimpse.

    Attributes:
        patch: output size ``g`` of every patch, in pixels.
        scales: number of patches ``k``.
        scale_factor: each patch is this many times wider than the previous one (any float > 1).
        base: width of one output pixel of the first patch, in source units -- image pixels for
            arrays, level-0 pixels for slides (or micrometres when a slide source is asked for a
            physical retina). 1.0 reads the first patch at full resolution.
    """

    patch: int = 12
    scales: int = 3
    scale_factor: float = 2.0
    base: float = 1.0

    def __post_init__(self) -> None:
        if int(self.patch) != self.patch or self.patch < 1:
            raise RetinaSpecError("patch", f"must be a positive integer, got {self.patch!r}")
        if int(self.scales) != self.scales or self.scales < 1:
            raise RetinaSpecError("scales", f"must be a positive integer, got {self.scales!r}")
        if not (self.scale_factor >= 1.0) or not math.isfinite(self.scale_factor):
            raise RetinaSpecError("scale_factor",
                                  f"must be a finite number >= 1, got {self.scale_factor!r}")
        if not (self.base > 0) or not math.isfinite(self.base):
            raise RetinaSpecError("base", f"must be a positive number, got {self.base!r}")

    def pixel_factor(self, j: int) -> float:
        """Source units per output pixel for patch ``j``."""
        return self.base * self.scale_factor**j

    def window(self, j: int) -> float:
        """Width of patch ``j`` in source units."""
        return self.patch * self.pixel_factor(j)

    @property
    def glimpse_shape(self) -> tuple[int, int, int]:
        """``(k, g, g)``; a glimpse tensor is ``(k, C, g, g)``."""
        return (self.scales, self.patch, self.patch)

    def check_fits(self, height: int, width: int, *, source: str = "image") -> None:
        """Reject a first patch larger than the image: such a retina cannot see detail."""
        if self.window(0) > min(height, width):
            raise RetinaSpecError(
                "patch", f"the first patch ({self.window(0):g} px) is larger than the {source} "
                f"({height}x{width})")


def loc_to_pixels(loc: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """``[-1, 1]`` locations ``(..., 2)`` as ``(x, y)`` -> continuous pixel coordinates."""
    scale = loc.new_tensor([width, height])
    return (loc + 1.0) * 0.5 * scale


def pixels_to_loc(px: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Inverse of :func:`loc_to_pixels`."""
    scale = px.new_tensor([width, height])
    return px / scale * 2.0 - 1.0


def _support(factor: torch.Tensor | float) -> torch.Tensor | float:
    # Box width in source pixels: the output pixel's footprint, but never narrower than one
    # source pixel (upsampling then becomes linear interpolation, not nearest neighbour).
    if isinstance(factor, torch.Tensor):
        return factor.clamp_min(1.0)
    return max(float(factor), 1.0)


def _span_count(factor: float, g: int) -> int:
    return math.ceil((g - 1) * factor + _support(factor)) + 1


def window_span(left: np.ndarray | float, factor: float, g: int) -> tuple[np.ndarray, int]:
    """Source pixels touched by a ``g``-pixel window starting at ``left`` with ``factor`` source
    pixels per output pixel: returns ``(first_index, count)``; ``count`` is the same for all.

    Slide readers call this to know which region to read before :func:`resample`.
    """
    bw = _support(factor)
    first = np.floor(np.asarray(left, dtype=np.float64) + 0.5 * factor - 0.5 * bw).astype(np.int64)
    return first, _span_count(factor, g)


def choose_level(factor: float, downsamples: list[float] | np.ndarray, tol: float = 0.01) -> int:
    """Index of the coarsest level whose downsample does not exceed ``factor`` (with a relative
    tolerance, so a 4.016 level serves a 4x patch). Level 0 when none qualifies."""
    best = 0
    for i, d in enumerate(downsamples):
        if d <= factor * (1.0 + tol) and d >= downsamples[best]:
            best = i
    return best


def _axis_weights(left: torch.Tensor, factor: torch.Tensor | float, g: int, count: int,
                  size: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(N, K)`` and weights ``(N, g, K)`` of a box filter along one axis.

    ``left`` (N,) is the window's first edge in source-pixel coordinates, ``factor`` a float or
    (N,) tensor. Weights of source pixels outside ``[0, size)`` are zero and their indices
    clamped, so reads stay in bounds and the outside contributes nothing (i.e. the fill value).
    """
    dev, dt = left.device, left.dtype
    # A non-finite centre (a diverged policy) sees only fill instead of indexing garbage.
    left = torch.nan_to_num(left, nan=-1e7, posinf=1e7, neginf=-1e7)
    if isinstance(factor, torch.Tensor):
        factor = factor.to(dev, dt)[:, None]
    bw = _support(factor)
    left = left[:, None]
    first = torch.floor(left + 0.5 * factor - 0.5 * bw)
    idx = first + torch.arange(count, device=dev, dtype=dt)  # (N, K)
    centre = left + (torch.arange(g, device=dev, dtype=dt) + 0.5) * factor  # (N, g)
    rel = idx[:, None, :] - centre[:, :, None]  # pixel start relative to box centre
    if isinstance(bw, torch.Tensor):
        bw = bw[:, :, None]
    half = 0.5 * bw
    # Overlap of [centre - bw/2, centre + bw/2] with [idx, idx + 1], divided by bw.
    w = ((rel + 1.0).clamp(max=half) - rel.clamp(min=-half)).clamp_min_(0.0) / bw
    if isinstance(size, torch.Tensor):
        size = size.to(dev, dt)[:, None]
    inside = (idx >= 0) & (idx < size)
    w = w * inside[:, None, :]
    idx = idx.clamp(min=0).clamp(max=size - 1)
    return idx.long(), w


def resample(src: torch.Tensor, left: torch.Tensor, top: torch.Tensor, factor_x: float,
             factor_y: float, g: int, fill: float = 0.0, index: torch.Tensor | None = None,
             aligned: bool = False) -> torch.Tensor:
    """Area-resample a ``g x g`` window from source images (the retina's kernel).

    Args:
        src: ``(M, C, H, W)`` source images (a batch of images, or regions read from a slide
            level); any dtype, computed in float32 unless ``src`` is a wider float.
        left, top: ``(N,)`` window's top-left corner in source-pixel coordinates.
        factor_x, factor_y: source pixels per output pixel along x and y.
        g: output size.
        fill: value seen outside the source (0 for MNIST, white for slides).
        index: ``(N,)`` which source image each window reads; defaults to ``arange(N)``.
        aligned: the caller guarantees every corner lies in ``[0, 1)`` and each source covers
            its whole window (slide regions read for the window): with an integer factor
            this skips the checks before the strided path.

    Returns:
        ``(N, C, g, g)``.
    """
    m, c, h, w = src.shape
    n = left.shape[0]
    dt = src.dtype if src.dtype.is_floating_point else torch.float32
    left = left.to(device=src.device, dtype=dt)
    top = top.to(device=src.device, dtype=dt)
    f_int = _exact_integer(factor_x, factor_y)
    if f_int and index is None and m == n and min(h, w) >= g * f_int + 1 and n:
        if aligned:
            return _resample_integer(src.to(dt), left, top, f_int, g)
        fl, ft = torch.floor(left), torch.floor(top)
        span = g * f_int + 1
        if (float(fl.min()) >= 0 and float(ft.min()) >= 0 and float(fl.max()) + span <= w
                and float(ft.max()) + span <= h):
            return _resample_integer_shifted(src.to(dt), left, top, fl, ft, f_int, g)
    ix, wx = _axis_weights(left, factor_x, g, _span_count(factor_x, g), w)
    iy, wy = _axis_weights(top, factor_y, g, _span_count(factor_y, g), h)
    ky, kx = iy.shape[1], ix.shape[1]
    flat = (iy[:, :, None] * w + ix[:, None, :]).reshape(n, ky * kx)
    if index is None:
        if m != n:
            raise ValueError(f"resample: {n} windows over {m} sources needs an index")
        patch = torch.gather(src.reshape(n, c, h * w), 2, flat[:, None].expand(n, c, ky * kx))
    else:
        # Several windows per source: advanced indexing reads only the pixels under them.
        patch = src.reshape(m, c, h * w)[index.to(src.device)[:, None], :, flat].transpose(1, 2)
    patch = patch.to(dt).reshape(n, c, ky, kx)
    if fill != 0.0:
        patch = patch - fill
    out = torch.matmul(wy[:, None], torch.matmul(patch, wx.transpose(1, 2)[:, None]))
    if fill != 0.0:
        out = out + fill
    return out


def integer_factor(factor_x: float, factor_y: float, g: int) -> int:
    """``F`` when both factors equal the integer ``F >= 1`` closely enough that treating them
    as ``F`` moves no output pixel by more than 0.01 source pixel across the patch
    (``|factor - F| * g <= 0.02``); else 0. Slide readers plan such windows with the factor
    ``F`` exactly (re-centred), so that :func:`resample` takes its strided path."""
    f = round(float(factor_x))
    if f < 1 or abs(factor_x - f) * g > 0.02 or abs(factor_y - f) * g > 0.02:
        return 0
    return int(f)


def _exact_integer(factor_x: float, factor_y: float) -> int:
    """``F`` when both factors are exactly the integer ``F >= 1`` (resample then takes the
    strided path; callers round factors with :func:`integer_factor` first), else 0."""
    if factor_x != factor_y or not float(factor_x).is_integer() or factor_x < 1:
        return 0
    return int(factor_x)


def _box_taps(x: torch.Tensor, frac: torch.Tensor, f: int, g: int, dim: int) -> torch.Tensor:
    """Box filter of integer width ``f`` along ``dim`` of ``x`` for windows starting at
    ``frac`` in ``[0, 1)`` (per sample, ``(N,)``): output ``i`` averages source
    ``[i f + frac, (i + 1) f + frac)``, i.e. taps ``i f + t`` for ``t = 0..f`` with weights
    ``(1 - frac, 1, ..., 1, frac) / f`` -- written as ``sum_{t<f} x_t + frac (x_f - x_0)``."""
    span = (g - 1) * f + 1
    first = x.narrow(dim, 0, span)
    taps = first[(slice(None),) * (dim % x.dim()) + (slice(None, None, f),)] if f > 1 else first
    last = x.narrow(dim, f, span)
    last = last[(slice(None),) * (dim % x.dim()) + (slice(None, None, f),)] if f > 1 else last
    shape = (-1,) + (1,) * (x.dim() - 1)
    if f == 1:
        return torch.lerp(taps, last, frac.view(shape))
    acc = taps.clone()
    for t in range(1, f):
        mid = x.narrow(dim, t, span)
        acc += mid[(slice(None),) * (dim % x.dim()) + (slice(None, None, f),)]
    acc += (last - taps) * frac.view(shape)
    return acc.mul_(1.0 / f)


def _resample_integer(src: torch.Tensor, left: torch.Tensor, top: torch.Tensor, f: int,
                      g: int) -> torch.Tensor:
    """:func:`resample` for an integer factor ``f`` and window corners in ``[0, 1)``: two
    strided passes (``f + 1`` taps each) instead of two dense ``K x K`` matmuls, the same
    weights. A 2x or 4x pyramid read with a power-of-two retina always lands here."""
    return _box_taps(_box_taps(src, left, f, g, -1), top, f, g, -2)


def _resample_integer_shifted(src: torch.Tensor, left: torch.Tensor, top: torch.Tensor,
                              fl: torch.Tensor, ft: torch.Tensor, f: int, g: int) -> torch.Tensor:
    """:func:`_resample_integer` for windows whose corners lie anywhere inside their sources
    (``fl``, ``ft``: their floors): one strided call per distinct integer offset (one for a
    single window, a few for readers whose regions start a sub-pixel off)."""
    pairs = torch.stack((fl, ft), 1).long()
    uniq, inv = torch.unique(pairs, dim=0, return_inverse=True)
    if uniq.shape[0] == 1:
        x, y = uniq[0].tolist()
        return _resample_integer(src[..., y:, x:], left - x, top - y, f, g)
    out = src.new_empty((src.shape[0], src.shape[1], g, g))
    for u, (x, y) in enumerate(uniq.tolist()):
        rows = (inv == u).nonzero().squeeze(1)
        out[rows] = _resample_integer(src[rows][..., y:, x:], left[rows] - x, top[rows] - y,
                                      f, g)
    return out


@dataclass
class Pyramid:
    """A batch of images with its 2x area pyramid, flattened into one buffer.

    ``flat`` is ``(B, C, sum_l H_l * W_l)``; level ``l`` starts at ``offsets[l]`` and has shape
    ``shapes[l]`` and downsample ``2**l`` (the image is padded with ``fill`` to a multiple of
    ``2**(levels-1)`` first, so every level is an exact 2x2 mean). Built once per batch and reused
    for every glimpse of an episode.
    """

    flat: torch.Tensor
    offsets: list[int]
    shapes: list[tuple[int, int]]
    height: int
    width: int
    fill: float

    @property
    def batch(self) -> int:
        return self.flat.shape[0]

    def level(self, i: int) -> torch.Tensor:
        """Level ``i`` as ``(B, C, H_i, W_i)`` (a view)."""
        h, w = self.shapes[i]
        return self.flat[:, :, self.offsets[i]:self.offsets[i] + h * w].reshape(
            self.batch, -1, h, w)


def patch_levels(spec: RetinaSpec) -> list[int]:
    """The 2x pyramid level each patch of ``spec`` is read from (level ``l`` = downsample
    ``2**l``, the largest not exceeding the patch's factor)."""
    return [max(0, math.floor(math.log2(spec.pixel_factor(j)) + 1e-9))
            for j in range(spec.scales)]


def build_pyramid(images: torch.Tensor, spec: RetinaSpec, fill: float = 0.0) -> Pyramid:
    """Pad ``images`` (B, C, H, W) with ``fill`` and build the 2x area levels ``spec`` needs."""
    if images.dim() == 3:
        images = images[:, None]
    if not images.dtype.is_floating_point:
        images = images.float()
    b, c, h, w = images.shape
    top = max(patch_levels(spec))
    mult = 2**top
    ph, pw = -h % mult, -w % mult
    x = images
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), value=fill)
    levels = [x]
    for _ in range(top):
        levels.append(torch.nn.functional.avg_pool2d(levels[-1], 2))
    shapes = [(lv.shape[2], lv.shape[3]) for lv in levels]
    offsets = np.cumsum([0] + [hh * ww for hh, ww in shapes[:-1]]).tolist()
    flat = torch.cat([lv.reshape(b, c, -1) for lv in levels], dim=2)
    return Pyramid(flat, offsets, shapes, h, w, fill)


def glimpse(images: torch.Tensor | Pyramid, loc: torch.Tensor, spec: RetinaSpec,
            fill: float = 0.0) -> torch.Tensor:
    """Batched glimpses from in-memory images.

    Args:
        images: ``(B, C, H, W)`` or ``(B, H, W)`` of any size, not necessarily square, or a
            :class:`Pyramid` built from them (reuse it across the glimpses of an episode).
        loc: ``(B, 2)`` centres ``(x, y)`` in ``[-1, 1]``; values outside are allowed (the
            window then sees ``fill``).
        spec: the retina; ``spec.base`` is in image pixels.

    Returns:
        ``(B, k, C, g, g)`` float tensor on the images' device.
    """
    pyr = images if isinstance(images, Pyramid) else build_pyramid(images, spec, fill)
    b, c = pyr.flat.shape[:2]
    k, g = spec.scales, spec.patch
    dev, dt = pyr.flat.device, pyr.flat.dtype
    levels = patch_levels(spec)
    down = [2.0**lv for lv in levels]
    resid = [spec.pixel_factor(j) / down[j] for j in range(k)]
    count = max(_span_count(r, g) for r in resid)
    px = loc_to_pixels(loc.to(dev, dt), pyr.width, pyr.height)  # (B, 2)
    half = torch.tensor([0.5 * spec.window(j) for j in range(k)], device=dev, dtype=dt)
    dsc = torch.tensor(down, device=dev, dtype=dt)
    # Window corner of every (image, scale) in its level's pixel coordinates: (B*k,)
    left = ((px[:, None, 0] - half) / dsc).reshape(-1)
    top = ((px[:, None, 1] - half) / dsc).reshape(-1)
    fac = torch.tensor(resid, device=dev, dtype=dt).repeat(b)
    hs = torch.tensor([pyr.shapes[lv][0] for lv in levels], device=dev).repeat(b)
    ws = torch.tensor([pyr.shapes[lv][1] for lv in levels], device=dev).repeat(b)
    off = torch.tensor([pyr.offsets[lv] for lv in levels], device=dev).repeat(b)
    ix, wx = _axis_weights(left, fac, g, count, ws)  # (B*k, K), (B*k, g, K)
    iy, wy = _axis_weights(top, fac, g, count, hs)
    flat = off[:, None, None] + iy[:, :, None] * ws[:, None, None] + ix[:, None, :]
    flat = flat.reshape(b, 1, k * count * count).expand(b, c, -1)
    patch = torch.gather(pyr.flat, 2, flat).reshape(b, c, k, count, count).transpose(1, 2)
    if fill != 0.0:
        patch = patch - fill
    wy = wy.reshape(b, k, 1, g, count)
    wxt = wx.reshape(b, k, 1, g, count).transpose(-1, -2)
    out = torch.matmul(wy, torch.matmul(patch, wxt))  # (B, k, C, g, g)
    if fill != 0.0:
        out = out + fill
    return out
