"""The GlaS benchmark: benign against malignant colon fields, RAM against whole-field CNNs.

    ram-wsi bench glas --splits challenge fold0 fold1 fold2 fold3 --minutes 6

The GlaS fields (MICCAI 2015; about 775 x 522 px at 0.62 um/px, one level each) read as
slides, on manifests of :func:`ram_wsi.data.glas.write_glas_manifests` (``--manifests``;
written from ``--glas`` when missing): ``challenge`` (the challenge's train -> testA; it shares
patients between train and test) and ``fold0`` .. ``fold3`` (patient-grouped cross-validation:
the honest figure). Every row trains on the split's ``train`` fields and tests on its ``test``
fields; colour is no row's cue: every field's stain is normalised to one reference
(Reinhard, statistics of its own tissue) before any network sees it.

* ``ram``: RAM with the glance, ``configs/glas.yaml`` as it is (annotation-guided terms from
  the gland masks), ``--minutes`` of training, the best validation checkpoint tested;
* ``ram_random``: the same glimpse network at random locations and without the glance
  (:data:`ram_wsi.bench.rows.RAM_ROWS`): what glimpses alone give;
* ``thumbnail``: a small CNN on the field's ``--thumb-size`` px thumbnail: what the glance
  alone gives;
* ``whole``: a small CNN over the whole field at ``--whole-downsample`` (1: full resolution,
  2: 1.24 um/px, about RAM's finest glimpse scale), flips and quarter turns as augmentation.

Per row (one JSON line each; per field = per test slide): accuracy with its SE, AUC with its
95 % interval (Hanley-McNeil, :func:`~ram_wsi.bench.rows.auc_ci`), seconds per field, and three
pixel counts per field: ``pixels_decoded`` (block-level, cold caches -- a plain JPEG decodes
whole, so every row decodes the whole field), ``pixels_requested`` (the regions asked of the
source, at the level read: RAM's 512 px thumbnail and its glimpses' windows), ``pixels_seen``
(what enters the networks: RAM's glimpses x scales x patch^2 plus the glance's thumbnail; a
CNN's input field). RAM rows add the on-target share per glimpse (a glimpse centre on gland
epithelium, from the masks) and the accuracy had they stopped after 1 .. N glimpses. With fold
splits, one more line per row pools the folds' test fields (accuracy, AUC) and gives the mean
and sd over folds. Writes ``glas.jsonl``, ``glas_summary.json`` and each RAM row's run
directory (``OUT/<split>/<row>/``) under ``--out``; prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._report import emit, print_table, write_jsonl
from .rows import RAM_ROWS, auc_ci, baseline_row, ram_row, se

__all__ = ["GLAS_RAM_ROWS", "cnn_row", "main", "normalise_stain", "on_canvas", "pooled_rows",
           "ram_field_row", "read_test_scores", "read_thumb", "read_whole", "run_bench",
           "split_manifest"]

GLAS_RAM_ROWS = {"ram": [], "ram_random": RAM_ROWS["ram_random"]}
"""The RAM rows' overrides of ``configs/glas.yaml`` (``ram``: none)."""
WHOLE_WIDTHS = (8, 16, 32, 32, 64, 64)  # six conv blocks: a 63 px receptive field at block 5
STAIN_FIT_SIDE = 256  # the side a field's stain statistics come from (as data.slides' mask)
FOLD = re.compile(r"fold\d+")


def main(argv: Sequence[str] | None = None) -> int:
    """``ram-wsi bench glas``: its arguments checked (:mod:`ram_wsi.commands.bench`), then
    :func:`run_bench`."""
    from ..commands.bench import parse_bench

    return run_bench(parse_bench("glas", sys.argv[1:] if argv is None else argv))


def run_bench(args: argparse.Namespace) -> int:
    """``ram-wsi bench glas`` with checked arguments: every row on every split (JSON lines as they finish), the pooled folds, the tables."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for split in args.splits:
        manifest = split_manifest(split, args)
        for name in args.rows:
            print(f"glas: {split} {name} ...", file=sys.stderr, flush=True)
            if name in GLAS_RAM_ROWS:
                row = ram_field_row(name, manifest, split, args)
            else:
                row = cnn_row(name, manifest, args)
            emit({"bench": "glas", "split": split, **row}, rows)
            write_jsonl(out / "glas.jsonl", rows)
    pooled = [emit(r) for r in pooled_rows(rows)]
    write_jsonl(out / "glas.jsonl", pooled, mode="a")
    _ratios(rows)
    _tables(rows + pooled)
    (out / "glas_summary.json").write_text(json.dumps({"rows": rows, "cross_validation": pooled},
                                                      indent=1, default=float))
    return 0


# ----------------------------------------------------------------------------- manifests
def split_manifest(split: str, args: argparse.Namespace) -> Path:
    """``MANIFESTS/<split>.csv``, the GlaS manifests written first when it is one of theirs
    (``challenge``, ``fold<i>``) and missing.

    Raises:
        DataError: the manifest is neither there nor one GlaS's manifests give.
    """
    from ..errors import DataError

    path = Path(args.manifests) / f"{split}.csv"
    if not path.is_file() and (split == "challenge" or FOLD.fullmatch(split)):
        from ..data.glas import write_glas_manifests

        write_glas_manifests(args.glas, args.manifests)
    if not path.is_file():
        raise DataError(path, f"no manifest for split {split!r} (challenge and fold0 .. "
                              f"fold3 are written from --glas)")
    return path.resolve()


# ----------------------------------------------------------------------------- RAM rows
def ram_field_row(name: str, manifest: Path, split: str, args) -> dict[str, Any]:
    """A RAM row (:func:`~ram_wsi.bench.rows.ram_row`) on the split, with its test fields'
    labels and scores (``test_slides.csv``) and the AUC's interval."""
    row = ram_row(name, args.config, [*GLAS_RAM_ROWS[name], *args.set,
                                      f"data.slides.manifest={manifest}"],
                  Path(args.out) / split / name, minutes=args.minutes, threads=args.threads,
                  run_name=f"glas_{name}_{split}")
    labels, scores = read_test_scores(Path(row["run_dir"]) / "test_slides.csv")
    return _with_scores(row, labels, scores)


def read_test_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, scores)`` of a run's ``test_slides.csv``: each read field's class index and
    its mean-policy probability of the second class (malignant); unread fields left out."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        names = [c[5:] for c in reader.fieldnames or ()
                 if c.startswith("prob_") and not c.startswith("prob_m_avg_")]
        rows = [r for r in reader if not r.get("error")]
    if len(names) != 2:
        raise ValueError(f"{path}: expected two classes' probabilities, got {names}")
    labels = np.asarray([names.index(r["label"]) for r in rows], dtype=np.int64)
    return labels, np.asarray([float(r[f"prob_{names[1]}"]) for r in rows])


def _with_scores(row: dict[str, Any], labels: np.ndarray, scores: np.ndarray
                 ) -> dict[str, Any]:
    _, lo, hi = auc_ci(labels, scores)
    row.update(auc_lo=lo, auc_hi=hi, test_labels=[int(v) for v in labels],
               test_scores=[round(float(v), 5) for v in scores])
    return row


# ----------------------------------------------------------------------------- CNN rows
def normalise_stain(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8, Reinhard-normalised to the reference with the LAB statistics of its
    own tissue (measured on a copy of at most :data:`STAIN_FIT_SIDE` px): what
    ``data.slides.stain: reinhard`` does to RAM's glimpses."""
    from ..slide.stain import StainNormaliser
    from ..slide.tissue import mask_from_rgb

    step = max(1, -(-max(rgb.shape[:2]) // STAIN_FIT_SIDE))
    small = np.ascontiguousarray(rgb[::step, ::step])
    mask, _ = mask_from_rgb(small)
    return StainNormaliser.fit(small, mask).apply_u8(rgb)


def read_whole(source, downsample: int) -> np.ndarray:
    """The whole field ``(3, h, w)`` uint8 at ``downsample`` (a level of the source's read
    levels: the file's, or one built by area averaging), stain-normalised."""
    lv = source.read_levels
    level = int(np.argmin([abs(d - downsample) for d in lv.downsamples]))
    if abs(lv.downsamples[level] - downsample) > 1e-6:
        raise ValueError(f"{source.path}: no level at downsample {downsample}")
    w, h = lv.dims[level]
    rgb = source.read_region(level, 0, 0, w, h).transpose(1, 2, 0)
    return normalise_stain(rgb).transpose(2, 0, 1)


def read_thumb(source, size: int) -> np.ndarray:
    """The field's thumbnail ``(3, h, w)`` uint8, longest side ``size``, stain-normalised."""
    return normalise_stain(source.thumbnail(size)).transpose(2, 0, 1)


def on_canvas(images: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """``(N, 3, H, W)`` uint8: each ``(3, h, w)`` image centred on white (cropped about its
    centre where larger): one batch shape; white is what the CNNs' zero padding stands for."""
    hh, ww = shape
    out = np.full((len(images), 3, hh, ww), 255, np.uint8)
    for i, im in enumerate(images):
        h, w = min(im.shape[1], hh), min(im.shape[2], ww)
        sy, sx = (im.shape[1] - h) // 2, (im.shape[2] - w) // 2
        oy, ox = (hh - h) // 2, (ww - w) // 2
        out[i, :, oy:oy + h, ox:ox + w] = im[:, sy:sy + h, sx:sx + w]
    return out


def cnn_row(name: str, manifest: Path, args) -> dict[str, Any]:
    """The ``thumbnail`` or ``whole`` row: a CNN trained on the split's train fields (as the
    reader gives them, on one canvas), then each test field read, normalised and classified
    on cold caches."""
    from ..data.manifest import load_manifest
    from ..slide import open_source
    from .needle_baselines import measure_cold, predict_thumbnails, train_thumbnail_cnn

    whole = name == "whole"
    size = args.whole_downsample if whole else args.thumb_size
    read = read_whole if whole else read_thumb
    man = load_manifest(manifest, check_slides=False)
    t0 = time.perf_counter()
    train = man.split("train")
    images = [read(open_source(r.path), size) for r in train]
    shape = (max(im.shape[1] for im in images), max(im.shape[2] for im in images))
    model = train_thumbnail_cnn(on_canvas(images, shape), np.asarray([r.label for r in train]),
                                classes=len(man.class_names), epochs=args.epochs,
                                batch_size=16, seed=0, widths=WHOLE_WIDTHS if whole else None)
    train_s = time.perf_counter() - t0
    probs, costs, secs, seen = [], [], [], []
    for r in man.split("test"):
        src = open_source(r.path)

        def decide(src=src):
            im = read(src, size)
            return predict_thumbnails(model, on_canvas([im], shape))[0], im.shape[1] * im.shape[2]

        (p, px), c, s = measure_cold(decide, src)
        probs.append(p)
        costs.append(c)
        secs.append(s)
        seen.append(px)
    labels = np.asarray([r.label for r in man.split("test")])
    row = baseline_row(name, labels, probs, costs, secs, train_s)
    row.update(pixels_seen=float(np.mean(seen)), input_shape=list(shape),
               train_slides=len(train), epochs=args.epochs)
    return _with_scores(row, labels, np.stack(probs)[:, 1])


# ----------------------------------------------------------------------------- summaries
def pooled_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cross-validation line per row name over the rows of ``fold<i>`` splits: accuracy
    (with its SE) and AUC (with its interval) over all folds' test fields pooled; the mean and
    sd over folds of each fold's accuracy and AUC; costs averaged over folds."""
    folds = [r for r in rows if FOLD.fullmatch(str(r.get("split")))]
    out = []
    for name in dict.fromkeys(r["row"] for r in folds):
        rs = [r for r in folds if r["row"] == name]
        y = np.concatenate([r["test_labels"] for r in rs]).astype(np.int64)
        p = np.concatenate([r["test_scores"] for r in rs]).astype(np.float64)
        acc = float(((p > 0.5).astype(np.int64) == y).mean()) if len(y) else float("nan")
        auc, lo, hi = auc_ci(y, p)
        row = {"bench": "glas", "split": "cv", "row": name, "folds": [r["split"] for r in rs],
               "test_slides": len(y), "accuracy": acc, "accuracy_se": se(acc, len(y)),
               "auc": auc, "auc_lo": lo, "auc_hi": hi}
        for key in ("accuracy", "auc"):
            vals = np.asarray([np.nan if r[key] is None else r[key] for r in rs], np.float64)
            row[f"{key}_fold_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
            row[f"{key}_fold_sd"] = (float(np.nanstd(vals, ddof=1))
                                     if np.isfinite(vals).sum() > 1 else None)
        for key in ("pixels_decoded", "pixels_requested", "pixels_seen", "seconds_per_slide"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            row[key] = float(np.mean(vals)) if vals else None
        out.append(row)
    return out


def _ratios(rows: list[dict[str, Any]]) -> None:
    """The whole-field CNN's pixels over each row's, on the same split: seen and requested."""
    whole = {r["split"]: r for r in rows if r["row"] == "whole"}
    for r in rows:
        w = whole.get(r["split"])
        for key in ("seen", "requested"):
            if w and r.get(f"pixels_{key}"):
                r[f"whole_over_row_{key}"] = w[f"pixels_{key}"] / r[f"pixels_{key}"]


def _glimpse_curve(values: Sequence[float] | None) -> str | None:
    return None if not values else " ".join(f"{v:.2f}" for v in values)


def _tables(rows: list[dict[str, Any]]) -> None:
    print_table(rows, ["split", "row", "test_slides", "accuracy", "accuracy_se", "auc",
                       "auc_lo", "auc_hi", "pixels_seen", "pixels_requested", "pixels_decoded",
                       "seconds_per_slide", "whole_over_row_seen"])
    ram = [{"split": r["split"], "row": r["row"], "on_target": r.get("on_target"),
            "accuracy_by_glimpse": _glimpse_curve(r.get("accuracy_by_glimpse")),
            "on_target_by_glimpse": _glimpse_curve(r.get("on_target_by_glimpse"))}
           for r in rows if r["row"] in GLAS_RAM_ROWS and r["split"] != "cv"]
    if ram:
        print()
        print_table(ram, ["split", "row", "on_target", "accuracy_by_glimpse",
                          "on_target_by_glimpse"])


if __name__ == "__main__":
    raise SystemExit(main())
