"""Every option does what it says, or is refused (issue 26 §2): the behaviours behind the
defects found -- needle cohorts honour --fmt/--tile/--mpp/--compression, eval reads the
checkpoint's own config, score says only what it wrote and which labels it could not use, a
benchmark writes where --out-dir says, and the help texts name the right program and options.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ram_wsi.cli import main
from ram_wsi.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test",
                                                  ROOT / "pipelines" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- make_slides
def test_needle_cohort_in_zarr_writes_only_stores_with_the_given_units(tmp_path, capsys):
    out = tmp_path / "needles"
    rc = _script("make_slides").main([str(out), "--kind", "needle", "--fmt", "zarr",
                                      "--size", "512", "--count", "2", "--procedural", "2",
                                      "--lesion", "128", "--tile", "128", "--mpp", "0.5"])
    assert rc == 0, capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["manifest.csv", "test_000.zarr", "test_000.zarr.json",
                       "test_001.zarr", "test_001.zarr.json"]  # no TIFF beside the stores
    side = json.loads((out / "test_000.zarr.json").read_text())
    assert side["fmt"] == "zarr" and side["mpp"] == 0.5 and side["tile"] == 128
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    procedural = [r["path"] for r in rows if r["split"] != "test"]
    assert procedural and all("mpp=0.5" in p for p in procedural)  # one scale for all splits


def test_needle_tiff_honours_compression_and_no_units(tmp_path, capsys):
    out = tmp_path / "needles"
    rc = _script("make_slides").main([str(out), "--kind", "needle", "--size", "512",
                                      "--count", "1", "--lesion", "128", "--mpp", "0",
                                      "--compression", "none"])
    assert rc == 0, capsys.readouterr().err
    side = json.loads((out / "test_000.tiff.json").read_text())
    assert side["compression"] == "none" and side["mpp"] is None
    from ram_wsi.slide import open_source

    assert open_source(out / "test_000.tiff").mpp is None


def test_mixed_formats_only_when_asked(tmp_path, capsys):
    out = tmp_path / "mixed"
    rc = _script("make_slides").main([str(out), "--kind", "needle", "--fmt", "mixed",
                                      "--size", "512", "--count", "3", "--lesion", "128"])
    assert rc == 0, capsys.readouterr().err
    assert {p.suffix for p in out.glob("test_*") if p.suffix != ".json"} == {".tiff", ".zarr"}


# ----------------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A RAM trained for two updates on generated digits with a non-default size, so that
    the built-in defaults would not fit its weights."""
    from ram_wsi.config import load_config
    from ram_wsi.train.trainer import Trainer

    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = load_config(None, [
        "data.source=synthetic", "data.mnist.synthetic_count=200", "data.mnist.task=mnist28",
        "data.mnist.eval_size=64", "model.hidden=40", "model.glimpses=2",
        "train.batch_size=16", "train.epochs=1", "train.steps_per_epoch=2",
        "train.eval_samples=2", "train.progress=false", "train.threads=1",
        f"train.out_dir={out}"])
    Trainer(cfg, log=lambda *_: None).fit()
    return out / "best.pt"


def test_eval_without_config_uses_the_checkpoints_own(small_checkpoint, capsys):
    assert main(["eval", str(small_checkpoint), "--samples", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["checkpoint"] == str(small_checkpoint) and res["split"] == "test"


def test_eval_with_a_config_that_does_not_fit_says_so_in_one_line(small_checkpoint, capsys):
    rc = main(["eval", str(small_checkpoint), "--set", "model.hidden=24", "--samples", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "best.pt" in err, err


# ----------------------------------------------------------------------------- score
def test_score_summary_names_only_what_was_written():
    from ram_wsi.score.summary import format_summary

    summary = {"counts": {"ok": 1}, "rows": 1, "not_scored": [], "errors": {},
               "results_csv": "o/results.csv", "geojson": None, "thumbnails": "o/thumbnails",
               "unknown_labels": ["lymphoma"]}
    text = format_summary(summary)
    assert "geojson" not in text and "o/thumbnails/" in text
    assert "lymphoma" in text and "warning" in text


def test_labels_outside_the_classes_are_listed():
    from ram_wsi.score.inputs import ScoreInput
    from ram_wsi.score.runner import unknown_labels

    inputs = [ScoreInput("a", "a", "dots"), ScoreInput("b", "b", "lymphoma"),
              ScoreInput("c", "c", None), ScoreInput("d", "d", "Dots")]
    assert unknown_labels(inputs, ["dots", "stripes"]) == ["Dots", "lymphoma"]


def test_a_manifest_without_rows_is_the_empty_folder_error(tmp_path):
    from ram_wsi.score.inputs import scan_inputs

    (tmp_path / "empty").mkdir()
    (tmp_path / "m.csv").write_text("path,label\n\n")
    with pytest.raises(DataError, match="holds no files to score"):
        scan_inputs(tmp_path / "empty")
    with pytest.raises(DataError, match="holds no files to score") as exc:
        scan_inputs(tmp_path / "m.csv")
    assert "m.csv" in str(exc.value)


# ----------------------------------------------------------------------------- bench
def test_bench_throughput_writes_its_rows_to_out_dir(tmp_path, capsys):
    out = tmp_path / "tp"
    assert main(["bench", "throughput", "--batches", "4", "--steps", "2", "--skip-naive",
                 "--threads", "1", "--out-dir", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "throughput.jsonl").read_text().splitlines()]
    assert rows and rows[0]["batch"] == 4 and rows[0]["sensor"] == "retina"
    assert not (out / "best.pt").exists()  # the rows' folder, not a training run's


# ----------------------------------------------------------------------------- help texts
def _help(*argv: str) -> str:
    proc = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_train_script_offers_single_not_distributed():
    text = _help("pipelines/train.py")
    assert text.startswith("usage: train.py") and "--single" in text
    assert "--distributed" not in text


def test_help_names_the_program_and_whole_descriptions():
    assert _help("-m", "ram_wsi", "bench", "scaling").startswith("usage: ram-wsi bench scaling")
    assert _help("pipelines/bench_scaling.py").startswith("usage: bench_scaling.py")
    text = " ".join(_help("-m", "ram_wsi", "bench", "score").split())
    assert "against dense tiling on the same files;" in text
    assert "single-level slides against pyramids." in text


@pytest.mark.parametrize("argv", [("-m", "ram_wsi", "score"), ("-m", "ram_wsi", "convert"),
                                  ("pipelines/make_slides.py",)],
                         ids=["ram-wsi score", "ram-wsi convert", "make_slides.py"])
def test_help_states_every_default(argv):
    """Each option with a value either says its default or states it in words."""
    text = " ".join(_help(*argv).split())
    for default in {"ram-wsi score": ["(default: 2)", "default: 600", "default: 1)"],
                    "ram-wsi convert": ["(default: 256)", "(default: 5)", "(default: lz4hc)"],
                    "make_slides.py": ["(default: 8192)", "(default: 20)", "default 0.25"]
                    }[argv[-1].removeprefix("pipelines/") if len(argv) == 1
                      else f"ram-wsi {argv[-1]}"]:
        assert default in text, default
