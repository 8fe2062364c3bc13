"""OpenSlideSource reads regions directly: one OpenSlide read per region, one handle per level,
OpenSlide's own tile cache (never the package's block cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ram_wsi.errors import SlideError
from ram_wsi.retina import RetinaSpec, choose_level
from ram_wsi.slide import OpenSlideSource, _openslide_lowlevel, open_source, openslide_source
from ram_wsi.slide import cache as slide_cache
from ram_wsi.slide.openslide_source import composite_over_white
from ram_wsi.slide.synth import write_pyramid_tiff

W, H, LEVELS, TILE = 600, 456, 4, 64


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    img[100:140, 50:400] = (20, 30, 200)  # sharp structure
    return img


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("osr")
    return write_pyramid_tiff(d / "p.tiff", _image(), levels=LEVELS, tile=TILE,
                              compression="jpeg", quality=90)


@pytest.fixture(autouse=True)
def _fresh_caches():
    slide_cache.clear_caches()
    yield
    slide_cache.clear_caches()


def _whole_level(path, level: int) -> np.ndarray:
    """The whole level in one OpenSlide ``read_region``, composited over white."""
    import openslide

    s = openslide.OpenSlide(str(path))
    try:
        lw, lh = s.level_dimensions[level]
        return composite_over_white(np.asarray(s.read_region((0, 0), level, (lw, lh))))
    finally:
        s.close()


def _crop_white(full: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """``(3, h, w)`` crop of ``(lh, lw, 3)`` at ``(x, y)``, white outside."""
    lh, lw = full.shape[:2]
    out = np.full((h, w, 3), 255, np.uint8)
    xa, xb, ya, yb = max(x, 0), min(x + w, lw), max(y, 0), min(y + h, lh)
    if xa < xb and ya < yb:
        out[ya - y:yb - y, xa - x:xb - x] = full[ya:yb, xa:xb]
    return out.transpose(2, 0, 1)


def _corners(lw: int, lh: int, w: int, h: int, rng) -> tuple[np.ndarray, np.ndarray]:
    inside_x = rng.integers(0, max(1, lw - w), 12)
    inside_y = rng.integers(0, max(1, lh - h), 12)
    # partly outside on every side, at the corners, wholly outside, and a region larger than
    # the level itself
    px = [-5, lw - 7, 10, 10, -w + 1, lw - 1, -w - 3, lw + 2, 5, -20]
    py = [10, 10, -6, lh - 4, -h + 1, lh - 1, 3, 3, -h - 1, -20]
    return (np.array(list(inside_x) + px, np.int64), np.array(list(inside_y) + py, np.int64))


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "pil"])
def test_read_regions_equal_crops_of_the_whole_level(slide, raw, monkeypatch):
    if not raw:
        monkeypatch.setattr(_openslide_lowlevel, "_RAW", False)
    src = open_source(slide)
    assert isinstance(src, OpenSlideSource)
    assert src.level_downsamples == [1.0, 2.0, 4.0, 8.0]
    rng = np.random.default_rng(0)
    for level in range(LEVELS):
        full = _whole_level(slide, level)
        lw, lh = src.level_dimensions[level]
        assert full.shape == (lh, lw, 3)
        for w, h in ((33, 33), (17, 40), (lw + 12, lh + 9)):
            xs, ys = _corners(lw, lh, w, h, rng)
            got = src.read_regions(level, xs, ys, w, h)
            assert got.shape == (len(xs), 3, h, w) and got.dtype == np.uint8
            for i in range(len(xs)):
                exp = _crop_white(full, int(xs[i]), int(ys[i]), w, h)
                assert np.array_equal(got[i], exp), (level, w, h, xs[i], ys[i])
            # use_cache=False reads the same pixels
            assert np.array_equal(src.read_regions(level, xs, ys, w, h, use_cache=False), got)
    # the base class's one-region helper goes through the same path
    assert np.array_equal(src.read_region(1, -3, 4, 20, 20),
                          _crop_white(_whole_level(slide, 1), -3, 4, 20, 20))


def test_wholly_outside_regions_need_no_read(slide, monkeypatch):
    src = open_source(slide)
    calls = []
    real = _openslide_lowlevel.read_rgba
    monkeypatch.setattr(_openslide_lowlevel, "read_rgba",
                        lambda *a: calls.append(a) or real(*a))
    lw, lh = src.level_dimensions[1]
    got = src.read_regions(1, np.array([-40, lw, 3, 0]), np.array([0, 0, lh, -33]), 33, 33)
    assert (got == 255).all() and calls == []
    src.read_regions(1, np.array([0, 40, -10]), np.array([0, 40, 5]), 33, 33)
    assert len(calls) == 3  # one OpenSlide read per region


def _bilinear_at(lv: np.ndarray, x: float, y: float, w: int, h: int) -> np.ndarray:
    """``(h, w, 3)`` bilinear samples of ``lv`` at ``(x + i, y + j)`` (edge pixels repeated)."""
    xs, ys = x + np.arange(w), y + np.arange(h)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    tx, ty = (xs - x0)[None, :, None], (ys - y0)[:, None, None]
    f = lv.astype(np.float64)

    def at(yy, xx):
        return f[np.clip(yy, 0, lv.shape[0] - 1)][:, np.clip(xx, 0, lv.shape[1] - 1)]

    top = at(y0, x0) * (1 - tx) + at(y0, x0 + 1) * tx
    bot = at(y0 + 1, x0) * (1 - tx) + at(y0 + 1, x0 + 1) * tx
    return top * (1 - ty) + bot * ty


def test_non_integer_level_reads_where_region_offsets_say(tmp_path, levels_tiff, monkeypatch):
    """On a level with a non-integer downsample a region is one read that OpenSlide paints from
    level pixel X / d (interpolating): it equals the level sampled at (x, y) + _region_offsets
    (within 2 grey levels), not the exact crop; integer levels report no offset."""
    from PIL import Image

    img = np.asarray(Image.fromarray(_image(3)).resize((1200, 912), Image.Resampling.NEAREST))
    p = tmp_path / "odd.tiff"
    levels = levels_tiff(p, img, [(397, 301), (121, 92)])
    src = open_source(p)
    assert src._region_offsets(0, np.array([5]), np.array([7])) is None
    calls = []
    real = _openslide_lowlevel.read_rgba
    monkeypatch.setattr(_openslide_lowlevel, "read_rgba",
                        lambda *a: calls.append(a) or real(*a))
    rng = np.random.default_rng(0)
    for level in (1, 2):
        d = src.level_downsamples[level]
        assert not float(d).is_integer()
        lv = levels[level]
        xs = rng.integers(2, lv.shape[1] - 24, 25)
        ys = rng.integers(2, lv.shape[0] - 24, 25)
        calls.clear()
        got = src.read_regions(level, xs, ys, 21, 21).transpose(0, 2, 3, 1).astype(np.float64)
        assert len(calls) == len(xs)  # one read per region, whatever the tiles
        ex, ey = src._region_offsets(level, xs, ys)
        assert np.abs(ex).max() <= 0.5 / d + 1e-9 and np.abs(ex).max() > 0.02
        far_exact = 0.0
        for i in range(len(xs)):
            want = _bilinear_at(lv, xs[i] + ex[i], ys[i] + ey[i], 21, 21)
            assert np.abs(got[i] - want).max() <= 2.0, (level, xs[i], ys[i])
            crop = lv[ys[i]:ys[i] + 21, xs[i]:xs[i] + 21]
            far_exact = max(far_exact, float(np.abs(got[i] - crop).max()))
        assert far_exact > 5.0  # the offset is real: the exact crop is not what OpenSlide gives


def _levels_of(src, spec) -> list[int]:
    return sorted({choose_level(spec.pixel_factor(j), src.level_downsamples)
                   for j in range(spec.scales)})


def test_one_handle_per_level_and_close_drops_them(slide, monkeypatch):
    src = open_source(slide, shared_reads=0)  # every level its own handle from the first read
    spec = RetinaSpec(8, 3, 4.0, 1.0)
    levels = _levels_of(src, spec)
    assert levels == [0, 2, 3]
    used = []
    real = _openslide_lowlevel.read_rgba
    monkeypatch.setattr(_openslide_lowlevel, "read_rgba",
                        lambda s, x, y, level, w, h: used.append((id(s), level))
                        or real(s, x, y, level, w, h))
    loc = torch.tensor([[0.1, -0.2], [0.5, 0.4], [-0.9, 0.95]])
    src.glimpse(loc, spec)
    src.glimpse(loc[:1], spec)
    handle_of = {}
    for h, level in used:
        handle_of.setdefault(level, set()).add(h)
    assert sorted(handle_of) == levels
    assert all(len(v) == 1 for v in handle_of.values())  # each level: one handle
    assert len({next(iter(v)) for v in handle_of.values()}) == len(levels)  # all different
    pool = slide_cache.handle_pool()
    mine = [k for k in list(pool._entries) if k[0] == src._cache_key()]
    assert sorted(k[1] for k in mine) == levels  # metadata shares level 0's handle
    with src._handle(0) as h0, src._handle(2) as h2:
        assert h0 is not h2
        assert id(h2) in handle_of[2]
    src.close()
    assert not [k for k in list(pool._entries) if k[0] == src._cache_key()]
    # and the source still reads afterwards (handles reopen lazily)
    assert src.glimpse(loc, spec).shape == (3, 3, 3, 8, 8)


def test_a_level_shares_level_0s_handle_until_it_is_read_often(slide, monkeypatch):
    """One decision on a cold slide opens the file once; a level read on and on gets its own
    handle (no directory switches), after ``shared_reads`` reads."""
    src = open_source(slide, shared_reads=3)
    used = []
    real = _openslide_lowlevel.read_rgba
    monkeypatch.setattr(_openslide_lowlevel, "read_rgba",
                        lambda s, x, y, level, w, h: used.append((id(s), level))
                        or real(s, x, y, level, w, h))
    x, y = np.array([0]), np.array([0])
    first = src.read_regions(2, x, y, 8, 8)
    for _ in range(4):
        src.read_regions(0, x, y, 8, 8)
        src.read_regions(2, x, y, 8, 8)
    h0 = {h for h, lv in used if lv == 0}
    h2 = [h for h, lv in used if lv == 2]
    assert len(h0) == 1 and h2[:3] == [next(iter(h0))] * 3  # the first 3 reads: level 0's
    assert set(h2[3:]) and set(h2[3:]).isdisjoint(h0)  # then its own
    assert np.array_equal(src.read_regions(2, x, y, 8, 8), first)  # same pixels either way


def test_glimpse_uses_openslide_cache_not_block_cache(slide, monkeypatch):
    import openslide

    caches = []
    real_set = openslide.OpenSlide.set_cache
    monkeypatch.setattr(openslide.OpenSlide, "set_cache",
                        lambda self, c: caches.append(c) or real_set(self, c))
    src = open_source(slide, shared_reads=0)
    spec = RetinaSpec(16, 3, 4.0, 1.0)
    loc = torch.tensor([[0.1, -0.2], [0.5, 0.4], [-0.3, 0.0]])
    bc = slide_cache.block_cache()
    before = (len(bc), bc.hits, bc.misses, bc.nbytes)
    a = src.glimpse(loc, spec)
    b = src.glimpse(loc, spec)
    assert torch.equal(a, b)
    assert (len(bc), bc.hits, bc.misses, bc.nbytes) == before
    # every handle read through (one per level, each with OpenSlide's process-wide cache)
    assert len(caches) == len(_levels_of(src, spec))
    assert all(c is openslide_source.openslide_cache() for c in caches)


def test_read_error_names_file_and_level_and_drops_the_handle(slide, monkeypatch):
    import openslide

    src = open_source(slide, shared_reads=0)
    src.read_regions(2, np.array([0]), np.array([0]), 8, 8)
    key = (src._cache_key(), 2)
    assert key in slide_cache.handle_pool()._entries

    def boom(*a):
        raise openslide.OpenSlideError("TIFFReadEncodedTile failed")

    monkeypatch.setattr(_openslide_lowlevel, "read_rgba", boom)
    with pytest.raises(SlideError, match=r"level 2.*TIFFReadEncodedTile") as ei:
        src.read_regions(2, np.array([3]), np.array([4]), 8, 8)
    assert str(slide) in str(ei.value)
    assert key not in slide_cache.handle_pool()._entries
    monkeypatch.undo()
    assert src.read_regions(2, np.array([3]), np.array([4]), 8, 8).shape == (1, 3, 8, 8)
