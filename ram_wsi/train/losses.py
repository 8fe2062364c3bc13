"""The hybrid loss: cross-entropy + REINFORCE with a learned baseline + baseline regression.

* cross-entropy trains the action, core and glimpse nets (locations are detached inputs);
* ``-sum_t log pi(l_t | h_{t-1}) * (R - b_t)`` trains the location net (the advantage is
  detached, and the policy reads ``h.detach()``, so nothing else moves);
* ``(R - b_t)^2`` trains the baseline (it reads ``h.detach()``, and is detached in the advantage).

The reward is 1 for a correct final classification (the paper's), or ``log p(label)``
(``reward="log_prob"``, beyond the paper). For off-policy batches (the
asynchronous Ray mode) the policy term is weighted by a clipped importance ratio
``min(rho_clip, pi / mu)`` of the whole trajectory, as in V-trace/IMPALA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.ram import Trajectory

__all__ = ["LossTerms", "group_baseline", "hybrid_loss", "rewards_from_logits"]


@dataclass
class LossTerms:
    total: torch.Tensor
    classification: torch.Tensor
    reinforce: torch.Tensor
    baseline: torch.Tensor
    accuracy: torch.Tensor  # mean of the 0/1 reward: accuracy of the stochastic rollout

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in
                ("total", "classification", "reinforce", "baseline", "accuracy")}


def rewards_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where the final classification is correct, else 0.0 (no gradient)."""
    return (logits.detach().argmax(-1) == labels).to(logits.dtype)


def group_baseline(reward: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean reward of the other episodes of each episode's group (NaN for a group of
    one): an unbiased baseline that needs no learning (it does not depend on the episode's own
    actions)."""
    _, inv = torch.unique(groups, return_inverse=True)
    n = torch.zeros(int(inv.max()) + 1, dtype=reward.dtype, device=reward.device)
    total = torch.zeros_like(n)
    n.index_add_(0, inv, torch.ones_like(reward))
    total.index_add_(0, inv, reward)
    others = n[inv] - 1
    return torch.where(others > 0, (total[inv] - reward) / others.clamp(min=1),
                       torch.full_like(reward, float("nan")))


def hybrid_loss(traj: Trajectory, labels: torch.Tensor, *, rl_weight: float = 1.0,
                baseline_weight: float = 1.0, behaviour_log_probs: torch.Tensor | None = None,
                rho_clip: float = 1.0, reward: str = "correct",
                groups: torch.Tensor | None = None) -> LossTerms:
    """The paper's hybrid objective for one batch of trajectories.

    Args:
        traj: the unroll (live, or replayed from recorded glimpses).
        labels: ``(B,)`` class indices.
        behaviour_log_probs: ``(B, T)`` log-probs under the policy that *acted*, for off-policy
            correction; None when the batch is on-policy.
        rho_clip: clip of the importance ratio.
        reward: ``correct`` (the paper's 0/1) or ``log_prob`` (``log p(label)``, detached).
        groups: ``(B,)`` ids of episodes on the same input: REINFORCE's baseline is then the
            mean reward of the *other* episodes of the group (leave-one-out), the learned
            baseline where a group has one episode. None: the learned baseline (the paper).
    """
    ce = F.cross_entropy(traj.logits.float(), labels)
    correct = rewards_from_logits(traj.logits, labels)  # (B,)
    if reward == "log_prob":
        reward = -F.cross_entropy(traj.logits.detach().float(), labels, reduction="none")
    else:
        reward = correct
    mask = traj.policy_mask.to(traj.log_probs.dtype)  # (T,)
    base_t = traj.baselines.detach()
    if groups is not None:
        loo = group_baseline(reward, groups)
        base_t = torch.where(torch.isfinite(loo)[:, None], loo[:, None], base_t)
    adv = (reward[:, None] - base_t) * mask
    logp = traj.log_probs * mask
    if behaviour_log_probs is not None:
        log_ratio = (logp.detach() - behaviour_log_probs * mask).sum(1)
        rho = torch.exp(log_ratio).clamp(max=rho_clip)
        adv = adv * rho[:, None]
    reinforce = -(logp * adv).sum(1).mean()
    base = (((reward[:, None] - traj.baselines) ** 2) * mask).sum(1).mean()
    total = ce + rl_weight * reinforce + baseline_weight * base
    return LossTerms(total, ce, reinforce, base, correct.mean())
