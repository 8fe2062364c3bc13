"""Single-level slides cost what a pyramid costs (issue 26, section 6): the source builds the
coarse levels a one-level (or shallow) file lacks, once, 2x2-averaged into the block cache, so
that a coarse scale no longer decodes a level-0 area many times the slide; regions outside the
slide decode nothing; the counters count what was decoded, once.

And glimpses stay correct: a single-level file serves the same glimpses as a pyramidal file of
the same pixels (OpenSlide TIFF, OME-Zarr, a PNG) -- the built levels are the converter's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import (
    ArraySource,
    ImageSource,
    OpenSlideSource,
    ZarrSource,
    clear_caches,
    convert_to_ome_zarr,
    open_source,
    set_cache_bytes,
)
from ram_wsi.slide import cache as slide_cache
from ram_wsi.slide._levels import mean2x2
from ram_wsi.slide.synth import write_pyramid_zarr

SHARED = Path(__file__).parents[2].parent / "shared" / "data"
SLIDES = SHARED / "slides"
needs_shared = pytest.mark.skipif(not (SLIDES / "small.svs").exists(),
                                  reason="../shared/data is not here")
W, H = 512, 384
SPEC = RetinaSpec(8, 4, 4.0, 1.0)  # windows 8, 32, 128, 512 px: levels 0, 2, 4, 6


def _image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((h, w, 3)), (3, 3, 0))
    x = (x - x.min()) / (x.max() - x.min())
    x[40:70, 30:300] = 0.05  # sharp structure
    x[200:330, 350:480] = [0.9, 0.2, 0.4]
    return (x * 255).round().astype(np.uint8)


def _locs(n: int = 24, seed: int = 1, lim: float = 1.1) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).uniform(-lim, lim, (n, 2)),
                        dtype=torch.float32)


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_caches()
    yield
    clear_caches()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same pixels as a single-level tiled TIFF (OpenSlide), a PNG (plain image), a
    pyramidal TIFF whose levels are the 2x2 means of the ones below (levels 0-6), and the
    OME-Zarr ``convert`` writes from the single-level TIFF (down to one pixel)."""
    d = tmp_path_factory.mktemp("single")
    img = _image()
    single = d / "single.tiff"
    tifffile.imwrite(single, img, tile=(64, 64), photometric="rgb")
    png = d / "single.png"
    Image.fromarray(img).save(png)
    pyramid = d / "pyramid.tiff"
    with tifffile.TiffWriter(pyramid, bigtiff=True) as tw:  # OpenSlide: every level tiled
        level = img.transpose(2, 0, 1)
        for i in range(7):
            tw.write(level.transpose(1, 2, 0), tile=(64, 64), photometric="rgb",
                     subfiletype=0 if i == 0 else 1, metadata=None)
            level = mean2x2(level)
    zarr = d / "converted.ome.zarr"
    convert_to_ome_zarr(single, zarr, chunk=64, levels=10, workers=1)
    return img, {"single": single, "png": png, "pyramid": pyramid, "zarr": zarr}


def test_single_level_file_serves_a_pyramids_glimpses(files):
    img, p = files
    single, png = open_source(p["single"]), open_source(p["png"])
    pyramid, zarr = open_source(p["pyramid"]), open_source(p["zarr"])
    assert isinstance(single, OpenSlideSource) and single.level_count == 1
    assert isinstance(png, ImageSource) and isinstance(zarr, ZarrSource)
    assert isinstance(pyramid, OpenSlideSource) and pyramid.level_count == 7
    assert single.metadata["levels_built"] == 9  # 256x192 ... 1x1
    assert single.read_levels.dims[:7] == pyramid.level_dimensions
    assert single.read_levels.dims == zarr.level_dimensions
    loc = _locs()
    got = single.glimpse(loc, SPEC)
    # Bit for bit: the built levels are the pyramid's and the converter's.
    assert torch.equal(got, pyramid.glimpse(loc, SPEC))
    assert torch.equal(got, zarr.glimpse(loc, SPEC))
    assert torch.equal(got, png.glimpse(loc, SPEC))
    # And the in-memory retina's (float levels: up to the rounding of each level).
    assert float((got - ArraySource(img).glimpse(loc, SPEC)).abs().max()) <= 2.5 / 255
    # Thumbnails too: read from the built level as from the pyramid's.
    assert np.array_equal(single.thumbnail(128), pyramid.thumbnail(128))


@pytest.mark.parametrize("kind", ["single", "png"])
def test_a_decision_decodes_the_slide_once(files, kind):
    """Thumbnail, then a mean path and three rollouts of 4 glimpses: every pixel of the slide
    decoded once, never more; then nothing more (the built levels are cached)."""
    _, p = files
    src = open_source(p[kind])
    src.thumbnail(128)
    for _ in range(4):
        for i in range(4):
            src.glimpse(_locs(1, seed=i), SPEC)
    c = src.counters
    assert c["pixels_decoded"] == W * H
    assert 0 < c["bytes_read"] <= Path(p[kind]).stat().st_size
    before = src.counters
    src.glimpse(_locs(16, seed=9), SPEC)
    src.thumbnail(256)
    after = src.counters
    assert after["pixels_decoded"] == before["pixels_decoded"]
    assert after["blocks_decoded"] == before["blocks_decoded"]
    assert after["regions"] > before["regions"]


def test_coarse_scale_reads_a_built_level_not_level_0(files, regions_read):
    _, p = files
    src = open_source(p["single"])
    seen = regions_read(src)
    src.glimpse(_locs(3), SPEC)
    assert [s[0] for s in seen] == [0, 2, 4, 6]
    assert max(w * h for _, w, h in seen) <= (2 * SPEC.patch + 3) ** 2


def test_outside_the_slide_decodes_nothing(files):
    _, p = files
    for kind in ("single", "png", "zarr"):
        clear_caches()
        src = open_source(p[kind])
        g = src.glimpse(torch.tensor([[9.0, 9.0], [-7.0, 8.0]]), SPEC)
        assert torch.all(g == 1.0)
        assert src.counters["pixels_decoded"] == 0 and src.counters["bytes_read"] == 0, kind


def test_built_levels_stay_within_the_block_cache(files):
    _, p = files
    loc = _locs(40, seed=3)
    want = open_source(p["png"]).glimpse(loc, SPEC)
    settings = slide_cache.cache_settings()
    try:
        set_cache_bytes(block_bytes=300_000)  # ~1.5 blocks of 256^2 RGB
        clear_caches()
        src = open_source(p["png"])
        assert torch.equal(src.glimpse(loc, SPEC), want)
        assert slide_cache.block_cache().nbytes <= 300_000
        assert src.counters["pixels_decoded"] >= W * H  # decoded again when evicted
    finally:
        set_cache_bytes(block_bytes=settings["block_bytes"])


def test_shallow_pyramid_builds_beyond_its_coarsest(tmp_path):
    """Two levels, the coarsest 512 x 384 (wider than a block): levels are built from it."""
    img = _image(768, 1024, seed=2)
    p = write_pyramid_zarr(tmp_path / "shallow.zarr", img, levels=2, chunk=128)
    src = open_source(p)
    lv = src.read_levels
    assert src.level_count == 2 and lv.files == 2 and lv.base == 1
    assert lv.dims[2:4] == [(256, 192), (128, 96)] and lv.downsamples[2:4] == [4.0, 8.0]
    spec = RetinaSpec(8, 4, 4.0, 1.0)  # factors 1, 4, 16, 64: levels 0, 2, 4, 6
    loc = _locs(30, seed=4)
    got = src.glimpse(loc, spec)
    assert float((got - ArraySource(img).glimpse(loc, spec)).abs().max()) <= 2.5 / 255
    # A deep pyramid builds nothing.
    deep = write_pyramid_zarr(tmp_path / "deep.zarr", img, levels=4, chunk=128)
    assert open_source(deep).metadata["levels_built"] == 0


@needs_shared
@pytest.mark.parametrize("name", ["small.svs", "boxes_0.dcm"])
def test_tiny_openslide_slides_count_their_own_pixels(name):
    """A 16 x 16 slide: 256 pixels decoded per decision, bytes no more than the file (it was
    22-46 MB, each read counting a 256^2 tile), and the needle retina's 1,536-px window reads a
    built level of one pixel rather than a 1,537-tap span of level 0."""
    src = open_source(SLIDES / name)
    spec = RetinaSpec(24, 4, 4.0, 1.0)
    src.thumbnail(512)
    for i in range(16):
        src.glimpse(_locs(1, seed=i), spec)
    c = src.counters
    assert c["pixels_decoded"] == 256 and c["blocks_decoded"] == 1
    assert c["bytes_read"] <= (SLIDES / name).stat().st_size
    plan = src._plan(spec, 1)
    assert max(g.first.region_w for g in plan) <= 16


@needs_shared
def test_glas_field_decoded_once():
    path = min((SHARED / "tissue" / "glas").glob("*.jpg"))
    src = open_source(path)
    w, h = src.dimensions
    src.thumbnail(512)
    for i in range(16):
        src.glimpse(_locs(1, seed=i), RetinaSpec(24, 4, 4.0, 1.0))
    assert src.counters["pixels_decoded"] == w * h
    assert src.counters["bytes_read"] == path.stat().st_size


# ----------------------------------------------------------------------------- tifffile tiles
def _jpeg_single(path: Path, img: np.ndarray) -> Path:
    from ram_wsi.slide.synth import write_pyramid_tiff

    return write_pyramid_tiff(path, img, levels=1, tile=64, compression="jpeg", quality=90)


@pytest.mark.parametrize("name", ["jpeg", "small.svs"])
def test_tiles_decoded_by_tifffile_are_openslides(tmp_path, name):
    """A one-level slide's base level is decoded from its tiles by tifffile (3x faster than
    OpenSlide's painting) only where that gives OpenSlide's pixels: checked on the first block,
    and here on the whole level."""
    import openslide

    from ram_wsi.slide.cache import handle_pool
    from ram_wsi.slide.openslide_source import composite_over_white

    if name == "jpeg":
        path = _jpeg_single(tmp_path / "one.tiff", _image())
    else:
        if not (SLIDES / name).exists():
            pytest.skip("../shared/data is not here")
        path = SLIDES / name
    src = open_source(path)
    w, h = src.dimensions
    got = src.read_region(0, 0, 0, w, h)  # through blocks: a one-level slide's base level
    with openslide.OpenSlide(str(path)) as s:
        want = composite_over_white(np.asarray(s.read_region((0, 0), 0, (w, h))))
    assert np.array_equal(got.transpose(1, 2, 0), want)
    tiles = handle_pool()._entries[(src._cache_key(), "tiles", 0)].handle
    assert tiles is not None and tiles.verified is True


def test_layouts_tifffile_would_decode_otherwise_read_through_openslide(tmp_path):
    from ram_wsi.slide._tiff_tiles import open_tiles

    grey = tmp_path / "grey.tiff"
    tifffile.imwrite(grey, _image()[..., 0], tile=(64, 64))
    assert open_tiles(str(grey), W, H) is None  # one sample: OpenSlide makes it RGB
    rgba = tmp_path / "rgba.tiff"
    tifffile.imwrite(rgba, np.dstack([_image(), np.full((H, W), 255, np.uint8)]),
                     tile=(64, 64), photometric="rgb", extrasamples=[2])
    assert open_tiles(str(rgba), W, H) is None  # alpha: OpenSlide composites it
    one = _jpeg_single(tmp_path / "one.tiff", _image())
    assert open_tiles(str(one), W + 1, H) is None  # no page of that level's size
    assert open_tiles(str(tmp_path), W, H) is None  # a directory (a DICOM slide's)
    if (SLIDES / "boxes_0.dcm").exists():
        assert open_tiles(str(SLIDES / "boxes_0.dcm"), 16, 16) is None


def test_truncated_single_level_slide_is_a_slide_error(tmp_path):
    """Tiles cut off the end of the file: tifffile's short read hands the block to OpenSlide,
    whose failure is the SlideError naming the file."""
    from ram_wsi.errors import SlideError

    one = _jpeg_single(tmp_path / "one.tiff", _image())
    data = one.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    try:
        src = open_source(cut)
    except SlideError as e:  # OpenSlide may refuse it at once: as good
        assert "cut.tiff" in str(e)
        return
    with pytest.raises(SlideError) as e:
        src.thumbnail(128)
    assert "cut.tiff" in str(e.value) and e.value.cause
