"""The paper's digit tasks -- centred, translated and cluttered MNIST -- made on the fly in torch.

Why on the fly: a fixed cluttered dataset lets a model memorise its clutter; drawing fresh
positions and distractors for every batch is what the paper (and DeepMind's ``mnist-cluttered``)
does, and on a GPU it costs less than loading the images would.

How: a canvas is a flat ``(B, H*W)`` buffer. The target digit and each clutter piece become one
``scatter_add_`` of ``B`` patches whose flat indices come from index arithmetic (row offset
``* W`` plus column), so a batch is a few tensor ops whatever its size; the only Python loop is
over the clutter pieces. Within one ``scatter_add_`` a sample's pixels never collide, so the
accumulation order is fixed (pieces in order, then the target) and CUDA gives the same result
on every run.

Random numbers are drawn on the generator's device and then moved to the pool's device, so a
seeded CPU generator produces the same episodes for a CPU or a CUDA pool.

Coordinates are the retina's (:mod:`ram_wsi.retina`): ``x`` left to right, ``y`` top to bottom,
``(-1, -1)`` the canvas's top-left corner and ``+1`` its far border.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "DIGIT_SIZE",
    "TASK_KINDS",
    "TASK_PRESETS",
    "EpisodeSampler",
    "TaskSpec",
    "make_batch",
    "task_preset",
]

DIGIT_SIZE = 28
TASK_KINDS = ("centered", "translated", "cluttered")
FIXED_CHUNK = 1024  # fixed sets are generated in chunks of this many episodes (see fixed_set)


@dataclass(frozen=True)
class TaskSpec:
    """What an episode's image looks like.

    Attributes:
        kind: ``"centered"`` (the digit in the middle of the canvas), ``"translated"`` (at a
            uniform random position) or ``"cluttered"`` (translated, plus distractors).
        canvas: side of the square canvas in pixels, at least 28.
        clutter_pieces: number of distractors (``cluttered`` only).
        clutter_size: side of each distractor, a crop of another digit (at most 28).
    """

    kind: str
    canvas: int = DIGIT_SIZE
    clutter_pieces: int = 0
    clutter_size: int = 8

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"unknown task kind {self.kind!r}; use one of "
                              + ", ".join(TASK_KINDS), key="task.kind")
        for key, value, low in (("canvas", self.canvas, DIGIT_SIZE),
                                ("clutter_pieces", self.clutter_pieces, 0),
                                ("clutter_size", self.clutter_size, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"must be an integer >= {low}, got {value!r}",
                                  key=f"task.{key}")
        if self.clutter_size > DIGIT_SIZE:
            raise ConfigError(f"must be at most {DIGIT_SIZE} (a crop of a digit), got "
                              f"{self.clutter_size}", key="task.clutter_size")
        if self.clutter_pieces and self.kind != "cluttered":
            # Silently ignoring them would train a different task than the config says.
            raise ConfigError(f"clutter only applies to kind 'cluttered', not {self.kind!r}",
                              key="task.clutter_pieces")


TASK_PRESETS: Mapping[str, TaskSpec] = MappingProxyType({
    "mnist28": TaskSpec("centered", 28),
    "translated60": TaskSpec("translated", 60),
    "cluttered60": TaskSpec("cluttered", 60, clutter_pieces=4, clutter_size=8),
    "cluttered100": TaskSpec("cluttered", 100, clutter_pieces=8, clutter_size=8),
})


def task_preset(name: str) -> TaskSpec:
    """The paper's task called ``name`` (a key of :data:`TASK_PRESETS`)."""
    try:
        return TASK_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown task preset {name!r}; use one of "
                          + ", ".join(TASK_PRESETS), key="task") from None


def _as_pool(digits: torch.Tensor) -> torch.Tensor:
    """Digits as float32 in [0, 1]; uint8 MNIST is scaled by 1/255."""
    if digits.dim() != 3 or tuple(digits.shape[1:]) != (DIGIT_SIZE, DIGIT_SIZE):
        raise ValueError(f"digits must be (N, 28, 28), got {tuple(digits.shape)}")
    if digits.dtype == torch.uint8:
        return digits.float().div_(255.0)
    return digits.float()


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    """Uniform integers in ``[0, high)`` drawn on the generator's device, then moved."""
    return torch.randint(0, high, size, generator=generator, device=generator.device).to(device)


def _patch_offsets(side: int, stride: int, device: torch.device) -> torch.Tensor:
    """Flat offsets ``(side * side,)`` of a ``side x side`` patch in a row-major buffer."""
    r = torch.arange(side, device=device)
    return (r[:, None] * stride + r[None, :]).reshape(-1)


def make_batch(digits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, task: TaskSpec,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of episodes' images.

    Args:
        digits: ``(N, 28, 28)`` pool, float in [0, 1] (or uint8, scaled by 1/255).
        labels: ``(N,)`` pool labels.
        idx: ``(B,)`` which pool digits are the targets.
        task: the task.
        generator: every random draw comes from it, in a fixed order (target positions first,
            then per clutter piece: source digit, crop corner, canvas position) -- so a
            ``cluttered`` task with 0 pieces places digits exactly as ``translated`` does.

    Returns:
        ``canvas (B, 1, H, W) float32`` in [0, 1], ``labels (B,)`` int64, ``centers (B, 2)``
        float32: the target's 28x28 box centre as ``(x, y)`` in [-1, 1], on ``digits.device``.
    """
    pool = _as_pool(digits)
    dev = pool.device
    n, c, d = pool.shape[0], task.canvas, DIGIT_SIZE
    idx = idx.to(dev).long()
    b = idx.shape[0]
    if n == 0:
        raise ValueError("the digit pool is empty")
    if task.kind == "centered":
        top_left = torch.full((b, 2), (c - d) // 2, dtype=torch.long, device=dev)
    else:
        top_left = _randint(c - d + 1, (b, 2), generator, dev)  # (x, y), digit fully inside
    canvas = torch.zeros(b, c * c, dtype=torch.float32, device=dev)

    if task.kind == "cluttered" and task.clutter_pieces:
        k = task.clutter_size
        flat_pool = pool.reshape(-1)
        src_off = _patch_offsets(k, d, dev)
        dst_off = _patch_offsets(k, c, dev)
        for _ in range(task.clutter_pieces):  # pieces, not samples: a handful of iterations
            # Another digit than the target: shift by 1..N-1 modulo N (the target itself only
            # when the pool has a single digit).
            other = (idx + 1 + _randint(n - 1, (b,), generator, dev)) % n if n > 1 else idx
            crop = _randint(d - k + 1, (b, 2), generator, dev)
            at = _randint(c - k + 1, (b, 2), generator, dev)
            src = (other * d * d + crop[:, 1] * d + crop[:, 0])[:, None] + src_off
            dst = (at[:, 1] * c + at[:, 0])[:, None] + dst_off
            canvas.scatter_add_(1, dst, flat_pool[src])

    dst = (top_left[:, 1] * c + top_left[:, 0])[:, None] + _patch_offsets(d, c, dev)
    canvas.scatter_add_(1, dst, pool[idx].reshape(b, d * d))
    if task.kind == "cluttered":
        canvas.clamp_(0.0, 1.0)  # only overlaps can exceed 1; elsewhere this is the identity
    centers = (top_left.float() + d / 2.0) / c * 2.0 - 1.0
    return canvas.reshape(b, 1, c, c), labels.to(dev)[idx].long(), centers


def _derived_seed(seed: int, stream: int) -> int:
    """A torch seed for sub-stream ``stream`` of ``seed``. SeedSequence hashes the pair, so the
    streams of one set, and the sets of nearby seeds, do not overlap (``seed + i`` would)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, stream])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpisodeSampler:
    """Draws episodes of one task from a pool of digits held on a device.

    Training calls :meth:`sample` (fresh targets, positions and clutter every call, from the
    sampler's own generator, so two samplers never share a random stream). Evaluation calls
    :meth:`fixed_set`, which depends only on the pool, the task, ``n`` and its ``seed``: the same
    validation set in every run and on every device.

    The pool is what episodes are drawn from -- targets *and* clutter -- so give a validation
    sampler the validation digits only.
    """

    def __init__(self, digits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                 task: TaskSpec, seed: int, device: torch.device | str | None = None):
        digits = torch.as_tensor(digits)
        labels = torch.as_tensor(labels)
        if labels.shape != digits.shape[:1]:
            raise ValueError(f"{labels.shape[0] if labels.dim() else 0} labels for "
                             f"{digits.shape[0]} digits")
        if digits.shape[0] == 0:
            raise ValueError("the digit pool is empty")
        device = torch.device(device) if device is not None else digits.device
        self.digits = _as_pool(digits.to(device))
        self.labels = labels.to(device).long()
        self.task = task
        self.seed = int(seed)
        # CPU generator: the same stream whatever the pool's device; its draws are tiny.
        self._gen = torch.Generator().manual_seed(self.seed)

    @property
    def device(self) -> torch.device:
        return self.digits.device

    def __len__(self) -> int:
        return self.digits.shape[0]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch: uniform targets (with replacement) and fresh clutter."""
        idx = torch.randint(0, len(self), (batch_size,), generator=self._gen)
        return make_batch(self.digits, self.labels, idx, self.task, self._gen)

    def sample_repeated(self, batch_size: int, per_image: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch of ``batch_size`` episodes on ``ceil(batch_size / per_image)``
        fresh canvases, each repeated ``per_image`` times in a row: ``(x, y, image)``, where
        ``image`` ``(B,)`` numbers the canvas of each episode (0, 0, .., 1, 1, ..). The paper's
        REINFORCE averages M episodes per image (1/M sum); with ``train.advantage: group`` each
        episode's baseline is the mean reward of its canvas's other episodes."""
        m = max(1, int(per_image))
        n = -(-batch_size // m)
        x, y, _ = self.sample(n)
        image = torch.arange(n).repeat_interleave(m)[:batch_size]
        return x[image.to(x.device)], y[image.to(y.device)], image

    def iter_fixed(self, n: int, seed: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """:meth:`fixed_set` in chunks of :data:`FIXED_CHUNK` episodes, to bound memory.

        Chunk ``i`` uses its own generator derived from ``(seed, i)``, so the episodes do not
        depend on how the caller consumes them. Targets are a seeded permutation of the pool
        (every digit once before any repeats), cycled when ``n`` exceeds the pool.
        """
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(
            _derived_seed(seed, 0)))
        reps = -(-n // len(self)) if n else 0
        targets = order.repeat(reps)[:n]
        for i, lo in enumerate(range(0, n, FIXED_CHUNK)):
            gen = torch.Generator().manual_seed(_derived_seed(seed, 1 + i))
            yield make_batch(self.digits, self.labels, targets[lo:lo + FIXED_CHUNK], self.task,
                             gen)

    def fixed_set(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` evaluation episodes, identical for the same pool, task, ``n`` and ``seed``, on
        any device and in any run.

        Holds all ``n`` canvases at once (``n * canvas**2 * 4`` bytes); use :meth:`iter_fixed`
        for the same episodes chunk by chunk.
        """
        if n == 0:
            c = self.task.canvas
            return (torch.zeros(0, 1, c, c, device=self.device),
                    torch.zeros(0, dtype=torch.long, device=self.device),
                    torch.zeros(0, 2, device=self.device))
        parts = list(self.iter_fixed(n, seed))
        return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position, so a resumed run continues the same episodes."""
        return {"seed": self.seed, "generator": self._gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._gen.set_state(state["generator"])
