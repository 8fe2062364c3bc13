"""Glimpse sources over generated pyramids: one retina, three backends, same glimpses."""

from __future__ import annotations

import json
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from ram_wsi.errors import SlideError
from ram_wsi.retina import RetinaSpec, choose_level, glimpse, resample
from ram_wsi.slide import ArraySource, OpenSlideSource, ZarrSource, open_source
from ram_wsi.slide import cache as slide_cache
from ram_wsi.slide.openslide_source import composite_over_white
from ram_wsi.slide.synth import pyramid_images, write_pyramid_tiff, write_pyramid_zarr

H, W, LEVELS = 256, 320, 4


def _image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((h, w, 3)), (2, 2, 0))
    x = (x - x.min()) / (x.max() - x.min())
    # Sharp structure too: a dark bar and a coloured square.
    x[40:60, 30:200] = 0.05
    x[150:220, 200:260] = [0.9, 0.2, 0.4]
    return (x * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pyr(tmp_path_factory):
    d = tmp_path_factory.mktemp("pyr")
    img = _image()
    paths = {
        "tiff": write_pyramid_tiff(d / "raw.tiff", img, levels=LEVELS, tile=64,
                                   compression="none", mpp=0.5),
        "jpeg": write_pyramid_tiff(d / "jpeg.tiff", img, levels=LEVELS, tile=64,
                                   compression="jpeg", quality=95, mpp=0.5),
        "zarr": write_pyramid_zarr(d / "img.ome.zarr", img, levels=LEVELS, chunk=64, mpp=0.5),
    }
    return img, paths


def _locs(n: int = 40, seed: int = 1, lim: float = 1.15) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.uniform(-lim, lim, (n, 2)), dtype=torch.float32)


SPECS = [RetinaSpec(16, 3, 2.0, 1.0), RetinaSpec(12, 4, 2.0, 1.37), RetinaSpec(8, 2, 3.0, 0.8)]


def test_array_source_is_the_retina(pyr):
    img, _ = pyr
    src = ArraySource(img)
    loc = _locs()
    for spec in SPECS:
        ref = glimpse(torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255)
                      .expand(len(loc), -1, -1, -1), loc, spec, fill=1.0)
        got = src.glimpse(loc, spec)
        assert got.shape == (len(loc), spec.scales, 3, spec.patch, spec.patch)
        assert got.dtype == torch.float32
        assert torch.equal(got, ref.float())


def test_backends_agree_lossless(pyr):
    img, paths = pyr
    loc = _locs()
    mem = ArraySource(img)
    tif, zar = open_source(paths["tiff"]), open_source(paths["zarr"])
    assert isinstance(tif, OpenSlideSource) and isinstance(zar, ZarrSource)
    assert tif.level_count == zar.level_count == LEVELS
    for spec in SPECS:
        a, b, c = mem.glimpse(loc, spec), tif.glimpse(loc, spec), zar.glimpse(loc, spec)
        # Stored levels are rounded to uint8: half a grey level per level at most.
        assert (a - b).abs().max() <= 2.0 / 255
        assert (a - c).abs().max() <= 2.0 / 255
        assert torch.equal(b, c)  # same stored pixels, same arithmetic
        assert float(b.min()) >= -1e-6 and float(b.max()) <= 1 + 1e-6


def test_backends_agree_jpeg(pyr):
    img, paths = pyr
    loc = _locs(seed=2, lim=0.9)
    spec = SPECS[0]
    a = ArraySource(img).glimpse(loc, spec)
    j = open_source(paths["jpeg"]).glimpse(loc, spec)
    assert (a - j).abs().mean() < 0.04
    assert (a - j).abs().max() < 0.35
    # ...and the comparison can fail: a different image is far off.
    other = ArraySource(_image(seed=5)).glimpse(loc, spec)
    assert (other - j).abs().mean() > 0.08


def test_level_choice_and_region_size(pyr, regions_read):
    _, paths = pyr
    src = open_source(paths["zarr"])
    seen = regions_read(src)
    spec = RetinaSpec(8, 4, 2.0, 1.0)  # factors 1, 2, 4, 8
    src.glimpse(_locs(5), spec)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    # Each region is the window's span: ~g + 2 level pixels at factor 1, never the whole level.
    assert all(w <= 2 * spec.patch + 3 and h <= 2 * spec.patch + 3 for _, w, h in seen)
    seen.clear()
    spec = RetinaSpec(8, 3, 3.0, 1.5)  # factors 1.5, 4.5, 13.5 -> levels 0, 2, 3
    src.glimpse(_locs(5), spec)
    assert [s[0] for s in seen] == [choose_level(spec.pixel_factor(j), [1, 2, 4, 8])
                                    for j in range(3)] == [0, 2, 3]


def test_cost_does_not_grow_with_slide(tmp_path, monkeypatch, regions_read):
    sizes = {}
    for n in (128, 512):
        p = write_pyramid_zarr(tmp_path / f"s{n}.zarr", _image(h=n, w=n), levels=3, chunk=64)
        src = open_source(p)
        seen = regions_read(src)
        src.glimpse(_locs(3), RetinaSpec(8, 3, 2.0, 1.0))
        monkeypatch.undo()
        sizes[n] = [w * h for _, w, h in seen]
    assert sizes[128] == sizes[512]


@pytest.mark.parametrize("kind", ["tiff", "zarr", "memory"])
def test_outside_is_white(pyr, kind):
    img, paths = pyr
    src = ArraySource(img) if kind == "memory" else open_source(paths[kind])
    spec = RetinaSpec(16, 3, 2.0, 1.0)
    far = src.glimpse(torch.tensor([[5.0, 5.0], [-3.0, 0.0]]), spec)
    assert torch.allclose(far, torch.ones_like(far), atol=1e-6)
    # Centre on the top-left corner: the top-left quarter of every patch is outside.
    g = src.glimpse(torch.tensor([[-1.0, -1.0]]), spec)[0]
    for j in range(3):
        q = g[j, :, : spec.patch // 2 - 1, : spec.patch // 2 - 1]
        assert torch.allclose(q, torch.ones_like(q), atol=1e-6)
        inside = g[j, :, spec.patch // 2 + 1:, spec.patch // 2 + 1:]
        assert float(inside.mean()) < 0.99  # ...and the inside is the image, not white


def test_composite_over_white():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 100, 200, 128]]], np.uint8)
    out = composite_over_white(rgba)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    a = 128 / 255
    exp = np.round(np.array([0, 100, 200]) * a + 255 * (1 - a))
    assert np.abs(out[0, 2].astype(int) - exp).max() <= 1


def test_openslide_transparent_outside_reads_white(pyr):
    _, paths = pyr
    src = open_source(paths["tiff"])
    rgba = src.read_level0_rgba(W - 8, H - 8, 16, 16)
    assert rgba[..., 3].min() == 0  # OpenSlide says: transparent outside
    reg = src.read_region(0, W - 8, H - 8, 16, 16)
    assert (reg[:, 8:, :] == 255).all() and (reg[:, :, 8:] == 255).all()
    assert (reg[:, :8, :8] != 255).any()


def test_non_integer_downsamples_zarr(tmp_path):
    """A store whose levels have odd sizes: downsamples come from the scale metadata."""
    import zarr

    from ram_wsi.slide.ngff import create_level_array

    img = _image(h=250, w=300)
    dims = [(300, 250), (150, 125), (75, 62), (37, 31)]
    lv = [img]
    from PIL import Image

    for w, h in dims[1:]:
        lv.append(np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BOX)))
    p = tmp_path / "odd.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    datasets = []
    for i, a in enumerate(lv):
        create_level_array(g, i, a.shape[1], a.shape[0], 32)[:] = a.transpose(2, 0, 1)
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.25 * 250 / a.shape[0], 0.25 * 300 / a.shape[1]]}]})
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space",
                                                     "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}], "datasets": datasets}]}
    src = ZarrSource(p)
    assert src.mpp == pytest.approx(0.25)
    assert src.axis_downsamples[2] == pytest.approx((4.0, 250 / 62))
    assert src.level_downsamples[3] == pytest.approx(0.5 * (300 / 37 + 250 / 31))
    spec = RetinaSpec(8, 2, 4.05, 1.0)  # factor 4.05: level 2 (4.016 mean) serves it
    loc = _locs(10, lim=0.8)
    got = src.glimpse(loc, spec)
    # Reference: the same geometry computed on the whole level in memory.
    ref = []
    px = (loc.double() + 1) / 2 * torch.tensor([300.0, 250.0], dtype=torch.float64)
    for j, lvl in enumerate([0, 2]):
        dx, dy = 300 / dims[lvl][0], 250 / dims[lvl][1]
        f, half = spec.pixel_factor(j), 0.5 * spec.window(j)
        full = torch.from_numpy(np.array(lv[lvl])).permute(2, 0, 1)[None].float() / 255
        ref.append(resample(full, (px[:, 0] - half) / dx, (px[:, 1] - half) / dy, f / dx, f / dy,
                            spec.patch, fill=1.0, index=torch.zeros(len(loc), dtype=torch.long)))
    ref = torch.stack(ref, 1)
    assert (got - ref).abs().max() < 1e-4


def test_units_um(pyr):
    img, paths = pyr
    src = open_source(paths["zarr"])
    assert src.mpp == pytest.approx(0.5) and src.metadata["physical_units"] is True
    loc = _locs(6)
    a = src.glimpse(loc, RetinaSpec(8, 2, 2.0, 1.0), units="um")  # 1 um = 2 px
    b = src.glimpse(loc, RetinaSpec(8, 2, 2.0, 2.0), units="px")
    assert torch.equal(a, b)
    mem = ArraySource(img)
    assert mem.metadata["physical_units"] is False
    with pytest.raises(SlideError, match="no mpp"):
        mem.glimpse(loc, RetinaSpec(8, 2, 2.0, 1.0), units="um")


@pytest.mark.parametrize("kind", ["tiff", "zarr", "memory"])
def test_pickle_round_trip(pyr, kind):
    img, paths = pyr
    src = ArraySource(img, mpp=0.5) if kind == "memory" else open_source(paths[kind])
    blob = pickle.dumps(src)
    if kind != "memory":
        assert len(blob) < 1000  # path + settings, not pixels or handles
    back = pickle.loads(blob)
    if kind != "memory":
        assert back._info is None  # nothing opened until used
    loc = _locs(8)
    assert torch.equal(back.glimpse(loc, SPECS[1]), src.glimpse(loc, SPECS[1]))
    assert back.path == src.path and back.mpp == src.mpp


@pytest.mark.parametrize("kind", ["tiff", "zarr"])
def test_thread_safety_under_eviction(pyr, kind):
    _, paths = pyr
    settings = slide_cache.cache_settings()
    try:
        slide_cache.set_cache_bytes(block_bytes=64 * 64 * 3 * 6)  # a handful of blocks
        slide_cache.set_max_open(1)
        srcs = [open_source(paths[kind]), open_source(paths["tiff" if kind == "zarr" else "zarr"])]
        spec = SPECS[0]
        locs = [_locs(16, seed=s) for s in range(24)]
        serial = [srcs[i % 2].glimpse(locs[i], spec) for i in range(24)]
        with ThreadPoolExecutor(4) as ex:
            par = list(ex.map(lambda i: srcs[i % 2].glimpse(locs[i], spec), range(24)))
        for a, b in zip(serial, par):
            assert torch.equal(a, b)
        assert slide_cache.block_cache().nbytes <= 64 * 64 * 3 * 6
        assert len(slide_cache.handle_pool()) <= 1
    finally:
        slide_cache.set_cache_bytes(block_bytes=settings["block_bytes"])
        slide_cache.set_max_open(settings["max_open"])


def test_handle_pool_bounds_open_files(tmp_path):
    settings = slide_cache.cache_settings()
    try:
        slide_cache.set_max_open(3)
        srcs = []
        for i in range(8):
            p = write_pyramid_zarr(tmp_path / f"{i}.zarr", _image(seed=i, h=64, w=64), levels=2,
                                   chunk=32)
            srcs.append(open_source(p))
            srcs[-1].glimpse(_locs(2), RetinaSpec(8, 2, 2.0, 1.0))
        assert len(slide_cache.handle_pool()) <= 3
        # Evicted sources reopen lazily and still read their own pixels.
        a = srcs[0].glimpse(_locs(2), RetinaSpec(8, 1, 2.0, 1.0))
        b = ArraySource(_image(seed=0, h=64, w=64)).glimpse(_locs(2), RetinaSpec(8, 1, 2.0, 1.0))
        assert (a - b).abs().max() < 2 / 255
    finally:
        slide_cache.set_max_open(settings["max_open"])


def test_pyramid_images_match_build_pyramid():
    img = _image(h=64, w=96)
    lv = pyramid_images(img, 3)
    assert [x.shape for x in lv] == [(64, 96, 3), (32, 48, 3), (16, 24, 3)]
    m = img.astype(np.float64).reshape(16, 4, 24, 4, 3).mean((1, 3))
    assert np.abs(lv[2] - m).max() <= 0.5 + 1e-9


def test_metadata_is_plain_json(pyr):
    _, paths = pyr
    for k in ("tiff", "zarr"):
        md = open_source(paths[k]).metadata
        json.dumps(md)
        assert md["dimensions"] == [W, H] and md["mpp"] == pytest.approx(0.5)


def test_non_integer_downsamples_openslide(tmp_path, levels_tiff):
    """Levels 3.0002x and 9.88x (odd sizes). OpenSlide paints a non-integer level from a
    sub-pixel position (level pixel X is requested at level-0 round(X * d)) and interpolates
    there; the reader corrects the position, what remains is that interpolation's blur (at most
    1/6 px here): a few grey levels on average, far below half a pixel's misplacement."""
    p = tmp_path / "odd.tiff"
    levels = levels_tiff(p, _image(h=800, w=1000), [(333, 266), (101, 81)])
    src = open_source(p)
    assert src.level_downsamples[1] == pytest.approx(0.5 * (1000 / 333 + 800 / 266))
    loc = _locs(60, seed=4, lim=0.9)
    px = (loc.double() + 1) / 2 * torch.tensor([1000.0, 800.0], dtype=torch.float64)
    for lvl, f in ((1, 3.01), (2, 10.0)):
        spec = RetinaSpec(16, 1, 2.0, f)
        assert choose_level(f, src.level_downsamples) == lvl
        got = src.glimpse(loc, spec)[:, 0]
        lv = levels[lvl]
        dx, dy = 1000 / lv.shape[1], 800 / lv.shape[0]
        half = 0.5 * spec.window(0)
        full = torch.from_numpy(np.array(lv)).permute(2, 0, 1)[None].float() / 255
        idx = torch.zeros(len(loc), dtype=torch.long)
        ref = resample(full, (px[:, 0] - half) / dx, (px[:, 1] - half) / dy, f / dx, f / dy, 16,
                       fill=1.0, index=idx)
        err = (got - ref).abs()
        off = resample(full, (px[:, 0] - half) / dx + 0.5, (px[:, 1] - half) / dy, f / dx,
                       f / dy, 16, fill=1.0, index=idx)
        assert float(err.max()) < 0.08 and float(err.mean()) < 8e-3
        assert float((got - off).abs().mean()) > 3 * float(err.mean()) + 2e-3


def test_zarr_fast_chunk_path_equals_zarr_reads(tmp_path, monkeypatch):
    """Chunks decoded directly (the fast path) equal zarr's own reads: ragged edge chunks,
    missing (white) chunks, and another axis order (y, x, c)."""
    import zarr

    from ram_wsi.slide import _zarr_decode

    img = _image(h=90, w=100)
    img[:40, :40] = 255  # a white chunk: not stored
    p = write_pyramid_zarr(tmp_path / "f.zarr", img, levels=2, chunk=32)
    assert not (p / "0" / "c" / "0" / "0" / "0").exists()
    # The same image stored (y, x, c).
    q = tmp_path / "yxc.zarr"
    g = zarr.open_group(str(q), mode="w", zarr_format=3)
    for i, lv in enumerate(pyramid_images(img, 2)):
        g.create_array(str(i), shape=lv.shape, chunks=(32, 32, 3), dtype="uint8",
                       fill_value=255)[:] = lv
    ms = json.loads((p / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    ms["axes"] = [ms["axes"][1], ms["axes"][2], ms["axes"][0]]
    for d in ms["datasets"]:
        s = d["coordinateTransformations"][0]["scale"]
        d["coordinateTransformations"][0]["scale"] = [s[1], s[2], s[0]]
    g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    loc, spec = _locs(30), RetinaSpec(8, 2, 2.0, 1.0)
    fast = [ZarrSource(p).glimpse(loc, spec), ZarrSource(q).glimpse(loc, spec)]
    with ZarrSource(p)._handle() as hd:
        assert hd["fast"][0] is not None
    slide_cache.clear_caches()
    monkeypatch.setattr(_zarr_decode, "fast_reader", lambda *a: None)
    slow = [ZarrSource(p).glimpse(loc, spec), ZarrSource(q).glimpse(loc, spec)]
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
    assert torch.equal(fast[0], fast[1])
    assert (fast[0] - ArraySource(img).glimpse(loc, spec)).abs().max() <= 2 / 255
    slide_cache.clear_caches()


def test_rewritten_file_is_not_served_from_stale_cache(tmp_path):
    import os

    p = tmp_path / "r.zarr"
    write_pyramid_zarr(p, np.zeros((64, 64, 3), np.uint8), levels=1, chunk=32)
    loc, spec = torch.zeros(1, 2), RetinaSpec(8, 1, 2.0, 1.0)
    assert float(open_source(p).glimpse(loc, spec).max()) == 0.0
    write_pyramid_zarr(p, np.full((64, 64, 3), 200, np.uint8), levels=1, chunk=32)
    os.utime(p / "zarr.json", (1e9, 1e9))  # a different mtime even on coarse clocks
    assert float(open_source(p).glimpse(loc, spec).min()) == pytest.approx(200 / 255)


def test_window_larger_than_slide_reads_only_the_slide(tmp_path, regions_read):
    img = _image(h=24, w=20)
    p = write_pyramid_zarr(tmp_path / "tiny.zarr", img, levels=1, chunk=16)
    src = open_source(p)
    seen = regions_read(src)
    spec = RetinaSpec(16, 3, 4.0, 1.0)  # windows of 16, 64 and 256 px over a 20x24 slide
    loc = torch.tensor([[0.0, 0.0], [0.9, -0.7]])
    got = src.glimpse(loc, spec)
    assert all(w <= 20 and h <= 24 for _, w, h in seen)
    # The coarse scales read the levels the source built (a single-level slide costs what a
    # pyramid costs): the same glimpses as the in-memory retina's pyramid, up to the rounding
    # of each built level to uint8 (half a grey level per level).
    assert src.read_levels.dims[1:] == [(10, 12), (5, 6), (3, 3), (2, 2), (1, 1)]
    want = ArraySource(img).glimpse(loc, spec)
    assert (got - want).abs().max() <= 2.5 / 255
    # The finest scale is level 0 itself: the whole-resolution resample, exactly.
    full = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    px = (loc.double() + 1) / 2 * torch.tensor([20.0, 24.0], dtype=torch.float64)
    ref = resample(full, px[:, 0] - 8, px[:, 1] - 8, 1.0, 1.0, 16, fill=1.0,
                   index=torch.zeros(2, dtype=torch.long))
    assert (got[:, 0] - ref).abs().max() < 1e-5
    assert float(got[:, 2].mean()) > 0.9  # mostly white: the slide is a speck in that window


def _child_glimpse(args):
    src, loc, spec = args
    from ram_wsi.slide import cache as c

    # The child starts with empty caches and no handles of its parent.
    assert len(c.handle_pool()) == 0 and c.block_cache().nbytes == 0
    return src.glimpse(loc, spec).numpy()


def test_sources_work_after_fork(pyr):
    import multiprocessing as mp

    _, paths = pyr
    loc, spec = _locs(6), SPECS[0]
    srcs = [open_source(paths["tiff"]), open_source(paths["zarr"])]
    want = [s.glimpse(loc, spec).numpy() for s in srcs]  # parent has open handles, warm cache
    pool = mp.get_context("fork").Pool(1, maxtasksperchild=1)  # a fresh child per task
    try:
        got = pool.map_async(_child_glimpse, [(s, loc, spec) for s in srcs]).get(timeout=60)
    finally:
        pool.terminate()
        pool.join()
    for a, b in zip(want, got):
        assert np.array_equal(a, b)
