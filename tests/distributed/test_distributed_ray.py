"""Distributed training on a real (local, 2-CPU) Ray instance: sync and async runs, resume from
the checkpoint, and an actor killed mid-run that Ray restarts while training goes on."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from ram_wsi.config import load_config
from ram_wsi.distributed import train_distributed

pytestmark = pytest.mark.slow

OVERRIDES = ["data.source=synthetic", "data.synthetic_count=300", "data.eval_size=40",
             "train.eval_samples=1", "train.batch_size=16", "distributed.episodes_per_call=8",
             "distributed.actors=2", "train.warmup_steps=0", "train.progress=false",
             "model.hidden=64", "model.glimpse_hidden=32", "model.loc_hidden=32",
             "model.glimpse_out=64", "model.glimpses=4"]


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(out, *extra):
    return load_config("configs/cluttered60_8g.yaml", [*OVERRIDES, f"train.out_dir={out}", *extra])


def _quiet(*_):
    pass


def test_sync_run_then_resume(tmp_path):
    out = tmp_path / "run"
    s = train_distributed(_cfg(out, "train.epochs=2", "train.steps_per_epoch=3"), log=_quiet,
                          resume=False)
    assert s["steps"] == 6 and s["epochs"] == 2
    d = s["distributed"]
    assert d["updates"] == 6 and d["mode"] == "sync"
    assert d["episodes"] == 6 * 2 * 8 and d["batches"] == 12 and d["dropped_batches"] == 0
    for name in ("last.pt", "best.pt", "summary.json", "metrics.jsonl", "glimpses.png"):
        assert (out / name).is_file(), name
    assert {"test_error_stochastic", "test_error_mean", "test_error_m_avg"} <= set(s)
    # Resubmitting with a longer budget continues from last.pt.
    s2 = train_distributed(_cfg(out, "train.epochs=3", "train.steps_per_epoch=3"), log=_quiet)
    assert s2["steps"] == 9 and s2["epochs"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_async_run_survives_a_killed_actor(tmp_path):
    seen: dict = {}

    def chaos(runner):
        step = runner.trainer.step
        if step == 3 and "before" not in seen:
            seen["before"] = runner.actor_info()
            assert runner.pending, "async mode keeps calls in flight"
            ray.kill(runner.actors[0], no_restart=False)  # dies mid-call; Ray restarts it
        if step == 11 and "after" not in seen:
            seen["after"] = runner.actor_info()

    cfg = _cfg(tmp_path / "run", "train.epochs=1", "train.steps_per_epoch=12",
               "distributed.mode=async", "distributed.max_staleness=3")
    s = train_distributed(cfg, log=_quiet, callback=chaos, resume=False)
    d = s["distributed"]
    assert s["steps"] == 12 and d["updates"] == 12 and d["skipped_updates"] == 0
    before, after = seen["before"], seen["after"]
    assert after[0]["pid"] != before[0]["pid"], "actor 0 was restarted in a new process"
    assert after[0]["incarnation"] != 0 and after[1]["incarnation"] == 0
    assert after[1]["pid"] == before[1]["pid"]
    assert d["batches"] >= 12 and d["mean_staleness"] >= 0
    assert sum(d["episodes_by_actor_pid"].values()) == d["episodes"]


def test_sync_run_uses_the_restarted_actor(tmp_path):
    """Sync mode needs a batch from every actor for every update, so finishing the run with
    all its updates means the restarted actor (a new process) went back to work."""
    import os
    import signal

    seen: dict = {}

    def chaos(runner):
        if runner.trainer.step == 2 and "before" not in seen:
            seen["before"] = runner.actor_info()
            os.kill(seen["before"][1]["pid"], signal.SIGKILL)  # the process dies, not a task

    cfg = _cfg(tmp_path / "run", "train.epochs=1", "train.steps_per_epoch=5")
    s = train_distributed(cfg, log=_quiet, callback=chaos, resume=False)
    d = s["distributed"]
    assert s["steps"] == 5 and d["updates"] == 5
    old = seen["before"][1]["pid"]
    by = d["episodes_by_actor_pid"]
    assert by[f"1:{old}"] == 2 * 8, "two updates before the kill"
    new = [k for k in by if k.startswith("1:") and k != f"1:{old}"]
    assert len(new) == 1 and by[new[0]] == 3 * 8, by
    assert by[f"0:{seen['before'][0]['pid']}"] == 5 * 8


def test_the_time_cap_stops_a_ray_run_at_the_update_that_passes_it(tmp_path):
    """Issue 26 §3 with the Ray learner: the cap is checked before every update (here spent,
    deterministically, by the callback after update 3 of an epoch of 100,000), and a batch
    that arrives after the cap is dropped, not applied."""
    from ram_wsi.distributed import DistributedRunner
    from ram_wsi.train.trainer import Trainer

    def spend(runner):
        if runner.trainer.step == 3:
            runner.trainer.cfg.train.max_minutes = 1e-9  # the budget ends now

    cfg = _cfg(tmp_path / "run", "train.epochs=1", "train.steps_per_epoch=100000")
    trainer = Trainer(cfg, log=_quiet)
    runner = DistributedRunner(cfg, trainer, log=_quiet, callback=spend)
    try:
        s = runner.fit()
        assert s["stop_reason"] == "time_cap" and s["steps"] == 3
        assert s["distributed"]["updates"] == 3 and s["updates_past_cap"] == 1
        assert s["seconds_over_cap"] > 0
        rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
                .splitlines()]
        assert [r["updates"] for r in rows] == [3]
        applied, loss = runner.update()
        assert not applied and loss is None and trainer.step == 3
        assert runner.stats["batches_after_cap"] == 1
    finally:
        runner.close()
