"""Per-slide stain normalisation (``data.slides.stain: reinhard``) on a real GlaS field
(skipped when ../shared/data/tissue/glas is absent): the same tissue under another stain gives
nearly the same glimpses and glance, and the config and checkpoint carry the choice."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ram_wsi.config import load_config
from ram_wsi.data.manifest import SlideRecord
from ram_wsi.data.slides import SlideSensor, SlideSet
from ram_wsi.errors import ConfigError
from ram_wsi.retina import RetinaSpec
from ram_wsi.slide.stain import REFERENCE_LAB, StainNormaliser, rgb_to_lab
from ram_wsi.train.checkpoint import scoring_metadata

FIELD = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tissue" / "glas"
         / "train_1.jpg")
needs_glas = pytest.mark.skipif(not FIELD.is_file(), reason="../shared/data/tissue/glas absent")
SPEC = RetinaSpec(32, 3, 4.0, 1.0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The field as PNG, and a restained copy: paler eosin, darker haematoxylin."""
    d = tmp_path_factory.mktemp("stain")
    rgb = np.asarray(Image.open(FIELD).convert("RGB"), np.float64)
    shifted = np.clip(rgb @ np.array([[0.85, 0.05, 0.0], [0.0, 1.1, 0.0], [0.05, 0.0, 0.9]]).T
                      + np.array([10.0, -25.0, 15.0]), 0, 255).astype(np.uint8)
    Image.fromarray(rgb.astype(np.uint8)).save(d / "a.png")
    Image.fromarray(shifted).save(d / "b.png")
    return d / "a.png", d / "b.png"


def _glimpses(path: Path, stain: str):
    slides = SlideSet([SlideRecord(str(path), 0, "test", str(path), 0)], ["a"], SPEC, "px",
                      context_size=64, stain=stain)
    view = slides.view(0)
    loc = torch.tensor([[-0.5, -0.5], [0.0, 0.0], [0.4, 0.3]])
    sensor = SlideSensor([view], np.zeros(3, int), SPEC, "px")
    return sensor(0, loc), view.context.float()


@needs_glas
def test_a_restained_field_reads_as_the_original_after_normalisation(pair):
    (a0, ca0), (b0, cb0) = _glimpses(pair[0], "none"), _glimpses(pair[1], "none")
    (a1, ca1), (b1, cb1) = _glimpses(pair[0], "reinhard"), _glimpses(pair[1], "reinhard")
    raw = float((a0 - b0).abs().mean())
    normed = float((a1 - b1).abs().mean())
    assert raw > 0.04 and normed < raw / 3, (raw, normed)
    assert float((ca1 - cb1).abs().mean()) < float((ca0 - cb0).abs().mean()) / 3
    assert a1.dtype == torch.float32 and a1.shape == a0.shape
    assert 0.0 <= float(a1.min()) and float(a1.max()) <= 1.0


@needs_glas
def test_the_normalised_tissue_has_the_reference_stain():
    rgb = np.asarray(Image.open(FIELD).convert("RGB"))
    norm = StainNormaliser.fit(rgb)
    lab = rgb_to_lab(np.rint(norm.apply(rgb)).astype(np.uint8)).reshape(-1, 3)
    assert np.allclose(lab.mean(0), REFERENCE_LAB[0], atol=2.0)
    assert np.allclose(lab.std(0), REFERENCE_LAB[1], rtol=0.15)


def test_a_tissue_mask_chooses_the_pixels_the_statistics_come_from():
    img = np.full((32, 32, 3), 255, np.uint8)
    img[:16] = (150, 60, 140)
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    with_mask, without = StainNormaliser.fit(img, mask), StainNormaliser.fit(img)
    assert with_mask.std[0] < 1e-3 < without.std[0]
    assert abs(with_mask.mean[0] - rgb_to_lab(img[:1, :1])[0, 0, 0]) < 1e-3


def test_the_stain_option_is_checked_and_travels_in_the_checkpoint_metadata():
    with pytest.raises(ConfigError, match="data.stain"):
        load_config(None, ["data.source=slides", "data.slides.manifest=m.csv",
                           "data.slides.stain=macenko"])
    cfg = load_config(None, ["data.source=slides", "data.slides.manifest=m.csv",
                             "data.slides.stain=reinhard"])
    assert cfg.data.slides.stain == "reinhard"
    data = SimpleNamespace(channels=3, classes=2, class_names=["a", "b"],
                           env=SimpleNamespace(units="px"))
    assert scoring_metadata(cfg, None, data)["retina"]["stain"] == "reinhard"
