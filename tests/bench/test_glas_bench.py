"""``ram-wsi bench glas``: a tiny end-to-end run on real GlaS fields, and its statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_wsi.bench import main as bench_main
from ram_wsi.bench.glas import GLAS_RAM_ROWS, on_canvas, pooled_rows
from ram_wsi.bench.needle_baselines import train_thumbnail_cnn
from ram_wsi.bench.rows import auc_ci
from ram_wsi.commands.bench import GLAS_ROWS

GLAS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tissue" / "glas"
needs_glas = pytest.mark.skipif(not (GLAS / "grades.csv").is_file(),
                                reason="needs ../shared/data/tissue/glas")


def _small_manifest(folder: Path) -> Path:
    """12 fields, both grades in every split: 6 train and 2 val from the challenge's train,
    4 test from testA (a fold's manifest needs no patients here: no case column)."""
    from ram_wsi.data.glas import read_grades
    from ram_wsi.data.manifest import write_manifest

    fields = read_grades(GLAS)
    rows = []
    for split, prefix, per_grade in (("train", "train", 3), ("val", "train", 1),
                                     ("test", "testA", 2)):
        for grade in ("benign", "malignant"):
            pool = [f for f in fields if f.challenge_split == prefix and f.grade == grade
                    and str(f.image) not in {r[0] for r in rows}]
            rows += [(str(f.image), grade, split) for f in pool[:per_grade]]
    return write_manifest(folder / "fold0.csv", rows)


@needs_glas
def test_glas_bench_end_to_end(tmp_path, capsys):
    _small_manifest(tmp_path)
    out = tmp_path / "out"
    rc = bench_main(["glas", "--manifests", str(tmp_path), "--splits", "fold0", "--rows", "ram",
                     "thumbnail", "whole", "--minutes", "0.05", "--epochs", "1", "--threads",
                     "1", "--out", str(out)])
    assert rc == 0
    lines = [json.loads(s) for s in (out / "glas.jsonl").read_text().splitlines()]
    rows = {r["row"]: r for r in lines if r["split"] == "fold0"}
    assert list(rows) == ["ram", "thumbnail", "whole"]
    for r in rows.values():
        assert r["test_slides"] == 4 and 0.0 <= r["accuracy"] <= 1.0
        assert r["accuracy_se"] == pytest.approx(math.sqrt(r["accuracy"] * (1 - r["accuracy"])
                                                           / 4))
        assert 0.0 <= r["auc_lo"] <= r["auc"] <= r["auc_hi"] <= 1.0
        assert r["pixels_decoded"] > 0 and r["pixels_requested"] > 0 and r["pixels_seen"] > 0
        assert r["seconds_per_slide"] > 0
        assert sorted(r["test_labels"]) == [0, 0, 1, 1] and len(r["test_scores"]) == 4
    ram = rows["ram"]
    assert len(ram["on_target_by_glimpse"]) == len(ram["accuracy_by_glimpse"]) == 6
    assert (out / "fold0" / "ram" / "test_slides.csv").is_file()
    # The whole-field CNN takes in more of each field than RAM's glimpses and glance.
    assert rows["whole"]["pixels_seen"] > ram["pixels_seen"]
    assert rows["whole"]["input_shape"] == [261, 388]  # 775 x 522 fields at half resolution
    cv = [r for r in lines if r["split"] == "cv"]
    assert [r["row"] for r in cv] == ["ram", "thumbnail", "whole"]
    summary = json.loads((out / "glas_summary.json").read_text())
    assert len(summary["rows"]) == 3 and len(summary["cross_validation"]) == 3
    assert "whole_over_row_seen" in capsys.readouterr().out


def test_glas_rows_match_the_command_line():
    assert set(GLAS_ROWS) == {*GLAS_RAM_ROWS, "thumbnail", "whole"}


def test_glas_refuses_an_unknown_split_before_any_work(tmp_path, capsys):
    rc = bench_main(["glas", "--manifests", str(tmp_path), "--splits", "fold9",
                     "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "fold9" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_auc_ci_hanley_mcneil_by_hand():
    # AUC 3/4 on 2 + 2: Q1 = 0.6, Q2 = 0.642857, SE^2 = 0.305357 / 4; the top is clipped.
    auc, lo, hi = auc_ci([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert auc == pytest.approx(0.75)
    se = math.sqrt((0.1875 + (0.6 - 0.5625) + (2 * 0.5625 / 1.75 - 0.5625)) / 4)
    assert lo == pytest.approx(0.75 - 1.959964 * se, abs=1e-6)
    assert hi == 1.0


def test_auc_ci_narrows_with_more_fields_and_lower_level():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20), np.ones(20)]
    s = y * 0.8 + rng.normal(0, 1.0, 40)  # AUC about 0.7: neither bound clipped
    a, lo, hi = auc_ci(y, s)
    assert lo < a < hi
    a4, lo4, hi4 = auc_ci(np.tile(y, 4), np.tile(s, 4))
    assert a4 == pytest.approx(a) and hi4 - lo4 < hi - lo
    _, lo90, hi90 = auc_ci(y, s, level=0.90)
    assert lo < lo90 and hi90 < hi
    assert auc_ci(y, -s)[0] == pytest.approx(1 - a)


def test_auc_ci_edges():
    assert auc_ci([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in auc_ci([1, 1, 1], [0.2, 0.5, 0.9]))
    with pytest.raises(ValueError):
        auc_ci([0, 1], [0.2, 0.4], level=1.5)


def test_pooled_rows_pool_the_folds_test_fields():
    def row(split, name, labels, scores, acc, auc):
        return {"split": split, "row": name, "test_labels": labels, "test_scores": scores,
                "accuracy": acc, "auc": auc, "pixels_seen": 10.0, "seconds_per_slide": 1.0}

    rows = [row("fold0", "whole", [0, 1], [0.2, 0.9], 1.0, 1.0),
            row("fold1", "whole", [0, 1, 1], [0.7, 0.6, 0.4], 1 / 3, 0.5),
            row("challenge", "whole", [0, 1], [0.9, 0.1], 0.0, 0.0)]  # not a fold: left out
    (cv,) = pooled_rows(rows)
    assert cv["split"] == "cv" and cv["folds"] == ["fold0", "fold1"]
    assert cv["test_slides"] == 5
    assert cv["accuracy"] == pytest.approx(3 / 5)  # 0.2, 0.9, 0.6 right; 0.7, 0.4 wrong
    assert cv["auc"] == pytest.approx(auc_ci([0, 1, 0, 1, 1], [0.2, 0.9, 0.7, 0.6, 0.4])[0])
    assert cv["accuracy_fold_mean"] == pytest.approx(2 / 3)
    assert cv["accuracy_fold_sd"] == pytest.approx(np.std([1.0, 1 / 3], ddof=1))
    assert cv["auc_fold_mean"] == pytest.approx(0.75) and cv["pixels_seen"] == 10.0
    assert pooled_rows(rows[2:]) == []


def test_on_canvas_centres_and_crops_on_white():
    a = np.zeros((3, 2, 4), np.uint8)
    b = np.full((3, 6, 2), 7, np.uint8)
    x = on_canvas([a, b], (4, 4))
    assert x.shape == (2, 3, 4, 4)
    assert (x[0, :, 1:3] == 0).all() and (x[0, :, [0, 3]] == 255).all()
    assert (x[1, :, :, 1:3] == 7).all() and (x[1, :, :, [0, 3]] == 255).all()


def test_oblong_fields_train_with_every_flip_and_quarter_turn():
    from ram_wsi.bench.needle_baselines import _augment

    g = torch.Generator().manual_seed(0)
    x = torch.arange(6.0).view(1, 1, 2, 3).repeat(64, 1, 1, 1)
    seen = set()
    for _ in range(20):
        y = _augment(x, g)
        assert y.shape[-2:] in ((2, 3), (3, 2))
        seen |= {tuple(v.flatten().tolist()) + tuple(v.shape) for v in y}
    assert len(seen) == 8
    model = train_thumbnail_cnn(torch.randint(0, 256, (4, 3, 24, 40), dtype=torch.uint8),
                                [0, 1, 0, 1], classes=2, epochs=1, batch_size=2,
                                widths=(4, 8))
    assert model(torch.zeros(1, 3, 24, 40)).shape == (1, 2)
