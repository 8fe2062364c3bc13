"""Per-slide outputs: QuPath GeoJSON of the path and glimpse boxes, the annotated thumbnail."""

import json
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from ram_wsi.config import ModelConfig
from ram_wsi.data.manifest import SlideRecord
from ram_wsi.data.slides import SlideSet
from ram_wsi.models import RecurrentAttentionModel
from ram_wsi.score import annotated_thumbnail, slide_geojson, write_geojson, write_png
from ram_wsi.slide import write_synthetic_slide
from ram_wsi.train.slide_eval import rollout_slides


@pytest.fixture(scope="module")
def row(tmp_path_factory):
    p = tmp_path_factory.mktemp("s") / "slide.tiff"
    write_synthetic_slide(p, 3000, seed=3, label=1, kind="needle", lesion_size=512)
    cfg = ModelConfig(glimpses=3, patch=16, scales=2, scale_factor=4.0, hidden=32,
                      glimpse_hidden=16, loc_hidden=16, glimpse_out=32, loc_std=0.5,
                      context="thumbnail", context_size=32, context_grid=4, context_channels=4)
    torch.manual_seed(0)
    model = RecurrentAttentionModel(cfg, channels=3, classes=2)
    slides = SlideSet([SlideRecord(str(p), 1, "test", "c", 2)], ["dots", "stripes"],
                      cfg.retina(), "px", context_size=32, previews=True)
    (r,) = rollout_slides(model, slides, samples=2, keep_glimpses=1)
    return r


def test_geojson_is_what_qupath_imports(row, tmp_path):
    fc = slide_geojson(row, ["dots", "stripes"])
    back = json.loads(write_geojson(tmp_path / "s.geojson", fc).read_text())
    assert back == fc and fc["type"] == "FeatureCollection"
    kinds = [f["properties"]["objectType"] for f in fc["features"]]
    assert kinds[0] == "annotation" and set(kinds[1:]) == {"detection"}
    w, h = row["dimensions"]
    n_boxes = 0
    for f in fc["features"]:
        assert f["type"] == "Feature" and str(uuid.UUID(f["id"])) == f["id"]
        assert "objectType" not in f  # QuPath reads it from properties only
        props = f["properties"]
        assert props["classification"]["name"] in ("dots", "stripes")
        col = props["classification"]["color"]
        assert len(col) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in col)
        assert all(isinstance(v, float) for v in props["measurements"].values())
        if f["geometry"]["type"] == "Polygon":
            n_boxes += 1
            ring = np.asarray(f["geometry"]["coordinates"][0])
            assert ring.shape == (5, 2) and np.array_equal(ring[0], ring[-1])
            assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= w
            assert ring[:, 1].min() >= 0 and ring[:, 1].max() <= h
    assert n_boxes == 3 * 2  # glimpses x scales (all inside the slide here)
    line = np.asarray(fc["features"][0]["geometry"]["coordinates"])
    assert np.allclose(line, row["path_px"])
    assert len({f["id"] for f in fc["features"]}) == len(fc["features"])
    assert slide_geojson(row, ["dots", "stripes"]) == fc  # same slide, same file


def test_boxes_are_clipped_to_the_slide(row):
    edge = {**row, "path_px": np.array([[0.0, 0.0], [row["dimensions"][0] + 1e6, 5.0]])}
    fc = slide_geojson(edge, ["dots", "stripes"])
    boxes = [f for f in fc["features"] if f["geometry"]["type"] == "Polygon"]
    assert len(boxes) == 2  # the corner glimpse's two scales; the one outside has none
    ring = np.asarray(boxes[0]["geometry"]["coordinates"][0])
    assert ring.min() == 0.0


def test_annotated_thumbnail_opens(row, tmp_path):
    img = annotated_thumbnail(row, ["dots", "stripes"], size=256)
    p = write_png(tmp_path / "t.png", img)
    with Image.open(p) as back:
        assert back.size == (256, 256) and back.mode == "RGB"
        arr = np.asarray(back)
    plain = np.asarray(Image.fromarray(np.asarray(row["preview"]).transpose(1, 2, 0))
                       .resize((256, 256), Image.BILINEAR))
    assert (np.abs(arr.astype(int) - plain).sum(-1) > 60).mean() > 0.002  # something drawn
