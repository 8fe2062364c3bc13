"""The needle benchmark's conventional baselines on real generated slides (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ram_wsi.bench.needle_baselines import (
    MIN_LESION_OVERLAP,
    ThumbnailCNN,
    TileCNN,
    predict_thumbnails,
    score_dense,
    slide_thumbnails,
    tile_training_set,
    tissue_tiles,
    train_thumbnail_cnn,
    train_tile_cnn,
)
from ram_wsi.slide import open_source, write_synthetic_slide
from ram_wsi.slide.tissue import mask_from_rgb

MASK = 512  # tissue masks from 512 px thumbnails: the tests' slides are small


def _not_white(regions: np.ndarray) -> np.ndarray:
    """``(N,)`` fraction of each ``(N, 3, t, t)`` region's pixels that are not glass."""
    return ((255 - regions.min(1).astype(np.int32)) > 25).mean((1, 2))


def _box_overlap(corner, tile, ds, meta) -> float:
    """Overlap of a level tile with the target box, as a fraction of the tile (level 0)."""
    cx, cy = meta["target_center_px"]
    s = meta["target_size_px"]
    x0, y0 = corner[0] * ds, corner[1] * ds
    ix = max(0.0, min(x0 + tile * ds, cx + s / 2) - max(x0, cx - s / 2))
    iy = max(0.0, min(y0 + tile * ds, cy + s / 2) - max(y0, cy - s / 2))
    return ix * iy / (tile * ds) ** 2


@pytest.fixture(scope="module")
def slide4k(tmp_path_factory):
    path = tmp_path_factory.mktemp("needle4k") / "s.tiff"
    meta = write_synthetic_slide(path, 4096, seed=2, label=0)
    return open_source(path), meta


def test_tissue_tiles_on_a_slide(slide4k):
    src, meta = slide4k
    level, tile = 1, 128
    lw, lh = src.level_dimensions[level]
    ds = src.level_downsamples[level]
    corners = tissue_tiles(src, level, tile, mask_size=MASK)
    assert corners.ndim == 2 and corners.shape[1] == 2 and corners.dtype == np.int64
    assert 0 < len(corners) < (lw // tile) * (lh // tile)
    assert (corners % tile == 0).all()
    assert (corners >= 0).all() and (corners[:, 0] < lw).all() and (corners[:, 1] < lh).all()
    assert len(np.unique(corners, axis=0)) == len(corners)

    # Every grid tile, read: glass tiles are excluded, tissue-filled ones included, the kept
    # ones mostly on tissue.
    gx, gy = np.meshgrid(np.arange(0, lw, tile), np.arange(0, lh, tile))
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    frac = _not_white(src.read_regions(level, grid[:, 0], grid[:, 1], tile, tile))
    kept = {tuple(c) for c in corners.tolist()}
    is_kept = np.array([tuple(c) in kept for c in grid.tolist()])
    assert (frac[is_kept] > 0.1).all()
    assert not is_kept[frac == 0].any()
    assert (frac == 0).sum() > 0
    assert is_kept[frac > 0.95].all()
    assert frac[is_kept].mean() > 0.6

    cx, cy = meta["target_center_px"]
    lesion_tile = (int(cx / ds) // tile * tile, int(cy / ds) // tile * tile)
    assert lesion_tile in kept

    # A stricter threshold keeps a subset.
    strict = {tuple(c) for c in tissue_tiles(src, level, tile, min_tissue=0.9,
                                             mask_size=MASK).tolist()}
    assert strict and strict < kept


def test_tissue_tiles_maps_mask_by_area(slide4k):
    src, _ = slide4k
    # A coarse mask (each mask pixel spans 4 tiles of level 0 / tile 256): the left quarter.
    coarse = np.zeros((4, 4), bool)
    coarse[:, 0] = True
    c = tissue_tiles(src, 0, 256, mask=coarse)
    assert sorted(set(c[:, 0].tolist())) == [0, 256, 512, 768] and len(c) == 4 * 16
    # A fine mask whose tissue covers 1/4 of a tile's area passes min_tissue=0.25 but not 0.3.
    fine = np.zeros((64, 64), bool)
    fine[:8, :2] = True  # level-0 x < 128, y < 512: a quarter of the tile (0, 0) at level 2
    assert tissue_tiles(src, 2, 128, mask=fine).tolist() == [[0, 0]]
    assert len(tissue_tiles(src, 2, 128, mask=fine, min_tissue=0.3)) == 0


def test_tile_training_set_labels(slide4k):
    src, meta = slide4k
    level, tile = 1, 64
    ds = src.level_downsamples[level]
    tiles, labels = tile_training_set([src], [meta["label"]], [meta], level=level, tile=tile,
                                      per_slide_background=20, seed=3, mask_size=MASK)
    assert tiles.dtype == np.uint8 and tiles.shape[1:] == (3, tile, tile)
    assert labels.dtype == np.int64 and labels.shape == (len(tiles),)
    assert set(labels.tolist()) == {0, meta["label"] + 1}
    assert (labels == 0).sum() == 20
    # The lesion tiles are exactly the tissue tiles overlapping the target box enough.
    corners = tissue_tiles(src, level, tile, mask_size=MASK)
    ov = np.array([_box_overlap(c, tile, ds, meta) for c in corners])
    expect = corners[ov >= MIN_LESION_OVERLAP]
    assert (labels > 0).sum() == len(expect) > 0
    lesion_px = src.read_regions(level, expect[:, 0], expect[:, 1], tile, tile)
    np.testing.assert_array_equal(tiles[labels > 0], lesion_px)
    # Background tiles are tissue tiles that do not touch the target box.
    bg = tiles[labels == 0]
    free = corners[ov == 0]
    free_px = src.read_regions(level, free[:, 0], free[:, 1], tile, tile)
    for t in bg:
        assert (free_px == t).all((1, 2, 3)).any()
    # Seeded: same seed, same set; another seed, other background tiles.
    again = tile_training_set([src], [meta["label"]], [meta], level=level, tile=tile,
                              per_slide_background=20, seed=3, mask_size=MASK)
    np.testing.assert_array_equal(again[0], tiles)
    other = tile_training_set([src], [meta["label"]], [meta], level=level, tile=tile,
                              per_slide_background=20, seed=4, mask_size=MASK)
    assert not np.array_equal(other[0], tiles)


def test_dense_tiling_end_to_end(tmp_path):
    level, tile = 2, 64  # 2048^2 slides: the 256 px digit is 64 px at level 2
    train, held = [], []
    for i in range(14):
        label = i % 2
        meta = write_synthetic_slide(tmp_path / f"s{i}.tiff", 2048, seed=100 + i, label=label)
        (train if i < 12 else held).append((open_source(tmp_path / f"s{i}.tiff"), meta))
    tiles, labels = tile_training_set([s for s, _ in train], [m["label"] for _, m in train],
                                      [m for _, m in train], level=level, tile=tile,
                                      per_slide_background=16, seed=0, mask_size=MASK)
    assert set(labels.tolist()) == {0, 1, 2}
    model = train_tile_cnn(tiles, labels, classes=2, epochs=6, seed=0)
    assert isinstance(model, TileCNN) and not model.training
    out = model(torch.from_numpy(tiles[:5]))
    assert out.shape == (5, 3)

    for src, meta in held:
        r = score_dense(src, model, level=level, tile=tile, mask_size=MASK)
        probs = r["probs"]
        assert probs.shape == (2,) and np.all(probs >= 0) and abs(probs.sum() - 1) < 1e-9
        assert r["predicted"] == int(np.argmax(probs))
        assert r["seconds"] > 0 and r["tiles"] > 0

        # The counters match what reading the mask's thumbnail and those tiles implies: the
        # thumbnail, plus each block the tiles touch once (one batch here).
        probe = open_source(src.path)
        thumb = probe.thumbnail(MASK)
        thumb_px = probe.counters["pixels_decoded"]
        corners = tissue_tiles(src, level, tile, mask=mask_from_rgb(thumb)[0])
        assert len(corners) == r["tiles"]
        bw, bh = src.info.block_sizes[level]
        blocks = {(bx, by) for x, y in corners.tolist()
                  for bx in range(x // bw, (x + tile - 1) // bw + 1)
                  for by in range(y // bh, (y + tile - 1) // bh + 1)}
        assert r["pixels_decoded"] > 0
        assert r["pixels_decoded"] == thumb_px + len(blocks) * bw * bh
        assert r["pixels_decoded"] >= thumb_px + r["tiles"] * tile * tile
        assert r["pixels_requested"] == probe.counters["pixels_requested"] \
            + r["tiles"] * tile * tile
        assert r["bytes_read"] > 0

        # Small batches: the same decision; each batch boundary may split one block.
        small = score_dense(src, model, level=level, tile=tile, batch=8, mask_size=MASK)
        np.testing.assert_allclose(small["probs"], probs, atol=1e-6)
        assert small["tiles"] == r["tiles"]
        extra = small["pixels_decoded"] - r["pixels_decoded"]
        batches = -(-r["tiles"] // 8)
        assert 0 <= extra <= (batches - 1) * 4 * bw * bh


def _coloured(n: int, classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trivially separable images: class ``c`` is a noisy image tinted towards channel ``c``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.6 + 0.2 * torch.rand(n, 3, size, size, generator=g)
    x[torch.arange(n), y] -= 0.5
    return x.clamp(0, 1), y


def test_thumbnail_cnn_shapes_and_determinism(tmp_path):
    model = ThumbnailCNN(3)
    assert 10_000 < sum(p.numel() for p in model.parameters()) < 100_000
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    assert model(torch.rand(1, 3, 128, 128)).shape == (1, 3)
    u8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(model(u8), model(u8.float() / 255))

    x, y = _coloured(12, 3, 32, seed=0)
    state = torch.get_rng_state()
    a = train_thumbnail_cnn(x, y, classes=3, epochs=2, batch_size=4, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is neither used nor moved
    b = train_thumbnail_cnn(x, y, classes=3, epochs=2, batch_size=4, seed=5)
    c = train_thumbnail_cnn(x, y, classes=3, epochs=2, batch_size=4, seed=6)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    pa, pb = predict_thumbnails(a, x), predict_thumbnails(b, x)
    assert pa.shape == (12, 3)
    np.testing.assert_allclose(pa.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(pa, pb, atol=1e-6)

    # Thumbnails of real slides have the network's input layout.
    write_synthetic_slide(tmp_path / "t.tiff", 1024, seed=1, tissue_blobs=2)
    th = slide_thumbnails([open_source(tmp_path / "t.tiff")], size=64)
    assert th.shape == (1, 3, 64, 64) and th.dtype == np.uint8
    assert predict_thumbnails(a, th).shape == (1, 3)


def test_thumbnail_cnn_fits_a_separable_set():
    x, y = _coloured(24, 3, 32, seed=1)
    model = train_thumbnail_cnn(x, y, classes=3, epochs=30, batch_size=8, lr=3e-3, seed=0)
    pred = predict_thumbnails(model, x).argmax(1)
    assert (pred == y.numpy()).mean() == 1.0


def test_region_cells_give_exact_overlaps_and_no_region_gives_none(slide4k):
    """A tissue mosaic's lesion is its cells: a tile over one whole cell of a 2-cell region
    overlaps by the cell's share of the tile; a slide without a region has no lesion tiles."""
    from ram_wsi.bench.needle_baselines import _overlaps

    src = slide4k[0]
    target = {"region_cells": [[1, 1], [2, 1]], "cell_px": 100,
              "target_center_px": [200.0, 150.0], "target_size_px": [200, 100]}
    corners = np.array([[100, 100], [150, 100], [0, 0], [100, 150]])  # level 0, 100 px tiles
    ov = _overlaps(src, 0, 100, corners, target)
    assert np.allclose(ov, [1.0, 1.0, 0.0, 0.5])
    assert not _overlaps(src, 0, 100, corners, {"region_cells": []}).any()


def test_positive_pooling_reads_the_last_class():
    from ram_wsi.bench.needle_baselines import _pool

    s = np.array([0.9, 0.2])  # max p(adenoma tile), max p(carcinoma tile)
    assert np.allclose(_pool(s, "positive"), [0.8, 0.2])
    assert np.allclose(_pool(s, "ratio"), [0.9 / 1.1, 0.2 / 1.1])
    assert np.allclose(_pool(np.zeros(2), "positive"), [1.0, 0.0])
    with pytest.raises(ValueError):
        _pool(s, "mean")
