"""Convert any slide OpenSlide (or this package) opens into OME-Zarr (NGFF 0.5, zarr v3).

Parallel (dask, threads: OpenSlide reads and blosc release the GIL), chunked, compressed
(blosc-lz4hc by default: read speed over size), with physical scale in micrometres when the slide
states a usable mpp (:mod:`ram_wsi.slide.units`: a placeholder such as TIFF's 72 dpi is none, and
the store's scale is then in pixels).

Level 0 is OpenSlide's ``read_region`` at level 0 composited over white (transparent pixels
become white) -- pixel for pixel. Level ``l + 1`` is the exact 2x2 mean of level ``l`` (white
padding at odd edges, rounded), the way :func:`ram_wsi.retina.build_pyramid` builds levels.
White chunks are not stored (the arrays' fill value is white).

Atomicity: the store is written into ``.tmp-<name>-*`` beside ``dst`` and renamed onto ``dst``
only when complete (the NGFF metadata, written last, is what makes a store an image). An
interrupted run leaves no half store that looks valid; a rerun removes stale temporaries of dead
writers and starts over. The store's directories and files get the umask's modes, as any
``mkdir`` / ``open`` (:func:`ram_wsi.io_utils.atomic_path`).

A destination URI (``s3://bucket/x.zarr``, any scheme of :mod:`.remote`) is written through
zarr's FsspecStore by the same dask graph. Object storage has no rename, so the commit is the
NGFF metadata alone: an old store's root ``zarr.json`` is deleted first (readers see no image
rather than a mix of two), the levels are written, and the metadata last -- an interrupted run
leaves objects but no image, and a rerun writes it anew. Sharded by default there
(``--shard 2048``: a 2048^2 shard holds 64 chunks; a 10^5-pixel slide is ~3,000 objects rather
than ~200,000), each chunk still one ranged read.

Steps: :func:`_plan` (open, geometry), :func:`_write_store` (:func:`_store_level0`, then
:func:`_store_coarser` per level, then the metadata), inside one atomic rename.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideError
from ..io_utils import atomic_path
from ._levels import mean2x2 as _mean2x2  # the one 2x2 arithmetic: built levels agree to the bit
from ._paths import is_uri
from .ngff import (
    clean_stale_tmp,
    create_level_array,
    default_compressor,
    level_shapes,
    ngff_attributes,
)
from .remote import (
    drop_metadata,
    is_remote,
    parse_storage_options,
    set_storage_options,
    stored_bytes,
    writable_store,
)

__all__ = ["cli", "convert_to_ome_zarr", "run_convert"]


def _default_levels(width: int, height: int, chunk: int) -> int:
    n = 1
    while max(level_shapes(width, height, n)[-1]) > chunk:
        n += 1
    return n


@dataclasses.dataclass
class _Plan:
    """What a conversion writes, fixed before anything is: the open source, the level shapes
    (each halving the previous, rounding up), the codec and the dask threads."""

    src: Any
    dst: Path | str  # a local store, or a URI (remote.is_remote)
    shapes: list[tuple[int, int]]
    chunk: int
    compressor: Any
    workers: int
    shard: int | None = None  # pixels per shard side (None: unsharded)

    @property
    def levels(self) -> int:
        return len(self.shapes)

    @property
    def block(self) -> int:
        """The side of what one dask task writes: whole shards (two tasks never write into
        one shard object), else whole chunks."""
        return self.shard or self.chunk


def _plan(src_path: str | os.PathLike, dst_path: str | os.PathLike, chunk: int,
          levels: int | None, compressor: Any, workers: int | None,
          shard: int | None = None) -> _Plan:
    """Open the source and fix the store's geometry (raises before anything is written)."""
    from . import open_source

    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1 pixel, got {chunk}")
    if levels is not None and int(levels) < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if shard is not None and (int(shard) < int(chunk) or int(shard) % int(chunk)):
        raise ValueError(f"shard ({shard} px) must be a multiple of chunk ({chunk} px)")
    src = open_source(src_path)
    w, h = src.dimensions
    nlev = int(levels or _default_levels(w, h, int(chunk)))
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    dst = str(dst_path).rstrip("/") if is_remote(str(dst_path)) else Path(dst_path)
    return _Plan(src=src, dst=dst, shapes=level_shapes(w, h, nlev), chunk=int(chunk),
                 compressor=compressor if compressor is not None else default_compressor(),
                 workers=max(1, int(workers)), shard=int(shard) if shard else None)


def _store_level0(plan: _Plan, array: Any) -> None:
    """Level 0: the source's level 0 (alpha over white), one dask block per chunk, read in
    parallel and uncached (each pixel is read once)."""
    import dask.array as da

    src, chunk = plan.src, plan.block
    w, h = plan.shapes[0]

    def read0(block_info=None):
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return src.read_region(0, x0, y0, x1 - x0, y1 - y0, use_cache=False)

    ych = tuple(min(chunk, h - y) for y in range(0, h, chunk))
    xch = tuple(min(chunk, w - x) for x in range(0, w, chunk))
    da.store(da.map_blocks(read0, dtype=np.uint8, chunks=((3,), ych, xch)), array, lock=False)


def _store_coarser(prev_array: Any, array: Any, chunk: int) -> None:
    """Level ``l + 1`` from level ``l`` as written: exact 2x2 means (white padding at odd
    edges, rounded half up), read back in 2x2-chunk blocks."""
    import dask.array as da

    prev = da.from_array(prev_array, chunks=(3, 2 * chunk, 2 * chunk), lock=False,
                         asarray=True, fancy=False)
    ph, pw = prev.shape[1] % 2, prev.shape[2] % 2
    if ph or pw:
        prev = da.pad(prev, ((0, 0), (0, ph), (0, pw)), constant_values=255)
    down = prev.map_blocks(_mean2x2, dtype=np.uint8,
                           chunks=(3,) + tuple(tuple(-(-c // 2) for c in cs)
                                               for cs in prev.chunks[1:]))
    da.store(down.rechunk((3, chunk, chunk)), array, lock=False)


def _write_store(plan: _Plan, tmp: Path | Any, src_path: str | os.PathLike) -> None:
    """Every level into the store ``tmp`` (a temporary directory, or a writable zarr store
    at a remote destination), then the NGFF metadata that makes it an image (last: a store
    interrupted before it is no image). A slide without a usable mpp gets a scale in pixels
    and says why in ``attributes.ram_wsi``."""
    import dask
    import zarr

    local = isinstance(tmp, Path)
    with dask.config.set(scheduler="threads", num_workers=plan.workers):
        group = zarr.open_group(str(tmp) if local else tmp, mode="w", zarr_format=3)
        if local:
            (tmp / ".writer-pid").write_text(str(os.getpid()))  # lets a rerun tell we are alive
        arrays = [create_level_array(group, i, lw, lh, plan.chunk, plan.compressor, plan.shard)
                  for i, (lw, lh) in enumerate(plan.shapes)]
        _store_level0(plan, arrays[0])
        for i in range(1, plan.levels):
            _store_coarser(arrays[i - 1], arrays[i], plan.block)
        src = plan.src
        source = str(src_path) if is_uri(str(src_path)) else os.path.abspath(
            os.fspath(src_path))
        name = str(plan.dst).rstrip("/").rsplit("/", 1)[-1]
        group.attrs.update(ngff_attributes(
            plan.levels, src.mpp, name=name.split(".")[0] or name,
            extra={"source": source, "converted_by": "ram_wsi",
                   "mpp_note": src.info.mpp_note}))
        if local:
            (tmp / ".writer-pid").unlink(missing_ok=True)


def _write_remote(plan: _Plan, src_path: str | os.PathLike,
                  storage_options: dict[str, Any] | None) -> int:
    """The store at the destination URI (module docstring: an old store's metadata deleted
    first, the levels, the metadata last); the bytes it holds."""
    store = writable_store(str(plan.dst), storage_options)
    drop_metadata(store)
    _write_store(plan, store, src_path)
    return stored_bytes(store)


def convert_to_ome_zarr(src_path: str | os.PathLike, dst_path: str | os.PathLike, *,
                        chunk: int = 256, levels: int | None = None, compressor: Any = None,
                        workers: int | None = None, shard: int | None = None,
                        storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert the slide at ``src_path`` into an OME-Zarr store at ``dst_path`` (a folder, or
    a URI such as ``s3://bucket/x.zarr``: module docstring).

    Args:
        chunk: chunk size in pixels (chunks are ``(3, chunk, chunk)``). 256 by default: a
            32-64 px glimpse window decodes 4x fewer bytes from a cold 256^2 chunk than from a
            512^2 one.
        levels: number of levels; default: halve until the coarsest fits in one chunk.
        compressor: a zarr v3 codec (default :func:`~ram_wsi.slide.ngff.default_compressor`:
            blosc-lz4hc, level 5).
        workers: dask threads (default: the CPUs this process may use).
        shard: shard side in pixels, a multiple of ``chunk`` (None: unsharded; ``ram-wsi
            convert`` shards a URI destination at 2048).
        storage_options: for a URI destination (and source), else the process's
            (:func:`~ram_wsi.slide.remote.set_storage_options`).

    Returns:
        A summary dict (dimensions, levels, mpp -- None with ``mpp_note`` when the source
        states no usable one, and the store's scale is then in pixels -- seconds, bytes).

    Raises:
        SlideError: the source cannot be opened or read (naming it and the cause).
        ValueError: ``chunk`` or ``levels`` below 1.
    """
    t0 = time.perf_counter()
    plan = _plan(src_path, dst_path, chunk, levels, compressor, workers, shard)
    if isinstance(plan.dst, str):
        nbytes = _write_remote(plan, src_path, storage_options)
    else:
        clean_stale_tmp(plan.dst)
        with atomic_path(plan.dst, is_dir=True) as tmp:
            _write_store(plan, tmp, src_path)
        nbytes = sum(f.stat().st_size for f in plan.dst.rglob("*") if f.is_file())
    src = plan.src
    return {"src": str(src_path), "dst": str(plan.dst), "dimensions": list(src.dimensions),
            "levels": plan.levels, "level_dimensions": [list(s) for s in plan.shapes],
            "mpp": src.mpp, "physical_units": src.mpp is not None,
            "mpp_note": src.info.mpp_note, "chunk": plan.chunk, "shard": plan.shard,
            "workers": plan.workers,
            "seconds": round(time.perf_counter() - t0, 3), "bytes": nbytes}


def run_convert(args: Any) -> int:
    """``ram-wsi convert`` with arguments checked by
    :func:`ram_wsi.commands.convert.parse_convert`: convert, print the summary as JSON."""
    try:
        options = parse_storage_options(args.storage_option)
    except ValueError as exc:  # a credential among them
        raise SlideError(args.dst, str(exc)) from None
    set_storage_options(options)  # the source's too, when it is remote
    info = convert_to_ome_zarr(args.src, args.dst, chunk=args.chunk, levels=args.levels,
                               workers=args.workers, shard=args.shard,
                               compressor=default_compressor(args.codec, args.clevel))
    print(json.dumps(info))
    return 0


def cli(argv: Sequence[str] | None = None, prog: str = "ram-wsi convert") -> int:
    """``ram-wsi convert SRC DST [--chunk N] [--shard N] [--workers N] [--levels N]
    [--storage-option KEY=VALUE ...]`` (``pipelines/convert.py``): a mistake is one line and
    exit status 2."""
    from ..cli_args import guarded
    from ..commands.convert import parse_convert

    def run(args: list[str]) -> int:
        return run_convert(parse_convert(args, prog))

    return guarded(run, list(sys.argv[1:] if argv is None else argv), prog=prog)


if __name__ == "__main__":
    raise SystemExit(cli())
