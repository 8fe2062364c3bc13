"""GlaS fields as manifests: grades.csv read and checked row by row, masks matched to their
fields, and patient-grouped folds (no patient in two splits). Real files of
../shared/data/tissue/glas (skipped when absent) and broken copies of them in tmp_path."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from ram_wsi.data.glas import patient_folds, read_grades, read_mask, write_glas_manifests
from ram_wsi.data.manifest import load_manifest
from ram_wsi.errors import DataError

GLAS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tissue" / "glas"
pytestmark = pytest.mark.skipif(not (GLAS / "grades.csv").is_file(),
                                reason="../shared/data/tissue/glas is not here")


def test_grades_read_every_field_with_its_mask():
    fields = read_grades(GLAS)
    assert len(fields) == 145 and len({f.patient for f in fields}) == 16
    assert sum(f.grade == "benign" for f in fields) == 70
    assert {f.challenge_split for f in fields} == {"train", "testA"}
    f = fields[0]
    mask = read_mask(f)
    from PIL import Image

    assert mask.shape == Image.open(f.image).size[::-1] and mask.max() > 0  # glands labelled


def test_folds_keep_patients_together_and_balance_grades():
    fields = read_grades(GLAS)
    fold = patient_folds(fields, 4, seed=0)
    by_patient: dict[str, set[int]] = {}
    for f, k in zip(fields, fold):
        by_patient.setdefault(f.patient, set()).add(k)
    assert all(len(v) == 1 for v in by_patient.values())
    counts = np.zeros((4, 2))
    for f, k in zip(fields, fold):
        counts[k, f.label] += 1
    assert (counts > 0).all()  # every fold tests both grades
    assert patient_folds(fields, 4, seed=0) == fold


def test_manifests_split_by_patient(tmp_path):
    written = write_glas_manifests(GLAS, tmp_path, folds=4)
    assert set(written) == {"challenge", "fold0", "fold1", "fold2", "fold3"}
    for name in ("fold0", "fold3"):
        m = load_manifest(written[name], check_slides=False)
        cases = {s: {r.case for r in m.split(s)} for s in ("train", "val", "test")}
        assert not (cases["train"] & cases["test"]) and not (cases["val"] & cases["test"])
        assert not (cases["train"] & cases["val"])
        assert m.class_names == ["benign", "malignant"]
    ch = load_manifest(written["challenge"], check_slides=False)
    assert len(ch.split("test")) == 60 and len(ch.split("train")) + len(ch.split("val")) == 85


def _copy(tmp_path: Path, rows: list[list[str]], header=("name", "patient", "grade", "subtype"),
          drop: tuple[str, ...] = ()) -> Path:
    out = tmp_path / "glas"
    out.mkdir()
    for r in rows:
        if r[0] not in drop:
            shutil.copy(GLAS / f"{r[0]}.jpg", out / f"{r[0]}.jpg")
    with open(out / "grades.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return out


ROWS = [["train_1", "1", "malignant", "moderately differentiated"],
        ["train_2", "2", "benign", "healthy"],
        ["testA_1", "4", "benign", "adenomatous"]]


@pytest.mark.parametrize("case, match", [
    ("missing column", "missing column.*grade"),
    ("unknown grade", r"row 3 \(train_2\): unknown grade 'mild'"),
    ("absent file", r"row 4 \(testA_1\): no image testA_1.jpg"),
    ("bad patient", r"row 2 \(train_1\): patient 'p1' is not an integer"),
    ("duplicate", r"row 5 \(train_1\): also at row 2"),
])
def test_bad_grades_are_refused_naming_the_row(tmp_path, case, match):
    rows = [list(r) for r in ROWS]
    header, drop = ("name", "patient", "grade", "subtype"), ()
    if case == "missing column":
        header = ("name", "patient", "subtype", "notes")
    elif case == "unknown grade":
        rows[1][2] = "mild"
    elif case == "absent file":
        drop = ("testA_1",)
    elif case == "bad patient":
        rows[0][1] = "p1"
    else:
        rows.append(list(ROWS[0]))
    folder = _copy(tmp_path, rows, header, drop)
    with pytest.raises(DataError, match=match) as err:
        read_grades(folder)
    assert "grades.csv" in str(err.value)


def test_a_mask_of_another_size_is_refused(tmp_path):
    from PIL import Image

    folder = _copy(tmp_path, [list(ROWS[0])])
    Image.new("L", (10, 10)).save(folder / "train_1_anno.png")
    with pytest.raises(DataError, match="mask is 10x10"):
        read_mask(read_grades(folder)[0])


def test_a_field_with_a_gland_mask_measures_glimpses_on_glands():
    """The mask beside a field (<name>_anno.png) is its target: on-target is a glimpse on a
    gland, and the glimpse labels of annotation-guided training follow it."""
    import torch

    from ram_wsi.data.slides import open_view

    field = read_grades(GLAS)[0]
    mask = read_mask(field) > 0
    view = open_view(str(field.image))
    ys, xs = np.nonzero(mask)
    by, bx = np.nonzero(~mask)
    px = torch.tensor([[xs[0] + 0.5, ys[0] + 0.5], [bx[0] + 0.5, by[0] + 0.5]],
                      dtype=torch.float64)
    w, h = view.source.dimensions
    loc = view.frame.from_slide(torch.stack([px[:, 0] / w * 2 - 1, px[:, 1] / h * 2 - 1], 1))
    assert view.on_target(loc.float()).tolist() == [True, False]
    assert view.glimpse_labels(loc.float(), field.label).tolist() == [field.label + 1, 0]
