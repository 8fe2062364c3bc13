"""The digit scene: a real MNIST digit drawn as a dark stain a few hundred level-0 pixels wide
(10 classes), inside the tissue of a :class:`~ram_wsi.slide.synth.blobs.BlobScene`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import DataError
from .blobs import DARK, BlobScene, bilinear

__all__ = ["DigitScene"]

_DIGITS: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # MNIST train split, by directory


def _train_digits(directory: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The train split of ``directory`` (:func:`ram_wsi.data.mnist.load_mnist`), read once;
    None when there is no directory or no readable MNIST in it."""
    from ...data.mnist import load_mnist

    if directory is None:
        return None
    key = str(directory)
    if key not in _DIGITS:
        try:
            _DIGITS[key] = load_mnist(directory, "train")
        except DataError:
            return None
    return _DIGITS[key]


def _drawn_numeral(rng: np.random.Generator, label: int | None) -> tuple[np.ndarray, int]:
    """No MNIST here: the numeral in PIL's font, so that the slide is still labelled."""
    from PIL import Image, ImageDraw

    label = int(rng.integers(10)) if label is None else int(label)
    im = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(im).text((9, 7), str(label), fill=255)
    return np.asarray(im), label


def _digit(rng: np.random.Generator, label: int | None,
           mnist_dir: str | os.PathLike | None) -> tuple[np.ndarray, int]:
    """A ``(28, 28)`` digit image of ``label`` (random when None) and its label."""
    from ...data.mnist import default_mnist_dir

    directory = Path(mnist_dir) if mnist_dir else default_mnist_dir()
    digits = _train_digits(directory)
    if digits is None:
        return _drawn_numeral(rng, label)
    images, labels = digits
    if label is None:
        idx = int(rng.integers(len(labels)))
    else:
        cand = np.flatnonzero(labels == int(label))
        if cand.size == 0:
            raise DataError(directory, f"no digit with label {label}")
        idx = int(cand[rng.integers(cand.size)])
    return images[idx], int(labels[idx])


class DigitScene(BlobScene):
    """A digit stained into tissue. ``data_dir``: where the MNIST idx files are (default
    :func:`ram_wsi.data.mnist.default_mnist_dir`); ``target_size``: the digit's width in
    level-0 pixels (default ``min(320, S / 8)``, at least 64)."""

    kind: ClassVar[str] = "digit"
    class_names: ClassVar[tuple[str, ...]] = tuple(str(d) for d in range(10))
    params: ClassVar[dict[str, Any]] = {"target_size": None, **BlobScene.params}

    def __init__(self, width: int, height: int, *, seed: int, label: int | None, tile: int,
                 data_dir: str | os.PathLike | None = None, target_size: int | None = None,
                 tissue_blobs: int | None = None):
        self._data_dir = data_dir
        self._target_size = target_size
        super().__init__(width, height, seed=seed, label=label, tile=tile,
                         tissue_blobs=tissue_blobs)

    def choose_target(self, rng: np.random.Generator, label: int | None) -> None:
        self.digit, self.label = _digit(rng, label, self._data_dir)
        self.tsize = int(self._target_size or max(64, min(320, min(self.w, self.h) // 8)))

    def draw_target(self, img: np.ndarray, level: int, tx: int, ty: int, px: np.ndarray,
                    py: np.ndarray) -> np.ndarray:
        """The digit, scaled to ``tsize``, darkening ``img`` by its ink (pooled first at coarse
        levels, so that it is not aliased)."""
        f = 2**level
        dsc = self.digit.shape[0] / self.tsize
        dy = (py - self.ty) * dsc + self.digit.shape[0] / 2 - 0.5
        dx = (px - self.tx) * dsc + self.digit.shape[1] / 2 - 0.5
        if (dy.max() > -1 and dy.min() < self.digit.shape[0] and dx.max() > -1
                and dx.min() < self.digit.shape[1]):
            if f * dsc > 1:
                from scipy import ndimage

                dig = ndimage.uniform_filter(self.digit.astype(np.float32), size=int(f * dsc))
            else:
                dig = self.digit.astype(np.float32)
            d = bilinear(dig / 255.0, dy, dx, 0.0)[..., None] * 0.9
            img = img * (1 - d) + DARK * d
        return img
