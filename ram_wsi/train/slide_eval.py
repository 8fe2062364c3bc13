"""Evaluation on held-out slides: per-slide rollouts, then slide-level metrics.

Two stages, so that the process that reads slides (a rollout actor, or the single-process
trainer) need not be the one that computes metrics (the Ray learner never reads a slide):

* :func:`rollout_slides` runs, per slide, one mean-policy episode and ``M`` sampled ones and
  returns one plain :class:`dict` per slide (probabilities, the path, on-tissue / on-target,
  what was read -- measured by the source's counters, the thumbnail included);
* :func:`slide_metrics` turns those rows into accuracy, balanced accuracy, AUC (binary; macro
  one-vs-rest for more classes), the confusion matrix, the three errors reported separately
  (stochastic M=1, mean policy, M-averaged), on-tissue and on-target fractions, pixels and
  seconds per slide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.episodes import slide_episodes
from ..data.slides import SlideSet
from ..models import RecurrentAttentionModel

__all__ = ["auc_binary", "auc_macro", "confidence_stop", "rollout_slide", "rollout_slides", "slide_metrics", "write_slide_rows"]

_COUNT_KEYS = ("pixels_decoded", "pixels_requested", "bytes_read", "blocks_decoded")


@torch.no_grad()
def rollout_slides(model: RecurrentAttentionModel, slides: SlideSet,
                   indices: list[int] | None = None, *, samples: int = 10, seed: int = 1234,
                   keep_glimpses: int = 0, cold: bool = True,
                   stop_at: float | None = None) -> list[dict[str, Any]]:
    """One row per slide of ``indices`` (default all), in that order (:func:`rollout_slide`
    on each, one RNG for the whole set).

    Args:
        samples: M, the sampled rollouts per slide (the first is the stochastic M=1 decision).
        seed: the episodes' RNG (starts, sampled locations): the same seed, the same rows.
        keep_glimpses: keep the mean-policy glimpses (uint8) of the first this-many slides
            (for the glimpse figure).
        cold: drop the process's block caches before each slide, so that ``pixels_decoded``
            is what one decision on a slide not seen before decodes.
        stop_at: a confidence stop for every rollout (:meth:`RecurrentAttentionModel.unroll`).
    """
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    rng = np.random.default_rng(seed)
    return [rollout_slide(model, slides, int(i), samples=samples, gen=gen, rng=rng,
                          keep_glimpses=n < keep_glimpses, cold=cold, stop_at=stop_at)
            for n, i in enumerate(range(len(slides)) if indices is None else indices)]


@torch.no_grad()
def rollout_slide(model: RecurrentAttentionModel, slides: SlideSet, i: int, *, samples: int,
                  gen: torch.Generator, rng: np.random.Generator, keep_glimpses: bool = False,
                  cold: bool = True, stop_at: float | None = None) -> dict[str, Any]:
    """Slide ``i``'s row: one mean-policy episode, then ``samples`` sampled ones.

    The row holds ``probs_mean`` ``(classes,)``, ``probs_samples`` ``(M, classes)``, the mean
    path (``path_frame``, ``path_px``: ``(T, 2)``), the frame, the windows in level-0 px,
    on-tissue (and on-target) fractions, and costs two ways: ``seconds`` and the counters of
    :data:`_COUNT_KEYS` are what the mean-policy decision alone costs (opening included: "one
    decision"); ``seconds_total`` and ``<counter>_total`` include the M sampled rollouts.
    ``seconds_open`` / ``seconds_glimpses`` split the decision's time (the rest is the model).
    A slide that cannot be read gives a row with ``error`` set (and no probabilities).
    With ``stop_at`` each rollout decides at its first glimpse that sure: its path and the
    on-target fractions end there (``on_target_by_glimpse`` is NaN past every rollout's stop),
    ``probs_by_glimpse`` holds the decision from the stop on, ``glimpses_read`` counts what
    was read.
    """
    from ..errors import SlideError

    was_training = model.training
    model.eval()
    rec = slides.records[i]
    row: dict[str, Any] = {"index": int(i), "path": rec.path, "label": int(rec.label)}
    try:
        runs = _roll(model, slides, i, samples, gen, rng, keep_glimpses, cold, stop_at)
    except SlideError as exc:
        row["error"] = str(exc)
        return row
    finally:
        model.train(was_training)
    paths = _paths(runs)  # each rollout's locations up to its decision, the mean policy's first
    row.update(_decision_fields(runs, paths, slides))
    row.update(_on_target(runs.view, paths, model))
    # The mean policy's decision had it stopped after k glimpses (k = 1 .. T); with a
    # confidence stop, the decision it stopped at from there on.
    steps = torch.softmax(runs.mean.step_logits[0].float(), -1).cpu()
    n = int(paths[0].shape[0])
    steps = torch.cat([steps[:n], steps[n - 1:n].expand(model.cfg.glimpses - n, -1)])
    row["probs_by_glimpse"] = steps.numpy()
    row["glimpses_read"] = sum(int(t.locations.shape[0] * t.locations.shape[1])
                               for t in (runs.mean, runs.stoch))
    if runs.mean.glimpses is not None:
        row["glimpses"] = (runs.mean.glimpses[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if runs.view.preview is not None:  # held-out and scored slides: for figures, thumbnails
        row["preview"] = runs.view.preview.numpy()
    return row


def _paths(runs: _Rollouts) -> list[torch.Tensor]:
    """Each rollout's ``(n, 2)`` frame locations (clamped; the mean policy's first, then the
    M sampled), up to the glimpse its decision read (all T without a confidence stop)."""
    out = []
    for traj in (runs.mean, runs.stoch):
        locs = traj.locations.clamp(-1, 1).cpu()
        used = [locs.shape[1]] * locs.shape[0] if traj.used is None else traj.used.tolist()
        out += [locs[j, :u] for j, u in enumerate(used)]
    return out


def _on_target(view, paths: list[torch.Tensor], model: RecurrentAttentionModel
               ) -> dict[str, Any]:
    """On an annotated slide: ``on_target_by_glimpse`` (glimpse 1, 2, ... over the rollouts
    that read it; NaN where none did) and ``on_target`` (the learned glimpses only: the first
    is the start rule's in the paper's model, the context net's choice in ours)."""
    hit = view.on_target(torch.cat(paths))  # one call for every rollout, then split back
    if hit is None:
        return {}
    hits = hit.double().split([len(p) for p in paths])
    by = [[float(h[k]) for h in hits if len(h) > k] for k in range(model.cfg.glimpses)]
    first = 0 if model.context is not None else 1
    learned = torch.cat([h[first:] for h in hits])
    return {"on_target_by_glimpse": [float(np.mean(v)) if v else float("nan") for v in by],
            "on_target": float(learned.mean()) if len(learned) else float("nan")}


@dataclass
class _Rollouts:
    """One slide's mean-policy decision and its M sampled rollouts, with what each cost."""

    view: Any  # the slide's SlideView
    mean: Any  # Trajectory of the mean policy (1 episode)
    stoch: Any  # Trajectory of the M sampled episodes
    t_mean: float  # seconds of the decision (without opening)
    t_all: float  # seconds of the decision and the sampled rollouts
    read_s: float  # of t_mean, reading glimpses
    read_s_m: float  # of the rest, reading glimpses
    read: dict[str, int]  # the source's counters after the decision
    read_all: dict[str, int]  # and after the sampled rollouts


def _roll(model: RecurrentAttentionModel, slides: SlideSet, i: int, samples: int,
          gen: torch.Generator, rng: np.random.Generator, keep_glimpses: bool,
          cold: bool, stop_at: float | None = None) -> _Rollouts:
    """Open slide ``i`` (caches dropped first when ``cold``), then the mean-policy decision
    alone -- what "one decision" costs -- then ``samples`` sampled rollouts."""
    from ..slide import clear_caches

    dev = next(model.parameters()).device
    if cold:
        clear_caches()
    view = slides.view(i)  # opened once per process; its cost is the view's own
    src = view.source
    src.reset_counters()
    t0 = time.perf_counter()
    mean, read_s = _run(model, slides, i, 1, "mean", gen, rng, dev, keep=keep_glimpses,
                        stop_at=stop_at)
    read = src.counters
    t_mean = time.perf_counter() - t0
    stoch, read_s_m = _run(model, slides, i, samples, "sample", gen, rng, dev, stop_at=stop_at)
    return _Rollouts(view, mean, stoch, t_mean, time.perf_counter() - t0, read_s, read_s_m,
                     read, src.counters)


def _decision_fields(runs: _Rollouts, paths: list[torch.Tensor], slides: SlideSet
                     ) -> dict[str, Any]:
    """The row's probabilities, mean path, where it looked and what it cost (module
    docstring of :func:`rollout_slide`)."""
    view, src = runs.view, runs.view.source
    path = paths[0]
    return {
        "probs_mean": torch.softmax(runs.mean.logits.float(), -1)[0].cpu().numpy(),
        "probs_samples": torch.softmax(runs.stoch.logits.float(), -1).cpu().numpy(),
        "path_frame": path.numpy(),
        "path_px": view.frame.to_pixels(path.double()).numpy(),
        "on_tissue": float(view.on_tissue(torch.cat(paths)).mean()),
        "tissue_fraction": view.mask.fraction,
        "seconds": view.open_seconds + runs.t_mean,
        "seconds_open": view.open_seconds,  # of which: opening, thumbnail, mask, frame
        "seconds_glimpses": runs.read_s,  # and reading the glimpses (the rest is the model)
        "seconds_total": view.open_seconds + runs.t_all,
        "seconds_glimpses_total": runs.read_s + runs.read_s_m,
        "frame": view.frame.as_dict(),
        "dimensions": [int(v) for v in src.dimensions],
        "windows_px": [float(w) for w in _windows_px(src, slides)],
        **{k: int(runs.read[k] + view.open_counters[k]) for k in _COUNT_KEYS},
        **{f"{k}_total": int(runs.read_all[k] + view.open_counters[k]) for k in _COUNT_KEYS},
    }


def _windows_px(source, slides: SlideSet) -> list[float]:
    """Each scale's window side in level-0 pixels on this slide (units resolved)."""
    spec = source._px_spec(slides.spec, slides.units)
    return [spec.window(j) for j in range(spec.scales)]


def _run(model, slides: SlideSet, i: int, b: int, policy: str, gen, rng, dev, keep=False,
         stop_at: float | None = None):
    """``b`` episodes on slide ``i``: the trajectory and the seconds spent reading glimpses."""
    ep = slide_episodes(slides, np.full(b, i), rng)
    ctx = ep.model_context()
    traj = model.unroll(ep.sensor, b, policy=policy, generator=gen, start=ep.start,
                        context=None if ctx is None else ctx.to(dev), keep_glimpses=keep,
                        stop_at=stop_at)
    return traj, ep.sensor.seconds


def auc_binary(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney U,
    ties counted half); NaN when one class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_macro(probs: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Binary AUC of class 1 for two classes; else the mean one-vs-rest AUC over the classes
    present."""
    if classes == 2:
        return auc_binary(probs[:, 1], labels == 1)
    vals = [auc_binary(probs[:, c], labels == c) for c in range(classes)]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def slide_metrics(rows: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    """Slide-level metrics of :func:`rollout_slides` rows (errors in percent, like MNIST's);
    the errors are None when no slide was read (an empty split, or every slide failed)."""
    classes = max(2, len(class_names))
    ok = [r for r in rows if "error" not in r]
    out: dict[str, Any] = {"slides": len(rows), "slides_failed": len(rows) - len(ok)}
    if not ok:  # nothing measured (no slides, or none read): no error, not 100 %
        return {**out, "error_mean": None, "error_stochastic": None, "error_m_avg": None}
    y = np.asarray([r["label"] for r in ok])
    p_mean = np.stack([r["probs_mean"] for r in ok])
    p_first = np.stack([r["probs_samples"][0] for r in ok])
    p_avg = np.stack([r["probs_samples"].mean(0) for r in ok])
    for name, p in (("mean", p_mean), ("stochastic", p_first), ("m_avg", p_avg)):
        out[f"error_{name}"] = 100.0 * float((p.argmax(1) != y).mean())
    pred = p_mean.argmax(1)
    conf = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    recall = [conf[c, c] / conf[c].sum() for c in range(classes) if conf[c].sum()]
    out.update({
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.mean(recall)),
        "auc": auc_macro(p_mean, y, classes),
        "auc_m_avg": auc_macro(p_avg, y, classes),
        "confusion": conf.tolist(),  # rows: true class, columns: predicted (mean policy)
        "on_tissue": float(np.mean([r["on_tissue"] for r in ok])),
        "seconds_per_slide": float(np.mean([r["seconds"] for r in ok])),
        "seconds_open_per_slide": float(np.mean([r["seconds_open"] for r in ok])),
        **{f"{k}_per_slide": float(np.mean([r[k] for r in ok])) for k in _COUNT_KEYS},
    })
    hits = [r["on_target"] for r in ok if "on_target" in r]
    if hits:
        out["on_target"] = float(np.mean(hits))
        by = [r["on_target_by_glimpse"] for r in ok if "on_target_by_glimpse" in r]
        out["on_target_by_glimpse"] = np.nanmean(by, 0).round(4).tolist()
    out.update(_by_glimpse(ok, y, classes))
    return out


def _by_glimpse(ok: list[dict[str, Any]], y: np.ndarray, classes: int) -> dict[str, list]:
    """Accuracy and AUC of the mean-policy decision after k = 1 .. T glimpses (the classifier
    read after each glimpse of the same path): what each later glimpse adds."""
    steps = [r["probs_by_glimpse"] for r in ok if "probs_by_glimpse" in r]
    if len(steps) != len(ok) or not steps:
        return {}
    p = np.stack(steps)  # (N, T, classes)
    acc = [float((p[:, k].argmax(-1) == y).mean()) for k in range(p.shape[1])]
    auc = [auc_macro(p[:, k], y, classes) for k in range(p.shape[1])]
    return {"accuracy_by_glimpse": [round(a, 4) for a in acc],
            "auc_by_glimpse": [round(float(a), 4) if np.isfinite(a) else None for a in auc],
            "confidence_stop": confidence_stop(p, y)}


STOP_LEVELS = (0.7, 0.8, 0.9, 0.95)


def confidence_stop(p: np.ndarray, y: np.ndarray,
                    levels: tuple[float, ...] = STOP_LEVELS) -> list[dict[str, float]]:
    """What stopping at the first glimpse whose decision is at least ``level`` sure would
    have given (the last glimpse when none is): accuracy and glimpses spent per slide, one
    dict per level. ``p`` ``(N, T, classes)``: the mean policy's classifier after each
    glimpse; ``y`` ``(N,)``. Easy slides stop early, hard ones read on: fewer pixels for the
    same decisions when the classifier's confidence after k glimpses means something
    (``train.step_loss`` trains it to)."""
    n, t = p.shape[:2]
    out = []
    for level in levels:
        sure = p.max(-1) >= level  # (N, T)
        stop = np.where(sure.any(1), sure.argmax(1), t - 1)
        pred = p[np.arange(n), stop].argmax(-1)
        out.append({"level": level, "accuracy": round(float((pred == y).mean()), 4),
                    "glimpses": round(float((stop + 1).mean()), 3)})
    return out


def write_slide_rows(path, rows: list[dict[str, Any]], class_names: list[str]) -> None:
    """One CSV line per evaluated slide: its label, the mean-policy decision and
    probabilities, the M-averaged probabilities, where it looked and what it read."""
    import csv
    import io

    from ..io_utils import atomic_open

    names = list(class_names)
    head = ["path", "label", "predicted", *[f"prob_{c}" for c in names],
            *[f"prob_m_avg_{c}" for c in names], "on_tissue", "on_target", *_COUNT_KEYS,
            "seconds", "seconds_open", "error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    for r in rows:
        if "error" in r:
            w.writerow([r["path"], names[r["label"]], "", *[""] * (2 * len(names)), "", "",
                        *[""] * len(_COUNT_KEYS), "", "", r["error"]])
            continue
        pm, pa = r["probs_mean"], r["probs_samples"].mean(0)
        w.writerow([r["path"], names[r["label"]], names[int(pm.argmax())],
                    *[f"{v:.6f}" for v in pm[:len(names)]],
                    *[f"{v:.6f}" for v in pa[:len(names)]], f"{r['on_tissue']:.4f}",
                    "" if "on_target" not in r else f"{r['on_target']:.4f}",
                    *[r[k] for k in _COUNT_KEYS], f"{r['seconds']:.4f}",
                    f"{r['seconds_open']:.4f}", ""])
    with atomic_open(path) as fh:
        fh.write(buf.getvalue())
