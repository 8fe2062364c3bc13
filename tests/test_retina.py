"""The retina's definition: coordinates, area filtering, borders, batching, any scale factor."""

import numpy as np
import pytest
import torch

from ram_wsi.errors import ConfigError
from ram_wsi.retina import (
    RetinaSpec,
    build_pyramid,
    choose_level,
    glimpse,
    integer_factor,
    loc_to_pixels,
    resample,
    window_span,
)


def area_reference(img: np.ndarray, cx: float, cy: float, factor: float, g: int,
                   fill: float = 0.0) -> np.ndarray:
    """Independent reference: box average by exact rectangle/pixel overlap, pixel by pixel."""
    h, w = img.shape
    bw = max(factor, 1.0)
    out = np.zeros((g, g))
    x0, y0 = cx - g * factor / 2, cy - g * factor / 2
    for i in range(g):
        for j in range(g):
            ya, yb = y0 + (i + 0.5) * factor - bw / 2, y0 + (i + 0.5) * factor + bw / 2
            xa, xb = x0 + (j + 0.5) * factor - bw / 2, x0 + (j + 0.5) * factor + bw / 2
            acc = 0.0
            for py in range(int(np.floor(ya)), int(np.ceil(yb))):
                oy = min(yb, py + 1) - max(ya, py)
                for px in range(int(np.floor(xa)), int(np.ceil(xb))):
                    ox = min(xb, px + 1) - max(xa, px)
                    v = img[py, px] if 0 <= py < h and 0 <= px < w else fill
                    acc += max(oy, 0) * max(ox, 0) * v
            out[i, j] = acc / (bw * bw)
    return out


def test_first_scale_is_exact_area_sampling_on_non_square_image():
    rng = np.random.default_rng(0)
    img = rng.random((37, 53)).astype(np.float32)
    spec = RetinaSpec(patch=5, scales=1)
    loc = torch.tensor([[0.131, -0.407], [0.95, 0.9], [-1.0, -1.0]])
    out = glimpse(torch.from_numpy(img)[None, None].expand(3, 1, 37, 53), loc, spec)
    for b in range(3):
        cx, cy = loc_to_pixels(loc[b], 53, 37).tolist()
        ref = area_reference(img, cx, cy, 1.0, 5)
        np.testing.assert_allclose(out[b, 0, 0].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("factor", [1.0, 1.5, 2.0, 3.7, 4.016])
def test_resample_matches_area_reference_for_any_float_factor(factor):
    rng = np.random.default_rng(1)
    img = rng.random((40, 31)).astype(np.float32)
    g = 6
    cx, cy = 14.3, 22.8
    left = torch.tensor([cx - g * factor / 2])
    top = torch.tensor([cy - g * factor / 2])
    out = resample(torch.from_numpy(img)[None, None], left, top, factor, factor, g)
    np.testing.assert_allclose(out[0, 0].numpy(), area_reference(img, cx, cy, factor, g),
                               atol=1e-5)


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_integer_factor_strided_path_matches_area_reference(factor):
    """Windows with an integer factor starting inside the first pixel take the strided path
    (what slide levels use); it must equal the independent area reference and the dense path."""
    rng = np.random.default_rng(factor)
    g, n = 5, 4
    size = g * factor + 3
    img = rng.random((n, 1, size, size + 2)).astype(np.float32)
    fr = torch.from_numpy(rng.random((2, n)).astype(np.float32))
    fr[:, 0] = 0.0  # exactly on a pixel edge
    out = resample(torch.from_numpy(img), fr[0], fr[1], float(factor), float(factor), g)
    dense = resample(torch.from_numpy(img), fr[0], fr[1], float(factor), float(factor), g,
                     index=torch.arange(n))  # the index path never takes the strided one
    for b in range(n):
        cx = float(fr[0, b]) + g * factor / 2
        cy = float(fr[1, b]) + g * factor / 2
        ref = area_reference(img[b, 0], cx, cy, float(factor), g)
        np.testing.assert_allclose(out[b, 0].numpy(), ref, atol=1e-5)
    torch.testing.assert_close(out, dense, atol=1e-6, rtol=0)


def test_integer_factor_path_with_windows_anywhere_in_their_source(monkeypatch):
    """Corners beyond the first pixel (regions read with a margin, at sub-pixel offsets): one
    strided call per distinct integer offset, equal to the dense path."""
    from ram_wsi import retina

    calls = []
    real = retina._resample_integer_shifted
    monkeypatch.setattr(retina, "_resample_integer_shifted",
                        lambda *a: calls.append(a) or real(*a))
    rng = np.random.default_rng(7)
    n, g, f = 9, 6, 2
    src = torch.from_numpy(rng.random((n, 3, g * f + 4, g * f + 5)).astype(np.float32))
    left = torch.from_numpy(rng.uniform(0, 3, n).astype(np.float32))
    top = torch.from_numpy(rng.uniform(0, 2.5, n).astype(np.float32))
    got = resample(src, left, top, float(f), float(f), g, fill=1.0)
    dense = resample(src, left, top, float(f), float(f), g, fill=1.0, index=torch.arange(n))
    torch.testing.assert_close(got, dense, atol=1e-5, rtol=0)
    one = resample(src[:1], left[:1] + 1, top[:1], float(f), float(f), g, fill=1.0)
    torch.testing.assert_close(one, resample(src[:1], left[:1] + 1, top[:1], float(f), float(f),
                                             g, fill=1.0, index=torch.zeros(1, dtype=torch.long)),
                               atol=1e-5, rtol=0)
    assert len(calls) == 2  # the strided path served both


def test_integer_factor_tolerance():
    assert integer_factor(1.0, 1.0, 32) == 1
    assert integer_factor(4.0, 4.0, 32) == 4
    assert integer_factor(1.0 + 0.019 / 32, 1.0, 32) == 1  # drifts < 0.02 px over the patch
    assert integer_factor(4.0 / 4.016, 4.0 / 4.016, 32) == 0  # 0.13 px: not an integer
    assert integer_factor(1.5, 1.5, 8) == 0
    assert integer_factor(0.5, 0.5, 8) == 0
    assert integer_factor(2.0, 1.0, 8) == 0


def test_fill_value_outside_the_image():
    img = torch.full((1, 1, 20, 20), 0.25)
    left = torch.tensor([-30.0])
    out = resample(img, left, left, 1.0, 1.0, 4, fill=1.0)
    assert torch.allclose(out, torch.ones_like(out))
    spec = RetinaSpec(patch=4, scales=2)
    far = glimpse(img, torch.tensor([[5.0, 5.0]]), spec)
    assert far.abs().max() == 0
    # Half outside: the left half sees zeros, the right half the image.
    half = glimpse(img, torch.tensor([[-1.0, 0.0]]), RetinaSpec(patch=4, scales=1))[0, 0, 0]
    assert torch.allclose(half[:, :2], torch.zeros(4, 2))
    assert torch.allclose(half[:, 2:], torch.full((4, 2), 0.25))


def test_coordinates_top_left_corner_and_axes():
    img = torch.zeros(1, 1, 10, 20)
    img[0, 0, 0, 0] = 1.0  # top-left pixel
    img[0, 0, 9, 19] = 2.0  # bottom-right pixel
    spec = RetinaSpec(patch=1, scales=1)
    # Centre of pixel (0,0) is at x = -1 + 1/W, y = -1 + 1/H.
    tl = glimpse(img, torch.tensor([[-1 + 1 / 20, -1 + 1 / 10]]), spec)
    br = glimpse(img, torch.tensor([[1 - 1 / 20, 1 - 1 / 10]]), spec)
    assert float(tl) == pytest.approx(1.0)
    assert float(br) == pytest.approx(2.0)
    # x is horizontal: moving x one pixel right from the top-left lands on a zero pixel.
    right = glimpse(img, torch.tensor([[-1 + 3 / 20, -1 + 1 / 10]]), spec)
    assert float(right) == pytest.approx(0.0, abs=1e-5)


def test_batch_equals_one_by_one_and_no_crosstalk():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.rand(7, 2, 33, 45, generator=gen)
    loc = torch.rand(7, 2, generator=gen) * 2.4 - 1.2
    spec = RetinaSpec(patch=6, scales=3, scale_factor=1.8)
    batched = glimpse(imgs, loc, spec)
    assert batched.shape == (7, 3, 2, 6, 6)
    for i in range(7):
        single = glimpse(imgs[i:i + 1], loc[i:i + 1], spec)
        torch.testing.assert_close(batched[i:i + 1], single)


def test_wide_scales_are_anti_aliased():
    # A checkerboard of period 2 averages to 0.5 under a box of width 2^j >= 2; point sampling
    # (the aliasing bug) would give 0s and 1s.
    y, x = np.mgrid[0:64, 0:64]
    board = torch.from_numpy(((x + y) % 2).astype(np.float32))[None, None]
    spec = RetinaSpec(patch=8, scales=3, scale_factor=2.0)
    out = glimpse(board, torch.tensor([[0.0, 0.0]]), spec)
    for j in (1, 2):
        assert torch.allclose(out[0, j], torch.full_like(out[0, j], 0.5), atol=1e-5)


def test_pyramid_glimpse_close_to_direct_area_filter_on_smooth_image():
    y, x = np.mgrid[0:96, 0:80] / 12.0
    img = torch.from_numpy((0.5 + 0.5 * np.sin(x) * np.cos(y)).astype(np.float32))[None, None]
    spec = RetinaSpec(patch=8, scales=3, scale_factor=2.0)
    loc = torch.tensor([[0.1, -0.2]])
    out = glimpse(img, loc, spec)
    px = loc_to_pixels(loc, 80, 96)[0]
    for j in range(3):
        f = spec.pixel_factor(j)
        ref = area_reference(img[0, 0].numpy(), float(px[0]), float(px[1]), f, 8)
        assert np.abs(out[0, j, 0].numpy() - ref).max() < 0.03


def test_pyramid_is_reusable_and_equal_to_fresh_build():
    imgs = torch.rand(3, 1, 30, 30)
    spec = RetinaSpec(12, 3, 2.0)
    pyr = build_pyramid(imgs, spec)
    loc = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-0.9, 0.9]])
    torch.testing.assert_close(glimpse(pyr, loc, spec), glimpse(imgs, loc, spec))
    assert pyr.shapes[-1] == (8, 8)  # padded to a multiple of 4, exact 2x2 means


def test_choose_level_and_window_span():
    downs = [1.0, 2.0, 4.016, 8.086]
    assert choose_level(1.0, downs) == 0
    assert choose_level(3.9, downs) == 1
    assert choose_level(4.0, downs) == 2  # 4.016 is within the tolerance of a 4x patch
    assert choose_level(100.0, downs) == 3
    first, count = window_span(np.array([10.25]), 2.0, 4)
    assert first[0] == 10 and count >= 8


def test_spec_validation():
    with pytest.raises(ConfigError, match="retina.scale_factor"):
        RetinaSpec(scale_factor=0.5)
    with pytest.raises(ConfigError, match="retina.patch"):
        RetinaSpec(patch=0)
    with pytest.raises(ConfigError, match="larger than"):
        RetinaSpec(patch=30).check_fits(28, 28)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    imgs = torch.rand(16, 1, 60, 60)
    loc = torch.rand(16, 2) * 2 - 1
    spec = RetinaSpec(12, 3, 2.0)
    torch.testing.assert_close(glimpse(imgs.cuda(), loc.cuda(), spec).cpu(),
                               glimpse(imgs, loc, spec), atol=1e-5, rtol=1e-5)
