"""The time-to-accuracy benchmark: first crossings read off the metrics, and one tiny run."""

import json

import pytest

from ram_wsi.bench import main
from ram_wsi.bench.time_to_accuracy import crossings, read_run
from ram_wsi.errors import RamWsiError


def _row(epoch, seconds, stoch, mean, **extra):
    return {"epoch": epoch, "step": 100 * epoch, "elapsed_s": seconds, "seconds": seconds,
            "val_error_stochastic": stoch, "val_error_mean": mean, **extra}


def test_first_crossing_per_target_and_error_kind():
    history = [_row(1, 60, 25.0, 20.0), _row(2, 120, 12.0, 9.0), _row(3, 180, 10.0, 8.0),
               _row(4, 240, 8.09, 7.5), _row(5, 300, 9.0, 8.5)]
    got = {(r["target"], r["error"]): r for r in crossings(history, [8.09, 4.04], 128)}
    assert got[(8.09, "mean")]["minutes"] == 3.0 and got[(8.09, "mean")]["epoch"] == 3
    assert got[(8.09, "mean")]["images"] == 300 * 128
    assert got[(8.09, "stochastic")]["minutes"] == 4.0  # at or below: 8.09 counts
    assert got[(8.09, "mean")]["minutes_smoothed"] is None  # mean of 5: 10.6 %
    two = {(r["target"], r["error"]): r for r in crossings(history, [8.09], 128, smooth=2)}
    assert two[(8.09, "mean")]["minutes_smoothed"] == 4.0  # (8.0 + 7.5) / 2 after epoch 4
    assert two[(8.09, "stochastic")]["minutes_smoothed"] is None  # best pair: 8.55 %
    for kind, best, at in (("mean", 7.5, 4.0), ("stochastic", 8.09, 4.0)):
        r = got[(4.04, kind)]
        assert r["minutes"] is None and r["epoch"] is None and r["images"] is None
        assert (r["best"], r["best_minutes"]) == (best, at)


def test_a_resumed_runs_clock_counts_its_earlier_fits():
    # After a resume elapsed_s restarts at 0; "seconds" is the run's own clock.
    history = [_row(1, 600, 12.0, 11.0), _row(2, 700, 9.0, 7.0, elapsed_s=100)]
    (r,) = [r for r in crossings(history, [8.09], 64) if r["error"] == "mean"]
    assert r["minutes"] == pytest.approx(700 / 60)
    # files written before the field existed fall back to elapsed_s
    old = [{k: v for k, v in _row(1, 90, 5.0, 5.0).items() if k != "seconds"}]
    assert crossings(old, [8.09], 1)[0]["minutes"] == 1.5


def test_read_run_names_the_missing_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RamWsiError, match="metrics.jsonl"):
        read_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(RamWsiError, match="metrics.jsonl: not valid JSON"):
        read_run(tmp_path)


def test_tiny_run_then_read_back(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--set", "data.source=synthetic", "--set", "data.mnist.synthetic_count=600",
            "--set", "data.mnist.task=cluttered60", "--set", "data.mnist.eval_size=64",
            "--set", "train.batch_size=16", "--set", "train.steps_per_epoch=4",
            "--set", "train.epochs=2", "--set", "train.eval_samples=2",
            "--set", "train.progress=false", "--out-dir", str(out),
            "--minutes", "10", "--targets", "100", "-1", "--smooth", "2"]
    assert main(["time-to-accuracy", *argv]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and json.loads((out / "config.json").read_text())[
        "train"]["max_minutes"] == 10
    hit = [r for r in rows if r.get("target") == 100]
    assert [r["epoch"] for r in hit] == [1, 1]  # any error is <= 100 %: the first evaluation
    assert hit[0]["minutes"] == pytest.approx(history[0]["seconds"] / 60)
    assert hit[0]["minutes_smoothed"] == pytest.approx(history[1]["seconds"] / 60)
    assert hit[0]["device"] == "cpu" and hit[0]["threads"] >= 1
    miss = [r for r in rows if r.get("target") == -1]
    assert all(r["minutes"] is None for r in miss)
    assert {r["error"]: r["best"] for r in miss} == {
        "stochastic": min(h["val_error_stochastic"] for h in history),
        "mean": min(h["val_error_mean"] for h in history)}
    test = rows[-1]
    assert test["test_size"] == 64 and test["images"] == 8 * 16
    # the same rows again from the run directory alone
    assert main(["time-to-accuracy", "--run", str(out), "--targets", "100", "-1",
                 "--smooth", "2"]) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert [r.get("minutes") for r in again[:-1]] == [r.get("minutes") for r in rows[:-1]]
