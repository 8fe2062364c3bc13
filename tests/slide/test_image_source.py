"""Plain images (PNG, JPEG, stripped TIFF) open as one-level slides, as ImageSlide does."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from ram_wsi.errors import SlideError
from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import ImageSource, open_source

SPEC = RetinaSpec(patch=16, scales=3, scale_factor=2.0, base=1.0)
LOCS = torch.tensor([[0.0, 0.0], [-0.9, 0.8], [0.5, -0.3], [1.0, 1.0]])


@pytest.fixture(scope="module")
def rgb():
    g = np.random.default_rng(0)
    return (g.random((300, 500, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a_stripped.tif"])
def test_plain_images_open_and_glimpse_like_memory(rgb, tmp_path, name):
    p = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(p, rgb)  # stripped, not tiled: OpenSlide refuses it
    else:
        Image.fromarray(rgb).save(p, quality=95)
    src = open_source(p)
    assert isinstance(src, ImageSource) and src.backend == "image"
    assert src.level_dimensions == [(500, 300)] and src.mpp is None
    pixels = np.asarray(Image.open(p).convert("RGB"))  # what the file decodes to
    # the reference: the same pixels as a one-level *tiled* TIFF, which OpenSlide reads
    ref = tmp_path / f"ref_{name}.tiff"
    tifffile.imwrite(ref, pixels, tile=(256, 256), photometric="rgb")
    want = open_source(ref)
    assert want.backend == "openslide" and want.level_count == 1
    assert torch.equal(src.glimpse(LOCS, SPEC), want.glimpse(LOCS, SPEC))
    assert src.counters["blocks_decoded"] == 1  # decoded once, then cached
    assert np.array_equal(src.thumbnail(500), pixels)


def test_alpha_is_white_and_dpi_gives_mpp(tmp_path):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 30:, 3] = 255  # left half transparent
    p = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(p, dpi=(50800, 50800))  # 0.5 um per pixel
    src = open_source(p)
    img = src.thumbnail(60)
    assert (img[:, :30] == 255).all() and (img[:, 30:] == [200, 0, 0]).all()
    assert src.mpp == pytest.approx(0.5)


def test_bad_plain_images_are_typed_errors(rgb, tmp_path):
    p = tmp_path / "cut.png"
    Image.fromarray(rgb).save(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(SlideError) as e:
        open_source(p)
    assert str(p) in str(e.value)
    txt = tmp_path / "notes.svs"
    txt.write_text("not a slide")
    with pytest.raises(SlideError, match="not a slide OpenSlide can open"):
        open_source(txt)
    with pytest.raises(SlideError, match="not a readable image"):
        ImageSource(txt)
