"""Beyond the paper (issue 21 §2): the classifier read after every glimpse is trained
(``train.step_loss``) and rewards each glimpse by what it adds to the decision
(``reward="log_prob_steps"``); a confidence stop reads it. The per-step returns, the anytime
cross-entropy and its gradient into the core, the stop rule, and one update that the
single-process trainer and the Ray learner share."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_annotation_guided import cohort  # noqa: F401  (the module's needle cohort)
from test_slide_training import _overrides, live_and_replayed_update

from ram_wsi.config import load_config
from ram_wsi.errors import ConfigError
from ram_wsi.models.ram import Trajectory
from ram_wsi.train.losses import hybrid_loss, returns, step_rewards
from ram_wsi.train.slide_eval import confidence_stop


def _traj(b=3, t=3, classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(b, t, classes, generator=g).requires_grad_()
    return Trajectory(locations=torch.zeros(b, t, 2), means=torch.zeros(b, t, 2),
                      log_probs=torch.randn(b, t, generator=g).requires_grad_(),
                      baselines=torch.zeros(b, t), logits=steps[:, -1], step_logits=steps,
                      policy_mask=torch.ones(t))


def test_per_step_returns_sum_what_later_glimpses_earn():
    r = torch.tensor([[-0.5, -0.25, -0.125], [-1.0, 0.0, -2.0]])
    assert torch.equal(returns(r, None, 0.0), torch.tensor([[-0.875, -0.375, -0.125],
                                                            [-3.0, -2.0, -2.0]]))
    hits = torch.tensor([[0, 1, 0], [2, 2, 2]])  # the target reward adds on top
    assert torch.equal(returns(r, hits, 1.0) - returns(r, None, 0.0),
                       torch.tensor([[1.0, 1.0, 0.0], [3.0, 2.0, 1.0]]))


def test_step_rewards_are_log_p_of_the_label_after_each_glimpse_over_t():
    traj = _traj()
    y = torch.tensor([0, 1, 1])
    r = step_rewards(traj.step_logits, y)
    want = torch.log_softmax(traj.step_logits.detach(), -1)[torch.arange(3), :, y] / 3
    assert torch.allclose(r, want) and not r.requires_grad
    # Summed over the glimpses a right-from-the-start episode earns more than one that is
    # right only at the end with the same final confidence.
    early = torch.tensor([[[4.0, 0.0], [4.0, 0.0], [4.0, 0.0]]])
    late = torch.tensor([[[0.0, 4.0], [0.0, 4.0], [4.0, 0.0]]])
    lab = torch.tensor([0])
    assert step_rewards(early, lab).sum() > step_rewards(late, lab).sum()
    assert torch.isclose(step_rewards(early, lab)[0, -1], step_rewards(late, lab)[0, -1])


def test_step_loss_adds_the_earlier_glimpses_cross_entropy():
    traj = _traj()
    y = torch.tensor([0, 1, 1])
    plain = hybrid_loss(traj, y)
    terms = hybrid_loss(traj, y, step_loss=0.5)
    want = F.cross_entropy(traj.step_logits[:, :2].reshape(-1, 2), y.repeat_interleave(2))
    assert torch.allclose(terms.total - plain.total, 0.5 * want)
    assert "anytime" in terms.as_dict() and "anytime" not in plain.as_dict()
    terms.total.backward()
    assert traj.step_logits.grad[:, :2].abs().sum() > 0  # the earlier steps are trained


def test_the_model_trains_its_classifier_after_every_glimpse(cohort, tmp_path):  # noqa: F811
    """``step_logits`` are live (not detached): the anytime loss reaches the core and the
    glimpse net; the last step is the decision."""
    from ram_wsi.train.trainer import Trainer

    cfg = load_config(None, _overrides(cohort, tmp_path, **{"train.step_loss": 1.0}))
    tr = Trainer(cfg, log=lambda *_: None)
    ep = tr.data.env.episodes(4)
    traj = tr.model.unroll(ep.sensor, len(ep), start=ep.start, context=ep.model_context())
    assert torch.equal(traj.logits, traj.step_logits[:, -1])
    F.cross_entropy(traj.step_logits[:, 0], ep.labels).backward()
    grads = [p.grad for p in tr.model.core.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_confidence_stop_spends_glimpses_only_where_unsure():
    # slide 0 is sure at glimpse 1, slide 1 at glimpse 3, slide 2 never (reads all 3)
    p = np.array([[[0.95, 0.05], [0.6, 0.4], [0.3, 0.7]],
                  [[0.5, 0.5], [0.6, 0.4], [0.1, 0.9]],
                  [[0.4, 0.6], [0.45, 0.55], [0.55, 0.45]]])
    y = np.array([0, 1, 0])
    s = {d["level"]: d for d in confidence_stop(p, y, (0.9, 0.99))}
    assert s[0.9] == {"level": 0.9, "accuracy": 1.0, "glimpses": round(7 / 3, 3)}
    assert s[0.99]["glimpses"] == 3.0 and s[0.99]["accuracy"] == pytest.approx(2 / 3, abs=1e-4)


def test_the_anytime_options_are_checked():
    with pytest.raises(ConfigError, match="step_loss"):
        load_config(None, ["train.step_loss=-1"])
    with pytest.raises(ConfigError, match="train.reward"):
        load_config(None, ["train.reward=log_prob_step"])
    assert load_config(None, ["train.reward=log_prob_steps"]).train.reward == "log_prob_steps"


def test_trainer_and_learner_share_the_anytime_update(cohort, tmp_path):  # noqa: F811
    cfg = load_config(None, _overrides(cohort, tmp_path, **{
        "train.step_loss": 0.5, "train.reward": "log_prob_steps"}))
    a, b, res_a, res_b = live_and_replayed_update(cfg)
    assert res_a.loss == res_b and "anytime" in res_b and np.isfinite(res_b["anytime"])
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
