"""What the classification benchmarks' rows share (:mod:`.needle`, :mod:`.glas`): the RAM rows'
config overrides and one RAM row trained through :class:`~ram_wsi.train.trainer.Trainer`, a
baseline row from per-slide probabilities and read costs, and the error bars (a proportion's
standard error, an AUC's confidence interval).

Every row is a flat dict: ``row`` (its name), ``test_slides``, ``accuracy`` with
``accuracy_se``, ``balanced_accuracy``, ``auc``, ``pixels_decoded`` / ``pixels_requested``
(per slide: what one decision read, cold caches) and ``seconds_per_slide``; a benchmark adds
its own keys (the slide size, the split).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PLAIN", "RAM_ROWS", "auc_ci", "baseline_row", "glimpse_pixels", "ram_row", "se"]

PLAIN = ["model.glimpse_aux=false", "train.glimpse_aux_weight=0", "train.target_reward=0"]
"""Overrides that turn off the annotation-guided terms (the glimpse head's loss, the reward per
glimpse on target): the paper's training."""

RAM_ROWS = {
    "ram_context": ["model.context=thumbnail", *PLAIN],
    "ram_paper": ["model.context=none", *PLAIN],
    # Random glimpses and no glance: a classifier trained on glimpses alone, the floor a
    # learned policy must rise above (the thumbnail row measures the glance alone).
    "ram_random": ["model.arch=ram_random", "model.context=none", *PLAIN],
    # Beyond the paper: the glance, plus the annotation-guided terms (the glimpse head's
    # cross-entropy, a reward per glimpse on the lesion; training only).
    "ram_guided": ["model.context=thumbnail", "model.glimpse_aux=true",
                   "train.glimpse_aux_weight=1.0", "train.target_reward=0.2"],
}
"""Each RAM row's config overrides, applied before the benchmark's own."""


def se(p: float, n: int) -> float:
    """Standard error of a proportion ``p`` measured on ``n`` items (binomial)."""
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def auc_ci(labels: Any, scores: Any, level: float = 0.95) -> tuple[float, float, float]:
    """``(auc, lo, hi)``: the AUC of ``scores`` for the positive ``labels`` (``1``/True) and its
    confidence interval by Hanley and McNeil (Radiology 1982): ``auc +- z * SE`` with

        SE^2 = (A (1 - A) + (n1 - 1) (Q1 - A^2) + (n0 - 1) (Q2 - A^2)) / (n1 n0),
        Q1 = A / (2 - A),  Q2 = 2 A^2 / (1 + A),

    ``n1`` positives, ``n0`` negatives, clipped to ``[0, 1]``. Closed-form and deterministic
    (no resampling), it is a little narrow for very small sets; at ``A = 1`` the interval is
    ``[1, 1]``. NaNs when either class is absent.
    """
    from statistics import NormalDist

    from ..train.slide_eval import auc_binary

    y = np.asarray(labels).astype(bool)
    a = auc_binary(np.asarray(scores, dtype=np.float64), y)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not math.isfinite(a):
        return a, float("nan"), float("nan")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)
    half = NormalDist().inv_cdf(0.5 + level / 2.0) * math.sqrt(max(var, 0.0))
    return a, max(0.0, a - half), min(1.0, a + half)


def glimpse_pixels(model_cfg: Any) -> int:
    """Pixels one RAM decision feeds its networks: ``glimpses x scales x patch^2`` (every
    scale's window is resized to ``patch``), plus the glance's ``context_size^2`` thumbnail
    when the model has one -- what the agent *sees*, whatever the source decoded to give it."""
    m = model_cfg
    seen = int(m.glimpses) * int(m.scales) * int(m.patch) ** 2
    if m.context == "thumbnail":
        seen += int(m.context_size) ** 2
    return seen


def ram_row(name: str, config: str | Path, overrides: Sequence[str], out: str | Path, *,
            minutes: float, threads: int, run_name: str) -> dict[str, Any]:
    """Train RAM (``config`` with ``overrides``, then the run's own settings: ``out`` as its
    run directory, ``minutes`` of training on ``threads``) and test its best checkpoint.

    Returns the row: the test metrics of the trainer's summary, its per-glimpse curves
    (``on_target_by_glimpse``, ``accuracy_by_glimpse``, ``auc_by_glimpse``: stopped after
    1, 2, ... glimpses; ``confidence_stop``: stopped when sure), the read costs per slide,
    ``pixels_seen`` (:func:`glimpse_pixels`), the training seconds and steps, and ``run_dir``
    (``test_slides.csv`` there lists each test slide's probabilities).
    """
    from ..config import load_config
    from ..train.trainer import Trainer

    cfg = load_config(config, [*overrides, f"train.out_dir={out}",
                               f"train.max_minutes={minutes}", f"train.threads={threads}",
                               "train.progress=false", f"name={run_name}"])
    t0 = time.perf_counter()
    s = Trainer(cfg, log=lambda *_: None).fit()
    n = int(s["test_size"])
    acc = float(s.get("test_accuracy", 0.0))
    return {"row": name, "test_slides": n, "accuracy": acc, "accuracy_se": se(acc, n),
            "balanced_accuracy": s.get("test_balanced_accuracy"), "auc": s.get("test_auc"),
            "error_stochastic": s.get("test_error_stochastic"),
            "error_m_avg": s.get("test_error_m_avg"),
            "val_error_mean": s.get("best_val_error_mean"),
            "on_target": s.get("test_on_target"), "on_tissue": s.get("test_on_tissue"),
            "on_target_by_glimpse": s.get("test_on_target_by_glimpse"),
            "accuracy_by_glimpse": s.get("test_accuracy_by_glimpse"),
            "auc_by_glimpse": s.get("test_auc_by_glimpse"),
            "confidence_stop": s.get("test_confidence_stop"),
            "pixels_decoded": s.get("test_pixels_decoded_per_slide"),
            "pixels_requested": s.get("test_pixels_requested_per_slide"),
            "pixels_seen": float(glimpse_pixels(cfg.model)),
            "seconds_per_slide": s.get("test_seconds_per_slide"),
            "seconds_open_per_slide": s.get("test_seconds_open_per_slide"),
            "train_seconds": time.perf_counter() - t0, "steps": s.get("steps"),
            "run_dir": str(out)}


def baseline_row(name: str, labels: Any, probs: Sequence[np.ndarray], costs: Sequence[dict],
                 secs: Sequence[float], train_s: float) -> dict[str, Any]:
    """A conventional baseline's row from its test slides' true ``labels``, class
    probabilities (one ``(classes,)`` array each), read counters (``measure_cold``'s) and
    seconds per decision: accuracy (argmax) and its SE, balanced accuracy, AUC (binary: of
    class 1; else the one-vs-rest mean), mean pixels and seconds per slide."""
    from ..train.slide_eval import auc_macro

    y = np.asarray(labels)
    p = np.stack(probs)
    pred = p.argmax(1)
    acc = float((pred == y).mean())
    recall = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return {"row": name, "test_slides": len(y), "accuracy": acc, "accuracy_se": se(acc, len(y)),
            "balanced_accuracy": float(np.mean(recall)),
            "auc": auc_macro(p, y, max(2, p.shape[1])),
            "pixels_decoded": float(np.mean([c["pixels_decoded"] for c in costs])),
            "pixels_requested": float(np.mean([c["pixels_requested"] for c in costs])),
            "seconds_per_slide": float(np.mean(secs)), "train_seconds": train_s}
