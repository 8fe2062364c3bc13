"""The synthetic MNIST benchmark: a short CPU run on 60x60 cluttered generated digits must learn
(well below chance) and beat the random-glimpse agent trained the same way, by looking at the
digit. Fixed seeds; the two agents train side by side, one core each: about 2.4 minutes on
2 cores (3.5 minutes one after the other at 2 threads)."""

import pytest

from ram_wsi.bench import synthetic_benchmark


@pytest.mark.slow
def test_ram_learns_where_to_look_on_cluttered_digits(tmp_path):
    res = synthetic_benchmark(str(tmp_path), steps=1500)
    ram, rnd = res["ram"], res["ram_random"]
    chance = 90.0
    # Well below chance, with the honest single-rollout (M=1) error.
    assert ram["test_error_stochastic"] < chance - 30, ram
    # Clearly below the random-glimpse agent trained identically.
    assert ram["test_error_stochastic"] < rnd["test_error_stochastic"] - 10, (ram, rnd)
    # Because it looks at the digit: its glimpses land on the target far more often.
    assert ram["test_on_target"] > 1.5 * rnd["test_on_target"], (ram, rnd)
    # The same network with its glimpses sent to random places: what the policy is worth to
    # it. Random places land on the digit as often as the random agent's do (same geometry).
    assert ram["test_error_random_locations"] > ram["test_error_stochastic"] + 10, ram
    assert abs(ram["test_on_target_random_locations"] - rnd["test_on_target"]) < 0.06, (ram, rnd)
    assert "test_error_random_locations" not in rnd
