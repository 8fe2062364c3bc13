"""Where slides are scored: a pool of restartable Ray scorer actors fed one path at a time
(:class:`ActorPool`), or this process (:func:`score_in_process`, ``--workers 0``).

The pool's rules (see :mod:`ram_wsi.score.runner` for why actors): a slide whose actor dies
(a reader that segfaults) is retried on the restarted actor, then marked; a slide over
``--timeout`` has its actor killed and restarted and is marked; a slide whose scoring raises
(a bug, not a bad slide) is marked. An actor gets work (its first, or again after a restart)
only once it answers.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import asdict
from typing import Any

from .inputs import ScoreInput
from .scorer import Scored, ScorerOptions, SlideScorer
from .state import RunState

__all__ = ["ActorPool", "ScorerActor", "score_in_process", "score_on_pool"]

MAX_REVIVE_TRIES = 20  # pings of a crashed actor before the run gives up on it


class ScorerActor:
    """The body of one Ray scorer actor (wrapped with ``ray.remote`` by :class:`ActorPool`):
    loads the checkpoint once, opens and scores slides itself."""

    def __init__(self, checkpoint: str, options: ScorerOptions, scorer_cls: type = SlideScorer):
        import ray

        self.scorer = scorer_cls(checkpoint, options)
        node = ray.get_runtime_context().get_node_id() or ""
        self.worker = f"{socket.gethostname()}:{os.getpid()}/{node[:8]}"

    def score(self, inp: ScoreInput) -> Scored:
        return self.scorer.score(inp, self.worker)

    def describe(self) -> dict[str, Any]:
        return {**self.scorer.describe(), "worker": self.worker}


def score_in_process(todo: list[ScoreInput], checkpoint: str, options: ScorerOptions,
                     run: RunState, scorer_cls: type) -> list[dict[str, Any]]:
    """Score ``todo`` here, one after another (no timeout, no crash isolation)."""
    scorer = scorer_cls(checkpoint, options)
    for inp in todo:
        if run.lock(inp):
            run.commit(inp, scorer.score(inp), 1)
    return [scorer.describe()]


def score_on_pool(todo: list[ScoreInput], checkpoint: str, options: ScorerOptions,
                  run: RunState, scorer_cls: type) -> list[dict[str, Any]]:
    """Score ``todo`` on ``run.opts.workers`` actors (at most one per input); returns what each
    actor says about itself."""
    n = max(1, min(run.opts.workers, len(todo)))
    return ActorPool(checkpoint, options, run, scorer_cls, n).score(todo)


class ActorPool:
    """``n`` restartable scorer actors and the slides in flight on them."""

    def __init__(self, checkpoint: str, options: ScorerOptions, run: RunState,
                 scorer_cls: type, n: int):
        import ray

        self.run, self.opts = run, run.opts
        gpus = self._gpus_per_actor(n)
        if gpus and options.device == "cpu":
            options = ScorerOptions(**{**asdict(options), "device": "auto"})
        remote = ray.remote(ScorerActor).options(
            num_cpus=self.opts.cpus_per_worker, num_gpus=gpus, max_restarts=-1,
            max_task_retries=0, scheduling_strategy="SPREAD")
        self.actors = [remote.remote(checkpoint, options, scorer_cls) for _ in range(n)]
        self.queue: deque[tuple[ScoreInput, int]] = deque()  # (input, attempt)
        self.idle: list[int] = []  # actors that answered and have no slide
        self.flight: dict[Any, tuple[int, ScoreInput, int, float]] = {}  # ref -> a, inp, try, t0
        self.pings: dict[Any, tuple[int, int]] = {}  # ref -> actor, tries: a restarted actor
        self.killed: set[Any] = set()

    def _gpus_per_actor(self, n: int) -> float:
        """``--gpus-per-worker``, or a share of the cluster's GPUs when it has some."""
        import ray

        if self.opts.gpus_per_worker is not None:
            return self.opts.gpus_per_worker
        have = float(ray.cluster_resources().get("GPU", 0))
        return min(1.0, have / self.opts.workers) if have else 0.0

    def score(self, todo: list[ScoreInput]) -> list[dict[str, Any]]:
        """Every input of ``todo`` scored, failed or left to another run; then the actors'
        descriptions, and the actors stopped."""
        import ray

        self.queue.extend((inp, 1) for inp in todo)
        try:
            self._start_actors()
            while self.queue or self.flight:
                self._dispatch()
                if not self.flight and not self.pings:
                    break  # only slides another run holds were left
                ready, _ = ray.wait([*self.flight, *self.pings], num_returns=1, timeout=0.5)
                now = time.monotonic()
                for ref in ready:
                    if ref in self.pings:
                        self._answered(ref)
                    else:
                        self._finished(ref, now)
                self._stop_overdue(now)
            return self._describe()
        finally:
            for x in self.actors:
                ray.kill(x, no_restart=True)

    def _start_actors(self) -> None:
        """Every actor gets its first slide once it answers (its checkpoint loaded), so that
        ``--timeout`` measures slides, not an actor's start on a busy machine (a start longer
        than the timeout had the first slides' actors killed)."""
        self.idle = []
        for a in range(len(self.actors)):
            self._revive(a)

    def _dispatch(self) -> None:
        """Idle actors get the next inputs (first tries only once their lock is taken)."""
        while self.idle and self.queue:
            inp, attempt = self.queue.popleft()
            if attempt == 1 and not self.run.lock(inp):
                self.run.log(f"{inp.path}: held by another run; left to it")
                continue
            a = self.idle.pop()
            self.flight[self.actors[a].score.remote(inp)] = (a, inp, attempt, time.monotonic())

    def _revive(self, a: int, tries: int = 0) -> None:
        """Ping actor ``a`` until it answers: a slide sent to an actor that is still restarting
        would fail and be counted against the slide."""
        if tries > MAX_REVIVE_TRIES:
            raise RuntimeError(f"scorer actor {a} does not come back after a crash")
        self.pings[self.actors[a].describe.remote()] = (a, tries + 1)

    def _answered(self, ref: Any) -> None:
        import ray
        from ray.exceptions import RayActorError

        a, tries = self.pings.pop(ref)
        try:
            ray.get(ref)
            self.idle.append(a)
        except RayActorError:
            time.sleep(0.2)
            self._revive(a, tries)

    def _finished(self, ref: Any, now: float) -> None:
        """A slide's call returned: its row committed, or its failure handled."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        a, inp, attempt, t0 = self.flight.pop(ref)
        try:
            scored = ray.get(ref)
        except RayActorError as exc:
            self._revive(a)
            self._actor_died(ref, inp, attempt, now - t0, exc)
            return
        except RayTaskError as exc:  # a bug, not a bad slide: still one row only
            self.idle.append(a)
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            self.run.fail(inp, f"scoring failed: {type(cause).__name__}: "
                               f"{str(cause).splitlines()[0] if str(cause) else ''}",
                          attempt, now - t0)
            return
        self.idle.append(a)
        self.run.commit(inp, scored, attempt)

    def _actor_died(self, ref: Any, inp: ScoreInput, attempt: int, seconds: float,
                    exc: BaseException) -> None:
        """Stopped for its timeout: marked; crashed: retried, then marked."""
        if ref in self.killed:
            self.killed.discard(ref)
            self.run.fail(inp, f"timed out after {self.opts.timeout:g} s (its scorer was "
                               "stopped and restarted)", attempt, seconds)
        elif attempt <= self.opts.retries:
            self.run.log(f"{inp.path}: its scorer process died ({type(exc).__name__}); "
                         f"retrying ({attempt}/{self.opts.retries})")
            self.queue.appendleft((inp, attempt + 1))
        else:
            self.run.fail(inp, f"the reading process crashed {attempt} time(s) "
                               f"({type(exc).__name__}); a native reader fault on this "
                               "file is likely", attempt, seconds)

    def _stop_overdue(self, now: float) -> None:
        """Kill (and so restart) the actor of every slide over the timeout."""
        import ray

        for ref, (a, inp, _attempt, t0) in self.flight.items():
            if ref not in self.killed and now - t0 > self.opts.timeout:
                self.run.log(f"{inp.path}: over {self.opts.timeout:g} s; stopping its scorer")
                ray.kill(self.actors[a], no_restart=False)
                self.killed.add(ref)

    def _describe(self) -> list[dict[str, Any]]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get([x.describe.remote() for x in self.actors], timeout=60)
        except (RayActorError, RayTaskError, ray.exceptions.GetTimeoutError):
            return []  # who scored is in each row's ``worker``; this is only a summary
