"""Tissue-mosaic slides on a few real H&E tiles of ../shared/data/tissue (skipped when absent):
the tile folder and its pools, stain normalisation, the scene's geometry and annotation, the
pyramid, and the procedural slide against its written TIFF and OME-Zarr files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_wsi.errors import DataError
from ram_wsi.retina import RetinaSpec
from ram_wsi.slide import open_source, write_synthetic_slide
from ram_wsi.slide.procedural import procedural_uri
from ram_wsi.slide.stain import SlideStain, reinhard, rgb_to_lab
from ram_wsi.slide.synth.cohort import tissue_slide_kwargs, write_tissue_cohort
from ram_wsi.slide.synth.mosaic import BLOCK, TissueScene
from ram_wsi.slide.tile_pool import TILE_CLASSES, open_pool, scan_tiles, split_tiles

TILES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tissue" / "crc_tiles"
needs_tiles = pytest.mark.skipif(not (TILES / "AC").is_dir(),
                                 reason="../shared/data/tissue/crc_tiles is not here")
PER_CLASS = 8  # tiles copied per class: 4 train, 1 val, 2 test (+1) after the split


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    """A small tile folder: the first PER_CLASS tiles of each class of the shared collection."""
    if not (TILES / "AC").is_dir():
        pytest.skip("../shared/data/tissue/crc_tiles is not here")
    out = tmp_path_factory.mktemp("tiles")
    for cls in TILE_CLASSES:
        (out / cls).mkdir()
        for p in sorted((TILES / cls).iterdir())[:PER_CLASS]:
            shutil.copy(p, out / cls / p.name)
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RAM_WSI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _scene(tiles: Path, label: int = 1, size: int = 4096, seed: int = 3, **kw) -> TissueScene:
    params = {"region_min_um": 400.0, "region_max_um": 600.0, "tissue_um": 1500.0, **kw}
    return TissueScene(size, size, seed=seed, label=label, tile=256, tiles=str(tiles),
                       pool=kw.pop("pool", "test"), mpp=0.5,
                       **{k: v for k, v in params.items() if k != "pool"})


# --- the tile folder ---------------------------------------------------------------------------

def test_pools_are_disjoint_cover_every_tile_and_follow_the_seed(tiles):
    files = scan_tiles(tiles)
    pools = split_tiles(files, seed=0)
    for cls in TILE_CLASSES:
        parts = [set(pools[p][cls]) for p in ("train", "val", "test")]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2]
                                   or parts[1] & parts[2])
        assert set().union(*parts) == set(files[cls])
    assert split_tiles(files, seed=0) == pools and split_tiles(files, seed=1) != pools
    test = open_pool(str(tiles), "test")
    train = open_pool(str(tiles), "train")
    assert not set(test.files) & set(train.files)
    assert test.levels[0].shape[1:] == (224, 224, 3) and test.levels[5].shape[1:] == (7, 7, 3)


def test_pool_levels_are_area_means_of_the_normalised_tile(tiles):
    pool = open_pool(str(tiles), "val")
    l0 = pool.levels[0][0].astype(np.float64)
    for lvl in (1, 3, 5):
        f = 2 ** lvl
        mean = l0.reshape(224 // f, f, 224 // f, f, 3).mean((1, 3))
        assert np.abs(mean - pool.levels[lvl][0]).max() <= 0.5 + 1e-9


def test_reinhard_sets_the_reference_statistics_and_the_stain_is_affine():
    rng = np.random.default_rng(0)
    tile = np.clip(rng.normal([150, 90, 140], 30, (64, 64, 3)), 0, 255).astype(np.uint8)
    lab = rgb_to_lab(reinhard(tile)).reshape(-1, 3)
    assert np.allclose(lab.mean(0), [59.2, 25.9, -11.0], atol=1.0)
    stain = SlideStain.draw(rng)
    a, b = rng.uniform(0, 255, (2, 10, 3))
    # An affine map commutes with averaging: the pyramid may stain before or after pooling.
    assert np.allclose(stain.apply((a + b) / 2), (stain.apply(a) + stain.apply(b)) / 2)


@pytest.mark.parametrize("breakage, match", [
    ("missing", "missing class folder"),
    ("empty", "empty file"),
    ("text", "not an image"),
    ("grey", "grey-scale"),
])
def test_bad_tile_folders_are_refused_naming_the_file(tiles, tmp_path, breakage, match):
    from PIL import Image

    bad = tmp_path / "bad"
    shutil.copytree(tiles, bad)
    if breakage == "missing":
        shutil.rmtree(bad / "T")
    else:
        target = bad / "H" / min(p.name for p in (bad / "H").iterdir())
        if breakage == "empty":
            target.write_bytes(b"")
        elif breakage == "text":
            target.write_text("not a tile")
        else:
            Image.new("L", (224, 224), 128).save(target, format="JPEG")
    with pytest.raises(DataError, match=match) as err:
        for pool in ("train", "val", "test"):
            open_pool(str(bad), pool)
    assert str(bad) in str(err.value)


def test_tiles_of_another_size_are_resized(tiles, tmp_path):
    from PIL import Image

    odd = tmp_path / "odd"
    shutil.copytree(tiles, odd)
    for p in (odd / "AC").iterdir():
        Image.open(p).resize((300, 256)).save(p)
    pool = open_pool(str(odd), "test")
    assert pool.levels[0].shape[1:] == (224, 224, 3)


# --- the scene ---------------------------------------------------------------------------------

@needs_tiles
@pytest.mark.parametrize("label", [0, 1])
def test_region_lies_in_tissue_and_its_annotation_matches_its_cells(tiles, label):
    for seed in range(4):
        scene = _scene(tiles, label=label, seed=seed, adenoma=1.0)
        meta = scene.meta(seed=seed, mpp=0.5)
        assert meta["region_class"] == ("AC" if label else meta["region_class"])
        assert meta["region_class"] in (("AC",) if label else ("S", "T", "V"))
        cells = np.array(meta["region_cells"])
        assert len(cells) > 0
        # every region cell's centre is on tissue
        centre = (cells + 0.5) * scene.cell
        assert all(scene.tissue_blocks(int(x // BLOCK), int(y // BLOCK), 1, 1)[0, 0]
                   for x, y in centre)
        # the bounding box holds every cell; the cells draw tiles of the region's class
        cx, cy = meta["target_center_px"]
        sx, sy = meta["target_size_px"]
        assert (np.abs(centre[:, 0] - cx) <= sx / 2).all()
        assert (np.abs(centre[:, 1] - cy) <= sy / 2).all()
        ids, _ = scene.cell_tiles(cells[:, 0], cells[:, 1])
        assert set(ids.tolist()) <= set(scene.pool.classes[meta["region_class"]].tolist())
        outside = np.array([[0, 0], [1, 0]])
        ids_out, _ = scene.cell_tiles(outside[:, 0], outside[:, 1])
        assert set(ids_out.tolist()) <= set(scene.pool.classes["H"].tolist())


@needs_tiles
def test_annotation_matches_pixels(tiles):
    """A region cell at level 0 shows its pool tile, turned and stained: the pixels of the
    annotated cell are those of the tile the annotation names."""
    scene = _scene(tiles, label=1, seed=5)
    meta = scene.meta(seed=5, mpp=0.5)
    cx, cy = meta["region_cells"][0]
    ids, var = scene.cell_tiles(np.array([cx]), np.array([cy]))
    x0, y0 = cx * scene.cell, cy * scene.cell
    drawn = scene._fine(0, x0, y0, scene.cell, scene.cell)
    from ram_wsi.slide.synth.mosaic import _dihedral

    want = scene.stain.apply(_dihedral(np.asarray(scene.pool.levels[0][ids]), var)[0])
    assert np.allclose(drawn, want)


@needs_tiles
def test_benign_slides_without_adenoma_have_no_region(tiles):
    scene = _scene(tiles, label=0, adenoma=0.0)
    meta = scene.meta(seed=3, mpp=0.5)
    assert meta["region_class"] is None and meta["region_cells"] == []
    assert "target_center_px" not in meta


@needs_tiles
def test_pyramid_levels_are_area_means_of_level_0(tiles):
    scene = _scene(tiles, label=1, size=4096)
    cx, cy = (int(v) // 512 for v in scene.meta(seed=3, mpp=0.5)["target_center_px"])
    l0 = np.concatenate([np.concatenate([scene.draw(0, 2 * cx + i, 2 * cy + j)
                                         for i in range(2)], 1) for j in range(2)], 0)
    l1 = scene.draw(1, cx, cy).astype(np.float64)
    diff = np.abs(l0.astype(np.float64).reshape(256, 2, 256, 2, 3).mean((1, 3)) - l1)
    assert diff.mean() < 0.6 and np.percentile(diff, 99) <= 2.5  # rounding, clipping
    # coarse levels (built from level 5) against 2x2 means of the level below
    for lvl in (5, 6):
        up = scene.draw(lvl - 1, 0, 0).astype(np.float64)[:256, :256]
        lo = scene.draw(lvl, 0, 0).astype(np.float64)[:128, :128]
        d = np.abs(up.reshape(128, 2, 128, 2, 3).mean((1, 3)) - lo)
        assert d.mean() < 0.6 and d.max() <= 3


@needs_tiles
def test_coarse_levels_compose_only_the_tissue_box_and_equal_the_full_mean(tiles):
    """Levels above 5 compose level 5 over the tissue's box only (glass elsewhere): the same
    pixels as the mean over every level-5 pixel, windows inside, across and outside the box."""
    scene = _scene(tiles, label=1, size=8192, tissue_um=1200.0)  # 2,400 px of tissue, glass around
    full5 = scene._fine(5, 0, 0, 256, 256)
    assert (full5 == 255).all(-1).mean() > 0.5  # mostly glass: the box matters
    for level, (x0, y0, w, h) in ((6, (0, 0, 128, 128)), (7, (0, 0, 64, 64)),
                                  (6, (40, 7, 33, 90)), (8, (0, 0, 32, 32)), (6, (0, 0, 5, 5))):
        k = 2 ** (level - 5)
        want = full5[y0 * k:(y0 + h) * k, x0 * k:(x0 + w) * k].reshape(h, k, w, k, 3).mean((1, 3))
        np.testing.assert_array_equal(scene._coarse(level, x0, y0, w, h), want)


@needs_tiles
def test_procedural_slide_and_its_files_give_the_same_glimpses(tiles, tmp_path):
    kw = tissue_slide_kwargs(tiles, region_um=(400, 600), tissue_um=1500)
    uri = procedural_uri("tissue", 4096, seed=7, label=1, pool="test", **kw)
    proc = open_source(uri)
    spec = RetinaSpec(16, 3, 4.0, 1.0)
    meta = proc.target
    centre = torch.tensor(meta["target_center_loc"])
    loc = (centre + torch.tensor(np.random.default_rng(0).uniform(-0.1, 0.1, (6, 2)))).float()
    want = proc.glimpse(loc, spec)
    for fmt, tol in (("zarr", 0.0), ("tiff", 0.03)):
        path = tmp_path / f"s.{fmt}"
        side = write_synthetic_slide(path, 4096, seed=7, label=1, kind="tissue", pool="test",
                                     fmt=fmt, mpp=0.5, **kw)
        assert side["region_cells"] == meta["region_cells"]
        got = open_source(path)
        assert got.mpp == (0.5, 0.5) or got.mpp == 0.5 or tuple(got.mpp) == (0.5, 0.5)
        err = (got.glimpse(loc, spec) - want).abs()
        assert err.mean() <= tol + 1e-6, (fmt, err.mean())
        assert json.loads(Path(str(path) + ".json").read_text())["kind"] == "tissue"


@needs_tiles
def test_cohort_manifest_splits_pools(tiles, tmp_path):
    kw = tissue_slide_kwargs(tiles, region_um=(400, 600), tissue_um=1500)
    m = write_tissue_cohort(tmp_path / "c", 2048, tiles, train=4, val=2, test=2, fmt="mixed",
                            scene=kw, log=lambda s: None)
    rows = [line.split(",") for line in m.read_text().splitlines()[1:]]
    assert [r[2] for r in rows] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    assert all("pool=val" in r[0] for r in rows if r[2] == "val")
    assert all("pool=" not in r[0] and "tile=64" in r[0] for r in rows if r[2] == "train")
    assert {r[1] for r in rows} == {"benign", "carcinoma"}
    assert (tmp_path / "c" / "test_000.tiff").is_file()
    assert (tmp_path / "c" / "test_001.tiff").is_file()


@needs_tiles
def test_on_target_reads_the_region_cells(tiles):
    from ram_wsi.data.slides import open_view

    kw = tissue_slide_kwargs(tiles, region_um=(400, 600), tissue_um=1500)
    view = open_view(procedural_uri("tissue", 4096, seed=7, label=1, pool="test", **kw))
    cells = np.array(view.target["region_cells"])
    inside = torch.tensor((cells + 0.5) * view.target["cell_px"], dtype=torch.float64)
    outside = torch.tensor([[5.0, 5.0], [4090.0, 4090.0]], dtype=torch.float64)
    px = torch.cat([inside, outside])
    loc = view.frame.from_slide(px / 4096 * 2 - 1)  # level-0 pixels -> frame locations
    hit = view.on_target(loc.float())
    assert hit[:len(cells)].all() and not hit[len(cells):].any()
    none = open_view(procedural_uri("tissue", 4096, seed=7, label=0, pool="test",
                                    **{**kw, "adenoma": 0.0}))
    assert none.on_target(loc.float()) is None
