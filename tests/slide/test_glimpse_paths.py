"""The slide glimpse's execution paths give the same answer: scale groups merged or split by
batch size, the strided path against the dense one (also on OpenSlide levels read at a
sub-pixel offset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import _plan as slide_plan
from ram_wsi.slide import cache as slide_cache
from ram_wsi.slide import open_source
from ram_wsi.slide.synth import write_pyramid_zarr


def _image(seed: int, h: int, w: int) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((h, w, 3)), (1.5, 1.5, 0))
    x = (x - x.min()) / (x.max() - x.min())
    x[30:50, 20:300] = 0.05
    return (x * 255).round().astype(np.uint8)


@pytest.fixture(autouse=True)
def _fresh_caches():
    slide_cache.clear_caches()
    yield
    slide_cache.clear_caches()


def _locs(n: int, seed: int = 0, lim: float = 1.1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-lim, lim, (n, 2))


def test_big_batches_split_scale_groups_and_agree_with_single_glimpses(tmp_path):
    """A batch large enough to resample each scale on its own equals the same glimpses taken
    one at a time (scales merged into one call)."""
    src = open_source(write_pyramid_zarr(tmp_path / "a.zarr", _image(0, 400, 520), levels=4,
                                         chunk=64))
    spec = RetinaSpec(32, 3, 2.0, 1.0)
    locs = _locs(70)
    plan = src._plan(spec, len(locs))
    assert len(plan) == 3 and len(src._plan(spec, 1)) == 1  # split vs merged
    big = src.glimpse(locs, spec)
    one = torch.cat([src.glimpse(locs[i:i + 1], spec) for i in range(len(locs))])
    torch.testing.assert_close(big, one, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["zarr", "openslide_odd"])
def test_strided_path_equals_dense_path(tmp_path, levels_tiff, monkeypatch, kind):
    """The strided resample must equal the dense one on the same plan (resample's own
    integer check forced to 0). 'openslide_odd': levels of 1201x913 are 1.998x and 4.004x
    (non-integer), so OpenSlide regions start at sub-pixel offsets and are read with a margin,
    and treating factors 1.0008 / 0.9992 as 1 may move a window by 0.01 px at most."""
    from ram_wsi import retina

    if kind == "zarr":
        path = write_pyramid_zarr(tmp_path / "a.zarr", _image(1, 300, 410), levels=3, chunk=64)
    else:
        path = tmp_path / "odd.tiff"
        levels_tiff(path, _image(2, 913, 1201), [(601, 457), (300, 228)])
    spec = RetinaSpec(16, 3, 2.0, 1.0)
    locs = _locs(25, seed=3, lim=0.95)
    src = open_source(path)
    if kind != "zarr":
        assert not float(src.level_downsamples[1]).is_integer()
        z = np.zeros(1, np.int64)
        assert src._region_offsets(1, z + 77, z + 5) is not None
    fast = src.glimpse(locs, spec)
    assert all(p.int_factor for g in src._plan(spec, len(locs)) for p in g.scales)
    calls = []
    with monkeypatch.context() as m:  # same plan, dense arithmetic
        m.setattr(retina, "_exact_integer", lambda *a: calls.append(a) or 0)
        same_plan = open_source(path).glimpse(locs, spec)
    assert calls
    torch.testing.assert_close(fast, same_plan, atol=2e-5, rtol=0)
    monkeypatch.setattr(slide_plan, "integer_factor", lambda *a: 0)  # exact factors, dense
    dense_src = open_source(path)
    dense = dense_src.glimpse(locs, spec)
    assert not any(p.int_factor for g in dense_src._plan(spec, len(locs)) for p in g.scales)
    tol = 2e-5 if kind == "zarr" else 1e-2
    torch.testing.assert_close(fast, dense, atol=tol, rtol=0)
