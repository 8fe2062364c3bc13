"""A scoring run's options and state: how it is spread and guarded (:class:`RunOptions`), and
what it holds while it runs (:class:`RunState`: the result store, the locks held, the counts,
the commit of each slide's row), shared by the Ray pool and the in-process scorer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .inputs import ScoreInput
from .locks import SlideLock
from .results import ResultStore
from .scorer import Scored, ScorerOptions, write_outputs

__all__ = ["RunOptions", "RunState", "up_to_date"]


@dataclass(frozen=True)
class RunOptions:
    """How a scoring run is spread and guarded.

    Attributes:
        workers: scorer actors (0: score in this process, without Ray: no timeout, no crash
            isolation -- for debugging).
        cpus_per_worker: Ray CPUs per actor (and torch threads in it).
        gpus_per_worker: Ray GPUs per actor (None: a share of the cluster's GPUs when it has
            some, else 0).
        timeout: seconds a slide may take before its actor is killed and the slide marked.
        retries: re-tries of a slide whose scorer process crashed.
        overwrite: score every input again.
        retry_errors: score again inputs whose earlier row is an error.
        address: the Ray cluster to join (None: ``RAY_ADDRESS``, else a local instance).
        progress: show a progress bar (slides/s, ETA) on stderr.
        stale_lock_seconds: a lock older than this is taken over (a host that died).
    """

    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    timeout: float = 600.0
    retries: int = 1
    overwrite: bool = False
    retry_errors: bool = False
    address: str | None = None
    progress: bool = True
    stale_lock_seconds: float = 6 * 3600


class RunState:
    """One scoring run's state: the store, the locks held, the counts (see
    :mod:`ram_wsi.score.runner`'s docstring for the order of things per input)."""

    def __init__(self, out: Path, store: ResultStore, opts: RunOptions,
                 log: Callable[[str], None]):
        self.out, self.store, self.opts, self.log = out, store, opts, log
        self.locks: dict[str, SlideLock] = {}
        self.stamps: dict[str, tuple[int, float]] = {}
        self.scored = 0
        self.failed = 0
        self.bar = None

    def lock(self, inp: ScoreInput) -> bool:
        lk = SlideLock(self.out / "locks", inp.slide_id, stale_after=self.opts.stale_lock_seconds)
        if not lk.acquire():
            return False
        self.locks[inp.path] = lk
        return True

    def commit(self, inp: ScoreInput, scored: Scored, attempts: int) -> None:
        """The slide's outputs, then its row (the commit), then its lock released."""
        row = scored.row
        size, mtime = self.stamps[inp.path]
        row.update({"file_size": size, "file_mtime": mtime, "attempts": attempts})
        if row.get("status") == "ok":
            row["seconds_write"] = round(float(row.get("seconds_write") or 0.0)
                                         + write_outputs(self.out, scored), 4)
        self.store.add(row)
        lk = self.locks.pop(inp.path, None)
        if lk is not None:
            lk.release()
        self.scored += 1
        self.failed += row.get("status") != "ok"
        if self.bar is not None:
            self.bar.set_postfix_str(f"errors {self.failed}", refresh=False)
            self.bar.update(1)

    def fail(self, inp: ScoreInput, reason: str, attempts: int, seconds: float = 0.0) -> None:
        row = {"path": inp.path, "slide_id": inp.slide_id, "label": inp.label,
               "files": inp.files, "status": "error", "error": f"{inp.path}: {reason}",
               "seconds": round(seconds, 4)}
        self.commit(inp, Scored(row), attempts)

    def release_all(self) -> None:
        for lk in self.locks.values():
            lk.release()
        self.locks.clear()


def up_to_date(prev: dict[str, Any] | None, stamp: tuple[int, float], out: Path,
               options: ScorerOptions, opts: RunOptions) -> bool:
    """Whether an earlier row of an input stands: same size and mtime, not asked to redo it,
    and (when ok) its outputs still there. An error that says its store could not be reached
    never stands: the next run tries again (the server may be back)."""
    from ..slide.remote import is_transient

    if prev is None or opts.overwrite:
        return False
    if (prev.get("file_size"), prev.get("file_mtime")) != stamp:
        return False
    if prev.get("status") != "ok":
        return not (opts.retry_errors or is_transient(prev.get("error")))
    sid = prev.get("slide_id")
    if options.geojson and not (out / "geojson" / f"{sid}.geojson").is_file():
        return False
    return not (options.thumbnails and not (out / "thumbnails" / f"{sid}.png").is_file())
