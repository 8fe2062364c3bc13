"""Single-process trainer: CPU or CUDA, big batches, schedule, early stopping, resumable.

Vocabulary: a *step* is one applied optimiser update (``Trainer.step`` counts them; the schedule,
the checkpoint's ``"step"`` and the summary's ``"steps"`` use that count). An *update* is one
attempt on one batch -- loss, backward, and the optimiser step unless the loss or a gradient is
not finite (then the update is skipped and counted in ``skipped_updates``). Within an episode
the model takes *glimpses* (index ``t`` in :mod:`ram_wsi.models.ram`), never steps.

The Ray learner (``ram_wsi.distributed``) reuses :meth:`Trainer.update` (learning rate, loss,
backward, clip, step), the optimiser and the checkpoint format, so the two paths cannot drift
apart.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ExperimentConfig
from ..data.datasets import TaskData, build_task_data
from ..data.episodes import (
    Episodes,
    SlideTaskData,
    build_slide_data,
    context_float,
    image_context,
    is_prepared,
    prepare_slide_data,
)
from ..io_utils import append_jsonl, write_json
from ..models import RecurrentAttentionModel, RetinaSensor, build_model
from ..models.ram import Trajectory
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import evaluate, on_target_fraction, on_target_half_width, random_locations
from .losses import LossTerms, hybrid_loss
from .slide_eval import rollout_slides, slide_metrics, write_slide_rows

__all__ = ["Trainer", "build_optimizer", "lr_factor", "resolve_device", "scoring_metadata"]

SLIDE_UPDATES_PER_EPOCH = 20  # slides: an epoch is this many updates unless steps_per_epoch


def scoring_metadata(cfg: ExperimentConfig, model: nn.Module,
                     data: TaskData | SlideTaskData) -> dict[str, Any]:
    """What scoring needs besides the weights, stated plainly in every checkpoint: the class
    names, the retina as the slides are read (units, base), the context settings, and the
    package version that wrote it."""
    from .. import __version__

    meta: dict[str, Any] = {"package_version": __version__, "data_source": cfg.data.source,
                            "channels": int(data.channels), "classes": int(data.classes)}
    if isinstance(data, SlideTaskData):
        d = cfg.data.slides
        meta["class_names"] = data.class_names
        meta["retina"] = {"patch": cfg.model.patch, "scales": cfg.model.scales,
                          "scale_factor": cfg.model.scale_factor, "base": float(d.retina_base),
                          "units": data.env.units, "frame": d.frame,
                          "thumb_size": d.thumb_size}
    else:
        meta["class_names"] = [str(i) for i in range(int(data.classes))]
    meta["context"] = {"kind": cfg.model.context, "size": cfg.model.context_size,
                       "grid": cfg.model.context_grid}
    return meta


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, total: int, schedule: str, warmup: int,
              time_frac: float | None = None) -> float:
    """Multiplier of the base learning rate after ``step`` optimiser steps of ``total``
    (paper: linear decay to 0). ``time_frac``: the fraction of a wall-clock budget spent
    (``train.max_minutes``); the schedule runs on whichever of steps and time is further
    along, so a capped run ends annealed instead of being cut at a high learning rate."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    if time_frac is not None:
        frac = max(frac, min(1.0, time_frac))
    if schedule == "linear":
        return max(0.0, 1.0 - frac)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    return 1.0


def build_optimizer(model: nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """One optimiser; the location net is its own group with ``lr * policy_lr_scale``."""
    t = cfg.train
    if isinstance(model, RecurrentAttentionModel):
        g = model.parameter_groups()
        groups = [{"params": g["supervised"] + g["baseline"], "lr_scale": 1.0},
                  {"params": g["policy"], "lr_scale": t.policy_lr_scale}]
        if g["context_policy"]:
            groups.append({"params": g["context_policy"], "lr_scale": t.context_lr_scale})
    else:
        groups = [{"params": list(model.parameters()), "lr_scale": 1.0}]
    for group in groups:
        group["lr"] = t.lr * group["lr_scale"]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)


def _log(msg: str) -> None:
    print(msg, flush=True)  # flushed: training logs are read while the run goes on


@dataclass
class StepResult:
    loss: dict[str, float]
    skipped: bool


class Trainer:
    """Trains one experiment. ``fit()`` runs to the epoch budget, early stop or time cap."""

    def __init__(self, cfg: ExperimentConfig, data: TaskData | None = None, *,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.log = log or _log
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self.slides = cfg.data.source == "slides"
        if self.slides and data is None and not is_prepared(cfg):
            # Every slide checked once, the split and the units fixed in OUT/slides.csv.
            cfg = self.cfg = prepare_slide_data(cfg, self.log)
        if data is None:
            data = build_slide_data(cfg, self.log) if self.slides else build_task_data(
                cfg, self.device)
        self.data = data
        # Parameters are initialised from a seeded generator, not the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            self.model = build_model(cfg.model, self.data.canvas, self.data.channels,
                                     self.data.classes).to(self.device)
        if t.init_from:
            self.model.load_state_dict(load_checkpoint(t.init_from, self.device)["model"])
            self.log(f"model weights from {t.init_from}")
        self.attention = isinstance(self.model, RecurrentAttentionModel)
        self.optimizer = build_optimizer(self.model, cfg)
        self.updates_per_epoch = t.steps_per_epoch or (
            SLIDE_UPDATES_PER_EPOCH if self.slides else max(1, self.data.train_size // t.batch_size))
        self.total_steps = self.updates_per_epoch * t.epochs  # the schedule's length
        self.policy_gen = torch.Generator(device=self.device).manual_seed(t.seed + 1)
        self.step = 0  # optimiser steps applied (the weights version)
        self.epoch = 0
        self.best_error = float("inf")
        self.bad_epochs = 0
        self.skipped_updates = 0  # batches whose update was skipped (non-finite)
        self.seconds_before = 0.0  # training wall seconds of earlier fits (a resumed run)
        self._fit_start: float | None = None
        self.out_dir = cfg.out_dir
        self.history: list[dict[str, Any]] = []
        self._unroll = self.model.unroll if self.attention else None
        if t.compile and self.attention:
            self._unroll = torch.compile(self.model.unroll)
        # Per-slide evaluation rollouts (:func:`rollout_slides`); the Ray runner replaces this
        # with one that runs them on its actors, so that the learner never reads a slide.
        self.slide_rollouts: Callable[[str], list[dict[str, Any]]] = self._local_slide_rollouts

    # -- one update -------------------------------------------------------------------------
    def _seconds(self) -> float:
        """Wall seconds of training so far, earlier fits (a resumed run) included."""
        return self.seconds_before + (time.time() - self._fit_start if self._fit_start else 0.0)

    def _time_frac(self) -> float | None:
        """The fraction of ``train.max_minutes`` spent (resumed runs included), or None."""
        m = self.cfg.train.max_minutes
        return None if m is None else self._seconds() / max(1e-9, 60.0 * m)

    def _set_lr(self) -> float:
        t = self.cfg.train
        lr = t.lr * lr_factor(self.step, self.total_steps, t.schedule, t.warmup_steps,
                              self._time_frac())
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def rollout(self, images: torch.Tensor, *, keep_glimpses: bool = False) -> Trajectory:
        """A live, stochastic unroll over in-memory images (with gradients)."""
        sensor = RetinaSensor(images, self.model.spec)
        size = self.model.context_size
        ctx = None if size is None else context_float(image_context(images, size))
        return self._unroll(sensor, images.shape[0], generator=self.policy_gen,
                            keep_glimpses=keep_glimpses, context=ctx)

    def _advantage_groups(self, ids) -> torch.Tensor | None:
        """``ids`` ``(B,)`` (the slide or canvas of each episode) as the group baseline's
        groups on this device, or None: the learned baseline (``train.advantage`` not group,
        or no ids)."""
        if self.cfg.train.advantage != "group" or ids is None:
            return None
        return torch.as_tensor(ids, device=self.device)

    def episode_loss(self, ep: Episodes) -> LossTerms:
        """The hybrid loss of a live batch of episodes (slides: glimpses read lazily)."""
        amp = self.cfg.train.amp and self.device.type == "cuda"
        ctx = ep.model_context()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            traj = self._unroll(ep.sensor, len(ep), generator=self.policy_gen,
                                start=None if ep.start is None else ep.start.to(self.device),
                                context=None if ctx is None else ctx.to(self.device))
            return hybrid_loss(traj, ep.labels.to(self.device),
                               rl_weight=self.cfg.train.rl_weight,
                               baseline_weight=self.cfg.train.baseline_weight,
                               reward=self.cfg.train.reward,
                               groups=self._advantage_groups(ep.slide_idx))

    def loss(self, images: torch.Tensor, labels: torch.Tensor,
             groups: torch.Tensor | None = None) -> LossTerms:
        """The loss of one batch (hybrid for RAM, cross-entropy for the whole-image rows);
        ``groups`` ``(B,)``: which canvas each episode is on (``train.advantage: group``)."""
        amp = self.cfg.train.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            if self.attention:
                traj = self.rollout(images)
                return hybrid_loss(traj, labels, rl_weight=self.cfg.train.rl_weight,
                                   baseline_weight=self.cfg.train.baseline_weight,
                                   reward=self.cfg.train.reward,
                                   groups=self._advantage_groups(groups))
            logits = self.model(images)
        ce = nn.functional.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        zero = ce.new_zeros(())
        return LossTerms(ce, ce, zero, zero, acc)

    def update(self, loss_fn: Callable[[], LossTerms]) -> StepResult:
        """One update, in the order it happens: learning rate, loss, backward, clip, step.

        ``loss_fn`` builds the loss of one batch: a live rollout here, a replay of recorded
        episodes in the Ray learner -- the only difference between the two modes. The step is
        skipped (counted, logged) when the loss or the gradient norm is not finite.
        """
        self._set_lr()
        terms = loss_fn()
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(terms.total):
            return self._skip(terms, "non-finite loss")
        terms.total.backward()
        clip = self.cfg.train.grad_clip
        norm = nn.utils.clip_grad_norm_(self.model.parameters(),
                                        clip if clip else float("inf"))
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip(terms, "non-finite gradient")
        self.optimizer.step()
        self.step += 1
        return StepResult(terms.as_dict(), False)

    def _skip(self, terms: LossTerms, why: str) -> StepResult:
        self.skipped_updates += 1
        self.log(f"step {self.step}: {why}, batch skipped")
        return StepResult(terms.as_dict(), True)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor,
                   groups: torch.Tensor | None = None) -> StepResult:
        """One update on ``(images, labels)``: an optimiser step unless it is skipped."""
        return self.update(lambda: self.loss(images, labels, groups))

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, split: str = "val", samples: int | None = None) -> dict[str, float]:
        if self.slides:
            return slide_metrics(self.slide_rollouts(split), self.data.class_names)
        t = self.cfg.train
        x, y = self.data.val if split == "val" else self.data.test
        if samples is None:
            samples = t.val_samples if split == "val" and t.val_samples else t.eval_samples
        return evaluate(self.model, x, y, samples=samples, seed=t.seed + 7)

    def _local_slide_rollouts(self, split: str, keep_glimpses: int = 0,
                              samples: int | None = None) -> list[dict[str, Any]]:
        slides = self.data.val if split == "val" else self.data.test
        # The test counts what one decision decodes from cold caches; validation during
        # training keeps the training slides' blocks cached.
        return rollout_slides(self.model, slides, samples=samples or self.cfg.train.eval_samples,
                              seed=self.cfg.train.seed + 7, keep_glimpses=keep_glimpses,
                              cold=split == "test")

    @staticmethod
    def selection_error(errors: dict[str, float]) -> float:
        """Model selection uses the deterministic mean-policy error."""
        return errors["error_mean"]

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best_error": self.best_error,
            "bad_epochs": self.bad_epochs,
            "seconds": self._seconds(),
            "policy_rng": self.policy_gen.get_state(),
            "data_rng": self.data.sampler.state_dict()["generator"],
            "config": self.cfg.to_dict(),
            **scoring_metadata(self.cfg, self.model, self.data),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.best_error = float(state["best_error"])
        self.bad_epochs = int(state["bad_epochs"])
        self.seconds_before = float(state.get("seconds", 0.0))
        self.policy_gen.set_state(state["policy_rng"])
        self.data.sampler.load_state_dict({"generator": state["data_rng"]})

    def save(self, name: str = "last.pt") -> Path:
        return save_checkpoint(self.out_dir / name, self.state_dict())

    def resume(self, path: str | Path | None = None) -> bool:
        """Resume from ``path`` (default: the run's ``last.pt``). False when there is none."""
        p = Path(path) if path else self.out_dir / "last.pt"
        if not p.is_file():
            return False
        self.load_state_dict(load_checkpoint(p, map_location=self.device))
        self.log(f"resumed from {p} at epoch {self.epoch}, step {self.step}")
        return True

    # -- the loop ---------------------------------------------------------------------------
    def _local_update(self) -> dict[str, float]:
        b = self.cfg.train.batch_size
        if self.slides:
            ep = self.data.env.episodes(b)
            return self.update(lambda: self.episode_loss(ep)).loss
        m = self.cfg.data.mnist.episodes_per_image
        if m > 1 and self.attention:
            x, y, image = self.data.sampler.sample_repeated(b, m)
            return self.train_step(x, y, image).loss
        x, y = self.data.sampler.sample(b)[:2]
        return self.train_step(x, y).loss

    def fit(self, until_epoch: int | None = None, *,
            update: Callable[[], dict[str, float]] | None = None,
            epoch_stats: Callable[[float], dict[str, Any]] | None = None,
            summary_extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Train until the epoch budget, early stopping, or ``max_minutes``; then test.

        ``until_epoch`` stops early at that epoch (an interruption, as far as the schedule and
        the checkpoint are concerned: a later ``resume()`` + ``fit()`` continues exactly).
        ``update`` replaces the local update (the Ray runner passes one that takes a batch from
        its actors and returns the loss terms); ``epoch_stats`` adds to each metrics row and
        ``summary_extra`` to the summary -- one epoch loop for both kinds of training.
        """
        from tqdm.auto import tqdm

        t = self.cfg.train
        update = update or self._local_update
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "config.json", self.cfg.to_dict())
        metrics_path = self.out_dir / "metrics.jsonl"
        start = self._fit_start = time.time()
        stop_reason = "epochs"
        self.model.train()
        last = min(t.epochs, until_epoch) if until_epoch else t.epochs
        while self.epoch < last:
            t0 = time.time()
            sums: dict[str, float] = {}
            bar = tqdm(range(self.updates_per_epoch), desc=f"epoch {self.epoch + 1}/{t.epochs}",
                       disable=not (t.progress and sys.stderr.isatty()), leave=False)
            for _ in bar:
                loss = update()
                for k, v in loss.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{loss['total']:.3f}", acc=f"{loss['accuracy']:.3f}")
            train_time = time.time() - t0
            self.epoch += 1
            errors = self.evaluate("val")
            sel = self.selection_error(errors)
            improved = sel < self.best_error - 1e-9
            if improved:
                self.best_error = sel
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            row = {"epoch": self.epoch, "step": self.step,
                   "lr": self.optimizer.param_groups[0]["lr"],
                   **{f"train_{k}": v / self.updates_per_epoch for k, v in sums.items()},
                   **{f"val_{k}": v for k, v in errors.items()},
                   "images_per_s": self.updates_per_epoch * t.batch_size / max(train_time, 1e-9),
                   "skipped_updates": self.skipped_updates, "elapsed_s": time.time() - start,
                   "seconds": self._seconds(),  # the run's clock: earlier fits of a resume too
                   **(epoch_stats(train_time) if epoch_stats else {})}
            self.history.append(row)
            append_jsonl(metrics_path, row)
            self.log(f"epoch {self.epoch}: loss {row['train_total']:.3f} "
                     f"train-acc {row['train_accuracy']:.3f} val err (mean policy) "
                     f"{errors['error_mean']:.2f}% stoch {errors['error_stochastic']:.2f}% "
                     f"{row['images_per_s']:.0f} img/s")
            if improved:
                self.save("best.pt")
            self.save("last.pt")
            # A time-capped run trains to its cap: its schedule anneals over the budget and the
            # last, low-rate minutes are where the error falls most (a noisy validation minimum
            # met halfway would otherwise end it before them).
            if t.max_minutes is None and self.bad_epochs >= t.patience:
                stop_reason = "early_stopping"
                break
            if t.max_minutes is not None and (self._time_frac() or 0.0) >= 1.0:
                stop_reason = "time_cap"
                break
        self.seconds_before = self._seconds()
        self._fit_start = None
        return self.finish(stop_reason, time.time() - start,
                           summary_extra() if summary_extra else None)

    def finish(self, stop_reason: str, elapsed: float, extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
        """Reload the best weights, evaluate on the test split, write summary and figures."""
        from ..viz import plot_curves

        best = self.out_dir / "best.pt"
        if best.is_file():
            self.model.load_state_dict(load_checkpoint(best, self.device)["model"])
        if self.slides:
            return self._finish_slides(stop_reason, elapsed, extra)
        test = self.evaluate("test")
        summary = {"name": self.cfg.name, "arch": self.cfg.model.arch, "task": self.data.name,
                   "digits": self.data.description, "epochs": self.epoch, "steps": self.step,
                   "stop_reason": stop_reason, "elapsed_s": elapsed,
                   "device": str(self.device), "threads": torch.get_num_threads(),
                   "best_val_error_mean": self.best_error,
                   **{f"test_{k}": v for k, v in test.items()},
                   "test_size": int(self.data.test[1].shape[0])}
        if self.attention and self.data.test_centers is not None:
            x, _ = self.data.test
            half = on_target_half_width(self.data.canvas)
            summary["test_on_target"] = on_target_fraction(self.model, x, self.data.test_centers,
                                                           half)
            if not self.model.random_glimpses:  # the ablation: same weights, random locations
                (summary["test_error_random_locations"],
                 summary["test_on_target_random_locations"]) = random_locations(
                    self.model, x, self.data.test[1], self.data.test_centers, half)
        summary.update(extra or {})
        write_json(self.out_dir / "summary.json", summary)
        if self.history:
            plot_curves(self.history, self.out_dir / "curve.png", title=self.cfg.name)
        if self.attention:
            from ..viz import plot_glimpses

            x, y = self.data.test
            centers = self.data.test_centers
            plot_glimpses(self.model, x[:6].to(self.device), y[:6],
                          self.out_dir / "glimpses.png",
                          centers=None if centers is None else centers[:6])
        self.log(f"test error: stochastic {test['error_stochastic']:.2f}%  mean "
                 f"{test['error_mean']:.2f}%  M={self.cfg.train.eval_samples} avg "
                 f"{test['error_m_avg']:.2f}%  ({summary['test_size']} images)")
        if "test_error_random_locations" in summary:
            self.log(f"on target: {summary['test_on_target']:.2f} of the glimpses after the "
                     f"first; the same network with its glimpses at random locations: error "
                     f"{summary['test_error_random_locations']:.2f}%, on target "
                     f"{summary['test_on_target_random_locations']:.2f}")
        return summary

    def _finish_slides(self, stop_reason: str, elapsed: float,
                       extra: dict[str, Any] | None) -> dict[str, Any]:
        """The slide run's test: metrics, one row per test slide, the glimpse figure."""
        from ..viz import plot_curves, plot_slide_glimpses

        rows = self.slide_rollouts("test", keep_glimpses=4)
        test = slide_metrics(rows, self.data.class_names)
        summary = {"name": self.cfg.name, "arch": self.cfg.model.arch,
                   "context": self.cfg.model.context, "task": self.data.name,
                   "slides": self.data.description, "class_names": self.data.class_names,
                   "epochs": self.epoch, "steps": self.step, "stop_reason": stop_reason,
                   "elapsed_s": elapsed, "best_val_error_mean": self.best_error,
                   **{f"test_{k}": v for k, v in test.items()}, "test_size": len(rows),
                   **(extra or {})}
        write_json(self.out_dir / "summary.json", summary)
        write_slide_rows(self.out_dir / "test_slides.csv", rows, self.data.class_names)
        if self.history:
            plot_curves(self.history, self.out_dir / "curve.png", title=self.cfg.name)
        shown = [r for r in rows if "glimpses" in r]
        if shown:
            plot_slide_glimpses(shown, self.model.spec, self.data.class_names,
                                self.out_dir / "glimpses.png")
        self.log(f"test ({len(rows)} slides): error mean policy {test['error_mean']:.2f}%  "
                 f"stochastic {test['error_stochastic']:.2f}%  M={self.cfg.train.eval_samples}"
                 f" avg {test['error_m_avg']:.2f}%  balanced acc "
                 f"{test.get('balanced_accuracy', float('nan')):.3f}  AUC "
                 f"{test.get('auc', float('nan')):.3f}  "
                 f"{test.get('pixels_decoded_per_slide', 0) / 1e6:.2f} Mpx decoded per slide")
        return summary
