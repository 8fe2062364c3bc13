"""Distributed REINFORCE with Ray: rollout actors on CPUs, one learner (CUDA when present).

    from ram_wsi.config import load_config
    from ram_wsi.distributed import train_distributed

    summary = train_distributed(load_config("configs/demo.yaml"))

The same config drives single-process training (``ram-wsi train``) and this; the
``distributed`` section sets actors, CPUs per actor, episodes per call, sync/async, staleness,
the importance-ratio clip, restarts and the learner device. See :mod:`.runner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .batch import EpisodeBatch
from .learner import Learner
from .runner import DistributedRunner, actor_config, init_ray

__all__ = [
    "DistributedRunner",
    "EpisodeBatch",
    "Learner",
    "actor_config",
    "init_ray",
    "train_distributed",
]


def train_distributed(cfg, *, resume: bool = True, log: Callable[[str], None] = print,
                      callback: Callable[[DistributedRunner], None] | None = None,
                      data=None, shutdown: bool = True) -> dict[str, Any]:
    """Train ``cfg`` with Ray actors; returns the run summary (also in ``summary.json``).

    Joins ``cfg.distributed.address`` / ``RAY_ADDRESS`` or starts a local Ray instance (and
    shuts it down at the end when it started it and ``shutdown``). Resumes from the run's
    ``last.pt`` unless ``resume`` is False.
    """
    import ray

    from ..train.trainer import Trainer

    if cfg.data.source == "slides":  # check every slide before starting anything
        from ..data.episodes import prepare_slide_data
        from ..slide.remote import use_config

        use_config(cfg)  # slides on object storage: the driver opens each once

        cfg = prepare_slide_data(cfg, log)
    if cfg.distributed.learner_device != "auto":
        cfg.train.device = cfg.distributed.learner_device
    started = init_ray(cfg.distributed.address, log=log)
    runner = None
    try:
        trainer = Trainer(cfg, data, log=log)
        if resume:
            trainer.resume()
        runner = DistributedRunner(cfg, trainer, log=log, callback=callback)
        return runner.fit()
    finally:
        if runner is not None:
            runner.close()
        if started and shutdown:
            ray.shutdown()
