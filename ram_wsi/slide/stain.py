"""Stain: Reinhard normalisation of H&E tiles to one reference, and a per-slide stain change.

Why both. In a tile collection every tile has its own stain, and colour alone tells classes
apart (a linear model on a tile's RGB mean and std separates healthy mucosa from carcinoma):
a slide paved with such tiles could be classified from a thumbnail without ever looking at
morphology. Normalising every tile to one reference (Reinhard, Ma et al.: match each LAB
channel's mean and standard deviation) removes the tile-to-tile cue; a random stain change per
*slide* then makes colour vary between slides as it does between real scanners and labs, so
colour carries no class.

The per-slide change is an affine map of RGB (a 3x3 matrix near the identity and an offset),
not a change in LAB: an affine map commutes with area averaging, so a slide's pyramid levels
(area means of level 0, as a scanner's) are the same whether the stain is applied before or
after pooling -- procedural slides apply it to pooled tiles, which is cheap and exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "REFERENCE_LAB",
    "SlideStain",
    "StainNormaliser",
    "lab_to_rgb",
    "reinhard",
    "rgb_to_lab",
]

# The reference stain, LAB means and standard deviations (L in [0, 100]): the median of 300
# tiles of the colorectal collection in ../shared/data/tissue (every 20th file). Fixed, so that a pool normalises the same
# way whatever tiles a user brings.
REFERENCE_LAB = (np.array([59.2, 25.9, -11.0]), np.array([15.6, 6.8, 4.6]))

_RGB2XYZ = np.array([[0.412453, 0.357580, 0.180423],
                     [0.212671, 0.715160, 0.072169],
                     [0.019334, 0.119193, 0.950227]])
_XYZ2RGB = np.linalg.inv(_RGB2XYZ)
_WHITE = np.array([0.950456, 1.0, 1.088754])  # D65


# sRGB -> linear light for every uint8 value: a table, so normalising a pool of thousands of
# tiles costs a lookup per pixel rather than a power.
_LINEAR_U8 = np.where(np.arange(256) / 255.0 > 0.04045,
                      ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
                      np.arange(256) / 255.0 / 12.92).astype(np.float32)


# The two powers of the round trip as tables over their float32 inputs (65,536 steps: errors
# below 0.02 in L and 0.01 of a grey level), for the same reason.
_STEPS = 65535
_CBRT_MAX = 1.2  # XYZ / white of sRGB colours stays below ~1.09
_CBRT = np.cbrt(np.linspace(0.0, _CBRT_MAX, _STEPS + 1)).astype(np.float32)
_SRGB = (np.where(np.linspace(0, 1, _STEPS + 1) > 0.0031308,
                  1.055 * np.linspace(0, 1, _STEPS + 1) ** (1 / 2.4) - 0.055,
                  12.92 * np.linspace(0, 1, _STEPS + 1)) * 255.0).astype(np.float32)


def _table(table: np.ndarray, x: np.ndarray, top: float) -> np.ndarray:
    return table[np.rint(np.clip(x, 0.0, top) * (_STEPS / top)).astype(np.int32)]


def _to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


def _to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, None)
    return np.where(c > 0.0031308, 1.055 * c ** (1 / 2.4) - 0.055, 12.92 * c)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` sRGB in ``[0, 255]`` -> CIE LAB (D65). The standard formulas; uint8 input
    goes through a table and float32 (tiles), anything else through float64."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        xyz = _LINEAR_U8[rgb] @ (_RGB2XYZ.T / _WHITE).astype(np.float32)
        root = _table(_CBRT, xyz, _CBRT_MAX)
    else:
        xyz = _to_linear(rgb.astype(np.float64) / 255.0) @ (_RGB2XYZ.T / _WHITE)
        root = np.cbrt(xyz)
    f = np.where(xyz > 0.008856, root, 7.787 * xyz + 16.0 / 116.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                     200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE LAB (D65) -> sRGB ``(..., 3)`` float in ``[0, 255]`` (clipped); float32 input
    (tiles) through tables, float64 exactly."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > 0.206893, f ** 3, (f - 16.0 / 116.0) / 7.787)
    lin = xyz @ (_XYZ2RGB * _WHITE).T.astype(lab.dtype)
    if lab.dtype == np.float32:
        return _table(_SRGB, lin, 1.0)
    return np.clip(_to_srgb(lin) * 255.0, 0.0, 255.0)


def reinhard(rgb: np.ndarray, reference: tuple[np.ndarray, np.ndarray] = REFERENCE_LAB
             ) -> np.ndarray:
    """A tile ``(H, W, 3)`` uint8 with each LAB channel's mean and std set to ``reference``'s.

    Returns uint8 RGB. A flat channel (std 0) keeps its values, shifted to the reference mean.
    """
    lab = rgb_to_lab(np.asarray(rgb, np.uint8))
    channels = np.ascontiguousarray(lab.reshape(-1, 3).T)  # reductions along rows are fast
    mean = channels.mean(1, dtype=np.float64)
    std = channels.std(1, dtype=np.float64)
    scale = np.where(std > 1e-6, reference[1] / np.maximum(std, 1e-6), 1.0)
    out = lab_to_rgb(((lab - mean) * scale + reference[0]).astype(np.float32))
    return np.rint(out).astype(np.uint8)


@dataclass(frozen=True)
class StainNormaliser:
    """Reinhard normalisation of one whole slide: the LAB mean and std of its *tissue* pixels
    (from the thumbnail and its tissue mask, read once) mapped to ``REFERENCE_LAB``, the same
    map applied to every glimpse and to the thumbnail the glance sees.

    Why per slide and at read time: real cohorts come from several labs and scanners, and a
    model trained where benign fields happen to be paler learns the stain, not the tissue (on
    the GlaS fields the challenge's validation patients invert the training patients' colour
    order: a model that reads colour scores below chance there). One map per slide keeps the
    slide's own contrast between its structures; statistics from tissue only keep the white
    glass from diluting them. A pixel's map does not depend on where it is read from, so the
    glimpses of actors and the learner's replay agree.
    """

    mean: np.ndarray  # (3,) LAB of the slide's tissue
    std: np.ndarray  # (3,)

    @classmethod
    def fit(cls, rgb: np.ndarray, tissue: np.ndarray | None = None) -> StainNormaliser:
        """From an ``(H, W, 3)`` uint8 image and a boolean ``(H, W)`` tissue mask (all pixels
        when ``None`` or when it marks fewer than 64)."""
        lab = rgb_to_lab(np.asarray(rgb, np.uint8)).reshape(-1, 3)
        if tissue is not None and int(np.count_nonzero(tissue)) >= 64:
            lab = lab[np.asarray(tissue, bool).reshape(-1)]
        return cls(lab.mean(0, dtype=np.float64), lab.std(0, dtype=np.float64))

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """``(..., 3)`` RGB in ``[0, 255]`` (any dtype) -> normalised float32 RGB, clipped."""
        lab = rgb_to_lab(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
        scale = np.where(self.std > 1e-6, REFERENCE_LAB[1] / np.maximum(self.std, 1e-6), 1.0)
        out = lab_to_rgb(((lab - self.mean) * scale + REFERENCE_LAB[0]).astype(np.float32))
        return np.clip(out, 0.0, 255.0).astype(np.float32)

    def apply_u8(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> normalised uint8 (thumbnails, previews)."""
        return np.rint(self.apply(rgb)).astype(np.uint8)

    def apply_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Glimpses ``(N, k, 3, g, g)`` float in ``[0, 1]`` -> the same, normalised."""
        a = x.detach().cpu().numpy().transpose(0, 1, 3, 4, 2) * 255.0
        out = self.apply(a).transpose(0, 1, 4, 2, 3) / 255.0
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def as_dict(self) -> dict[str, list]:
        return {"lab_mean": self.mean.round(3).tolist(), "lab_std": self.std.round(3).tolist()}


@dataclass(frozen=True)
class SlideStain:
    """One slide's stain: ``rgb' = matrix @ (rgb - pivot) + pivot + offset`` on tissue pixels.

    ``pivot`` is the reference stain's mean colour, so scaling changes contrast around it rather
    than darkening everything. :meth:`draw` gives the ranges the tissue notes found to take
    thumbnail colour cues to chance (about +-10 % scale, +-5 shift per channel, and a little
    mixing between channels, as a different haematoxylin/eosin balance does).
    """

    matrix: np.ndarray  # (3, 3)
    offset: np.ndarray  # (3,)
    pivot: np.ndarray  # (3,)

    @classmethod
    def identity(cls) -> SlideStain:
        return cls(np.eye(3), np.zeros(3), _reference_rgb())

    @classmethod
    def draw(cls, rng: np.random.Generator, *, scale: float = 0.10, shift: float = 6.0,
             mix: float = 0.04) -> SlideStain:
        matrix = np.diag(1.0 + rng.uniform(-scale, scale, 3))
        matrix += rng.uniform(-mix, mix, (3, 3)) * (1.0 - np.eye(3))
        return cls(matrix, rng.uniform(-shift, shift, 3), _reference_rgb())

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """``(..., 3)`` RGB in ``[0, 255]`` -> the stained float32 RGB (not clipped: a caller
        averaging it further clips once at the end). Nine multiply-adds on channel planes: a
        matrix product with an inner size of 3 is several times slower."""
        x = np.asarray(rgb)
        bias = (self.pivot + self.offset - self.matrix @ self.pivot).astype(np.float32)
        m = self.matrix.astype(np.float32)
        out = np.empty(x.shape, np.float32)
        planes = [x[..., j].astype(np.float32) for j in range(3)]
        for i in range(3):
            acc = planes[0] * m[i, 0]
            acc += planes[1] * m[i, 1]
            acc += planes[2] * m[i, 2]
            acc += bias[i]
            out[..., i] = acc
        return out

    def as_dict(self) -> dict[str, list]:
        return {"matrix": np.round(self.matrix, 6).tolist(),
                "offset": np.round(self.offset, 6).tolist()}


def _reference_rgb() -> np.ndarray:
    return lab_to_rgb(REFERENCE_LAB[0])
