"""Writing OME-Zarr (NGFF 0.5 on zarr v3): metadata and level arrays, shared by the converter
and the synthetic-slide writer.

Layout: a group with ``attributes.ome = {"version": "0.5", "multiscales": [...]}``; level ``l``
is the array ``"l"`` of shape ``(3, H_l, W_l)`` uint8 (axes ``c, y, x``: NGFF puts channels
before space), chunks ``(3, chunk, chunk)``, blosc-lz4hc, fill value 255 (white) so that white
chunks need not be written; optionally sharded (many chunks to an object, for object
storage). The scale of level ``l`` is ``2**l`` times level 0's -- in micrometres (axis unit
``micrometer``) when the mpp is known, in pixels (no unit) otherwise.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = [
    "clean_stale_tmp",
    "create_level_array",
    "default_compressor",
    "level_shapes",
    "ngff_attributes",
    "publish_mode",
]


def default_compressor(cname: str = "lz4hc", clevel: int = 5) -> Any:
    """Blosc ``cname`` at ``clevel``. The default, lz4hc 5, is chosen for reading: on stained
    tissue chunks it decodes ~4.6x faster than zstd 5 (43 vs 199 us for a 256^2 RGB chunk) for
    1.3x the bytes, and encodes faster too (3.2 vs 4.8 ms); a cold glimpse is mostly chunk
    decoding. ``cname="zstd"`` for archives where size matters more."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname=cname, clevel=clevel, shuffle="shuffle")


def level_shapes(width: int, height: int, levels: int) -> list[tuple[int, int]]:
    """``(W_l, H_l)``: each level halves the previous one, rounding up (white padding)."""
    out = [(int(width), int(height))]
    for _ in range(1, levels):
        w, h = out[-1]
        out.append((-(-w // 2), -(-h // 2)))
    return out


def ngff_attributes(levels: int, mpp: float | None, name: str = "image",
                    downsamples: list[float] | None = None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Group attributes of an NGFF 0.5 multiscale image with ``levels`` levels."""
    downs = downsamples or [float(2**i) for i in range(levels)]
    unit = {"unit": "micrometer"} if mpp else {}
    px = float(mpp) if mpp else 1.0
    datasets = [{"path": str(i),
                 "coordinateTransformations": [{"type": "scale",
                                                "scale": [1.0, px * d, px * d]}]}
                for i, d in enumerate(downs)]
    ms = {"name": name,
          "axes": [{"name": "c", "type": "channel"},
                   {"name": "y", "type": "space", **unit},
                   {"name": "x", "type": "space", **unit}],
          "datasets": datasets}
    attrs: dict[str, Any] = {"ome": {"version": "0.5", "multiscales": [ms]}}
    attrs["ram_wsi"] = {"mpp": mpp, "physical_units": bool(mpp), **(extra or {})}
    return attrs


def create_level_array(group: Any, level: int, width: int, height: int, chunk: int,
                       compressor: Any = None, shard: int | None = None) -> Any:
    """The uint8 ``(3, H, W)`` array of one level, white fill value, ``(3, chunk, chunk)``
    chunks; with ``shard`` (pixels, a multiple of ``chunk``) the chunks are stored
    ``(3, shard, shard)`` to an object (zarr's ``sharding_indexed``): object storage then holds
    ``(shard / chunk)^2`` times fewer objects, and a chunk is still one ranged read."""
    kw: dict[str, Any] = {}
    if shard:
        if shard % chunk:
            raise ValueError(f"shard ({shard} px) must be a multiple of chunk ({chunk} px)")
        kw["shards"] = (3, int(shard), int(shard))
    return group.create_array(
        str(level), shape=(3, int(height), int(width)), chunks=(3, chunk, chunk), dtype="uint8",
        compressors=[compressor if compressor is not None else default_compressor()],
        fill_value=255, dimension_names=["c", "y", "x"], **kw)


def publish_mode(path: str | Path) -> None:
    """Give a finished file or store (its directories) the mode a plain ``open()`` / ``mkdir``
    gives under the umask. :func:`ram_wsi.io_utils.atomic_path` already creates its temporaries
    so; this is for writers that made theirs otherwise, so that other processes of the job can
    read what they wrote. The umask is read without being changed (no window in which another
    thread's file gets a wrong mode)."""
    from ..io_utils import default_mode

    p = Path(path)
    if p.is_dir():
        dmode = default_mode(is_dir=True)
        os.chmod(p, dmode)
        for root, dirs, _ in os.walk(p):
            for d in dirs:
                os.chmod(os.path.join(root, d), dmode)
    else:
        os.chmod(p, default_mode())


def clean_stale_tmp(dst: str | Path, max_age_s: float = 0.0) -> list[str]:
    """Remove ``.tmp-<name>-*`` siblings of ``dst`` left by interrupted writers whose pid file
    says they are dead (or that have no pid file and are older than ``max_age_s``)."""
    dst = Path(dst)
    removed = []
    if not dst.parent.exists():
        return removed
    for p in dst.parent.glob(f".tmp-{dst.name}-*"):
        pidf = p / ".writer-pid" if p.is_dir() else None
        alive = False
        if pidf is not None and pidf.exists():
            try:
                pid = int(pidf.read_text().strip())
                os.kill(pid, 0)
                alive = pid != os.getpid()
            except (ValueError, ProcessLookupError):
                alive = False
            except PermissionError:
                alive = True
        elif time.time() - p.stat().st_mtime < max_age_s:
            alive = True
        if not alive:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(str(p))
    return removed
