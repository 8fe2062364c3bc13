"""Synthetic slides (TIFF and OME-Zarr) and the tissue mask."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import open_source, tissue_mask, write_synthetic_slide
from ram_wsi.slide.tissue import TissueMask, mask_from_rgb, otsu_threshold

SIZE = 4096


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    t = write_synthetic_slide(d / "a.tiff", SIZE, seed=7, label=4, fmt="tiff")
    z = write_synthetic_slide(d / "a.zarr", SIZE, seed=7, label=4, fmt="zarr")
    return d, t, z


def test_tiff_is_a_multilevel_slide_for_openslide(slides):
    import openslide

    d, meta, _ = slides
    with openslide.OpenSlide(str(d / "a.tiff")) as s:
        assert s.level_count >= 4
        assert s.level_dimensions[0] == (SIZE, SIZE)
        assert s.level_downsamples[:4] == pytest.approx([1, 2, 4, 8])
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert meta["label"] == 4 and meta["levels"] >= 4
    side = json.loads((d / "a.tiff.json").read_text())
    assert side["label"] == 4
    cx, cy = side["target_center_px"]
    lx, ly = side["target_center_loc"]
    assert lx == pytest.approx(cx / SIZE * 2 - 1) and ly == pytest.approx(cy / SIZE * 2 - 1)
    assert 64 <= side["target_size_px"] <= 512


def test_target_is_a_dark_digit_inside_tissue(slides):
    d, meta, _ = slides
    src = open_source(d / "a.tiff")
    ts = meta["target_size_px"]
    spec = RetinaSpec(32, 1, 2.0, ts / 32)  # one patch that just covers the target
    tgt = src.glimpse(torch.tensor([meta["target_center_loc"]]), spec)[0, 0]
    tm = tissue_mask(src, 1024)
    assert tm.contains([meta["target_center_loc"]])[0]
    assert tm.fraction_on_tissue(tm.sample(50, seed=0)) > 0.95
    far = tm.sample(1, seed=1)
    tissue = src.glimpse(torch.from_numpy(far), spec)[0, 0]
    # The digit's stain is far darker than tissue; background is white.
    assert float(tgt.min()) < 0.45 < float(tissue.min())
    assert float((tgt.mean(0) < 0.5).float().mean()) > 0.03
    bg = src.glimpse(torch.tensor([[-0.98, -0.98]]), spec)[0, 0]
    assert float(bg.mean()) > 0.99


def test_deterministic_by_seed(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.tiff", 1024, seed=3, fmt="tiff")
    b = write_synthetic_slide(tmp_path / "b.tiff", 1024, seed=3, fmt="tiff")
    c = write_synthetic_slide(tmp_path / "c.tiff", 1024, seed=4, fmt="tiff")

    def h(p):
        return hashlib.sha256((tmp_path / p).read_bytes()).hexdigest()

    assert h("a.tiff") == h("b.tiff") != h("c.tiff")
    assert a["target_center_px"] == b["target_center_px"]
    assert (a["target_center_px"], a["label"]) != (c["target_center_px"], c["label"])


def test_zarr_and_tiff_serve_the_same_slide(slides):
    d, meta, zmeta = slides
    assert meta["target_center_px"] == zmeta["target_center_px"]
    t, z = open_source(d / "a.tiff"), open_source(d / "a.zarr")
    assert z.level_dimensions == t.level_dimensions and z.mpp == pytest.approx(0.25)
    loc = torch.from_numpy(tissue_mask(t, 512).sample(30, seed=2))
    loc = torch.cat([loc, torch.tensor([meta["target_center_loc"], [-1.0, 0.3]])])
    spec = RetinaSpec(16, 3, 2.0, 1.0)
    gt, gz = t.glimpse(loc, spec), z.glimpse(loc, spec)
    err = (gt - gz).abs()
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.3  # JPEG vs lossless


def test_tissue_mask_cached_in_memory_and_on_disk(slides, tmp_path):
    d, _, _ = slides
    src = open_source(d / "a.tiff")
    a = tissue_mask(src, 256, cache_dir=tmp_path)
    assert tissue_mask(src, 256, cache_dir=tmp_path) is a
    files = list(tmp_path.glob("tissue-*.npz"))
    assert len(files) == 1
    from ram_wsi.slide import tissue as tissue_mod

    tissue_mod._MEMO.clear()
    b = tissue_mask(d / "a.tiff", 256, cache_dir=tmp_path)  # from disk this time
    assert b is not a and np.array_equal(a.mask, b.mask)
    assert 0.05 < a.fraction < 0.8
    assert a.mask.shape == (256, 256)


def test_mask_from_rgb_and_otsu():
    rgb = np.full((200, 200, 3), 250, np.uint8)
    rgb[50:150, 40:160] = [220, 140, 190]  # a pink block
    rgb[5, 5] = [200, 20, 20]  # a speck: removed
    m, _thr = mask_from_rgb(rgb)
    assert m[60:140, 50:150].all() and not m[:40].any() and not m[5, 5]
    assert abs(m.mean() - 100 * 120 / 200**2) < 0.01
    blank, _ = mask_from_rgb(np.full((64, 64, 3), 255, np.uint8))
    assert not blank.any()
    v = np.concatenate([np.full(100, 10), np.full(100, 200)]).astype(np.uint8)
    assert 10 <= otsu_threshold(v) < 200


def test_tissue_mask_sampling_and_fraction():
    m = np.zeros((10, 20), bool)
    m[:, :10] = True  # left half
    tm = TissueMask(m, (2000, 1000), 0.0)
    s = tm.sample(500, seed=0)
    assert (s[:, 0] < 0).all() and (np.abs(s) <= 1).all()
    assert np.array_equal(s, tm.sample(500, seed=0))
    assert tm.fraction_on_tissue([[-0.5, 0.0], [0.5, 0.0], [-0.5, 3.0]]) == pytest.approx(1 / 3)
    assert tm.fraction == pytest.approx(0.5)


def test_make_slides_pipeline_writes_manifest(tmp_path):
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "pipelines" / "make_slides.py"
    spec = importlib.util.spec_from_file_location("make_slides_cli", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "slides"
    assert mod.main([str(out), "--count", "3", "--size", "512", "--fmt", "zarr"]) == 0
    with open(out / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["0", "1", "2"]
    for r in rows:
        src = open_source(out / r["path"])
        side = json.loads((out / (r["path"] + ".json")).read_text())
        assert side["label"] == int(r["label"]) and src.dimensions == (512, 512)


def test_synthetic_zarr_chunks_read_back_through_zarr(slides):
    """The writer encodes chunks itself: zarr must read them as the array declares."""
    import zarr

    d, _, _ = slides
    g = zarr.open_group(str(d / "a.zarr"), mode="r")
    src = open_source(d / "a.zarr")
    lw, lh = src.level_dimensions[2]
    via_zarr = np.asarray(g["2"][:])
    assert np.array_equal(via_zarr, src.read_region(2, 0, 0, lw, lh, use_cache=False))
    assert (via_zarr < 200).any() and (via_zarr == 255).any()  # tissue and white background


def test_glimpse_benchmark_smoke(tmp_path, capsys):
    from ram_wsi.bench.glimpse import main

    assert main(["--sizes", "512", "1024", "--patch", "16", "--n-cold", "4", "--n-naive", "2",
                 "--batch", "8", "--warm-reps", "1", "--rounds", "2", "--no-memory",
                 "--cache-dir", str(tmp_path / "slides"), "--out", str(tmp_path / "out")]) == 0
    recs = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text()
            .splitlines()]
    per = [r for r in recs if "backend" in r and "size" in r]
    assert {(r["backend"], r["size"]) for r in per} == {
        (b, s) for b in ("openslide", "zarr") for s in (512, 1024)}
    for r in per:
        assert r["cold_glimpses_per_cpu_s"] > 0 and r["warm_glimpses_per_cpu_s"] > 0
        assert r["speedup_vs_naive_cpu"] > 0
    assert sum(r.get("event") == "size_ratio" for r in recs) == 2
    assert "speedup_vs_naive_cpu" in capsys.readouterr().err  # the table
