"""Time to accuracy: wall-clock minutes until an MNIST run's validation error first reaches a
target (by default the paper's Conv and RAM rows of the config's task).

    ram-wsi bench time-to-accuracy -c configs/cluttered60_8g.yaml --data-dir ../shared/data/mnist \
        --minutes 25 [--targets 8.09 4.04] [--set train.threads=2]
    ram-wsi bench time-to-accuracy --run runs/cluttered60_8g     # read a finished run instead

It trains one run capped by ``train.max_minutes`` (the schedule anneals over that budget, so the
minutes to a target depend on the budget: quote both), then reads the run's ``metrics.jsonl``:
one validation evaluation per epoch, each stamped with the seconds since the run began
(evaluation time included -- it is the time a user waits). For each target and each error
(one sampled rollout, the mean policy) it prints the first epoch at or below the target, or
that it was not reached and the best error seen, and when the mean of the last 5 evaluations
first reached it; then the run's held-out test errors.

Why validation and not test: the test split is touched once, at the end, by the best
checkpoint; reading it every epoch would make it a second validation set. The validation set
is small (800 canvases by default: one point is ~1 % SE), so a first crossing is an optimistic
reading of when the target was reached; the final test errors are the figure to trust.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cli_args import config_from_args
from ..errors import RamWsiError
from ._report import emit, print_table
from .mnist import PAPER_NIPS

__all__ = ["crossings", "main", "read_run", "report"]

_ERRORS = (("stochastic", "val_error_stochastic"), ("mean", "val_error_mean"))


def crossings(history: Sequence[dict[str, Any]], targets: Sequence[float],
              batch_size: int, smooth: int = 5) -> list[dict[str, Any]]:
    """For each target and error kind, the first metrics row at or below it.

    ``history``: the run's ``metrics.jsonl`` rows in order (``seconds``: the run's clock, a
    resumed run's earlier fits included -- ``elapsed_s`` in files older than that field --,
    ``epoch``, ``step``, ``val_error_stochastic``, ``val_error_mean``). Returns one row per
    (target, error): ``minutes``, ``epoch`` and ``images`` at the first evaluation at or below
    the target (None if never); ``minutes_smoothed``, the first time the mean of the last
    ``smooth`` evaluations is (a single evaluation on a small validation set reaches a target
    early by luck); and the ``best`` error over the run with its ``best_minutes``.
    """
    out = []
    for target in targets:
        for kind, key in _ERRORS:
            rows = [r for r in history if r.get(key) is not None]
            hit = next((r for r in rows if r[key] <= target), None)
            steady = next((r for i, r in enumerate(rows) if i + 1 >= smooth and sum(
                q[key] for q in rows[i + 1 - smooth:i + 1]) / smooth <= target), None)
            best = min(rows, key=lambda r: r[key]) if rows else None
            out.append({"target": target, "error": kind,
                        "minutes": None if hit is None else _minutes(hit),
                        "epoch": None if hit is None else hit["epoch"],
                        "images": None if hit is None else hit["step"] * batch_size,
                        "minutes_smoothed": None if steady is None else _minutes(steady),
                        "smooth": smooth,
                        "best": None if best is None else best[key],
                        "best_minutes": None if best is None else _minutes(best)})
    return out


def _minutes(row: dict[str, Any]) -> float:
    return row.get("seconds", row["elapsed_s"]) / 60


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """``(config, metrics rows, summary)`` of a finished run directory.

    Raises :class:`RamWsiError` naming the file when one is missing or not JSON.
    """
    d = Path(run_dir)
    parts = []
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        p = d / name
        if not p.is_file():
            raise RamWsiError(f"{p}: missing -- is {d} a finished training run (ram-wsi train)?")
        try:
            text = p.read_text()
            parts.append([json.loads(line) for line in text.splitlines() if line.strip()]
                         if name.endswith(".jsonl") else json.loads(text))
        except json.JSONDecodeError as exc:
            raise RamWsiError(f"{p}: not valid JSON ({exc})") from exc
    return parts[0], parts[1], parts[2]


def report(config: dict[str, Any], history: list[dict[str, Any]], summary: dict[str, Any],
           targets: Sequence[float] | None = None, smooth: int = 5) -> list[dict[str, Any]]:
    """Print (JSON lines, then a table) and return the crossing rows and one test row."""
    task = config["data"]["mnist"]["task"]
    if not targets:
        paper = PAPER_NIPS.get(task, {})
        targets = sorted({v for k, v in paper.items() if k in ("conv", "ram")}, reverse=True)
    common = {"bench": "time_to_accuracy", "task": task, "arch": config["model"]["arch"],
              "device": summary.get("device", config["train"].get("device")),
              "threads": summary.get("threads", config["train"].get("threads")),
              "budget_minutes": config["train"].get("max_minutes"),
              "val_evals": len(history)}
    rows = [emit({**common, **r}) for r in crossings(history, targets,
                                                     config["train"]["batch_size"], smooth)]
    print_table(rows, ["task", "target", "error", "minutes", "epoch", "images",
                       "minutes_smoothed", "best", "best_minutes"])
    test = emit({**common, "test_error_stochastic": summary.get("test_error_stochastic"),
                 "test_error_mean": summary.get("test_error_mean"),
                 "test_error_m_avg": summary.get("test_error_m_avg"),
                 "test_on_target": summary.get("test_on_target"),
                 "test_size": summary.get("test_size"), "steps": summary.get("steps"),
                 "images": (summary.get("steps") or 0) * config["train"]["batch_size"],
                 "minutes": summary.get("elapsed_s", 0.0) / 60})
    print_table([test], ["task", "test_error_stochastic", "test_error_mean", "test_error_m_avg",
                         "test_on_target", "images", "minutes"])
    return [*rows, test]


def main(argv: Sequence[str] | None = None) -> int:
    """``ram-wsi bench time-to-accuracy``: its arguments checked (:mod:`ram_wsi.commands.bench`),
    then :func:`run_bench`."""
    from ..commands.bench import parse_bench

    return run_bench(parse_bench("time-to-accuracy", sys.argv[1:] if argv is None else argv))


def run_bench(args: argparse.Namespace) -> int:
    """``ram-wsi bench time-to-accuracy`` with checked arguments."""
    from ..train.trainer import Trainer

    if args.run:
        config, history, summary = read_run(args.run)
        report(config, history, summary, args.targets, args.smooth)
        return 0
    args.set = [*(args.set or []), f"train.max_minutes={args.minutes}"]
    cfg = config_from_args(args)
    trainer = Trainer(cfg)
    summary = trainer.fit()
    report(cfg.to_dict(), trainer.history, summary, args.targets, args.smooth)
    return 0
