"""What one rollout-actor call sends to the learner: a compact batch of whole episodes.

Only what the learner needs to rebuild the forward pass exactly travels: the glimpses the policy
saw (``float32``, or quantised to ``float16``/``uint8`` -- in which case the actor's policy saw the
*quantised* values too, so the replay is still exact), the raw sampled locations, the behaviour
log-probs (for the off-policy correction), labels, rewards, and the weights version that acted.
Never images or slide pixels beyond the glimpses themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

__all__ = ["EpisodeBatch", "QuantizingSensor", "dequantize", "quantize"]

_UINT8_SCALE = 255.0


def quantize(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """Glimpses in ``[0, 1]`` to their travelling form."""
    if dtype == "float32":
        return x.to(torch.float32)
    if dtype == "float16":
        return x.to(torch.float16)
    if dtype == "uint8":
        return (x.clamp(0.0, 1.0) * _UINT8_SCALE).round_().to(torch.uint8)
    raise ValueError(f"unknown glimpse dtype {dtype!r}")


def dequantize(q: torch.Tensor) -> torch.Tensor:
    """The float32 values the policy saw (the same arithmetic on the actor and the learner)."""
    if q.dtype == torch.uint8:
        return q.to(torch.float32) / _UINT8_SCALE
    return q.to(torch.float32)


class QuantizingSensor:
    """Wraps a live sensor so that the policy sees exactly what will be recorded."""

    def __init__(self, sensor: Any, dtype: str):
        self.sensor = sensor
        self.dtype = dtype

    def __call__(self, t: int, loc: torch.Tensor) -> torch.Tensor:
        g = self.sensor(t, loc)
        return g if self.dtype == "float32" else dequantize(quantize(g, self.dtype))


@dataclass
class EpisodeBatch:
    """``B`` episodes of ``T`` glimpses.

    Attributes:
        glimpses: ``(B, T, k, C, g, g)`` float32, float16 or uint8 (see :func:`dequantize`).
        locations: ``(B, T, 2)`` raw sampled locations (the sensor saw them clamped).
        behaviour_log_probs: ``(B, T)`` log pi_behaviour(l_t) (0 where not sampled).
        labels: ``(B,)`` int64.
        rewards: ``(B,)`` float32, 1 where the actor's classification was right.
        version: the weights version the actor acted with.
        context: ``(B, C, S, S)`` uint8 thumbnails the context net read (None without one):
            the learner replays the first location from them, never from the slide.
        groups: ``(B,)`` int64 slide of each episode (its index in the train split), for the
            leave-one-out baseline (``train.advantage: group``); None for MNIST.
        glimpse_labels: ``(B, T)`` int64 what lay under each glimpse (annotated slides, when
            the loss reads it: ``train.glimpse_aux_weight`` / ``target_reward``), else None.
        actor: index of the actor that produced it; ``seconds``: time spent producing it.
    """

    glimpses: torch.Tensor
    locations: torch.Tensor
    behaviour_log_probs: torch.Tensor
    labels: torch.Tensor
    rewards: torch.Tensor
    version: int
    context: torch.Tensor | None = None
    groups: torch.Tensor | None = None
    glimpse_labels: torch.Tensor | None = None
    actor: int = -1
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (
            self.glimpses, self.locations, self.behaviour_log_probs, self.labels, self.rewards,
            self.context) if t is not None)

    def float_glimpses(self) -> torch.Tensor:
        return dequantize(self.glimpses)

    def to(self, device: torch.device | str) -> EpisodeBatch:
        return replace(self, glimpses=self.glimpses.to(device),
                       locations=self.locations.to(device),
                       behaviour_log_probs=self.behaviour_log_probs.to(device),
                       labels=self.labels.to(device), rewards=self.rewards.to(device),
                       context=None if self.context is None else self.context.to(device),
                       groups=None if self.groups is None else self.groups.to(device),
                       glimpse_labels=(None if self.glimpse_labels is None
                                       else self.glimpse_labels.to(device)))

    @staticmethod
    def concat(batches: list[EpisodeBatch]) -> EpisodeBatch:
        """One batch from several (sync mode: all from the same weights version)."""
        if len(batches) == 1:
            return batches[0]
        dtypes = {b.glimpses.dtype for b in batches}
        if len(dtypes) != 1:
            raise ValueError(f"cannot concatenate glimpses of dtypes {dtypes}")
        return EpisodeBatch(
            glimpses=torch.cat([b.glimpses for b in batches]),
            locations=torch.cat([b.locations for b in batches]),
            behaviour_log_probs=torch.cat([b.behaviour_log_probs for b in batches]),
            labels=torch.cat([b.labels for b in batches]),
            rewards=torch.cat([b.rewards for b in batches]),
            version=min(b.version for b in batches),
            context=(None if batches[0].context is None else
                     torch.cat([b.context for b in batches])),
            groups=(None if batches[0].groups is None else
                    torch.cat([b.groups for b in batches])),
            glimpse_labels=(None if batches[0].glimpse_labels is None else
                            torch.cat([b.glimpse_labels for b in batches])),
            actor=-1,
            seconds=max(b.seconds for b in batches),
        )
