"""Real slide files (OpenSlide's fixtures), conversion to OME-Zarr, and every bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_wsi.errors import SlideError
from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import OpenSlideSource, ZarrSource, convert_to_ome_zarr, open_source
from ram_wsi.slide.convert import _mean2x2, cli
from ram_wsi.slide.openslide_source import composite_over_white
from ram_wsi.slide.synth import write_pyramid_zarr

SHARED = Path(__file__).parents[2].parent / "shared" / "data"
SLIDES = SHARED / "slides"
needs_shared = pytest.mark.skipif(not (SLIDES / "boxes.tiff").exists(),
                                  reason="../shared/data/slides is not here")

SPEC = RetinaSpec(8, 3, 2.0, 1.0)


def _loc(n=12, seed=0, lim=1.1):
    return torch.tensor(np.random.default_rng(seed).uniform(-lim, lim, (n, 2)),
                        dtype=torch.float32)


@needs_shared
def test_boxes_tiff_levels_and_downsamples():
    src = open_source(SLIDES / "boxes.tiff")
    assert isinstance(src, OpenSlideSource)
    assert src.dimensions == (300, 250)
    assert src.level_count == 4
    assert src.level_downsamples == pytest.approx([1, 2, 4.016129, 8.086312], rel=1e-5)
    assert src.axis_downsamples[2] == pytest.approx((4.0, 250 / 62))
    g = src.glimpse(_loc(), RetinaSpec(8, 4, 2.02, 1.0))
    assert g.shape == (12, 4, 3, 8, 8) and torch.isfinite(g).all()
    assert float(g.min()) >= 0 and float(g.max()) <= 1 + 1e-6


@needs_shared
def test_boxes_tiff_non_integer_level_matches_tiff_page():
    """Level 2 (downsample 4.016): the glimpse equals one computed from the TIFF page itself
    with the per-axis geometry, up to OpenSlide's interpolation of a level it paints from a
    sub-pixel position (the reader corrects the position; the blur of these hard-edged boxes
    remains: <= 0.125 px here)."""
    import tifffile

    from ram_wsi.retina import resample

    src = open_source(SLIDES / "boxes.tiff")
    page = tifffile.imread(SLIDES / "boxes.tiff", key=2)[..., :3]
    spec = RetinaSpec(8, 1, 2.0, 4.02)  # choose_level(4.02) -> level 2
    loc = _loc(20, seed=3, lim=0.8)
    got = src.glimpse(loc, spec)
    px = (loc.double() + 1) / 2 * torch.tensor([300.0, 250.0], dtype=torch.float64)
    dx, dy = 300 / 75, 250 / 62
    half = 0.5 * spec.window(0)
    full = torch.from_numpy(np.array(page)).permute(2, 0, 1)[None].float() / 255
    ref = resample(full, (px[:, 0] - half) / dx, (px[:, 1] - half) / dy, 4.02 / dx, 4.02 / dy,
                   8, fill=1.0, index=torch.zeros(20, dtype=torch.long))
    err = (got[:, 0] - ref).abs()
    assert float(err.max()) < 0.15 and float(err.mean()) < 4e-3
    # The check can fail: half a level pixel off is far off.
    off = resample(full, (px[:, 0] - half) / dx + 0.5, (px[:, 1] - half) / dy, 4.02 / dx,
                   4.02 / dy, 8, fill=1.0, index=torch.zeros(20, dtype=torch.long))
    assert float((got[:, 0] - off).abs().max()) > 0.3
    assert float((got[:, 0] - off).abs().mean()) > 4 * float(err.mean())


@needs_shared
def test_small_svs_single_level_with_mpp():
    src = open_source(SLIDES / "small.svs")
    assert src.level_count == 1 and src.dimensions == (16, 16)
    assert src.mpp == pytest.approx(0.499, abs=1e-3)
    assert src.metadata["physical_units"] is True
    # A glimpse wider than the slide: still served, white around it.
    g = src.glimpse(torch.zeros(1, 2), RetinaSpec(8, 3, 2.0, 1.0))
    assert g.shape == (1, 3, 3, 8, 8)
    assert torch.allclose(g[0, 2, :, 0, :], torch.ones(3, 8), atol=1e-6)
    # In micrometres: 1 um ~ 2 px.
    a = src.glimpse(torch.zeros(1, 2), RetinaSpec(4, 1, 2.0, 0.499), units="um")
    b = src.glimpse(torch.zeros(1, 2), RetinaSpec(4, 1, 2.0, 1.0), units="px")
    assert torch.allclose(a, b, atol=1e-4)


@needs_shared
@pytest.mark.parametrize("name", ["boxes_0.dcm", "boxes_1.dcm", "."])
def test_dicom_by_file_or_directory(tmp_path, name):
    if name == ".":
        d = tmp_path / "dicom"
        d.mkdir()
        for f in ("boxes_0.dcm", "boxes_1.dcm"):
            shutil.copy(SLIDES / f, d / f)
        path = d
    else:
        path = SLIDES / name
    src = open_source(path)
    assert src.dimensions == (16, 16)
    assert src.mpp == pytest.approx(0.499, abs=1e-3)
    g = src.glimpse(_loc(4), SPEC)
    assert g.shape == (4, 3, 3, 8, 8)
    assert float(g.std()) > 0  # real pixels, not a blank


@needs_shared
def test_convert_boxes_equals_read_region(tmp_path):
    import openslide

    dst = tmp_path / "boxes.ome.zarr"
    info = convert_to_ome_zarr(SLIDES / "boxes.tiff", dst, chunk=64, workers=2)
    assert info["levels"] == 4 and info["dimensions"] == [300, 250]
    z = ZarrSource(dst)
    with openslide.OpenSlide(str(SLIDES / "boxes.tiff")) as s:
        ref = composite_over_white(np.asarray(s.read_region((0, 0), 0, (300, 250))))
    import zarr

    lv0 = np.asarray(zarr.open_group(str(dst), mode="r")["0"][:]).transpose(1, 2, 0)
    assert np.array_equal(lv0, ref)
    lv1 = np.asarray(zarr.open_group(str(dst), mode="r")["1"][:])
    assert np.array_equal(lv1, _mean2x2(lv0.transpose(2, 0, 1)))
    # NGFF 0.5 metadata in pixels: boxes.tiff's 72 dpi is a placeholder, no physical size
    # (tests/slide/test_units.py has the rule).
    meta = json.loads((dst / "zarr.json").read_text())
    ms = meta["attributes"]["ome"]["multiscales"][0]
    assert meta["attributes"]["ome"]["version"] == "0.5"
    assert "unit" not in ms["axes"][2]
    assert z.mpp is None and open_source(SLIDES / "boxes.tiff").mpp is None
    assert z.level_downsamples == [1.0, 2.0, 4.0, 8.0]
    # Glimpses from level 0 agree exactly with OpenSlide's.
    spec = RetinaSpec(8, 1, 2.0, 1.0)
    assert torch.equal(z.glimpse(_loc(), spec), open_source(SLIDES / "boxes.tiff").glimpse(
        _loc(), spec))


@needs_shared
def test_convert_svs_and_cli(tmp_path, capsys):
    assert cli([str(SLIDES / "small.svs"), str(tmp_path / "s.zarr"), "--chunk", "8",
                "--workers", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["levels"] == 2 and out["mpp"] == pytest.approx(0.499, abs=1e-3)
    assert ZarrSource(tmp_path / "s.zarr").dimensions == (16, 16)
    blosc = json.loads((tmp_path / "s.zarr" / "0" / "zarr.json").read_text())["codecs"][1]
    assert blosc["configuration"]["cname"] == "lz4hc"  # the default: fastest to read
    assert cli([str(SLIDES / "small.svs"), str(tmp_path / "z.zarr"), "--codec", "zstd",
                "--clevel", "3"]) == 0
    capsys.readouterr()
    blosc = json.loads((tmp_path / "z.zarr" / "0" / "zarr.json").read_text())["codecs"][1]
    assert blosc["configuration"]["cname"] == "zstd" and blosc["configuration"]["clevel"] == 3
    a, b = ZarrSource(tmp_path / "s.zarr"), ZarrSource(tmp_path / "z.zarr")
    assert np.array_equal(a.read_region(0, 0, 0, 16, 16), b.read_region(0, 0, 0, 16, 16))
    assert cli([str(SLIDES / "unopenable.tiff"), str(tmp_path / "u.zarr")]) == 2
    assert "unopenable.tiff" in capsys.readouterr().err
    assert not (tmp_path / "u.zarr").exists()


def test_convert_interrupted_leaves_no_store_and_rerun_cleans(tmp_path, monkeypatch):
    img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    src = write_pyramid_zarr(tmp_path / "src.zarr", img, levels=2, chunk=32)
    dst = tmp_path / "out.zarr"
    import ram_wsi.slide.convert as conv

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "ngff_attributes", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_to_ome_zarr(src, dst, chunk=32, workers=1)
    monkeypatch.undo()
    assert not dst.exists()
    assert not list(tmp_path.glob(".tmp-out.zarr-*"))
    # A writer killed hard leaves its temporary behind: the rerun removes it.
    stale = tmp_path / ".tmp-out.zarr-dead"
    stale.mkdir()
    (stale / ".writer-pid").write_text("999999999")
    convert_to_ome_zarr(src, dst, chunk=32, workers=1)
    assert not stale.exists()
    z = ZarrSource(dst)
    assert z.dimensions == (128, 96)
    assert np.array_equal(z.read_region(0, 0, 0, 128, 96).transpose(1, 2, 0), img)


# ----------------------------------------------------------------------------- bad input
@needs_shared
def test_unopenable_tiff():
    with pytest.raises(SlideError) as e:
        open_source(SLIDES / "unopenable.tiff")
    assert "unopenable.tiff" in str(e.value) and e.value.cause


@needs_shared
def test_unreadable_svs_opens_but_reading_fails():
    src = open_source(SLIDES / "unreadable.svs")
    assert src.dimensions[0] > 0
    with pytest.raises(SlideError) as e:
        src.glimpse(torch.zeros(1, 2), SPEC)
    assert "unreadable.svs" in str(e.value) and "fail" in e.value.cause
    with pytest.raises(SlideError):  # and again: no stale state, no crash
        src.glimpse(torch.zeros(1, 2), SPEC)


def test_missing_file(tmp_path):
    for p in (tmp_path / "nope.svs", tmp_path / "nope.zarr"):
        with pytest.raises(SlideError, match="nope"):
            open_source(p)
    with pytest.raises(SlideError, match="no such file"):
        OpenSlideSource(tmp_path / "nope.tiff")
    with pytest.raises(SlideError, match="no such"):
        ZarrSource(tmp_path / "nope.zarr")


def test_directory_that_is_not_a_store(tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    (d / "notes.txt").write_text("hi")
    with pytest.raises(SlideError, match="neither a zarr store"):
        open_source(d)
    with pytest.raises(SlideError, match="no zarr.json"):
        ZarrSource(d)


def test_non_image_with_slide_extension(tmp_path):
    for name in ("fake.svs", "fake.tiff", "fake.ndpi"):
        p = tmp_path / name
        p.write_text("this is not a slide\n" * 50)
        with pytest.raises(SlideError) as e:
            open_source(p)
        assert name in str(e.value)


@needs_shared
def test_truncated_slide(tmp_path):
    """Cut the file anywhere: opening or reading raises SlideError naming it, or -- when the cut
    spared everything a level needs -- the pixels read are the original ones (never garbage)."""
    data = (SLIDES / "boxes.tiff").read_bytes()
    orig = open_source(SLIDES / "boxes.tiff")
    full = [orig.read_region(i, 0, 0, w, h, use_cache=False)
            for i, (w, h) in enumerate(orig.level_dimensions)]
    raised = 0
    for cut in list(range(64, len(data), 480)) + [len(data) - 1]:
        p = tmp_path / f"cut{cut}.tiff"
        p.write_bytes(data[:cut])
        try:
            src = open_source(p)
            for i, (w, h) in enumerate(src.level_dimensions):
                assert np.array_equal(src.read_region(i, 0, 0, w, h, use_cache=False), full[i])
        except SlideError as e:
            assert p.name in str(e) and e.cause
            raised += 1
    assert raised >= 10


def test_zarr_without_multiscales(tmp_path):
    import zarr

    p = tmp_path / "plain.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    g.create_array("0", shape=(3, 8, 8), dtype="uint8")
    with pytest.raises(SlideError, match="multiscales"):
        open_source(p)


def test_zarr_zero_sized_level(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    p = write_pyramid_zarr(tmp_path / "z.zarr", img, levels=2, chunk=8)
    import zarr

    g = zarr.open_group(str(p), mode="a")
    del g["1"]
    g.create_array("1", shape=(3, 0, 8), chunks=(3, 8, 8), dtype="uint8")
    with pytest.raises(SlideError, match="zero size"):
        open_source(p)


def test_zarr_corrupt_chunk(tmp_path):
    img = np.full((32, 32, 3), 7, np.uint8)
    p = write_pyramid_zarr(tmp_path / "c.zarr", img, levels=1, chunk=16)
    chunk = p / "0" / "c" / "0" / "0" / "0"
    assert chunk.exists()
    chunk.write_bytes(b"garbage" * 10)
    src = open_source(p)
    with pytest.raises(SlideError) as e:
        src.glimpse(torch.tensor([[-0.5, -0.5]]), RetinaSpec(8, 1, 2.0, 1.0))
    assert "c.zarr" in str(e.value)


def test_zarr_store_that_is_a_file(tmp_path):
    p = tmp_path / "x.zarr"
    p.write_text("not a directory")
    with pytest.raises(SlideError, match="not a directory"):
        open_source(p)
    assert os.path.exists(p)
