"""The hybrid loss: cross-entropy + REINFORCE with a learned baseline + baseline regression.

* cross-entropy trains the action, core and glimpse nets (locations are detached inputs);
* ``-sum_t log pi(l_t | h_{t-1}) * (R - b_t)`` trains the location net (the advantage is
  detached, and the policy reads ``h.detach()``, so nothing else moves);
* ``(R - b_t)^2`` trains the baseline (it reads ``h.detach()``, and is detached in the advantage).

The reward is 1 for a correct final classification (the paper's), or ``log p(label)``
(``reward="log_prob"``, beyond the paper). On annotated slides two more terms are available
(beyond the paper, training only): a per-glimpse cross-entropy of the model's glimpse head
against what lies under each glimpse (``glimpse_labels``: 0 no lesion, ``c + 1`` the lesion of
a class-``c`` slide, -1 unknown), and ``target_reward`` per glimpse on the lesion, added to the
return of every location chosen before it (``G_t = R + target_reward * hits from t on``). For off-policy batches (the
asynchronous Ray mode) the policy term is weighted by a clipped importance ratio
``min(rho_clip, pi / mu)`` of the whole trajectory, as in V-trace/IMPALA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.ram import Trajectory

__all__ = ["LossTerms", "glimpse_loss", "group_baseline", "hybrid_loss", "returns",
           "rewards_from_logits", "step_rewards"]


@dataclass
class LossTerms:
    total: torch.Tensor
    classification: torch.Tensor
    reinforce: torch.Tensor
    baseline: torch.Tensor
    accuracy: torch.Tensor  # mean of the 0/1 reward: accuracy of the stochastic rollout
    glimpse: torch.Tensor | None = None  # the per-glimpse cross-entropy, when trained
    anytime: torch.Tensor | None = None  # the cross-entropy after glimpses 1..T-1, when trained

    def as_dict(self) -> dict[str, float]:
        out = {k: float(getattr(self, k).detach()) for k in
               ("total", "classification", "reinforce", "baseline", "accuracy")}
        for k in ("glimpse", "anytime"):
            if getattr(self, k) is not None:
                out[k] = float(getattr(self, k).detach())
        return out


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


def step_rewards(step_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` what each glimpse earns under ``reward="log_prob_steps"``: ``log p_s(label)``
    of the classifier read after glimpse ``s``, over ``T`` (their sum is on the scale of the
    final ``log_prob`` reward); detached."""
    t = step_logits.shape[1]
    ce = F.cross_entropy(step_logits.detach().float().transpose(1, 2),
                         labels[:, None].expand(-1, t), reduction="none")
    return -ce / t


def returns(reward: torch.Tensor, glimpse_labels: torch.Tensor | None,
            target_reward: float) -> torch.Tensor:
    """``(B, T)`` return of the location chosen at each glimpse: the final ``reward`` ``(B,)``
    (or, given per glimpse ``(B, T)``, the sum of what the glimpses from that one on earn),
    plus ``target_reward`` for each glimpse from that one on that lies on the lesion
    (``glimpse_labels > 0``)."""
    if reward.dim() == 2:
        out = reward.flip(1).cumsum(1).flip(1)
    else:
        out = reward[:, None].expand(-1, 1 if glimpse_labels is None else glimpse_labels.shape[1])
    if glimpse_labels is None or target_reward <= 0:
        return out
    hits = (glimpse_labels > 0).to(reward.dtype)
    to_go = hits.flip(1).cumsum(1).flip(1)
    return out + target_reward * to_go


def glimpse_loss(traj: Trajectory, glimpse_labels: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy of the glimpse head over the glimpses whose label is known (>= 0);
    None without the head or the labels."""
    if traj.glimpse_logits is None or glimpse_labels is None:
        return None
    known = glimpse_labels >= 0
    if not bool(known.any()):
        return traj.glimpse_logits.sum() * 0.0
    return F.cross_entropy(traj.glimpse_logits[known].float(), glimpse_labels[known])


def hybrid_loss(traj: Trajectory, labels: torch.Tensor, *, rl_weight: float = 1.0,
                baseline_weight: float = 1.0, behaviour_log_probs: torch.Tensor | None = None,
                rho_clip: float = 1.0, reward: str = "correct",
                groups: torch.Tensor | None = None,
                glimpse_labels: torch.Tensor | None = None, glimpse_weight: float = 0.0,
                target_reward: float = 0.0, step_loss: float = 0.0) -> LossTerms:
    """The paper's hybrid objective for one batch of trajectories.

    Args:
        traj: the unroll (live, or replayed from recorded glimpses).
        labels: ``(B,)`` class indices.
        behaviour_log_probs: ``(B, T)`` log-probs under the policy that *acted*, for off-policy
            correction; None when the batch is on-policy.
        rho_clip: clip of the importance ratio.
        reward: ``correct`` (the paper's 0/1), ``log_prob`` (``log p(label)``, detached) or
            ``log_prob_steps`` (per glimpse, :func:`step_rewards`; needs ``traj.step_logits``).
        groups: ``(B,)`` ids of episodes on the same input: REINFORCE's baseline is then the
            mean reward of the *other* episodes of the group (leave-one-out), the learned
            baseline where a group has one episode. None: the learned baseline (the paper).
        glimpse_labels: ``(B, T)`` what lies under each glimpse (annotated slides), or None.
        glimpse_weight: the weight of the glimpse head's cross-entropy.
        target_reward: the reward of a glimpse on the lesion (see :func:`returns`).
        step_loss: the weight of the mean cross-entropy of the classifier read after glimpses
            ``1..T-1`` (an anytime classifier; the final one is always trained).
    """
    ce = F.cross_entropy(traj.logits.float(), labels)
    correct = rewards_from_logits(traj.logits, labels)  # (B,)
    if reward == "log_prob_steps":
        reward = step_rewards(traj.step_logits, labels)
    elif reward == "log_prob":
        reward = -F.cross_entropy(traj.logits.detach().float(), labels, reduction="none")
    else:
        reward = correct
    mask = traj.policy_mask.to(traj.log_probs.dtype)  # (T,)
    ret = returns(reward, glimpse_labels, target_reward).to(traj.log_probs.dtype)
    ret = ret.expand(-1, traj.log_probs.shape[1])  # (B, T)
    base_t = traj.baselines.detach()
    if groups is not None:
        loo = torch.stack([group_baseline(ret[:, t], groups) for t in range(ret.shape[1])], 1)
        base_t = torch.where(torch.isfinite(loo), loo, base_t)
    adv = (ret - base_t) * mask
    logp = traj.log_probs * mask
    if behaviour_log_probs is not None:
        log_ratio = (logp.detach() - behaviour_log_probs * mask).sum(1)
        rho = torch.exp(log_ratio).clamp(max=rho_clip)
        adv = adv * rho[:, None]
    reinforce = -(logp * adv).sum(1).mean()
    base = (((ret - traj.baselines) ** 2) * mask).sum(1).mean()
    total = ce + rl_weight * reinforce + baseline_weight * base
    aux = glimpse_loss(traj, glimpse_labels) if glimpse_weight > 0 else None
    if aux is not None:
        total = total + glimpse_weight * aux
    early = None
    if step_loss > 0 and traj.step_logits is not None and traj.step_logits.shape[1] > 1:
        first = traj.step_logits[:, :-1].float()
        early = F.cross_entropy(first.reshape(-1, first.shape[-1]),
                                labels.repeat_interleave(first.shape[1]))
        total = total + step_loss * early
    return LossTerms(total, ce, reinforce, base, correct.mean(), aux, early)
