"""Rollout actors: each owns an environment and a CPU copy of the policy.

One call = one whole batch of ``episodes_per_call`` episodes, run through the same
:meth:`~ram_wsi.models.ram.RecurrentAttentionModel.unroll` as the single-process trainer, under
``torch.no_grad()``, with ``torch.set_num_threads(cpus_per_actor)`` (Ray sets OMP_NUM_THREADS but
torch's intra-op pool needs telling). Weights arrive as an ``ObjectRef`` inside a list, so the
actor only fetches and loads them when the version changed.

:class:`RolloutWorker` is a plain class (tests can call it directly); :func:`actor_class` wraps it
with ``ray.remote`` and the fault-tolerance options from ``cfg.distributed``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data.episodes import build_env
from ..errors import ConfigError
from ..models import build_model, is_attention
from ..slide.remote import use_config
from ..train.losses import rewards_from_logits
from .batch import EpisodeBatch, QuantizingSensor, quantize

__all__ = ["RolloutWorker", "actor_class", "actor_seed"]


def actor_seed(seed: int, index: int, incarnation: int = 0) -> int:
    """A seed per (run seed, actor, incarnation): actors never share a random stream, and a
    restarted actor does not replay its predecessor's episodes."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 7_919, int(index), int(incarnation)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(2))


def _incarnation() -> int:
    """0 for a fresh actor; the pid for one Ray reconstructed after a crash."""
    try:
        import warnings

        import ray

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the property warns about an internal call
            if ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed:
                return os.getpid()
    except Exception:  # noqa: BLE001, S110 - outside an actor
        pass
    return 0


class RolloutWorker:
    """Acts with the latest weights it was given; returns :class:`EpisodeBatch` es."""

    def __init__(self, cfg: dict[str, Any] | ExperimentConfig, index: int = 0,
                 threads: int | None = None):
        self.cfg = cfg if isinstance(cfg, ExperimentConfig) else ExperimentConfig.from_dict(cfg)
        if not is_attention(self.cfg.model):
            raise ConfigError("distributed training needs an attention model (ram, ram_random)",
                              key="model.arch", source=self.cfg.source)
        d = self.cfg.distributed
        torch.set_num_threads(max(1, int(threads or d.cpus_per_actor)))
        self.index = int(index)
        self.incarnation = _incarnation()
        seed = actor_seed(self.cfg.train.seed, self.index, self.incarnation)
        use_config(self.cfg)  # remote slides: opened here, with the run's storage options
        self.env = build_env(self.cfg, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = build_model(self.cfg.model, self.cfg.data.canvas_size,
                                     self.env.channels, self.env.classes)
        self.model.requires_grad_(False)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.version = -1
        self._splits: dict[str, Any] = {}  # val/test SlideSets, opened on first evaluation
        self.episodes = 0
        self.calls = 0

    def set_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state)
        self.version = int(version)

    def _take_weights(self, weights: list | dict | None, version: int) -> None:
        """Load ``weights`` (``[ObjectRef]`` or a state dict) unless ``version`` is current."""
        if weights is not None and int(version) != self.version:
            if isinstance(weights, list):
                import ray

                weights = ray.get(weights[0])
            self.set_weights(weights, version)

    def rollout(self, weights: list | dict | None, version: int,
                episodes: int | None = None) -> EpisodeBatch:
        """``episodes`` (default ``episodes_per_call``) episodes with weights ``version``.

        Args:
            weights: ``[ObjectRef]`` (fetched only when ``version`` is new), a state dict, or
                None (keep the current weights).
        """
        t0 = time.perf_counter()
        self._take_weights(weights, version)
        b = int(episodes or self.cfg.distributed.episodes_per_call)
        dtype = self.cfg.distributed.glimpse_dtype
        ep = self.env.episodes(b)
        with torch.no_grad():
            traj = self.model.unroll(QuantizingSensor(ep.sensor, dtype), b, generator=self.gen,
                                     keep_glimpses=True, start=ep.start,
                                     context=ep.model_context())
        rewards = rewards_from_logits(traj.logits, ep.labels)
        t = self.cfg.train
        # What lay under each glimpse, for a loss that reads the annotation: the actor knows
        # the slides, the learner only what it is sent.
        under = (ep.glimpse_labels(traj.locations)
                 if t.glimpse_aux_weight > 0 or t.target_reward > 0 else None)
        self.episodes += b
        self.calls += 1
        return EpisodeBatch(glimpses=quantize(traj.glimpses, dtype),
                            locations=traj.locations.contiguous(),
                            behaviour_log_probs=traj.log_probs.contiguous(),
                            labels=ep.labels.long(), rewards=rewards, version=self.version,
                            context=ep.context, actor=self.index,
                            groups=(None if ep.slide_idx is None else
                                    torch.as_tensor(ep.slide_idx, dtype=torch.long)),
                            glimpse_labels=under,
                            seconds=time.perf_counter() - t0,
                            info={"pid": os.getpid(), "incarnation": self.incarnation})

    def evaluate(self, weights: list | dict | None, version: int, split: str,
                 indices: list[int], samples: int, seed: int, keep_glimpses: int = 0
                 ) -> list[dict[str, Any]]:
        """:func:`~ram_wsi.train.slide_eval.rollout_slides` on slides ``indices`` of the
        ``val`` or ``test`` split, with weights ``version`` (the actor reads the slides)."""
        from ..train.slide_eval import rollout_slides

        self._take_weights(weights, version)
        if split not in self._splits:
            self._splits[split] = self.env.split(self.cfg, split)
        # Seeded per slide, so that rows do not depend on how slides were dealt to actors.
        rows = []
        for n, i in enumerate(indices):
            rows += rollout_slides(self.model, self._splits[split], [i], samples=samples,
                                   seed=seed + 7_919 * int(i),
                                   keep_glimpses=int(n < keep_glimpses), cold=split == "test")
        return rows

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid(), "incarnation": self.incarnation,
                "version": self.version, "episodes": self.episodes, "calls": self.calls,
                "threads": torch.get_num_threads()}


def actor_class(cfg: ExperimentConfig):
    """``RolloutWorker`` as a Ray actor class with the config's CPUs and restart policy.

    ``max_task_retries`` equals ``max_restarts``: a call in flight when its actor dies is run
    again on the restarted actor, so the learner does not lose the batch.
    """
    import ray

    d = cfg.distributed
    return ray.remote(num_cpus=d.cpus_per_actor, max_restarts=d.max_restarts,
                      max_task_retries=d.max_restarts)(RolloutWorker)
