"""What a training run reports when it ends: the test of its best weights, ``summary.json``'s
fields, the figures and the closing log lines -- for MNIST runs and slide runs.

Metrics nothing measured (a run without validation or test slides) are ``None`` (``null`` in
JSON), never a number: 100 % would read as a model that is always wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..config import ExperimentConfig
from .evaluate import on_target_fraction, on_target_half_width, random_locations
from .slide_eval import write_slide_rows

__all__ = ["closing_lines", "measured", "mnist_test_summary", "pct", "slide_test_summary",
           "write_figures"]


class Trainer(Protocol):
    """What a report reads of a :class:`~ram_wsi.train.trainer.Trainer` that has trained."""

    cfg: ExperimentConfig
    data: Any  # TaskData | SlideTaskData
    model: nn.Module
    device: torch.device
    out_dir: Path
    history: list[dict[str, Any]]
    slides: bool
    attention: bool
    epoch: int
    step: int
    best_error: float
    slide_rollouts: Callable[..., list[dict[str, Any]]]

    def evaluate(self, split: str = "val", samples: int | None = None) -> dict[str, float]: ...


def measured(value: float) -> float | None:
    """``value``, or None when it is not a measurement (inf: nothing was ever validated)."""
    return value if value is not None and math.isfinite(value) else None


def pct(value: float | None) -> str:
    """A percentage for a log line; ``n/a`` when nothing was measured."""
    return "n/a" if value is None else f"{value:.2f}%"


def _run_fields(tr: Trainer, stop_reason: str, elapsed: float) -> dict[str, Any]:
    return {"epochs": tr.epoch, "steps": tr.step, "stop_reason": stop_reason,
            "elapsed_s": elapsed}


def mnist_test_summary(tr: Trainer, stop_reason: str, elapsed: float) -> dict[str, Any]:
    """An MNIST run's summary: the test errors of the weights held, where its glimpses land
    (on-target) and, for a learned policy, the same network with random glimpse locations."""
    test = tr.evaluate("test")
    summary = {"name": tr.cfg.name, "arch": tr.cfg.model.arch, "task": tr.data.name,
               "digits": tr.data.description, **_run_fields(tr, stop_reason, elapsed),
               "device": str(tr.device), "threads": torch.get_num_threads(),
               "best_val_error_mean": measured(tr.best_error),
               **{f"test_{k}": v for k, v in test.items()},
               "test_size": int(tr.data.test[1].shape[0])}
    if tr.attention and tr.data.test_centers is not None:
        x, y = tr.data.test
        half = on_target_half_width(tr.data.canvas)
        summary["test_on_target"] = on_target_fraction(tr.model, x, tr.data.test_centers, half)
        if not tr.model.random_glimpses:  # the ablation: same weights, random locations
            (summary["test_error_random_locations"],
             summary["test_on_target_random_locations"]) = random_locations(
                tr.model, x, y, tr.data.test_centers, half)
    return summary


def slide_test_summary(tr: Trainer, stop_reason: str, elapsed: float
                       ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A slide run's summary and its test rows (one per test slide, kept glimpses for the
    figure); the rows are also written to ``test_slides.csv``."""
    from .slide_eval import slide_metrics

    rows = tr.slide_rollouts("test", keep_glimpses=4)
    test = slide_metrics(rows, tr.data.class_names)
    summary = {"name": tr.cfg.name, "arch": tr.cfg.model.arch, "context": tr.cfg.model.context,
               "task": tr.data.name, "slides": tr.data.description,
               "class_names": tr.data.class_names, **_run_fields(tr, stop_reason, elapsed),
               "best_val_error_mean": measured(tr.best_error),
               **{f"test_{k}": v for k, v in test.items()}, "test_size": len(rows)}
    write_slide_rows(tr.out_dir / "test_slides.csv", rows, tr.data.class_names)
    return summary, rows


def write_figures(tr: Trainer, rows: list[dict[str, Any]] | None = None) -> None:
    """``curve.png`` (when any epoch was logged) and ``glimpses.png``: the test canvases'
    glimpses (MNIST), or the kept glimpses of the first test slides (``rows``)."""
    from ..viz import plot_curves, plot_glimpses, plot_slide_glimpses

    if tr.history:
        plot_curves(tr.history, tr.out_dir / "curve.png", title=tr.cfg.name)
    if rows is not None:
        shown = [r for r in rows if "glimpses" in r]
        if shown:
            plot_slide_glimpses(shown, tr.model.spec, tr.data.class_names,
                                tr.out_dir / "glimpses.png")
    elif tr.attention:
        x, y = tr.data.test
        centers = tr.data.test_centers
        plot_glimpses(tr.model, x[:6].to(tr.device), y[:6], tr.out_dir / "glimpses.png",
                      centers=None if centers is None else centers[:6])


def closing_lines(tr: Trainer, summary: dict[str, Any]) -> list[str]:
    """The closing log lines: the test errors, and (MNIST) where the glimpses landed."""
    stoch, mean, m_avg = (pct(summary[f"test_error_{k}"]) for k in ("stochastic", "mean", "m_avg"))
    m = tr.cfg.train.eval_samples
    if tr.slides:
        line = (f"test ({summary['test_size']} slides): error mean policy {mean}  stochastic "
                f"{stoch}  M={m} avg {m_avg}  balanced acc "
                f"{summary.get('test_balanced_accuracy', float('nan')):.3f}  AUC "
                f"{summary.get('test_auc', float('nan')):.3f}  "
                f"{summary.get('test_pixels_decoded_per_slide', 0) / 1e6:.2f} Mpx decoded "
                "per slide")
        return [line]
    lines = [f"test error: stochastic {stoch}  mean {mean}  M={m} avg {m_avg}  ("
             + f"{summary['test_size']} images)"]
    if "test_error_random_locations" in summary:
        lines.append(f"on target: {summary['test_on_target']:.2f} of the glimpses after the "
                     f"first; the same network with its glimpses at random locations: error "
                     f"{summary['test_error_random_locations']:.2f}%, on target "
                     f"{summary['test_on_target_random_locations']:.2f}")
    return lines
