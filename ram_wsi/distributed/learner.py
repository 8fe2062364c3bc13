"""The learner: replays recorded episodes exactly and updates through the single-process Trainer.

The forward pass is rebuilt from the recorded glimpses and raw locations with
``model.unroll(ReplaySensor(glimpses), B, locations=locations)`` -- the very graph a live unroll
builds -- and the loss is :func:`~ram_wsi.train.losses.hybrid_loss`. Backward, gradient
clipping, the non-finite guard, the optimiser and the learning-rate schedule are
:meth:`Trainer.update`: one optimisation code path for both modes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.episodes import context_float
from ..models.ram import ReplaySensor, Trajectory
from ..train.losses import LossTerms, hybrid_loss
from ..train.trainer import Trainer
from .batch import EpisodeBatch

__all__ = ["Learner"]


class Learner:
    """Wraps a :class:`Trainer`; the trainer's ``step`` (optimiser steps applied) is the
    weights version."""

    def __init__(self, trainer: Trainer, rho_clip: float = 1.0):
        self.trainer = trainer
        self.rho_clip = float(rho_clip)

    @property
    def version(self) -> int:
        return self.trainer.step

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    def replay(self, batch: EpisodeBatch) -> Trajectory:
        """The differentiable unroll of recorded episodes (on the learner's device)."""
        b = batch.to(self.device)
        ctx = None if b.context is None else context_float(b.context)
        return self.trainer.model.unroll(ReplaySensor(b.float_glimpses()), len(b),
                                         locations=b.locations.float(), context=ctx)

    def loss(self, batch: EpisodeBatch, off_policy: bool = False) -> LossTerms:
        """Hybrid loss of a batch; ``off_policy`` weights REINFORCE by the clipped
        trajectory importance ratio against the recorded behaviour log-probs."""
        cfg = self.trainer.cfg.train
        amp = cfg.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            traj = self.replay(batch)
            return hybrid_loss(
                traj, batch.labels.to(self.device),
                behaviour_log_probs=(batch.behaviour_log_probs.to(self.device)
                                     if off_policy else None),
                rho_clip=self.rho_clip,
                **self.trainer.loss_options(batch.groups, batch.glimpse_labels))

    def update(self, batch: EpisodeBatch, off_policy: bool = False
               ) -> tuple[bool, dict[str, float]]:
        """One update on ``batch``: an optimiser step, or skipped, counted and logged when the
        loss or a gradient is not finite."""
        result = self.trainer.update(lambda: self.loss(batch, off_policy))
        return not result.skipped, result.loss

    def weights(self) -> dict[str, Any]:
        """A CPU copy of the model's state dict, for ``ray.put``."""
        return {k: v.detach().to("cpu", copy=True)
                for k, v in self.trainer.model.state_dict().items()}
