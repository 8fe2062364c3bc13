"""The optimiser, its learning-rate schedule and the device: what one update needs besides the
loss, shared by the single-process trainer, the Ray learner and the throughput benchmark."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ExperimentConfig
from ..models import RecurrentAttentionModel

__all__ = ["build_optimizer", "lr_factor", "resolve_device"]


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
