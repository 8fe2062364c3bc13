"""The Recurrent Attention Model (Mnih et al. 2014), paper-faithful and configurable.

Gradient routing is the part public implementations get wrong, so it is explicit here:

* the sampled location is detached, so classification gradients never reach the location net;
* the location net reads ``h.detach()`` and the baseline reads ``h.detach()``, so REINFORCE trains
  the location net only and the squared-error loss trains the baseline only;
* no stop-gradient sits on the policy mean itself, so REINFORCE does reach the location net.

:meth:`RecurrentAttentionModel.unroll` is the single code path for acting and learning: a rollout
actor calls it with a live sensor and sampled locations; a learner calls it with a
:class:`ReplaySensor` over recorded glimpses and the recorded locations, and gets bit-for-bit the
same graph, hence the same gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..config import ModelConfig
from ..retina import RetinaSpec, build_pyramid, glimpse

__all__ = [
    "CoreNetwork",
    "GlimpseNetwork",
    "LocationNetwork",
    "RecurrentAttentionModel",
    "ReplaySensor",
    "RetinaSensor",
    "Sensor",
    "Trajectory",
]


class Sensor(Protocol):
    """Returns the glimpse ``(B, k, C, g, g)`` seen at glimpse ``t`` from locations ``(B, 2)``."""

    def __call__(self, t: int, loc: torch.Tensor) -> torch.Tensor: ...


class ReplaySensor:
    """A sensor that returns recorded glimpses: the learner never re-reads an image."""

    def __init__(self, glimpses: torch.Tensor):
        self.glimpses = glimpses  # (B, T, k, C, g, g)

    def __call__(self, t: int, loc: torch.Tensor) -> torch.Tensor:
        return self.glimpses[:, t]


@dataclass
class Trajectory:
    """What one unroll produced.

    Attributes:
        locations: ``(B, T, 2)`` raw sampled locations (before clamping to ``[-1, 1]``); the
            sensor saw ``locations.clamp(-1, 1)``.
        means: ``(B, T, 2)`` policy means (glimpse 0: the first-location rule's value).
        log_probs: ``(B, T)`` log-density of each location under the policy; 0 at glimpse 0 and
            wherever the location was not sampled from the policy.
        baselines: ``(B, T)`` baseline ``b(h_{t-1})`` for the location chosen at glimpse ``t``.
        logits: ``(B, classes)`` from the last hidden state.
        glimpses: ``(B, T, k, C, g, g)`` when kept (rollout actors send them to the learner).
        policy_mask: ``(T,)`` float, 1 where the location was drawn from the learned policy.
    """

    locations: torch.Tensor
    means: torch.Tensor
    log_probs: torch.Tensor
    baselines: torch.Tensor
    logits: torch.Tensor
    policy_mask: torch.Tensor
    glimpses: torch.Tensor | None = None


class GlimpseNetwork(nn.Module):
    """g = ReLU(Lin(h_g) + Lin(h_l)), h_g = ReLU(Lin(rho)), h_l = ReLU(Lin(l))."""

    def __init__(self, glimpse_features: int, hg: int = 128, hl: int = 128, out: int = 256):
        super().__init__()
        self.fc_g = nn.Linear(glimpse_features, hg)
        self.fc_l = nn.Linear(2, hl)
        self.out_g = nn.Linear(hg, out)
        self.out_l = nn.Linear(hl, out)

    def forward(self, rho: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        hg = torch.relu(self.fc_g(rho.flatten(1)))
        hl = torch.relu(self.fc_l(loc))
        return torch.relu(self.out_g(hg) + self.out_l(hl))


class CoreNetwork(nn.Module):
    """h_t = ReLU(Lin(h_{t-1}) + Lin(g_t)) (paper), or an LSTM cell."""

    def __init__(self, kind: str, inp: int, hidden: int):
        super().__init__()
        self.kind = kind
        self.hidden = hidden
        if kind == "rnn":
            self.fc_h = nn.Linear(hidden, hidden)
            self.fc_g = nn.Linear(inp, hidden)
        else:
            self.cell = nn.LSTMCell(inp, hidden)

    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, ...]:
        h = torch.zeros(batch, self.hidden, device=device, dtype=dtype)
        return (h,) if self.kind == "rnn" else (h, torch.zeros_like(h))

    def forward(self, g: torch.Tensor, state: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, ...]:
        if self.kind == "rnn":
            return (torch.relu(self.fc_h(state[0]) + self.fc_g(g)),)
        h, c = self.cell(g, state)
        return (h, c)


class LocationNetwork(nn.Module):
    """Gaussian policy with fixed std; the mean is a linear function of h (bounded to [-1, 1])."""

    def __init__(self, hidden: int, std: float, bound: str = "tanh"):
        super().__init__()
        self.fc = nn.Linear(hidden, 2)
        self.std = float(std)
        self.bound = bound

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu = self.fc(h)
        if self.bound == "tanh":
            return torch.tanh(mu)
        if self.bound == "clamp":
            return mu.clamp(-1.0, 1.0)
        return mu

    def log_prob(self, mean: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        var = self.std**2
        return (-((loc - mean) ** 2) / (2 * var) - math.log(self.std)
                - 0.5 * math.log(2 * math.pi)).sum(-1)


class RecurrentAttentionModel(nn.Module):
    """RAM: glimpse net, core, location net, action net, baseline."""

    def __init__(self, cfg: ModelConfig, channels: int = 1, classes: int = 10):
        super().__init__()
        self.cfg = cfg
        self.spec: RetinaSpec = cfg.retina()
        feat = cfg.scales * channels * cfg.patch * cfg.patch
        self.glimpse_net = GlimpseNetwork(feat, cfg.glimpse_hidden, cfg.loc_hidden,
                                          cfg.glimpse_out)
        self.core = CoreNetwork(cfg.core, cfg.glimpse_out, cfg.hidden)
        self.locator = LocationNetwork(cfg.hidden, cfg.loc_std, cfg.loc_mean)
        self.baseline = nn.Linear(cfg.hidden, 1)
        self.classifier = nn.Linear(cfg.hidden, classes)
        self.random_glimpses = cfg.arch == "ram_random"

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role: which loss may move them."""
        return {
            "supervised": [*self.glimpse_net.parameters(), *self.core.parameters(),
                           *self.classifier.parameters()],
            "policy": list(self.locator.parameters()),
            "baseline": list(self.baseline.parameters()),
        }

    def _first_location(self, batch: int, device: torch.device, dtype: torch.dtype,
                        generator: torch.Generator | None) -> tuple[torch.Tensor, bool]:
        if self.cfg.first_location == "center" and not self.random_glimpses:
            return torch.zeros(batch, 2, device=device, dtype=dtype), False
        u = torch.rand(batch, 2, device=device, dtype=dtype, generator=generator)
        return u * 2.0 - 1.0, False

    def unroll(self, sensor: Sensor, batch: int, *, policy: str = "sample",
               locations: torch.Tensor | None = None, generator: torch.Generator | None = None,
               keep_glimpses: bool = False, device: torch.device | None = None,
               dtype: torch.dtype = torch.float32, start: torch.Tensor | None = None
               ) -> Trajectory:
        """Run ``T`` glimpses.

        Args:
            sensor: ``sensor(t, loc)`` -> glimpse. Live (retina over images or a slide) or a
                :class:`ReplaySensor`.
            batch: batch size.
            policy: ``sample`` (stochastic, training and the M=1 error), ``mean`` (deterministic
                mean policy), or ``random`` (uniform locations; the random-glimpse agent).
            locations: ``(B, T, 2)`` recorded raw locations to replay instead of sampling.
            generator: RNG for sampling (actors and tests pass their own; nothing global).
            keep_glimpses: keep the glimpse tensors in the trajectory.
            start: ``(B, 2)`` first locations to use instead of the first-location rule (a
                slide episode starts inside tissue); ignored when ``locations`` is given.
        """
        if device is None:
            device = next(self.parameters()).device
        if self.random_glimpses:
            policy = "random"
        n_glimpses = self.cfg.glimpses
        state = self.core.initial_state(batch, device, dtype)
        locs, means, logps, bases, kept = [], [], [], [], []
        mask = torch.zeros(n_glimpses, device=device)
        for t in range(n_glimpses):
            if t == 0:
                if start is not None:
                    mean = start.to(device=device, dtype=dtype)
                else:
                    mean, _ = self._first_location(batch, device, dtype, generator)
                loc = mean if locations is None else locations[:, 0]
                logp = torch.zeros(batch, device=device, dtype=dtype)
                base = torch.zeros(batch, device=device, dtype=dtype)
            else:
                h_in = state[0].detach()
                base = self.baseline(h_in).squeeze(-1)
                if policy == "random":
                    mean = torch.zeros(batch, 2, device=device, dtype=dtype)
                    loc = (torch.rand(batch, 2, device=device, dtype=dtype, generator=generator)
                           * 2.0 - 1.0) if locations is None else locations[:, t]
                    logp = torch.zeros(batch, device=device, dtype=dtype)
                else:
                    mean = self.locator(h_in)
                    if locations is not None:
                        loc = locations[:, t]
                    elif policy == "mean":
                        loc = mean.detach()
                    else:
                        noise = torch.randn(batch, 2, device=device, dtype=dtype,
                                            generator=generator)
                        loc = (mean + self.locator.std * noise).detach()
                    logp = self.locator.log_prob(mean, loc.detach())
                    mask[t] = 1.0
            loc = loc.detach()
            rho = sensor(t, loc.clamp(-1.0, 1.0))
            if keep_glimpses:
                kept.append(rho)
            g = self.glimpse_net(rho, loc.clamp(-1.0, 1.0))
            state = self.core(g, state)
            locs.append(loc)
            means.append(mean)
            logps.append(logp)
            bases.append(base)
        logits = self.classifier(state[0])
        return Trajectory(
            locations=torch.stack(locs, 1),
            means=torch.stack(means, 1),
            log_probs=torch.stack(logps, 1),
            baselines=torch.stack(bases, 1),
            logits=logits,
            policy_mask=mask,
            glimpses=torch.stack(kept, 1) if keep_glimpses else None,
        )


class RetinaSensor:
    """The live sensor over a batch of in-memory images: one pyramid, reused for every glimpse."""

    def __init__(self, images: torch.Tensor, spec: RetinaSpec, fill: float = 0.0):
        self.spec = spec
        self.fill = fill
        self.pyramid = build_pyramid(images, spec, fill)

    def __call__(self, t: int, loc: torch.Tensor) -> torch.Tensor:
        return glimpse(self.pyramid, loc, self.spec, self.fill)
