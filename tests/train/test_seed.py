"""Seed checkpoints: float16 weights that start a run (``train.init_from``) and score; the
committed seed of ``make demo`` fits the demo's model."""

from pathlib import Path

import torch

from ram_wsi.config import ExperimentConfig, load_config
from ram_wsi.models import build_model
from ram_wsi.train.checkpoint import export_seed, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_seed_fits_the_demo_model_and_is_small():
    seed = ROOT / "configs" / "seeds" / "crc8k_guided.pt"
    cfg = load_config(ROOT / "configs" / "demo_slides.yaml")
    assert Path(cfg.train.init_from) == Path("configs/seeds/crc8k_guided.pt")
    assert seed.stat().st_size < 2_000_000  # the rule for committed files
    ck = load_checkpoint(seed)
    model = build_model(cfg.model, 0, ck["channels"], ck["classes"])
    model.load_state_dict(ck["model"])  # every weight, every shape: the architectures agree
    assert ck["class_names"] == ["benign", "carcinoma"]
    assert ck["retina"]["units"] == "um" and "optimizer" not in ck


def test_export_keeps_the_weights_in_half_precision(tmp_path):
    cfg = load_config(ROOT / "configs" / "crc_slides.yaml")
    model = build_model(cfg.model, 0, 3, 2)
    full = tmp_path / "best.pt"
    save_checkpoint(full, {"model": model.state_dict(), "optimizer": {"big": torch.zeros(10**6)},
                           "config": cfg.to_dict(), "class_names": ["benign", "carcinoma"],
                           "channels": 3, "classes": 2})
    seed = export_seed(full, tmp_path / "seed.pt")
    assert seed.stat().st_size < 0.6 * full.stat().st_size
    ck = load_checkpoint(seed)
    back = build_model(ExperimentConfig.from_dict(ck["config"]).model, 0, 3, 2)
    back.load_state_dict(ck["model"])
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert b.dtype == a.dtype and torch.allclose(a, b, atol=2e-3, rtol=2e-3), k
