"""Configs: every shipped YAML loads; bad keys and impossible values name themselves."""

from pathlib import Path

import pytest

from ram_wsi.config import ExperimentConfig, load_config
from ram_wsi.errors import ConfigError
from ram_wsi.retina import RetinaSpec, RetinaSpecError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    if cfg.data.source == "slides":  # no canvas: the retina is in level-0 px or um
        assert cfg.data.slides.manifest and cfg.data.canvas_size == 0
    else:
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


def test_flat_and_nested_data_keys_build_the_same_config(tmp_path):
    """Configs of earlier releases put every data key flat under ``data:``; they keep working
    and mean exactly what the nested form means."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("data:\n  source: slides\n  manifest: m.csv\n  retina_units: um\n"
                    "  task: mnist28\n  eval_size: 50\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("data:\n  source: slides\n  slides:\n    manifest: m.csv\n"
                      "    retina_units: um\n  mnist:\n    task: mnist28\n    eval_size: 50\n")
    a, b = load_config(flat), load_config(nested)
    assert a.data == b.data
    assert a.data.slides.manifest == "m.csv" and a.data.slides.retina_units == "um"
    assert a.data.mnist.task == "mnist28" and a.data.mnist.eval_size == 50
    # Old and new override spellings reach the same field.
    c = load_config(nested, ["data.task=translated60", "data.mnist.eval_size=7"])
    assert c.data.mnist.task == "translated60" and c.data.mnist.eval_size == 7


def test_data_errors_name_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  tsk: mnist28\n")
    with pytest.raises(ConfigError, match=r"data\.tsk.*known keys.*manifest.*task") as exc:
        load_config(p)
    assert str(p) in str(exc.value)
    p.write_text("data:\n  source: slides\n  slides:\n    manifest: m.csv\n    start: edge\n")
    with pytest.raises(ConfigError, match=r"data\.start.*tissue or uniform, got 'edge'"):
        load_config(p)
    p.write_text("data:\n  source: slides\n")
    with pytest.raises(ConfigError, match=r"data\.manifest"):
        load_config(p)


def test_from_dict_round_trips_and_reads_flat_checkpoint_dicts():
    cfg = load_config(None, ["data.mnist.task=mnist28", "model.patch=8", "model.scales=1"])
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    old["data"] = {"source": "mnist", **old["data"]["mnist"]}  # a checkpoint of an earlier release
    assert ExperimentConfig.from_dict(old) == cfg


def test_retina_errors_are_reported_under_the_model_key(tmp_path):
    with pytest.raises(RetinaSpecError) as exc:
        RetinaSpec(scales=0)
    assert exc.value.field == "scales" and isinstance(exc.value, ValueError)
    with pytest.raises(ConfigError, match=r"config key 'model\.scale_factor'.*finite number >= 1"):
        load_config(None, ["model.scale_factor=0.5"])


def test_flat_override_merges_with_a_nested_section():
    cfg = load_config(None, ["data.fallback_synthetic=false", "data.mnist.dir=/x"])
    assert cfg.data.mnist.fallback_synthetic is False and cfg.data.mnist.dir == "/x"
