"""How a pyramid is written: a given image (:func:`write_pyramid_tiff`,
:func:`write_pyramid_zarr`, levels exactly as :func:`ram_wsi.retina.build_pyramid` makes them),
or any scene (:func:`write_scene_tiff`, :func:`write_scene_zarr`: anything with the
:class:`~ram_wsi.slide.synth.scene.PyramidScene` methods, tile by tile in small memory).

Scene writers encode a white tile once per level and a texture tile once per level and variant
(hard links in zarr stores); only composed tiles are drawn and encoded one by one.

Formats: TIFF is a BigTIFF with one tiled page per level (successive IFDs, JPEG or
uncompressed, resolution tags in pixels/cm) that OpenSlide's generic-tiff reader opens as a
multi-level slide with ``openslide.mpp-x``; zarr is OME-Zarr NGFF 0.5 (zarr v3), in the
converter's default codec.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ...io_utils import atomic_path
from ..ngff import create_level_array, default_compressor, ngff_attributes, publish_mode
from .scene import COMPOSE, TEXTURE, WHITE, WHITE_VALUE, PyramidScene

__all__ = ["pyramid_images", "write_pyramid_tiff", "write_pyramid_zarr", "write_scene_tiff",
           "write_scene_zarr", "zarr_codec_name"]

Encoder = Callable[[np.ndarray], bytes]


def pyramid_images(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels`` uint8 ``(H_l, W_l, 3)`` levels of ``image`` made as
    :func:`ram_wsi.retina.build_pyramid` makes them (white padding, exact 2x2 means), rounded."""
    import torch

    from ...retina import RetinaSpec, build_pyramid

    img = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float() / 255
    pyr = build_pyramid(img[None], RetinaSpec(1, 1, 2.0, float(2 ** (levels - 1))), fill=1.0)
    h, w = image.shape[:2]
    out = []
    for i in range(levels):
        lv = pyr.level(i)[0, :, :-(-h // 2**i), :-(-w // 2**i)]
        out.append((lv * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    return out


def _encoder(compression: str, quality: int) -> Encoder:
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
            t = np.full((tile, tile, 3), WHITE_VALUE, dtype=np.uint8)
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


# ----------------------------------------------------------------------------- scenes
def new_tile_stats() -> dict[str, int]:
    """The counts a scene writer keeps: tiles written white, as shared tissue, composed."""
    return {"white": 0, "tissue": 0, "composed": 0}


def _tile_stream(scene: PyramidScene, level: int, enc: Encoder,
                 stats: dict[str, int]) -> Iterator[bytes]:
    """The encoded tiles of ``level`` in row-major order; white and texture tiles encoded once."""
    cls = scene.classify(level)
    ny, nx = cls.shape
    white = enc(scene.tile_pixels(level, 0, 0, WHITE))
    full: dict[int, bytes] = {}
    for ty in range(ny):
        row = cls[ty]
        var = scene.variant(level, np.arange(nx, dtype=np.int64), np.int64(ty))
        for tx in range(nx):
            c = row[tx]
            if c == WHITE:
                stats["white"] += 1
                yield white
            elif c == TEXTURE:
                v = int(var[tx])
                b = full.get(v)
                if b is None:
                    b = full[v] = enc(scene.tile_pixels(level, tx, ty, TEXTURE, v))
                stats["tissue"] += 1
                yield b
            else:
                stats["composed"] += 1
                yield enc(scene.tile_pixels(level, tx, ty, COMPOSE))


def write_scene_tiff(scene: PyramidScene, path: Path, *, compression: str = "jpeg",
                     quality: int = 85, mpp: float | None = 0.25,
                     stats: dict[str, int] | None = None) -> dict[str, int]:
    """Write ``scene`` as a pyramidal TIFF at ``path`` (not atomic: the caller's temp path);
    returns the tile counts (:func:`new_tile_stats`), added to ``stats`` when given."""
    import tifffile

    stats = new_tile_stats() if stats is None else stats
    enc = _encoder(compression, quality)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for lvl in range(scene.levels()):
            lw, lh = scene.level_shape(lvl)
            tw.write(_tile_stream(scene, lvl, enc, stats), shape=(lh, lw, 3), dtype=np.uint8,
                     **_tiff_writer_kwargs(compression, quality, scene.tile, mpp, lvl))
    return stats


class _ChunkWriter:
    """Writes a scene's chunks as files, encoded here exactly as the arrays declare them
    (the converter's default codec): zarr's per-write machinery costs ~7 ms a chunk, which is
    minutes at 131k^2. White chunks are not written (fill value), identical tissue chunks are
    hard links, composed chunks are drawn on a thread pool (drawing and blosc release the GIL
    mostly)."""

    def __init__(self, scene: PyramidScene, path: Path, pool: ThreadPoolExecutor,
                 stats: dict[str, int]):
        import numcodecs

        comp = default_compressor()
        self.blosc = numcodecs.Blosc(cname=str(comp.cname.value), clevel=int(comp.clevel),
                                     shuffle=numcodecs.Blosc.SHUFFLE)
        self.scene, self.path, self.pool, self.stats = scene, path, pool, stats

    def chunk_file(self, lvl: int, ty: int, tx: int) -> Path:
        return self.path / str(lvl) / "c" / "0" / str(ty) / str(tx)

    def put(self, chunk_file: Path, tile_hwc: np.ndarray) -> None:
        chunk_file.parent.mkdir(parents=True, exist_ok=True)
        chunk_file.write_bytes(self.blosc.encode(np.ascontiguousarray(tile_hwc.transpose(2, 0, 1))))

    def compose(self, lvl: int, ty: int, tx: int) -> None:
        self.put(self.chunk_file(lvl, ty, tx), self.scene.tile_pixels(lvl, tx, ty, COMPOSE))

    def texture(self, lvl: int, ty: int, tx: int, first: dict[int, Path]) -> None:
        """A texture chunk: a hard link to the level's first of its variant when it can."""
        chunk_file = self.chunk_file(lvl, ty, tx)
        v = int(self.scene.variant(lvl, np.int64(tx), np.int64(ty)))
        src = first.get(v)
        if src is not None:
            chunk_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, chunk_file)
                return
            except OSError:
                pass
        self.put(chunk_file, self.scene.tile_pixels(lvl, tx, ty, TEXTURE, v))
        first[v] = chunk_file

    def level(self, lvl: int) -> None:
        """Every chunk of level ``lvl``."""
        cls = self.scene.classify(lvl)
        first: dict[int, Path] = {}
        jobs: list[Future] = []
        for ty, tx in zip(*np.nonzero(cls)):
            ty, tx = int(ty), int(tx)
            if cls[ty, tx] == TEXTURE:
                self.texture(lvl, ty, tx, first)
                self.stats["tissue"] += 1
            else:
                jobs.append(self.pool.submit(self.compose, lvl, ty, tx))
                self.stats["composed"] += 1
        for j in jobs:
            j.result()
        self.stats["white"] += int((cls == WHITE).sum())


def _writer_threads() -> int:
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1))
    return max(1, min(4, cpus))


def write_scene_zarr(scene: PyramidScene, path: Path, *, mpp: float | None = 0.25,
                     stats: dict[str, int] | None = None) -> dict[str, int]:
    """Write ``scene`` as an OME-Zarr store at ``path`` (not atomic: the caller's temp path);
    returns the tile counts (:func:`new_tile_stats`), added to ``stats`` when given."""
    import zarr

    stats = new_tile_stats() if stats is None else stats
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    comp = default_compressor()  # what convert writes: benchmarks read what users read
    with ThreadPoolExecutor(_writer_threads()) as pool:
        chunks = _ChunkWriter(scene, path, pool, stats)
        for lvl in range(scene.levels()):
            lw, lh = scene.level_shape(lvl)
            create_level_array(group, lvl, lw, lh, scene.tile, comp)
            chunks.level(lvl)
    group.attrs.update(ngff_attributes(scene.levels(), mpp, name=path.name,
                                       extra={"synthetic": True}))
    return stats


def zarr_codec_name() -> str:
    """How a sidecar names the codec of the stores :func:`write_scene_zarr` writes."""
    comp = default_compressor()
    return f"blosc-{comp.cname.value}-{comp.clevel}"
