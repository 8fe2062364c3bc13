"""What a scoring run says at its end (``run_metadata.json`` and the lines printed): counts,
errors, the files skipped, cost per slide, and -- when the inputs carry labels (a manifest
with a ``label`` column) -- how right the predictions were: accuracy, balanced accuracy and the
area under the ROC curve, per class and averaged."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..train.slide_eval import auc_binary, auc_macro
from .inputs import ScoreInput
from .results import ResultStore

__all__ = ["format_summary", "label_metrics", "run_summary"]


def run_summary(store: ResultStore, inputs: list[ScoreInput], skipped: list[str], scored: int,
                elapsed: float, class_names: list[str]) -> dict[str, Any]:
    """The summary of a run from its table (every row, earlier runs' included)."""
    rows = store.table()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    ok = [r for r in rows if r["status"] == "ok"]
    out: dict[str, Any] = {
        "counts": counts, "rows": len(rows), "scored_now": scored,
        "not_scored": [i.path for i in inputs if i.path not in store.rows],
        "skipped": list(skipped),
        "seconds": round(elapsed, 3),
        "slides_per_second": round(scored / elapsed, 4) if elapsed > 0 and scored else None,
        "results_csv": str(store.out / "results.csv"),
        "geojson": str(store.out / "geojson"), "thumbnails": str(store.out / "thumbnails"),
        "errors": {r["path"]: r["error"] for r in rows if r["status"] == "error"},
    }
    if ok:
        out["seconds_per_slide"] = round(sum(float(r["seconds"]) for r in ok) / len(ok), 4)
        out["pixels_read_per_slide"] = round(sum(int(r["pixels_read"]) for r in ok) / len(ok))
        out["predicted"] = {c: sum(r["predicted"] == c for r in ok) for c in class_names}
        out.update(label_metrics(ok, class_names))
    unknown = sorted({str(r["label"]) for r in ok if r.get("label")} - set(class_names))
    if unknown:  # reported, and left out of the metrics
        out["unknown_labels"] = unknown
    return out


def _rounded(v: float) -> float | None:
    """Four decimals; None for a value that cannot be measured (an AUC without both sides)."""
    return None if not math.isfinite(v) else round(float(v), 4)


def label_metrics(ok: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    """Of the scored rows whose label is one of the checkpoint's classes: ``labelled``,
    ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present), ``auc``
    (class 1's for two classes, else the mean one-vs-rest) and ``per_class``: each class's
    ``slides``, ``recall`` and one-vs-rest ``auc`` (None where a side is missing). Empty when
    no row is labelled."""
    known = [r for r in ok if r.get("label") in class_names]
    if not known:
        return {}
    y = np.array([class_names.index(r["label"]) for r in known])
    pred = np.array([class_names.index(r["predicted"]) for r in known])
    probs = np.array([[float(r[f"prob_{c}"]) for c in class_names] for r in known])
    per_class = {}
    for i, c in enumerate(class_names):
        n = int((y == i).sum())
        per_class[c] = {"slides": n,
                        "recall": _rounded(float((pred[y == i] == i).mean())) if n else None,
                        "auc": _rounded(auc_binary(probs[:, i], y == i))}
    recalls = [v["recall"] for v in per_class.values() if v["recall"] is not None]
    return {"labelled": len(known), "accuracy": _rounded(float((pred == y).mean())),
            "balanced_accuracy": _rounded(float(np.mean(recalls))),
            "auc": _rounded(auc_macro(probs, y, max(2, len(class_names)))),
            "per_class": per_class}


def format_summary(summary: dict[str, Any]) -> str:
    """The few lines a person reads at the end of a run."""
    c = summary["counts"]
    lines = [f"scored {summary['rows']} inputs: {c.get('ok', 0)} ok, {c.get('error', 0)} error"
             + (f", {len(summary['not_scored'])} not scored (held by another run or "
                "interrupted)" if summary["not_scored"] else "")
             + (f"  ({summary['scored_now']} this run, {summary['slides_per_second']} slides/s)"
                if summary.get("slides_per_second") else "")]
    if "seconds_per_slide" in summary:
        lines.append(f"per slide: {summary['seconds_per_slide']} s in its scorer, "
                     f"{summary['pixels_read_per_slide']:,} pixels read")
    if "accuracy" in summary:
        lines.extend(_label_lines(summary))
    if summary.get("unknown_labels"):
        lines.append("warning: labels not among the checkpoint's classes, left out of the "
                     "metrics: " + ", ".join(summary["unknown_labels"]))
    for path, err in list(summary["errors"].items())[:10]:
        lines.append(f"  error  {err if err.startswith(path) else path + ': ' + err}")
    if len(summary["errors"]) > 10:
        lines.append(f"  ... and {len(summary['errors']) - 10} more (results.csv)")
    skipped = summary.get("skipped") or []
    if skipped:
        lines.append(f"skipped {len(skipped)} file(s) no reader claims by name: "
                     + ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
    lines.append(f"results:    {summary['results_csv']}")
    if summary.get("geojson"):  # None: --no-geojson
        lines.append(f"geojson:    {summary['geojson']}/  (QuPath: File > Import objects)")
    if summary.get("thumbnails"):
        lines.append(f"thumbnails: {summary['thumbnails']}/")
    return "\n".join(lines)


def _label_lines(summary: dict[str, Any]) -> list[str]:
    head = (f"on {summary['labelled']} labelled slides: accuracy {summary['accuracy']}, "
            f"balanced accuracy {summary['balanced_accuracy']}, AUC {summary['auc']}")
    lines = [head]
    for c, m in summary["per_class"].items():
        lines.append(f"  {c}: {m['slides']} slides, recall {m['recall']}, AUC {m['auc']}")
    return lines
