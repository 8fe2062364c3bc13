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

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.distributions import Categorical, Normal

from ..config import ModelConfig
from ..retina import RetinaSpec, build_pyramid, glimpse

__all__ = [
    "ContextNetwork",
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
        policy_mask: ``(T,)`` float, 1 where the location was drawn from the learned policy
            (glimpse 0 too when a context net chose it).
        glimpse_logits: ``(B, T, classes + 1)`` what lies under each glimpse (``model.glimpse_aux``:
            0 no lesion, ``c + 1`` a class-``c`` lesion), None without the head.
        used: ``(B,)`` int64, the glimpses each episode's decision read when the unroll stopped
            on confidence (``stop_at``; ``logits`` is the classifier after that many), else None.
        step_logits: ``(B, T, classes)`` the classifier read after each glimpse (the last is
            ``logits``): accuracy against the number of glimpses, and the anytime loss and
            reward (``train.step_loss``, ``reward="log_prob_steps"``).
    """

    locations: torch.Tensor
    means: torch.Tensor
    log_probs: torch.Tensor
    baselines: torch.Tensor
    logits: torch.Tensor
    policy_mask: torch.Tensor
    glimpses: torch.Tensor | None = None
    glimpse_logits: torch.Tensor | None = None
    step_logits: torch.Tensor | None = None
    used: torch.Tensor | None = None


class GlimpseNetwork(nn.Module):
    """g = ReLU(Lin(h_g) + Lin(h_l)), h_g = ReLU(Lin(rho)), h_l = ReLU(Lin(l)).

    ``encoder="conv"`` (beyond the paper) computes h_g with two convolutions shared by the
    scales, average- and max-pooled per scale, then a linear layer: a texture (tissue, nuclei)
    is recognised wherever it falls in the patch, which a linear layer over all pixels -- the
    paper's, fine for a centred digit -- learns only template by template.
    """

    def __init__(self, glimpse_features: int, hg: int = 128, hl: int = 128, out: int = 256, *,
                 encoder: str = "fc", channels: int = 1, scales: int = 1, width: int = 16):
        super().__init__()
        self.encoder = encoder
        if encoder == "conv":
            self.convs = nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
            self.fc_g = nn.Linear(scales * 4 * width, hg)
        else:
            self.fc_g = nn.Linear(glimpse_features, hg)
        self.fc_l = nn.Linear(2, hl)
        self.out_g = nn.Linear(hg, out)
        self.out_l = nn.Linear(hl, out)

    def features(self, rho: torch.Tensor) -> torch.Tensor:
        """``(B, k, C, g, g)`` glimpses -> ``(B, F)`` inputs of ``fc_g``."""
        if self.encoder != "conv":
            return rho.flatten(1)
        b = rho.shape[0]
        z = self.convs(rho.flatten(0, 1) * 2.0 - 1.0)  # (B k, 2w, g/2, g/2)
        pooled = torch.cat([z.mean((2, 3)), z.amax((2, 3))], 1)  # (B k, 4w)
        return pooled.view(b, -1)

    def forward(self, rho: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        hg = torch.relu(self.fc_g(self.features(rho)))
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

    def act(self, h: torch.Tensor, loc: torch.Tensor | None = None, *, policy: str = "sample",
            generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (``loc=None``) or replay (``loc`` given) the next location from ``h``.

        Returns ``(loc (B, 2) detached, mean (B, 2), log_prob (B,))``. ``policy``: ``sample``,
        ``mean`` (deterministic) or ``random`` (uniform in [-1, 1]^2, log-prob 0: the
        random-glimpse agent). The log-prob is differentiable in the mean only.
        """
        b = h.shape[0]
        if policy == "random":
            if loc is None:
                loc = torch.rand(b, 2, device=h.device, dtype=h.dtype, generator=generator)
                loc = loc * 2.0 - 1.0
            zero = torch.zeros(b, device=h.device, dtype=h.dtype)
            return loc.detach(), torch.zeros_like(loc), zero
        mean = self(h)
        dist = Normal(mean, self.std, validate_args=False)  # NaN weights: skipped later
        if loc is None:
            if policy == "mean":
                loc = mean.detach()
            else:  # Normal.sample takes no generator: the same draw, from ours
                noise = torch.randn(b, 2, device=h.device, dtype=h.dtype, generator=generator)
                loc = (mean + self.std * noise).detach()
        loc = loc.detach()
        return loc, mean, dist.log_prob(loc).sum(-1)


def _strided_convs(cin: int, width: int, size: int, grid: int) -> nn.Sequential:
    """Stride-2 convolutions from ``size`` down towards ``grid`` (then an adaptive pool to
    exactly ``grid``): ``(B, cin, size, size)`` -> ``(B, width, grid, grid)``."""
    layers: list[nn.Module] = []
    c, s = cin, size
    while s // 2 >= grid and s >= 4:
        layers += [nn.Conv2d(c, width, 5 if c == cin else 3, stride=2,
                             padding=2 if c == cin else 1), nn.ReLU()]
        c, s = width, s // 2
    if c == cin:  # already at the grid: one plain convolution
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
    layers.append(nn.AdaptiveAvgPool2d(grid))
    return nn.Sequential(*layers)


def _per_distinct(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` computed once per distinct row of ``x`` ``(B, ...)`` and gathered back: a
    slide batch holds several episodes of each slide (``episodes_per_slide``), which share one
    thumbnail, so the glance costs one pass per slide, not per episode. Rows are grouped by two
    random projections and confirmed equal exactly, so distinct thumbnails never merge. The
    gradient is the same as running every row (each copy's gradient flows back through the
    gather)."""
    b = x.shape[0]
    if b < 2:
        return net(x)
    flat = x.reshape(b, -1)
    proj = torch.Generator(device="cpu").manual_seed(0x5EED)
    w = torch.rand(flat.shape[1], 2, generator=proj).to(device=flat.device, dtype=flat.dtype)
    keys = flat.detach() @ w
    first: dict[tuple[float, float], list[int]] = {}
    inverse = torch.empty(b, dtype=torch.long)
    reps: list[int] = []
    for i, key in enumerate(map(tuple, keys.tolist())):
        for r in first.get(key, []):
            if torch.equal(flat[reps[r]], flat[i]):
                inverse[i] = r
                break
        else:
            first.setdefault(key, []).append(len(reps))
            inverse[i] = len(reps)
            reps.append(i)
    if len(reps) == b:
        return net(x)
    return net(x[reps])[inverse.to(x.device)]


class ContextNetwork(nn.Module):
    """The glance: reads a ``(B, C, S, S)`` thumbnail once per episode.

    Two paths, so that each loss moves only what it should (as for the glimpse-time nets):

    * ``encoder`` -> ``h0 (B, hidden)``: the core's first state, trained by cross-entropy;
    * ``policy`` -> ``(B, G*G)`` logits of a categorical first location over the thumbnail's
      ``G x G`` cells, trained by REINFORCE only. Fully convolutional, so what it learns about
      one cell (a dark lesion is worth a look) holds for every cell: the first location is
      learned from few episodes.
    """

    def __init__(self, channels: int, size: int, grid: int, width: int, hidden: int):
        super().__init__()
        self.size, self.grid = int(size), int(grid)
        self.encoder = nn.Sequential(_strided_convs(channels, width, size, max(1, grid // 2)),
                                     nn.Flatten(), nn.Linear(width * max(1, grid // 2) ** 2,
                                                             hidden), nn.Tanh())
        self.policy = nn.Sequential(_strided_convs(channels, width, size, grid),
                                    nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(width, 1, 1), nn.Flatten())

    @staticmethod
    def _centre(x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0  # [0, 1] pixels -> [-1, 1]

    def initial_hidden(self, thumb: torch.Tensor) -> torch.Tensor:
        return _per_distinct(self.encoder, self._centre(thumb))

    def cell_centres(self, cells: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``(B,)`` cell indices (row-major) -> ``(B, 2)`` ``(x, y)`` centres in [-1, 1]."""
        g = self.grid
        row, col = torch.div(cells, g, rounding_mode="floor"), cells % g
        return torch.stack([(col.to(dtype) + 0.5) / g, (row.to(dtype) + 0.5) / g], -1) * 2 - 1

    def cells_of(self, loc: torch.Tensor) -> torch.Tensor:
        """The cell each ``(B, 2)`` location lies in (the inverse of :meth:`cell_centres`)."""
        g = self.grid
        ij = ((loc + 1.0) * 0.5 * g).floor().long().clamp_(0, g - 1)
        return ij[:, 1] * g + ij[:, 0]

    def act(self, thumb: torch.Tensor, loc: torch.Tensor | None = None, *,
            policy: str = "sample", generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first location, as :meth:`LocationNetwork.act`: ``(loc (B, 2), mean (B, 2),
        log_prob (B,))``; ``mean`` is the centre of the most probable cell."""
        logits = _per_distinct(self.policy, self._centre(thumb)).float()
        dist = Categorical(logits=logits, validate_args=False)
        if loc is None:
            if policy == "mean":
                cells = logits.argmax(-1)
            else:
                cells = torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
            loc = self.cell_centres(cells, thumb.dtype)
        else:
            cells = self.cells_of(loc)
        mean = self.cell_centres(logits.argmax(-1), thumb.dtype)
        return loc.detach(), mean, dist.log_prob(cells).to(thumb.dtype)


class RecurrentAttentionModel(nn.Module):
    """RAM: glimpse net, core, location net, action net, baseline; optionally a context net."""

    def __init__(self, cfg: ModelConfig, channels: int = 1, classes: int = 10):
        super().__init__()
        self.cfg = cfg
        self.spec: RetinaSpec = cfg.retina()
        feat = cfg.scales * channels * cfg.patch * cfg.patch
        self.glimpse_net = GlimpseNetwork(feat, cfg.glimpse_hidden, cfg.loc_hidden,
                                          cfg.glimpse_out, encoder=cfg.glimpse_encoder,
                                          channels=channels, scales=cfg.scales)
        self.core = CoreNetwork(cfg.core, cfg.glimpse_out, cfg.hidden)
        self.locator = LocationNetwork(cfg.hidden, cfg.loc_std, cfg.loc_mean)
        self.baseline = nn.Linear(cfg.hidden, 1)
        self.classifier = nn.Linear(cfg.hidden, classes)
        # What lies under each glimpse (annotated slides; beyond the paper): read by the
        # per-glimpse loss only, never by the decision.
        self.glimpse_head = (nn.Linear(cfg.glimpse_out, classes + 1)
                             if cfg.glimpse_aux else None)
        self.random_glimpses = cfg.arch == "ram_random"
        self.context = (ContextNetwork(channels, cfg.context_size, cfg.context_grid,
                                       cfg.context_channels, cfg.hidden)
                        if cfg.context == "thumbnail" else None)

    @property
    def context_size(self) -> int | None:
        """Side of the thumbnail the model reads, or None (the paper's model reads none)."""
        return None if self.context is None else self.context.size

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role: which loss may move them."""
        ctx = self.context
        return {
            "supervised": [*self.glimpse_net.parameters(), *self.core.parameters(),
                           *self.classifier.parameters(),
                           *(ctx.encoder.parameters() if ctx is not None else ())],
            "policy": list(self.locator.parameters()),
            "context_policy": list(ctx.policy.parameters()) if ctx is not None else [],
            "baseline": list(self.baseline.parameters()),
        }

    def _first_location(self, batch: int, device: torch.device, dtype: torch.dtype,
                        generator: torch.Generator | None) -> torch.Tensor:
        """The paper's first location (no context): uniform, or the centre."""
        if self.cfg.first_location == "center" and not self.random_glimpses:
            return torch.zeros(batch, 2, device=device, dtype=dtype)
        u = torch.rand(batch, 2, device=device, dtype=dtype, generator=generator)
        return u * 2.0 - 1.0

    def _begin(self, batch: int, context: torch.Tensor | None, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The core's first state: zeros (paper), or ``h0`` from the thumbnail."""
        state = self.core.initial_state(batch, device, dtype)
        if self.context is None:
            return state
        if context is None:
            raise ValueError("this model reads a thumbnail: pass context=(B, C, S, S)")
        h0 = self.context.initial_hidden(context.to(device=device, dtype=dtype))
        return (h0, *state[1:])

    def unroll(self, sensor: Sensor, batch: int, *, policy: str = "sample",
               locations: torch.Tensor | None = None, generator: torch.Generator | None = None,
               keep_glimpses: bool = False, device: torch.device | None = None,
               dtype: torch.dtype = torch.float32, start: torch.Tensor | None = None,
               context: torch.Tensor | None = None, stop_at: float | None = None) -> Trajectory:
        """Run ``T`` glimpses: act, look, update the state; then classify.

        Args:
            sensor: ``sensor(t, loc)`` -> glimpse. Live (retina over images or a slide) or a
                :class:`ReplaySensor`.
            batch: batch size.
            policy: ``sample`` (stochastic, training and the M=1 error), ``mean`` (deterministic
                mean policy), or ``random`` (uniform locations; the random-glimpse agent).
            locations: ``(B, T, 2)`` recorded raw locations to replay instead of sampling.
            generator: RNG for sampling (actors and tests pass their own; nothing global).
            keep_glimpses: keep the glimpse tensors in the trajectory.
            start: ``(B, 2)`` first locations to use instead of the paper's first-location rule
                (a slide episode starts inside tissue); unused by a context model.
            context: ``(B, C, S, S)`` thumbnails in [0, 1], for a model with a context net.
            stop_at: a confidence stop (inference): an episode decides after the first glimpse
                whose classifier is at least this sure (``used``); the unroll ends when every
                episode has decided (episodes of a batch that decided earlier read on, unused).
        """
        if device is None:
            device = next(self.parameters()).device
        if self.random_glimpses:
            policy = "random"
        n_glimpses = self.cfg.glimpses
        state = self._begin(batch, context, device, dtype)
        learned_first = self.context is not None and policy != "random"
        locs, means, logps, bases, kept, under, steps = [], [], [], [], [], [], []
        used = torch.zeros(batch, dtype=torch.long, device=device)
        for t in range(n_glimpses):
            given = None if locations is None else locations[:, t]
            h = state[0].detach()  # the policy and the baseline never move the core
            if t == 0 and learned_first:
                base = self.baseline(h).squeeze(-1)
                loc, mean, logp = self.context.act(context.to(device=device, dtype=dtype), given,
                                                   policy=policy, generator=generator)
            elif t == 0:  # the paper: a given or random first glimpse, not learned
                loc, mean, logp, base = self._paper_first(batch, start, given, generator,
                                                          device, dtype)
            else:
                base = self.baseline(h).squeeze(-1)
                loc, mean, logp = self.locator.act(h, given, policy=policy, generator=generator)
            rho = sensor(t, loc.clamp(-1.0, 1.0))
            if keep_glimpses:
                kept.append(rho)
            g = self.glimpse_net(rho, loc.clamp(-1.0, 1.0))
            if self.glimpse_head is not None:
                under.append(self.glimpse_head(g))
            state = self.core(g, state)
            steps.append(state[0])
            locs.append(loc)
            means.append(mean)
            logps.append(logp)
            bases.append(base)
            if stop_at is not None and self._all_sure(state[0], used, t, stop_at):
                break
        # The classifier after every glimpse (the last is the decision): accuracy against the
        # number of glimpses, and train.step_loss's anytime terms, from one batched call.
        step_logits = self.classifier(torch.stack(steps, 1))
        n = len(steps)
        used = torch.where(used > 0, used, n)
        mask = torch.full((n,), float(policy != "random"), device=device)
        mask[0] *= float(learned_first)
        return Trajectory(
            locations=torch.stack(locs, 1),
            means=torch.stack(means, 1),
            log_probs=torch.stack(logps, 1),
            baselines=torch.stack(bases, 1),
            logits=step_logits[torch.arange(batch, device=device), used - 1],
            step_logits=step_logits,
            used=used if stop_at is not None else None,
            policy_mask=mask,
            glimpses=torch.stack(kept, 1) if keep_glimpses else None,
            glimpse_logits=torch.stack(under, 1) if under else None,
        )

    def _paper_first(self, batch: int, start: torch.Tensor | None, given: torch.Tensor | None,
                     generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Glimpse 0 without a context net: ``start`` (a slide's tissue rule) or the paper's
        rule, or the ``given`` recorded location; ``(loc, mean, logp = 0, baseline = 0)``, as
        nothing here is learned."""
        base = torch.zeros(batch, device=device, dtype=dtype)
        mean = (start.to(device=device, dtype=dtype) if start is not None else
                self._first_location(batch, device, dtype, generator))
        return (mean if given is None else given).detach(), mean, torch.zeros_like(base), base

    @torch.no_grad()
    def _all_sure(self, h: torch.Tensor, used: torch.Tensor, t: int, level: float) -> bool:
        """Mark in ``used`` (in place) the episodes first at least ``level`` sure after glimpse
        ``t``; whether every episode has now decided."""
        sure = torch.softmax(self.classifier(h).float(), -1).amax(-1) >= level
        used.copy_(torch.where(sure & (used == 0), t + 1, used))
        return bool((used > 0).all())


class RetinaSensor:
    """The live sensor over a batch of in-memory images: one pyramid, reused for every glimpse."""

    def __init__(self, images: torch.Tensor, spec: RetinaSpec, fill: float = 0.0):
        self.spec = spec
        self.fill = fill
        self.pyramid = build_pyramid(images, spec, fill)

    def __call__(self, t: int, loc: torch.Tensor) -> torch.Tensor:
        return glimpse(self.pyramid, loc, self.spec, self.fill)
