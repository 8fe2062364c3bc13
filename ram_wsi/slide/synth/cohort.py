"""A cohort of tissue-mosaic slides: procedural training and validation slides, test slides
written as files, and the manifest that names them all.

Training and validation slides are ``procedural:tissue?...`` URIs drawn from the train and
validation tile pools (nothing written: a training run draws thousands); test slides are files
from the test pool -- a JPEG pyramidal TIFF (read through OpenSlide) or an OME-Zarr store --
so that a test slide never shows a tile a model trained on, and is read as users' slides are.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...data.manifest import write_manifest
from ..procedural import procedural_uri
from .mosaic import TISSUE_CLASSES

__all__ = ["FORMATS", "tissue_slide_kwargs", "write_tissue_cohort"]

FORMATS = ("tiff", "zarr", "mixed")
# Procedural slides are drawn in 64 px blocks: a glimpse composes little more than it reads
# (256 px blocks made training ~2x slower); the written files keep 256 px tiles. The pixels
# of a level do not depend on the tile size.
PROCEDURAL_TILE = 64
# Seed offsets of the splits: a training slide never shares its seed (tissue, region, stain)
# with a validation or test slide.
SEED_BASE = {"train": 10_000, "val": 20_000, "test": 30_000}


def tissue_slide_kwargs(tiles: str | Path, *, split_seed: int = 0, region_um: tuple[float, float]
                        = (1000.0, 3000.0), adenoma: float = 0.5, tissue_um: float = 20000.0
                        ) -> dict[str, Any]:
    """The scene parameters of a cohort's slides (URI keys and ``write_synthetic_slide``
    keywords alike); ``tiles`` made absolute, so a manifest's URIs name the same folder from
    any working directory (a Ray job's included)."""
    return {"tiles": str(Path(tiles).resolve()), "split_seed": int(split_seed),
            "region_min_um": float(region_um[0]), "region_max_um": float(region_um[1]),
            "adenoma": float(adenoma), "tissue_um": float(tissue_um)}


def _test_format(fmt: str, i: int) -> str:
    return ("tiff", "zarr")[(i // 2) % 2] if fmt == "mixed" else fmt


def write_tissue_cohort(folder: str | Path, size: int, tiles: str | Path, *, train: int,
                        val: int, test: int, seed: int = 0, fmt: str = "mixed",
                        mpp: float = 0.5, tile: int = 256, quality: int = 85,
                        scene: dict[str, Any] | None = None, log=print) -> Path:
    """``folder/manifest.csv`` (``path,label,split``) of a tissue cohort; returns its path.

    Args:
        size: level-0 side of every slide, pixels.
        tiles: the folder of class tiles (:mod:`ram_wsi.slide.tile_pool`).
        train, val: procedural slides from the train / validation tile pools.
        test: slides written as files from the test pool (kept when already there with their
            sidecar: a rerun resumes), named ``test_XXX.tiff`` / ``test_XXX.zarr``.
        seed: slide ``i`` of a split uses ``seed + SEED_BASE[split] + i``.
        fmt: ``tiff``, ``zarr``, or ``mixed`` (pairs alternate TIFF and OME-Zarr, on purpose).
        scene: :func:`tissue_slide_kwargs` (defaults when None).
        Labels alternate benign / carcinoma (balanced classes).
    """
    from . import write_synthetic_slide

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    scene = tissue_slide_kwargs(tiles) if scene is None else scene
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            lab = i % 2
            uri = procedural_uri("tissue", size, seed=seed + SEED_BASE[split] + i, label=lab,
                                 mpp=mpp, pool=split, tile=PROCEDURAL_TILE, **scene)
            rows.append((uri, TISSUE_CLASSES[lab], split))
    for i in range(test):
        lab, kind = i % 2, _test_format(fmt, i)
        p = folder / f"test_{i:03d}.{kind}"
        if not (p.exists() and Path(str(p) + ".json").exists()):
            t0 = time.perf_counter()
            write_synthetic_slide(p, size, seed=seed + SEED_BASE["test"] + i, label=lab,
                                  kind="tissue", pool="test", fmt=kind, mpp=mpp, tile=tile,
                                  quality=quality, **scene)
            log(f"wrote {p} ({time.perf_counter() - t0:.1f} s)")
        rows.append((p.name, TISSUE_CLASSES[lab], "test"))
    return write_manifest(folder / "manifest.csv", rows)
