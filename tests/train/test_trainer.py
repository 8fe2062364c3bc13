"""Trainer: resumable to the same state, atomic checkpoints, typed errors, outputs written."""

import json

import pytest
import torch

from ram_wsi.config import load_config
from ram_wsi.errors import CheckpointError
from ram_wsi.train.checkpoint import load_checkpoint, save_checkpoint
from ram_wsi.train.trainer import Trainer, lr_factor

SMALL = ["data.source=synthetic", "data.synthetic_count=300", "data.task=translated60",
         "data.eval_size=64", "model.glimpses=3", "model.glimpse_hidden=16",
         "model.loc_hidden=16", "model.glimpse_out=32", "model.hidden=32", "train.batch_size=16",
         "train.epochs=2", "train.steps_per_epoch=3", "train.eval_samples=2",
         "train.progress=false"]


def _trainer(tmp_path, name, extra=()):
    cfg = load_config(None, SMALL + [f"train.out_dir={tmp_path / name}", *extra])
    return Trainer(cfg, log=lambda *_: None)


def test_resume_continues_to_the_identical_state(tmp_path):
    straight = _trainer(tmp_path, "a")
    straight.fit()
    first = _trainer(tmp_path, "b")
    first.fit(until_epoch=1)
    resumed = _trainer(tmp_path, "b")
    assert resumed.resume()
    assert resumed.epoch == 1 and resumed.step == 3
    resumed.fit()
    for p, q in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert a[-1]["val_error_mean"] == b[-1]["val_error_mean"]
    for f in ("summary.json", "curve.png", "glimpses.png", "best.pt", "last.pt"):
        assert (tmp_path / "b" / f).stat().st_size > 0


def test_non_finite_loss_is_skipped_not_applied(tmp_path):
    tr = _trainer(tmp_path, "nan")
    before = [p.clone() for p in tr.model.parameters()]
    x, y = tr.data.sampler.sample(8)[:2]
    x[0, 0, 0, 0] = float("nan")  # a NaN pixel poisons the glimpse of a sample at that corner
    res = tr.train_step(torch.full_like(x, float("nan")), y)
    assert res.skipped and tr.skipped_updates == 1 and tr.step == 0
    for p, q in zip(before, tr.model.parameters()):
        assert torch.equal(p, q)


class NotAWeight:
    """An object that ``torch.load(weights_only=True)`` refuses to unpickle."""


def test_a_file_with_pickled_objects_is_refused_without_unsafe_advice(tmp_path):
    odd = tmp_path / "odd.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": NotAWeight()}, odd)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(odd)
    msg = str(info.value)
    assert "not a checkpoint this package wrote" in msg and "odd.pt" in msg
    assert "NotAWeight" in msg  # names what it refused
    assert "weights_only" not in msg and "\n" not in msg and "\x1b" not in msg


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    good = save_checkpoint(tmp_path / "ok.pt", {"w": torch.ones(2)})
    assert torch.equal(load_checkpoint(good)["w"], torch.ones(2))
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written left behind


def test_lr_schedules():
    assert lr_factor(0, 100, "linear", 0) == 1.0
    assert lr_factor(100, 100, "linear", 0) == 0.0
    assert lr_factor(50, 100, "cosine", 0) == pytest.approx(0.5)
    assert lr_factor(4, 100, "constant", 10) == pytest.approx(0.5)
    # a time budget further along than the steps drives the schedule, and vice versa
    assert lr_factor(10, 100, "cosine", 0, time_frac=0.5) == pytest.approx(0.5)
    assert lr_factor(50, 100, "cosine", 0, time_frac=0.1) == pytest.approx(0.5)
    assert lr_factor(10, 100, "linear", 0, time_frac=3.0) == 0.0


def test_a_time_capped_run_ends_annealed_and_resumes_its_budget(tmp_path):
    """max_minutes: the learning rate follows the clock down to ~0 as the budget is spent
    (a step schedule sized for 100,000 updates would still be at its peak), never above what
    the time spent allows (robust to a loaded machine), and a resumed run continues the clock.
    It trains to its cap: patience 0 would end an uncapped run after its first epoch."""
    import math

    cap = ["train.epochs=100000", "train.steps_per_epoch=1", "train.max_minutes=0.1",
           "train.schedule=cosine", "train.patience=0"]
    s = _trainer(tmp_path, "cap", cap).fit()
    assert s["stop_reason"] == "time_cap"
    rows = [json.loads(x) for x in (tmp_path / "cap" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 3
    lrs = [r["lr"] for r in rows]
    assert lrs == sorted(lrs, reverse=True)
    for r in rows:  # lr set before the epoch's end was timed: at least the clock's value
        frac = min(1.0, r["elapsed_s"] / 6.0)
        assert r["lr"] >= 1e-3 * 0.5 * (1 + math.cos(math.pi * frac)) - 1e-9
    assert lrs[-1] < 0.25e-3 and lrs[0] > 0.75e-3
    again = _trainer(tmp_path, "cap", cap)
    assert again.resume() and again.seconds_before >= 3.0
    assert again.fit()["epochs"] == again.epoch <= rows[-1]["epoch"] + 1  # budget already spent


def test_policy_has_its_own_learning_rate(tmp_path):
    tr = _trainer(tmp_path, "lr", ["train.policy_lr_scale=0.25", "train.lr=0.004"])
    tr._set_lr()
    lrs = sorted(g["lr"] for g in tr.optimizer.param_groups)
    assert lrs == pytest.approx([0.001, 0.004])


def test_init_from_starts_from_the_checkpoint_weights_only(tmp_path):
    """train.init_from: the model starts from another run's weights; the step count, the
    optimiser and the schedule start fresh (a curriculum, fine-tuning)."""
    src = _trainer(tmp_path, "src")
    src.fit()
    # fit() ends holding best.pt's weights
    tuned = _trainer(tmp_path, "tuned", [f"train.init_from={tmp_path / 'src' / 'best.pt'}",
                                         "train.seed=5"])
    fresh = _trainer(tmp_path, "fresh", ["train.seed=5"])
    for k, v in src.model.state_dict().items():
        assert torch.equal(tuned.model.state_dict()[k], v), k
    assert any(not torch.equal(fresh.model.state_dict()[k], v)
               for k, v in src.model.state_dict().items())
    assert tuned.step == 0 and not tuned.optimizer.state
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        _trainer(tmp_path, "bad", [f"train.init_from={tmp_path / 'missing.pt'}"])


def test_episodes_per_image_gives_the_group_baseline_its_canvases(tmp_path, monkeypatch):
    """data.mnist.episodes_per_image=4 + train.advantage=group: each update's loss sees the
    batch as canvases of 4 episodes (the leave-one-out baseline's groups) on repeated images."""
    import ram_wsi.train.trainer as tr

    seen = []
    real = tr.hybrid_loss

    def spy(traj, labels, **kw):
        seen.append((labels.clone(), kw.get("groups")))
        return real(traj, labels, **kw)

    monkeypatch.setattr(tr, "hybrid_loss", spy)
    t = _trainer(tmp_path, "g", ["data.mnist.episodes_per_image=4", "train.advantage=group",
                                 "train.epochs=1", "train.steps_per_epoch=2"])
    t.fit()
    assert len(seen) == 2
    for labels, groups in seen:  # canvases numbered apart across updates (MnistEnv's ids)
        assert groups is not None and torch.equal(groups, groups[::4].repeat_interleave(4))
        assert torch.equal(labels, labels[::4].repeat_interleave(4))
    ids = torch.cat([g[::4] for _, g in seen])
    assert len(set(ids.tolist())) == 8
    seen.clear()
    _trainer(tmp_path, "l", ["data.mnist.episodes_per_image=4", "train.epochs=1",
                             "train.steps_per_epoch=1"]).fit()
    assert seen[0][1] is None  # the paper's learned baseline: repeats, no groups


def test_validation_draws_val_samples_rollouts_and_test_eval_samples(tmp_path, monkeypatch):
    """train.val_samples=1: each epoch's validation runs the mean policy and one sampled rollout
    (its M-averaged error is that rollout's), the test keeps eval_samples."""
    import ram_wsi.train.trainer as trainer_mod

    calls, real = [], trainer_mod.evaluate

    def spy(*a, **k):
        calls.append(k["samples"])
        return real(*a, **k)

    monkeypatch.setattr(trainer_mod, "evaluate", spy)
    _trainer(tmp_path, "vs", ["train.val_samples=1", "train.eval_samples=4"]).fit()
    assert calls == [1, 1, 4]  # two epochs' validation, then the test
    rows = [json.loads(x) for x in (tmp_path / "vs" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_error_m_avg"] == r["val_error_stochastic"] for r in rows)


def test_the_time_cap_is_checked_at_every_update(tmp_path):
    """Issue 26 §3: a cap far inside the first epoch ends that epoch at the update that passes
    it (it was checked at the end of an epoch only: a 0.6 s cap trained 37.6 s); the run then
    validates, checkpoints and tests once, and summary.json says how long past the cap the end
    took. A resumed run whose budget is spent starts no update."""
    cap = ["train.epochs=3", "train.steps_per_epoch=100000", "train.max_minutes=0.01"]
    s = _trainer(tmp_path, "exact", cap).fit()
    assert s["stop_reason"] == "time_cap" and s["epochs"] == 1
    assert 0 < s["steps"] < 100000
    assert s["updates_past_cap"] <= 1  # only the update in flight at the cap ended past it
    rows = [json.loads(x) for x in (tmp_path / "exact" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["updates"] == s["steps"]  # validated once
    assert s["max_minutes"] == 0.01 and s["train_seconds"] >= 0.6
    assert s["seconds_over_cap"] >= s["train_seconds"] - 0.6 >= 0
    for f in ("best.pt", "last.pt", "summary.json"):
        assert (tmp_path / "exact" / f).is_file()
    assert {"test_error_mean", "test_error_stochastic"} <= set(s)
    again = _trainer(tmp_path, "exact", cap)
    assert again.resume()
    s2 = again.fit()
    assert s2["steps"] == s["steps"] and s2["updates_past_cap"] == 0
    assert len((tmp_path / "exact" / "metrics.jsonl").read_text().splitlines()) == 1
