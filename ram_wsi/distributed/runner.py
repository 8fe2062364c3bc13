"""The distributed training loop: Ray rollout actors feed a learner built on the Trainer.

Sync mode: every update sends the newest weights to every actor, gathers one batch from each and
concatenates them (``actors * episodes_per_call`` episodes per update, all on-policy).

Async mode: every actor always has one call in flight; the learner takes batches as they arrive
(``ray.wait``), drops those more than ``max_staleness`` versions old, corrects the rest with the
clipped trajectory importance ratio (``hybrid_loss(..., behaviour_log_probs=, rho_clip=)``), and
re-submits the actor at once with the newest weights reference.

Epochs, validation, early stopping, the time cap (checked before every update and again when a
batch arrives), ``best.pt``/``last.pt``, ``metrics.jsonl`` and the final test
(:meth:`Trainer.finish`) follow :meth:`Trainer.fit`; a resubmitted job resumes from
``last.pt``. Actors that die are restarted by Ray (``max_restarts``) and their in-flight call is
retried (``max_task_retries``); a call that still fails is re-submitted and counted.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..train.trainer import Trainer
from .actors import actor_class
from .batch import EpisodeBatch
from .learner import Learner

__all__ = ["DistributedRunner", "actor_config", "init_ray"]

MAX_CALL_FAILURES = 20  # per run: beyond this an actor failure is fatal


def init_ray(address: str | None = None, *, log: Callable[[str], None] = print,
             **kwargs: Any) -> bool:
    """Connect to a cluster (``address``, else ``RAY_ADDRESS``) or start a local instance.

    Returns True when this call started Ray (the caller then shuts it down). When the package
    is importable only because the repo root was put on ``sys.path`` (a plain checkout), a local
    instance gets that root on its workers' ``PYTHONPATH``; a job submitted with
    ``--working-dir`` already has it.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        root = str(Path(__file__).resolve().parents[2])
        env = kwargs.pop("runtime_env", None) or {}
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            env.setdefault("env_vars", {})["PYTHONPATH"] = os.pathsep.join([root, *paths])
        kwargs.setdefault("include_dashboard", False)
        ray.init(runtime_env=env or None, **kwargs)
        log(f"ray: started a local instance ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    else:
        ray.init(address=address, **kwargs)
        log(f"ray: joined {address} ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    return True


def actor_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as a dict for the actors, with local paths made absolute (an actor's working
    directory need not be the driver's)."""
    d = cfg.to_dict()
    for section, key in (("mnist", "dir"), ("slides", "manifest")):
        v = d["data"][section].get(key)
        if v and Path(v).exists():
            d["data"][section][key] = str(Path(v).resolve())
    return d


class DistributedRunner:
    """Owns the actors and the learner for one run."""

    def __init__(self, cfg: ExperimentConfig, trainer: Trainer | None = None, *,
                 log: Callable[[str], None] = print,
                 callback: Callable[[DistributedRunner], None] | None = None):
        import ray

        self.log = log
        self.callback = callback
        self.trainer = trainer if trainer is not None else Trainer(cfg, log=log)
        self.cfg = cfg = self.trainer.cfg  # slides: the prepared config (OUT/slides.csv)
        self.learner = Learner(self.trainer, cfg.distributed.rho_clip)
        d = cfg.distributed
        self.mode = d.mode
        cls = actor_class(cfg)
        conf = actor_config(cfg)
        self.actors = [cls.remote(conf, i) for i in range(d.actors)]
        self.weights_ref = None
        self.weights_version = -1
        self.publish()
        self.pending: dict[Any, int] = {}
        self.stats = {"episodes": 0, "batches": 0, "dropped_batches": 0, "call_failures": 0,
                      "staleness_sum": 0, "skipped_updates": 0, "batches_after_cap": 0}
        self.contributions: dict[str, int] = {}  # "actor:pid" -> episodes received
        self._ray = ray
        if self.trainer.slides:  # evaluation rollouts on the actors: the learner reads no slide
            self.trainer.slide_rollouts = self.remote_slide_rollouts

    # -- weights ----------------------------------------------------------------------------
    def publish(self) -> None:
        """One ``ray.put`` of the newest weights per version."""
        if self.weights_version != self.learner.version:
            self.weights_ref = self._ray_put(self.learner.weights())
            self.weights_version = self.learner.version

    @staticmethod
    def _ray_put(obj: Any):
        import ray

        return ray.put(obj)

    def _submit(self, i: int):
        ref = self.actors[i].rollout.remote([self.weights_ref], self.weights_version)
        self.pending[ref] = i
        return ref

    def _received(self, batch: EpisodeBatch) -> None:
        key = f"{batch.actor}:{batch.info.get('pid', '?')}"
        self.contributions[key] = self.contributions.get(key, 0) + len(batch)

    def _failed(self, i: int, exc: BaseException) -> None:
        self.stats["call_failures"] += 1
        self.log(f"actor {i}: call failed ({type(exc).__name__}); re-submitting")
        if self.stats["call_failures"] > MAX_CALL_FAILURES:
            raise RuntimeError(f"{self.stats['call_failures']} failed actor calls; giving up"
                               ) from exc

    # -- batches ----------------------------------------------------------------------------
    def _sync_batch(self) -> tuple[EpisodeBatch, bool]:
        from ray.exceptions import RayActorError, RayTaskError

        self.publish()
        refs = {i: self._submit(i) for i in range(len(self.actors))}
        batches: dict[int, EpisodeBatch] = {}
        while refs:
            for i, ref in list(refs.items()):
                self.pending.pop(ref, None)
                try:
                    batches[i] = self._ray.get(ref)
                    self._received(batches[i])
                    del refs[i]
                except (RayActorError, RayTaskError) as exc:
                    self._failed(i, exc)
                    refs[i] = self._submit(i)
        batch = EpisodeBatch.concat([batches[i] for i in sorted(batches)])
        self.stats["episodes"] += len(batch)
        self.stats["batches"] += len(batches)
        return batch, False

    def _async_batch(self) -> tuple[EpisodeBatch, bool]:
        from ray.exceptions import RayActorError, RayTaskError

        for i in range(len(self.actors)):
            if i not in self.pending.values():
                self._submit(i)
        max_stale = self.cfg.distributed.max_staleness
        while True:
            ready, _ = self._ray.wait(list(self.pending), num_returns=1)
            ref = ready[0]
            i = self.pending.pop(ref)
            try:
                batch = self._ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                self._failed(i, exc)
                self._submit(i)
                continue
            self._received(batch)
            self.publish()
            self._submit(i)  # keep the actor busy, with the newest weights
            self.stats["episodes"] += len(batch)
            self.stats["batches"] += 1
            stale = self.learner.version - batch.version
            if stale > max_stale:
                self.stats["dropped_batches"] += 1
                continue
            self.stats["staleness_sum"] += stale
            return batch, stale > 0

    def next_batch(self) -> tuple[EpisodeBatch, bool]:
        """``(batch, off_policy)``."""
        return self._async_batch() if self.mode == "async" else self._sync_batch()

    def update(self) -> tuple[bool, dict[str, float] | None]:
        """One update on the next batch: ``(applied, loss terms)``; ``(False, None)`` when the
        run's time cap passed while the batch was on its way (the batch is dropped: no update
        starts after the cap)."""
        batch, off = self.next_batch()
        if self.trainer.over_cap():
            self.stats["batches_after_cap"] += 1
            return False, None
        applied, loss = self.learner.update(batch, off_policy=off)
        if not applied:
            self.stats["skipped_updates"] += 1
        return applied, loss

    # -- the loop ---------------------------------------------------------------------------
    def _fit_update(self) -> dict[str, float] | None:
        _, loss = self.update()
        if self.callback is not None and loss is not None:
            self.callback(self)
        return loss

    def _epoch_stats(self, train_time: float) -> dict[str, Any]:
        episodes = self.stats["episodes"] - self._episodes_at_epoch
        self._episodes_at_epoch = self.stats["episodes"]
        rate = episodes / max(train_time, 1e-9)
        return {"episodes_per_s": rate, "images_per_s": rate,
                **{k: v for k, v in self.stats.items() if k != "staleness_sum"}}

    def _summary_extra(self) -> dict[str, Any]:
        self.drain()
        return self.summary()

    def fit(self) -> dict[str, Any]:
        """:meth:`Trainer.fit` (epochs, validation, early stopping, time cap, checkpoints,
        metrics, final test), with each update's batch taken from the actors."""
        tr, d = self.trainer, self.cfg.distributed
        self.log(f"distributed {d.mode}: {d.actors} actors x {d.cpus_per_actor:g} CPU, "
                 f"{d.episodes_per_call} episodes per call, learner on {tr.device}; "
                 f"{tr.updates_per_epoch} updates per epoch, epochs {tr.epoch + 1}.."
                 f"{self.cfg.train.epochs}")
        self._episodes_at_epoch = self.stats["episodes"]
        return tr.fit(update=self._fit_update, epoch_stats=self._epoch_stats,
                      summary_extra=self._summary_extra)

    def summary(self) -> dict[str, Any]:
        d = self.cfg.distributed
        used = max(1, self.stats["batches"] - self.stats["dropped_batches"])
        return {"distributed": {**dataclasses.asdict(d), **self.stats,
                                "mean_staleness": self.stats["staleness_sum"] / used,
                                "episodes_by_actor_pid": dict(self.contributions),
                                "updates": self.trainer.step}}

    def remote_slide_rollouts(self, split: str, keep_glimpses: int = 0
                              ) -> list[dict[str, Any]]:
        """:func:`~ram_wsi.train.slide_eval.rollout_slides` of the ``split``'s slides, dealt
        round-robin to the actors with the newest weights; rows back in slide order."""
        from ray.exceptions import RayActorError, RayTaskError

        self.drain()  # no training call in flight competes with the evaluation
        self.publish()
        slides = self.trainer.data.val if split == "val" else self.trainer.data.test
        shards = [list(range(i, len(slides), len(self.actors)))
                  for i in range(len(self.actors))]
        t = self.cfg.train
        for attempt in range(3):
            refs = [a.evaluate.remote([self.weights_ref], self.weights_version, split, idx,
                                      t.eval_samples, t.seed + 7, keep_glimpses)
                    for a, idx in zip(self.actors, shards) if idx]
            try:
                rows = [r for part in self._ray.get(refs) for r in part]
                return sorted(rows, key=lambda r: r["index"])
            except (RayActorError, RayTaskError) as exc:
                self._failed(-1, exc)
        raise RuntimeError(f"evaluation of the {split} slides failed three times")

    def actor_info(self) -> list[dict[str, Any]]:
        return self._ray.get([a.info.remote() for a in self.actors])

    def drain(self) -> None:
        """Wait out (and discard) calls still in flight."""
        if self.pending:
            try:
                self._ray.wait(list(self.pending), num_returns=len(self.pending), timeout=30)
            except Exception:  # noqa: BLE001, S110 - shutting down anyway
                pass
            self.pending.clear()

    def close(self) -> None:
        self.drain()
        for a in self.actors:
            self._ray.kill(a, no_restart=True)
        self.actors = []
