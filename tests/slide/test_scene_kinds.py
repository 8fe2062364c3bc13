"""A scene kind is a Scene subclass: the pyramid writers and the level arithmetic serve any
scene that draws its tiles, with no code of its own (the interface documented in
ram_wsi.slide.synth.scene)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ram_wsi.slide import open_source
from ram_wsi.slide.synth import KINDS, SCENE_KINDS, make_scene, scene_parameters
from ram_wsi.slide.synth.pyramid import write_scene_tiff, write_scene_zarr
from ram_wsi.slide.synth.scene import Scene, level_count, level_shape


class Gradient(Scene):
    """The smallest scene kind: draw and meta only (every tile composed)."""

    kind = "gradient"
    class_names = ("dark", "light")

    def __init__(self, width: int, height: int, *, seed: int, label: int | None, tile: int,
                 data_dir: Any = None):
        super().__init__(width, height, tile)
        self.label = seed % 2 if label is None else int(label)

    def draw(self, level: int, tx: int, ty: int) -> np.ndarray:
        t, f = self.tile, 2**level
        x = (tx * t + np.arange(t)) * f
        y = (ty * t + np.arange(t)) * f
        v = ((x[None, :] + y[:, None]) * 255 // (self.w + self.h)).astype(np.uint8)
        out = np.stack([v, 255 - v, np.full_like(v, 40 + 160 * self.label)], axis=-1)
        return self.whiten_outside(out, level, tx, ty)


def _assembled(scene: Scene, level: int) -> np.ndarray:
    nx, ny = scene.tile_grid(level)
    rows = [np.concatenate([scene.tile_pixels(level, x, y) for x in range(nx)], axis=1)
            for y in range(ny)]
    lw, lh = scene.level_shape(level)
    return np.concatenate(rows, axis=0)[:lh, :lw]


@pytest.mark.parametrize("fmt", ["tiff", "zarr"])
def test_a_new_scene_kind_is_written_by_the_shared_writers(tmp_path, fmt):
    scene = Gradient(700, 300, seed=3, label=None, tile=64)
    assert scene.levels() == level_count(700, 300, 64) == 5
    assert [scene.level_shape(lv) for lv in range(2)] == [(700, 300), level_shape(700, 300, 1)]
    path = tmp_path / f"g.{fmt}"
    if fmt == "tiff":
        stats = write_scene_tiff(scene, path, compression="none", mpp=0.5)
    else:
        stats = write_scene_zarr(scene, path, mpp=0.5)
    assert stats["white"] == stats["tissue"] == 0 and stats["composed"] > 0
    src = open_source(path)
    assert src.level_count == scene.levels()
    for level in range(scene.levels()):
        lw, lh = scene.level_shape(level)
        got = src.read_region(level, 0, 0, lw, lh).transpose(1, 2, 0)
        assert np.array_equal(got, _assembled(scene, level))
    assert scene.meta(seed=3, mpp=0.5)["kind"] == "gradient"


def test_the_kinds_table_names_every_kind_and_its_parameters():
    assert KINDS == ("digit", "needle", "tissue") == tuple(SCENE_KINDS)
    assert scene_parameters() == {
        "target_size": None, "tissue_blobs": None, "lesion_size": 1024, "period": 8,
        "tiles": None, "pool": "train", "split_seed": 0, "region_min_um": 1000.0,
        "region_max_um": 3000.0, "adenoma": 0.5, "tissue_um": 20000.0}
    # A parameter of another kind is ignored (its default says nothing here); an unknown one
    # is refused.
    s = make_scene("digit", 512, 512, seed=0, label=3, tile=128, lesion_size=1024)
    assert s.kind == "digit" and s.label == 3
    with pytest.raises(ValueError, match="unknown scene parameter"):
        make_scene("needle", 512, 512, seed=0, label=0, tile=128, colour="red")
