"""Synthetic whole-slide images of any size, written tile by tile in small memory.

Split by job:

* :mod:`.scene`: what a scene is (:class:`~.scene.Scene`, the interface a scene kind
  implements) and the level arithmetic (:func:`~.scene.level_count`, :func:`~.scene.level_shape`);
* :mod:`.blobs` (tissue blobs and one target, the shared part), :mod:`.digit`, :mod:`.needle`,
  :mod:`.textures`: how the digit and needle scenes are drawn;
* :mod:`.kinds`: the table of scene kinds (:data:`~.kinds.SCENE_KINDS`);
* :mod:`.pyramid`: how a pyramid is written, for an image or any scene, as TIFF or OME-Zarr.

:func:`write_synthetic_slide` writes one slide of a kind; a sidecar JSON (``<path>.json``)
records the label, the target centre (level-0 pixels and ``[-1, 1]``), its size, and the
geometry. :class:`ram_wsi.slide.procedural.ProceduralSource` serves the same pixels without
writing anything (``procedural:needle?size=131072&seed=3``): writers and source share
:meth:`~.scene.Scene.tile_pixels`. For pixel-exact pyramids of a given image use
:func:`write_pyramid_tiff` / :func:`write_pyramid_zarr`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...io_utils import atomic_path, write_json
from ..ngff import publish_mode
from .kinds import KINDS, SCENE_KINDS, make_scene, scene_parameters
from .needle import NEEDLE_CLASSES, NEEDLE_INK_FRACTION
from .pyramid import (
    pyramid_images,
    write_pyramid_tiff,
    write_pyramid_zarr,
    write_scene_tiff,
    write_scene_zarr,
    zarr_codec_name,
)
from .scene import Scene, level_count, level_shape, shared_tile
from .textures import TEXTURE_LIBRARY

__all__ = [
    "KINDS",
    "NEEDLE_CLASSES",
    "NEEDLE_INK_FRACTION",
    "SCENE_KINDS",
    "TEXTURE_LIBRARY",
    "Scene",
    "level_count",
    "level_shape",
    "make_scene",
    "pyramid_images",
    "scene_parameters",
    "shared_tile",
    "write_pyramid_tiff",
    "write_pyramid_zarr",
    "write_scene_tiff",
    "write_scene_zarr",
    "write_synthetic_slide",
]


def write_synthetic_slide(path: str | os.PathLike, size: int | tuple[int, int], *, seed: int = 0,
                          label: int | None = None, fmt: str = "tiff", tile: int = 256,
                          mpp: float | None = 0.25, compression: str = "jpeg", quality: int = 85,
                          target_size: int | None = None, tissue_blobs: int | None = None,
                          mnist_dir: str | os.PathLike | None = None, kind: str = "digit",
                          lesion_size: int = 1024, period: int = 8,
                          **params: Any) -> dict[str, Any]:
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
            ``../shared/data/mnist``); without them the digit is a drawn numeral. Passed to
            the scene as its ``data_dir``.
        kind: a name in :data:`KINDS`: ``"digit"`` (an MNIST digit) or ``"needle"`` (a lesion
            whose pattern, dots or stripes, only shows at level 0 and 1; see
            :mod:`~ram_wsi.slide.synth.needle`).
        lesion_size: needle: diameter of the lesion in level-0 pixels.
        period: needle: period of its pattern in level-0 pixels.
        params: parameters of other kinds (their ``params`` table).

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
    scene = make_scene(kind, w, h, seed=seed, label=label, tile=tile, data_dir=mnist_dir,
                       mpp=mpp, target_size=target_size, tissue_blobs=tissue_blobs,
                       lesion_size=lesion_size, period=period, **params)
    path = Path(path)
    with atomic_path(path, is_dir=(fmt == "zarr")) as tmp:
        if fmt == "tiff":
            stats = write_scene_tiff(scene, tmp, compression=compression, quality=quality,
                                     mpp=mpp)
        else:
            stats = write_scene_zarr(scene, tmp, mpp=mpp)
    publish_mode(path)
    meta = {"path": str(path), "fmt": fmt, **scene.meta(seed=seed, mpp=mpp),
            "compression": compression if fmt == "tiff" else zarr_codec_name(),
            "tiles": stats}
    write_json(str(path) + ".json", meta)
    publish_mode(str(path) + ".json")
    return meta
