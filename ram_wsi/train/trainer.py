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

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ExperimentConfig
from ..data.datasets import TaskData, build_task_data
from ..data.episodes import (
    Episodes,
    MnistEnv,
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
from .checkpoint import load_checkpoint, save_checkpoint, scoring_metadata
from .evaluate import evaluate
from .losses import LossTerms, hybrid_loss
from .optim import build_optimizer, lr_factor, resolve_device
from .report import closing_lines, mnist_test_summary, pct, slide_test_summary, write_figures
from .slide_eval import rollout_slides, slide_metrics

__all__ = ["Trainer", "build_optimizer", "lr_factor", "resolve_device", "scoring_metadata"]

SLIDE_UPDATES_PER_EPOCH = 20  # slides: an epoch is this many updates unless steps_per_epoch


def _log(msg: str) -> None:
    print(msg, flush=True)  # flushed: training logs are read while the run goes on


@dataclass
class StepResult:
    loss: dict[str, float]
    skipped: bool


@dataclass
class EpochRun:
    """What one epoch's training loop did: its updates, their summed loss terms, its seconds,
    and whether it ended at the time cap."""

    updates: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    capped: bool = False

    def add(self, loss: dict[str, float]) -> None:
        self.updates += 1
        for k, v in loss.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        return {f"train_{k}": v / max(1, self.updates) for k, v in self.sums.items()}


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
        self.data = self._task_data(data)
        cfg = self.cfg
        self.model = self._build_model()
        self.attention = isinstance(self.model, RecurrentAttentionModel)
        self.env = self.data.env if self.slides else MnistEnv(
            cfg, t.seed, sampler=self.data.sampler, whole_images=not self.attention)
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
        self.train_seconds: float | None = None  # the run's clock when training stopped
        self.updates_past_cap = 0  # updates that ended after train.max_minutes
        self.out_dir = cfg.out_dir
        self.history: list[dict[str, Any]] = []
        self._unroll = self.model.unroll if self.attention else None
        if t.compile and self.attention:
            self._unroll = torch.compile(self.model.unroll)
        # Per-slide evaluation rollouts (:func:`rollout_slides`); the Ray runner replaces this
        # with one that runs them on its actors, so that the learner never reads a slide.
        self.slide_rollouts: Callable[[str], list[dict[str, Any]]] = self.local_slide_rollouts
        if self.slides:
            self._warn_unmeasured()

    def _task_data(self, data: TaskData | None) -> TaskData | SlideTaskData:
        """``data``, or the config's: slides checked once (the split and the units fixed in
        ``OUT/slides.csv``, which becomes the config's manifest), or the digit task."""
        if data is not None:
            return data
        if not self.slides:
            return build_task_data(self.cfg, self.device)
        if not is_prepared(self.cfg):
            self.cfg = prepare_slide_data(self.cfg, self.log)
        return build_slide_data(self.cfg, self.log)

    def _build_model(self) -> nn.Module:
        """The config's model on this device, initialised from a seeded generator (not the
        global RNG), or from ``train.init_from``'s weights."""
        t = self.cfg.train
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            model = build_model(self.cfg.model, self.data.canvas, self.data.channels,
                                self.data.classes).to(self.device)
        if t.init_from:
            model.load_state_dict(load_checkpoint(t.init_from, self.device)["model"])
            self.log(f"model weights from {t.init_from}")
        return model

    def _warn_unmeasured(self) -> None:
        """Said at the start: a split without slides measures nothing, so its metrics will be
        null (and without validation nothing selects the weights)."""
        if not len(self.data.val):
            self.log("warning: no validation slides: nothing selects the weights (best.pt is "
                     "the last epoch's) and best_val_error_mean will be null")
        if not len(self.data.test):
            self.log("warning: no test slides: the test metrics will be null")

    # -- the clock --------------------------------------------------------------------------
    def _seconds(self) -> float:
        """Wall seconds of training so far, earlier fits (a resumed run) included."""
        return self.seconds_before + (time.time() - self._fit_start if self._fit_start else 0.0)

    def _time_frac(self) -> float | None:
        """The fraction of ``train.max_minutes`` spent (resumed runs included), or None."""
        m = self.cfg.train.max_minutes
        return None if m is None else self._seconds() / max(1e-9, 60.0 * m)

    def over_cap(self) -> bool:
        """Whether ``train.max_minutes`` is spent: checked before every update, so that no
        update starts after the cap (the Ray runner checks again when a batch arrives)."""
        return (self._time_frac() or 0.0) >= 1.0

    def _cap_fields(self) -> dict[str, Any]:
        """``summary.json``'s account of the clock: the seconds trained, and for a capped run
        how long past the cap the end took (the update in flight, validation, checkpoints,
        the test) and how many updates ended past it."""
        m = self.cfg.train.max_minutes
        out: dict[str, Any] = {"train_seconds": self.train_seconds}
        if m is not None:
            out.update(max_minutes=m, seconds_over_cap=max(0.0, self._seconds() - 60.0 * m),
                       updates_past_cap=self.updates_past_cap)
        return out

    # -- one update -------------------------------------------------------------------------
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

    @property
    def uses_annotation(self) -> bool:
        """Whether the loss reads what lies under each glimpse (``train.glimpse_aux_weight``,
        ``train.target_reward``: annotated slides only)."""
        t = self.cfg.train
        return t.glimpse_aux_weight > 0 or t.target_reward > 0

    def loss_options(self, ids, glimpse_labels: torch.Tensor | None = None) -> dict[str, Any]:
        """The keyword arguments of :func:`hybrid_loss` this run's config sets, for a batch on
        slides / canvases ``ids`` with ``glimpse_labels`` (or None): one place for the live
        loss here and the Ray learner's replay."""
        t = self.cfg.train
        return {"rl_weight": t.rl_weight, "baseline_weight": t.baseline_weight,
                "reward": t.reward, "groups": self._advantage_groups(ids),
                "glimpse_labels": (None if glimpse_labels is None
                                   else torch.as_tensor(glimpse_labels, device=self.device)),
                "glimpse_weight": t.glimpse_aux_weight, "target_reward": t.target_reward,
                "step_loss": t.step_loss}

    def _advantage_groups(self, ids) -> torch.Tensor | None:
        """``ids`` ``(B,)`` (the slide or canvas of each episode) as the group baseline's
        groups on this device, or None: the learned baseline (``train.advantage`` not group,
        or no ids)."""
        if self.cfg.train.advantage != "group" or ids is None:
            return None
        return torch.as_tensor(ids, device=self.device)

    def episode_loss(self, ep: Episodes) -> LossTerms:
        """The hybrid loss of a live batch of episodes (MNIST canvases or slides, whose
        glimpses are read lazily); a whole-image model's cross-entropy on ``ep.images``."""
        if not self.attention:
            return self.loss(ep.images, ep.labels)
        amp = self.cfg.train.amp and self.device.type == "cuda"
        ctx = ep.model_context()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            traj = self._unroll(ep.sensor, len(ep), generator=self.policy_gen,
                                start=None if ep.start is None else ep.start.to(self.device),
                                context=None if ctx is None else ctx.to(self.device))
            under = ep.glimpse_labels(traj.locations) if self.uses_annotation else None
            return hybrid_loss(traj, ep.labels.to(self.device),
                               **self.loss_options(ep.slide_idx, under))

    def loss(self, images: torch.Tensor, labels: torch.Tensor,
             groups: torch.Tensor | None = None) -> LossTerms:
        """The loss of one batch (hybrid for RAM, cross-entropy for the whole-image rows);
        ``groups`` ``(B,)``: which canvas each episode is on (``train.advantage: group``)."""
        amp = self.cfg.train.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            if self.attention:
                traj = self.rollout(images)
                return hybrid_loss(traj, labels, **self.loss_options(groups))
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

    def local_slide_rollouts(self, split: str, keep_glimpses: int = 0,
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
        """One update on a fresh batch of this process's episodes (MNIST or slides)."""
        ep = self.env.episodes(self.cfg.train.batch_size)
        return self.update(lambda: self.episode_loss(ep)).loss

    def fit(self, until_epoch: int | None = None, *,
            update: Callable[[], dict[str, float] | None] | None = None,
            epoch_stats: Callable[[float], dict[str, Any]] | None = None,
            summary_extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Train until the epoch budget, early stopping, or ``max_minutes``; then test.

        ``until_epoch`` stops early at that epoch (an interruption, as far as the schedule and
        the checkpoint are concerned: a later ``resume()`` + ``fit()`` continues exactly).
        ``update`` replaces the local update (the Ray runner passes one that takes a batch from
        its actors and returns the loss terms, or None when the cap passed while it waited);
        ``epoch_stats`` adds to each metrics row and ``summary_extra`` to the summary -- one
        epoch loop for both kinds of training. The time cap is checked before every update;
        once it is spent the run validates, checkpoints and tests once.
        """
        t = self.cfg.train
        update = update or self._local_update
        self._begin_fit()
        start = self._fit_start
        stop_reason = "epochs"
        last = min(t.epochs, until_epoch) if until_epoch else t.epochs
        while self.epoch < last:
            done = self._train_epoch(update)
            if done.updates:
                self.epoch += 1
                self._end_epoch(done, time.time() - start, epoch_stats)
            stop_reason = self._stop_reason(done) or stop_reason
            if stop_reason != "epochs":
                break
        self.train_seconds = self._seconds()
        try:
            return self.finish(stop_reason, time.time() - start,
                               summary_extra() if summary_extra else None)
        finally:
            self.seconds_before = self._seconds()
            self._fit_start = None

    def _begin_fit(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.out_dir / "config.json", self.cfg.to_dict())
        self._fit_start = time.time()
        self.model.train()

    def _train_epoch(self, update: Callable[[], dict[str, float] | None]) -> EpochRun:
        """Up to ``updates_per_epoch`` updates; none starts once the time cap is spent."""
        from tqdm.auto import tqdm

        t = self.cfg.train
        run = EpochRun()
        t0 = time.time()
        with tqdm(total=self.updates_per_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}",
                  disable=not (t.progress and sys.stderr.isatty()), leave=False) as bar:
            while run.updates < self.updates_per_epoch:
                if self.over_cap():
                    run.capped = True
                    break
                loss = update()
                if loss is None:  # the cap passed while the batch was on its way
                    run.capped = True
                    break
                run.add(loss)
                self.updates_past_cap += self.over_cap()
                bar.update(1)
                bar.set_postfix(loss=f"{loss['total']:.3f}", acc=f"{loss['accuracy']:.3f}")
        run.seconds = time.time() - t0
        return run

    def _end_epoch(self, done: EpochRun, elapsed: float,
                   epoch_stats: Callable[[float], dict[str, Any]] | None) -> None:
        """Validate, log the metrics row, write ``best.pt`` (when better) and ``last.pt``."""
        t = self.cfg.train
        errors = self.evaluate("val")
        improved = self._select(errors)
        row = {"epoch": self.epoch, "step": self.step, "updates": done.updates,
               "lr": self.optimizer.param_groups[0]["lr"], **done.means(),
               **{f"val_{k}": v for k, v in errors.items()},
               "images_per_s": done.updates * t.batch_size / max(done.seconds, 1e-9),
               "skipped_updates": self.skipped_updates, "elapsed_s": elapsed,
               "seconds": self._seconds(),  # the run's clock: earlier fits of a resume too
               **(epoch_stats(done.seconds) if epoch_stats else {})}
        self.history.append(row)
        append_jsonl(self.out_dir / "metrics.jsonl", row)
        self.log(f"epoch {self.epoch}: loss {row.get('train_total', float('nan')):.3f} "
                 f"train-acc {row.get('train_accuracy', float('nan')):.3f} val err (mean "
                 f"policy) {pct(errors['error_mean'])} stoch {pct(errors['error_stochastic'])} "
                 f"{row['images_per_s']:.0f} img/s")
        if improved:
            self.save("best.pt")
        self.save("last.pt")

    def _select(self, errors: dict[str, Any]) -> bool:
        """Whether this epoch's weights become ``best.pt``: a lower validation error, or
        (nothing validated: no validation slides) always, the latest weights standing in."""
        sel = self.selection_error(errors)
        if sel is None:
            return True
        if sel < self.best_error - 1e-9:
            self.best_error = sel
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    def _stop_reason(self, done: EpochRun) -> str | None:
        """Why training stops after this epoch, or None. A time-capped run trains to its cap:
        its schedule anneals over the budget and the last, low-rate minutes are where the error
        falls most (a noisy validation minimum met halfway would otherwise end it before
        them); patience is for uncapped runs."""
        t = self.cfg.train
        if t.max_minutes is not None:
            return "time_cap" if done.capped or self.over_cap() else None
        return "early_stopping" if self.bad_epochs >= t.patience else None

    def finish(self, stop_reason: str, elapsed: float, extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
        """Reload the best weights, test them, write ``summary.json`` (with the clock's
        account: :meth:`_cap_fields`) and the figures."""
        best = self.out_dir / "best.pt"
        if best.is_file():
            self.model.load_state_dict(load_checkpoint(best, self.device)["model"])
        rows = None
        if self.slides:
            summary, rows = slide_test_summary(self, stop_reason, elapsed)
        else:
            summary = mnist_test_summary(self, stop_reason, elapsed)
        summary.update(extra or {})
        summary.update(self._cap_fields())
        write_json(self.out_dir / "summary.json", summary)
        write_figures(self, rows)
        for line in closing_lines(self, summary):
            self.log(line)
        return summary
