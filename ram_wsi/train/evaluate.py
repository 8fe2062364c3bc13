"""Evaluation: the three errors the paper's numbers can mean, reported separately.

* ``stochastic``: one rollout with sampled locations (M=1) -- what the policy really does;
* ``mean``: locations set to the policy mean (deterministic);
* ``m_avg``: class probabilities averaged over M sampled rollouts -- can hide a poor policy, so it
  is never reported alone.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.tasks import DIGIT_SIZE
from ..models import RecurrentAttentionModel, RetinaSensor

__all__ = ["ON_TARGET_HALF_PX", "evaluate", "on_target_fraction", "on_target_half_width",
           "random_locations"]

ON_TARGET_HALF_PX = DIGIT_SIZE / 2
"""14 px: half a 28-px MNIST digit. A glimpse centred within this many canvas pixels of the
digit's centre (per axis) lies inside the digit's 28x28 box, i.e. it is on target."""


def on_target_half_width(canvas: int) -> float:
    """:data:`ON_TARGET_HALF_PX` (14 px, half a 28-px digit) in ``[-1, 1]`` units of a square
    canvas of side ``canvas`` pixels: the ``half_width`` of :func:`on_target_fraction`."""
    return ON_TARGET_HALF_PX / (canvas / 2)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, samples: int = 10,
             batch_size: int = 1000, seed: int = 1234) -> dict[str, float]:
    """Errors in percent on a fixed set. Non-attention models report one error thrice."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    wrong = {"stochastic": 0, "mean": 0, "m_avg": 0}
    n = images.shape[0]
    for i in range(0, n, batch_size):
        x = images[i:i + batch_size].to(dev)
        y = labels[i:i + batch_size].to(dev)
        if isinstance(model, RecurrentAttentionModel):
            sensor = RetinaSensor(x, model.spec)
            b = x.shape[0]
            t_mean = model.unroll(sensor, b, policy="mean", generator=gen)
            wrong["mean"] += int((t_mean.logits.argmax(-1) != y).sum())
            probs = 0.0
            for m in range(samples):
                t = model.unroll(sensor, b, policy="sample", generator=gen)
                if m == 0:
                    wrong["stochastic"] += int((t.logits.argmax(-1) != y).sum())
                probs = probs + torch.softmax(t.logits.float(), -1)
            wrong["m_avg"] += int((probs.argmax(-1) != y).sum())
        else:
            err = int((model(x).argmax(-1) != y).sum())
            for k in wrong:
                wrong[k] += err
    model.train(was_training)
    return {f"error_{k}": 100.0 * v / max(n, 1) for k, v in wrong.items()}


def _hits(traj, centers: torch.Tensor, half_width: float) -> torch.Tensor:
    """``(B, T-1)`` bool: the 2nd to T-th glimpses centred within ``half_width`` of ``centers``."""
    locs = traj.locations[:, 1:].clamp(-1, 1)
    return ((locs - centers[:, None]).abs() <= half_width).all(-1)


@torch.no_grad()
def on_target_fraction(model: RecurrentAttentionModel, images: torch.Tensor,
                       centers: torch.Tensor, half_width: float, *, policy: str = "sample",
                       batch_size: int = 1000, seed: int = 4321) -> float:
    """Fraction of the policy's glimpses (the 2nd to the T-th) centred within ``half_width``
    (in [-1, 1] units, per axis; :func:`on_target_half_width` for a digit) of the target's
    centre: did the agent learn *where* to look?"""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    hits, total = 0, 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(dev)
        traj = model.unroll(RetinaSensor(x, model.spec), x.shape[0], policy=policy,
                            generator=gen)
        inside = _hits(traj, centers[i:i + batch_size].to(dev), half_width)
        hits += int(inside.sum())
        total += inside.numel()
    return hits / max(total, 1)


@torch.no_grad()
def random_locations(model: RecurrentAttentionModel, images: torch.Tensor,
                     labels: torch.Tensor, centers: torch.Tensor, half_width: float, *,
                     batch_size: int = 1000, seed: int = 999) -> tuple[float, float]:
    """``(error %, on-target fraction)`` of the same trained network when its glimpses go to
    uniformly random locations, from one pass: what the learned policy is worth to *this*
    classifier. An ablation, not the paper's random-glimpse agent: that one is trained on
    random glimpses (``model.arch: ram_random``) and does better than this network, which never
    learned to use them. On-target as in :func:`on_target_fraction`."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    wrong, hits, total = 0, 0, 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(dev)
        t = model.unroll(RetinaSensor(x, model.spec), x.shape[0], policy="random", generator=gen)
        wrong += int((t.logits.argmax(-1) != labels[i:i + batch_size].to(dev)).sum())
        inside = _hits(t, centers[i:i + batch_size].to(dev), half_width)
        hits += int(inside.sum())
        total += inside.numel()
    model.train(was_training)
    return 100.0 * wrong / max(images.shape[0], 1), hits / max(total, 1)
