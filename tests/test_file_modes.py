"""Every file the project writes gets the mode a plain ``open()`` gives under the umask, every
directory the mode ``mkdir`` gives (issue 26, section 4): atomic writes once went through
``tempfile.mkstemp`` and published ``0o600`` files no teammate or Ray worker could read.

The real writers run under umask 022 and 077 (set here, restored after): a checkpoint, a
summary JSON, a CSV, GeoJSON and a thumbnail, a synthetic slide, a copy of an input, and an
OME-Zarr conversion (its store, directories and chunk files)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_wsi.io_utils import (
    atomic_open,
    current_umask,
    default_mode,
    link_or_copy,
    temp_sibling,
    write_json,
)

UMASKS = [0o022, 0o077]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def assert_modes(root: Path, mask: int) -> int:
    """Every file under ``root`` (or ``root`` itself) has ``0o666 & ~mask``, every directory
    ``0o777 & ~mask``; no temporary is left. Returns how many paths were checked."""
    paths = [root] + (sorted(root.rglob("*")) if root.is_dir() else [])
    for p in paths:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert mode(p) == want, f"{p}: {oct(mode(p))}, want {oct(want)} under umask {oct(mask)}"
        assert not p.name.startswith(".tmp-"), f"temporary left behind: {p}"
    return len(paths)


@pytest.mark.parametrize("mask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_umask_is_read_without_changing_it(mask):
    with umask(mask):
        assert current_umask() == mask
        assert default_mode() == 0o666 & ~mask
        assert default_mode(is_dir=True) == 0o777 & ~mask
        assert current_umask() == mask


@pytest.mark.parametrize("mask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_temporaries_are_born_with_the_umask_mode(tmp_path, mask):
    with umask(mask):
        f = temp_sibling(tmp_path / "x.json")
        d = temp_sibling(tmp_path / "x.zarr", is_dir=True)
    assert f.name.startswith(".tmp-x.json-") and f.is_file() and f.stat().st_size == 0
    assert mode(f) == 0o666 & ~mask and mode(d) == 0o777 & ~mask


@pytest.mark.parametrize("mask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_checkpoint_summary_csv_and_copies(tmp_path, mask):
    from ram_wsi.train.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    src = tmp_path / "input.bin"
    src.write_bytes(b"slide bytes")
    os.chmod(src, 0o444)  # a read-only input (the shared fixtures are)
    with umask(mask):
        save_checkpoint(out / "best.pt", {"model": {"w": torch.zeros(3)}, "step": 1})
        write_json(out / "summary.json", {"best_val_error_mean": None})
        with atomic_open(out / "results.csv") as fh:
            fh.write("path,status\n")
        with atomic_open(out / "results.csv") as fh:  # replacing an existing file
            fh.write("path,status\na,ok\n")
        link_or_copy(src, out / "linked.bin")
    assert load_checkpoint(out / "best.pt")["step"] == 1
    for name in ("best.pt", "summary.json", "results.csv"):
        assert mode(out / name) == 0o666 & ~mask, name
    assert mode(out) == 0o777 & ~mask
    assert (out / "linked.bin").read_bytes() == b"slide bytes"


@pytest.mark.parametrize("mask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_geojson_thumbnail_and_synthetic_slide(tmp_path, mask):
    from ram_wsi.score.outputs import write_geojson
    from ram_wsi.score.scorer import Scored, write_outputs
    from ram_wsi.slide import write_synthetic_slide

    fc = {"type": "FeatureCollection", "features": []}
    png = _png_bytes()
    with umask(mask):
        write_geojson(tmp_path / "a.geojson", fc)
        write_outputs(tmp_path / "out", Scored({"slide_id": "s1"}, fc, png))
        write_synthetic_slide(tmp_path / "slide.tiff", 512, seed=0, label=0)
        write_synthetic_slide(tmp_path / "slide.zarr", 512, seed=0, label=0, fmt="zarr")
    assert mode(tmp_path / "a.geojson") == 0o666 & ~mask
    assert assert_modes(tmp_path / "out", mask) == 5  # out, geojson/, thumbnails/, 2 files
    assert_modes(tmp_path / "slide.tiff", mask)
    assert_modes(Path(f"{tmp_path / 'slide.tiff'}.json"), mask)
    assert assert_modes(tmp_path / "slide.zarr", mask) > 5


@pytest.mark.parametrize("mask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_convert_store_dirs_and_chunks(tmp_path, mask):
    from ram_wsi.slide import convert_to_ome_zarr
    from ram_wsi.slide.synth import write_pyramid_zarr

    img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    src = write_pyramid_zarr(tmp_path / "src.zarr", img, levels=1, chunk=32)
    with umask(mask):
        convert_to_ome_zarr(src, tmp_path / "out.ome.zarr", chunk=32, workers=1)
        # Converting over an existing store replaces it, modes and all.
        convert_to_ome_zarr(src, tmp_path / "out.ome.zarr", chunk=32, workers=1)
    assert assert_modes(tmp_path / "out.ome.zarr", mask) > 10


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
