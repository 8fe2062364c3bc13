"""The GlaS colon fields (MICCAI 2015 gland challenge) as slide manifests, split by patient.

A GlaS folder holds ``<name>.jpg`` fields (H&E at 20x, about 0.62 um/px), ``<name>_anno.png``
gland instance masks (0 = background) and ``grades.csv`` (``name, patient, grade, subtype``;
grade ``benign`` or ``malignant``). The challenge's own split (``train``, ``testA``,
``testB``: the name's prefix) shares patients between train and test, so its test figure
flatters; :func:`patient_folds` gives the honest one: folds that keep every patient's fields
together.

:func:`read_grades` checks every row (a missing column, an unknown grade, a field whose image
is absent, a non-integer patient, a name given twice) and raises one
:class:`~ram_wsi.errors.DataError` naming the file and each bad row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .manifest import write_manifest

__all__ = ["GLAS_GRADES", "GLAS_MPP", "GlasField", "patient_folds", "read_grades",
           "read_mask", "write_glas_manifests"]

GLAS_GRADES = ("benign", "malignant")
GLAS_MPP = 0.62  # um per pixel of the fields (20x); the JPEGs state none
_COLUMNS = ("name", "patient", "grade")


@dataclass(frozen=True)
class GlasField:
    """One field: its image, its gland mask (None when absent), its patient and grade."""

    name: str
    patient: str
    grade: str
    subtype: str
    image: Path
    mask: Path | None
    row: int  # line in grades.csv (header = 1)

    @property
    def challenge_split(self) -> str:
        """``train``, ``testA`` or ``testB``: the challenge's split, from the name's prefix."""
        return self.name.split("_", 1)[0]

    @property
    def label(self) -> int:
        return GLAS_GRADES.index(self.grade)


def _field(directory: Path, line: int, row: dict[str, str]) -> GlasField | str:
    """The row as a field, or why it is not one."""
    name = (row.get("name") or "").strip()
    grade = (row.get("grade") or "").strip().lower()
    patient = (row.get("patient") or "").strip()
    if not name:
        return "empty name"
    if grade not in GLAS_GRADES:
        return f"unknown grade {row.get('grade')!r} (expected benign or malignant)"
    if not patient.isdigit():
        return f"patient {patient!r} is not an integer id"
    image = next((directory / f"{name}{ext}" for ext in (".jpg", ".png", ".bmp", ".tif")
                  if (directory / f"{name}{ext}").is_file()), None)
    if image is None:
        return f"no image {name}.jpg (or .png, .bmp, .tif) in {directory}"
    mask = directory / f"{name}_anno.png"
    return GlasField(name, patient, grade, (row.get("subtype") or "").strip(), image,
                     mask if mask.is_file() else None, line)


def read_grades(directory: str | Path) -> list[GlasField]:
    """Every field of ``directory/grades.csv``, in file order.

    Raises:
        DataError: naming ``grades.csv``: it is missing or has no header, a column is
            missing, or rows are bad (each listed with its line and why).
    """
    directory = Path(directory)
    path = directory / "grades.csv"
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(path, "missing (a GlaS folder has grades.csv: name, patient, grade, "
                              "subtype)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read ({exc})") from None
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (the header is "
                              f"{', '.join(header) or 'empty'})")
    fields, bad, seen = [], [], {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        got = _field(directory, line, row)
        if isinstance(got, str):
            bad.append(f"row {line} ({row.get('name') or '?'}): {got}")
        elif got.name in seen:
            bad.append(f"row {line} ({got.name}): also at row {seen[got.name]}")
        else:
            seen[got.name] = line
            fields.append(got)
    if bad:
        raise DataError(path, f"{len(bad)} bad row(s): " + "; ".join(bad[:10])
                        + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""))
    if not fields:
        raise DataError(path, "no fields")
    return fields


def read_mask(field: GlasField) -> np.ndarray:
    """``(H, W)`` int32 gland instance labels (0 = background) of ``field``, checked against its
    image's size.

    Raises:
        DataError: the field has no mask, it cannot be read, or its size differs.
    """
    from PIL import Image

    if field.mask is None:
        raise DataError(field.image, "no gland mask beside it (<name>_anno.png)")
    try:
        with Image.open(field.mask) as m, Image.open(field.image) as im:
            if m.size != im.size:
                raise DataError(field.mask, f"mask is {m.size[0]}x{m.size[1]}, its field "
                                            f"{im.size[0]}x{im.size[1]}")
            return np.asarray(m).astype(np.int32)
    except OSError as exc:
        raise DataError(field.mask, f"cannot read ({exc})") from None


def patient_folds(fields: list[GlasField], k: int, seed: int = 0) -> list[int]:
    """The fold (``0..k-1``) of each field: every patient's fields in one fold, folds as even
    as the patients allow in fields of each grade (largest patients first, each to the fold
    that is shortest of its grades; ties broken by ``seed``)."""
    if not 2 <= k <= len({f.patient for f in fields}):
        raise ValueError(f"k must be in 2..{len({f.patient for f in fields})} (patients), got {k}")
    counts: dict[str, np.ndarray] = {}
    for f in fields:
        counts.setdefault(f.patient, np.zeros(len(GLAS_GRADES)))[f.label] += 1
    rng = np.random.default_rng(seed)
    order = sorted(counts, key=lambda p: (-counts[p].sum(), rng.random()))
    load = np.zeros((k, len(GLAS_GRADES)))
    fold_of: dict[str, int] = {}
    for p in order:
        cost = (load + counts[p]).max(1) + 1e-3 * load.sum(1) + 1e-6 * rng.random(k)
        fold_of[p] = int(np.argmin(cost))
        load[fold_of[p]] += counts[p]
    return [fold_of[f.patient] for f in fields]


def _balanced_fold(fields: list[GlasField], fold: list[int], choices) -> int:
    """The fold among ``choices`` whose grades are most even (a validation set of one grade
    -- one large patient -- cannot select a model)."""
    def imbalance(j: int) -> tuple[float, int]:
        n = np.zeros(len(GLAS_GRADES))
        for f, k in zip(fields, fold):
            n[f.label] += k == j
        return (abs(n[0] - n[1]) / max(n.sum(), 1.0), j)

    return min(choices, key=imbalance)


def write_glas_manifests(directory: str | Path, out: str | Path, *, folds: int = 4,
                         seed: int = 0) -> dict[str, Path]:
    """Manifests (``path,label,split,case``; the case is the patient) of the GlaS fields:

    * ``challenge.csv`` (``path,label,split``): the challenge's split: ``train`` fields train
      (a patient-grouped fifth of them, the fifth with the most even grades, validate),
      ``testA`` fields test (patients shared with train, so no case column);
    * ``fold<i>.csv`` for ``i < folds``: fold ``i`` tests, the other fold with the most even
      grades validates, the rest train: no patient in two splits.

    Returns ``{name: path}``; paths in the manifests are absolute.
    """
    fields = read_grades(directory)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    train = [f for f in fields if f.challenge_split == "train"]
    k = min(5, len({f.patient for f in train}))
    val_fold = patient_folds(train, k, seed)
    pick = _balanced_fold(train, val_fold, range(k))
    val_of = {f.name: v == pick for f, v in zip(train, val_fold)}
    # No case column here: the challenge's split puts patients in train and test on purpose,
    # which the manifest reader (rightly) refuses for cases it is told about.
    rows = [(str(f.image.resolve()), f.grade,
             ("val" if val_of[f.name] else "train") if f.challenge_split == "train"
             else "test") for f in fields if f.challenge_split in ("train", "testA")]
    written["challenge"] = write_manifest(out / "challenge.csv", rows)
    fold = patient_folds(fields, folds, seed)
    for i in range(folds):
        split = {i: "test", _balanced_fold(fields, fold, [j for j in range(folds) if j != i]):
                 "val"}
        rows = [(str(f.image.resolve()), f.grade, split.get(fd, "train"), f.patient)
                for f, fd in zip(fields, fold)]
        written[f"fold{i}"] = write_manifest(out / f"fold{i}.csv", rows)
    return written
