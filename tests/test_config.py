"""Configs: every shipped YAML loads; bad keys and impossible values name themselves."""

from pathlib import Path

import pytest

from ram_wsi.config import load_config
from ram_wsi.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.model.retina().window(0) <= cfg.data.canvas_size


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  glimpse: 8\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "model.glimpse" in str(exc.value) and "bad.yaml" in str(exc.value)
    assert "glimpses" in str(exc.value)  # the known keys are listed


def test_patch_larger_than_image(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("data:\n  task: mnist28\nmodel:\n  patch: 40\n  scales: 1\n")
    with pytest.raises(ConfigError, match=r"model\.patch.*larger than the 28x28"):
        load_config(p)


@pytest.mark.parametrize("text,key", [
    ("train:\n  lr: -1\n", "train.lr"),
    ("train:\n  batch_size: many\n", "train.batch_size"),
    ("model:\n  scale_factor: 0.5\n", "model.scale_factor"),
    ("model:\n  core: gru\n", "model.core"),
    ("data:\n  task: cluttered75\n", "data.task"),
    ("train:\n  amp: 3\n", "train.amp"),
])
def test_impossible_values(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(p)


def test_overrides_and_missing_file(tmp_path):
    cfg = load_config(ROOT / "configs" / "cluttered60_8g.yaml",
                      ["train.lr=0.01", "model.core=lstm", "data.source=synthetic"])
    assert cfg.train.lr == 0.01 and cfg.model.core == "lstm" and cfg.data.source == "synthetic"
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        (tmp_path / "x.yaml").write_text("a: [1,\n")
        load_config(tmp_path / "x.yaml")
