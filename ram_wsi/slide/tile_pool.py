"""A folder of class tiles, split by tile into train / validation / test pools, normalised once.

Tissue-mosaic slides (:mod:`ram_wsi.slide.mosaic`) are paved with real H&E tiles. A user brings
a folder with one sub-folder per class -- ``H/`` healthy mucosa, ``AC/`` adenocarcinoma and the
adenomas ``S/ T/ V/`` (serrated, tubular, villous) -- of RGB tiles (PNG, JPEG, TIFF).

Why pools: a test slide must never show a training tile, so tiles (not slides) are split,
seeded and per class, before any slide is drawn. Why a cache: every tile is stain-normalised
(Reinhard, :mod:`ram_wsi.slide.stain`) and area-pooled to the six levels a mosaic needs (1x ..
32x) once, into ``.npy`` files that every process -- Ray actors, scorers, the writer --
memory-maps; the operating system's page cache then holds one copy however many processes read.

Tiles whose size differs from ``tile`` (224 px) are centre-cropped to a square and resized to it
(Lanczos): a folder of 256 or 512 px tiles works, at that tile's own magnification. Grey-scale
tiles, files that are not images, and empty files are refused, every bad file named in one
:class:`~ram_wsi.errors.DataError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io_utils import atomic_path
from .stain import REFERENCE_LAB, reinhard

__all__ = [
    "ADENOMA_CLASSES",
    "POOLS",
    "TILE_CLASSES",
    "TilePool",
    "cache_dir",
    "open_pool",
    "scan_tiles",
    "split_tiles",
]

TILE_CLASSES = ("H", "AC", "S", "T", "V")  # healthy, adenocarcinoma, three adenomas
ADENOMA_CLASSES = ("S", "T", "V")
POOLS = ("train", "val", "test")
POOL_FRACTIONS = (0.6, 0.15, 0.25)
LEVELS = 6  # 1x .. 32x: a 224 px tile is 7 px at 32x; coarser levels pool those
CACHE_ENV = "RAM_WSI_CACHE_DIR"
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
_VERSION = 1  # bump when the normalisation or the pooling changes


def cache_dir() -> Path:
    """``$RAM_WSI_CACHE_DIR``, else ``~/.cache/ram_wsi``: where normalised pools are kept."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ram_wsi"


def scan_tiles(directory: str | os.PathLike) -> dict[str, list[Path]]:
    """The tile files of each class folder, sorted by name (hidden files left out).

    Raises:
        DataError: ``directory`` or a class folder is missing, or a class folder holds no file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "not a folder of class tiles (expected sub-folders "
                                   + ", ".join(f"{c}/" for c in TILE_CLASSES) + ")")
    found: dict[str, list[Path]] = {}
    for cls in TILE_CLASSES:
        sub = directory / cls
        if not sub.is_dir():
            raise DataError(sub, "missing class folder: a tile folder holds "
                                 + ", ".join(f"{c}/" for c in TILE_CLASSES))
        files = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) < len(POOLS):
            raise DataError(sub, f"{len(files)} tile(s); each class needs at least "
                                 f"{len(POOLS)} to give every pool (train, val, test) one")
        found[cls] = files
    return found


def split_tiles(files: dict[str, list[Path]], seed: int,
                fractions: tuple[float, float, float] = POOL_FRACTIONS
                ) -> dict[str, dict[str, list[Path]]]:
    """``pool -> class -> files``: each class's tiles shuffled by ``seed`` and cut into the
    three pools by ``fractions`` (each pool gets at least one tile), disjoint and covering."""
    out: dict[str, dict[str, list[Path]]] = {p: {} for p in POOLS}
    for ci, (cls, paths) in enumerate(sorted(files.items())):
        order = np.random.default_rng([seed, ci]).permutation(len(paths))
        n = len(paths)
        n_val = max(1, round(n * fractions[1]))
        n_test = max(1, round(n * fractions[2]))
        cuts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                "train": order[n_test + n_val:]}
        for pool, idx in cuts.items():
            out[pool][cls] = [paths[i] for i in sorted(idx)]
    return out


@dataclass
class TilePool:
    """The normalised tiles of one pool, as memory-mapped arrays.

    ``levels[l]`` is ``(N, tile / 2**l, tile / 2**l, 3)`` uint8: every tile area-averaged by
    ``2**l`` (level 0 the normalised tile); ``classes[c]`` the indices of class ``c``'s tiles.
    """

    directory: Path
    pool: str
    seed: int
    tile: int
    levels: list[np.ndarray]
    classes: dict[str, np.ndarray]
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)


def _load_tile(path: Path, tile: int) -> np.ndarray | str:
    """The tile as ``(tile, tile, 3)`` uint8, or why it cannot be one."""
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as im:
            if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                return f"grey-scale or unsupported mode {im.mode!r}: H&E tiles must be RGB"
            if im.mode == "P" and "transparency" not in im.info and \
                    len(set(im.getpalette()[0::3])) <= 1:
                return "palette image without colour: H&E tiles must be RGB"
            im = im.convert("RGB")
            w, h = im.size
            if (w, h) != (tile, tile):
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((tile, tile), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        return "not an image (no reader recognises it)"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"cannot decode the image ({exc})"


def _pooled(tile: np.ndarray, levels: int) -> list[np.ndarray]:
    """``tile`` and its exact ``2**l`` area means, each rounded to uint8 from float level 0."""
    x = tile.astype(np.float64)
    out = [tile]
    for lvl in range(1, levels):
        f = 2 ** lvl
        n = tile.shape[0] // f
        out.append(np.rint(x.reshape(n, f, n, f, 3).mean((1, 3))).astype(np.uint8))
    return out


def _key(directory: Path, pool: str, seed: int, tile: int, files: list[Path]) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([_VERSION, str(directory.resolve()), pool, seed, tile,
                         REFERENCE_LAB[0].tolist(), REFERENCE_LAB[1].tolist()]).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(directory)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _build(files: list[Path], tile: int, out: Path) -> None:
    """Normalise and pool every file into ``out/level{l}.npy``; every bad file in one error."""
    arrays = [np.lib.format.open_memmap(out / f"level{lvl}.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(files), tile >> lvl, tile >> lvl, 3))
              for lvl in range(LEVELS)]
    def one(i: int) -> str | None:
        got = _load_tile(files[i], tile)
        if isinstance(got, str):
            return f"{files[i]}: {got}"
        for lvl, arr in enumerate(_pooled(reinhard(got), LEVELS)):
            arrays[lvl][i] = arr
        return None

    # Decoding and the colour maths release the GIL for most of their time: threads suffice.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as ex:
        bad = [msg for msg in ex.map(one, range(len(files))) if msg is not None]
    for arr in arrays:
        arr.flush()
    if bad:
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise DataError(bad[0].split(": ", 1)[0], f"{len(bad)} bad tile(s): "
                        + "; ".join(bad[:10]) + more)


@functools.lru_cache(maxsize=8)
def open_pool(directory: str, pool: str, seed: int = 0, tile: int = 224) -> TilePool:
    """Pool ``pool`` of the tiles under ``directory`` (split by ``seed``), normalised and
    pooled once into the cache (:func:`cache_dir`) and memory-mapped from there.

    Cached per process: a Ray actor opens each pool once however many slides it draws.
    """
    if pool not in POOLS:
        raise DataError(directory, f"unknown tile pool {pool!r}; one of {', '.join(POOLS)}")
    if tile % 2 ** (LEVELS - 1):
        raise DataError(directory, f"tile size {tile} must be a multiple of {2 ** (LEVELS - 1)}")
    root = Path(directory)
    by_class = split_tiles(scan_tiles(root), seed)[pool]
    files = [p for cls in TILE_CLASSES for p in by_class[cls]]
    where = cache_dir() / "tile_pools" / _key(root, pool, seed, tile, files)
    if not (where / "done").is_file():
        where.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(where, is_dir=True) as tmp:
            _build(files, tile, Path(tmp))
            (Path(tmp) / "done").write_text(json.dumps({"files": len(files)}))
    # Plain ndarray views of the maps: indexing a np.memmap makes a memmap object per cell,
    # which cost more than copying a small cell.
    levels = [np.asarray(np.load(where / f"level{lvl}.npy", mmap_mode="r"))
              for lvl in range(LEVELS)]
    classes, start = {}, 0
    for cls in TILE_CLASSES:
        classes[cls] = np.arange(start, start + len(by_class[cls]))
        start += len(by_class[cls])
    return TilePool(root, pool, seed, tile, levels, classes,
                    [str(p.relative_to(root)) for p in files])
