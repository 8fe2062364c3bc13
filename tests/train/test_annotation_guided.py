"""Beyond the paper, from the annotation of synthetic slides (training only): the per-glimpse
head's cross-entropy and the reward for glimpses on the lesion. The returns, the labels under
each glimpse, and one update that the single-process trainer and the Ray learner share."""

import numpy as np
import pytest
import torch
from test_slide_training import _overrides, live_and_replayed_update

from ram_wsi.bench.needle import write_needle_cohort
from ram_wsi.config import load_config
from ram_wsi.errors import ConfigError
from ram_wsi.models.ram import Trajectory
from ram_wsi.train.losses import glimpse_loss, hybrid_loss, returns
from ram_wsi.train.trainer import Trainer

GUIDED = {"model.glimpse_aux": True, "train.glimpse_aux_weight": 0.5,
          "train.target_reward": 0.25}


def test_returns_add_the_hits_from_each_glimpse_on():
    reward = torch.tensor([1.0, 0.0])
    labels = torch.tensor([[0, 2, 0, 2], [-1, 0, 1, 0]])
    g = returns(reward, labels, 0.5)
    assert torch.equal(g, torch.tensor([[2.0, 2.0, 1.5, 1.5], [0.5, 0.5, 0.5, 0.0]]))
    assert torch.equal(returns(reward, labels, 0.0), reward[:, None].expand(-1, 4))
    assert returns(reward, None, 0.5).shape == (2, 1)


def _traj(b=3, t=2, classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Trajectory(locations=torch.zeros(b, t, 2), means=torch.zeros(b, t, 2),
                      log_probs=torch.randn(b, t, generator=g).requires_grad_(),
                      baselines=torch.zeros(b, t), logits=torch.randn(b, classes, generator=g),
                      policy_mask=torch.ones(t),
                      glimpse_logits=torch.randn(b, t, classes + 1, generator=g).requires_grad_())


def test_glimpse_loss_reads_known_labels_only():
    traj = _traj()
    labels = torch.tensor([[0, 1], [-1, -1], [2, -1]])
    known = labels >= 0
    want = torch.nn.functional.cross_entropy(traj.glimpse_logits[known], labels[known])
    assert torch.allclose(glimpse_loss(traj, labels), want)
    assert float(glimpse_loss(traj, torch.full((3, 2), -1)).detach()) == 0.0
    assert glimpse_loss(traj, None) is None
    terms = hybrid_loss(traj, torch.tensor([0, 1, 1]), glimpse_labels=labels,
                        glimpse_weight=2.0)
    plain = hybrid_loss(traj, torch.tensor([0, 1, 1]))
    assert torch.allclose(terms.total - plain.total, 2.0 * want)
    assert "glimpse" in terms.as_dict() and "glimpse" not in plain.as_dict()


def test_the_aux_weight_needs_the_head():
    with pytest.raises(ConfigError, match="glimpse_aux"):
        load_config(None, ["train.glimpse_aux_weight=1.0"])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("needle")
    return write_needle_cohort(folder, 2048, train=16, val=4, test=2, lesion=768,
                               log=lambda *_: None)


def test_labels_under_glimpses_follow_the_annotation(cohort, tmp_path):
    cfg = load_config(None, _overrides(cohort, tmp_path, **GUIDED))
    tr = Trainer(cfg, log=lambda *_: None)
    ep = tr.data.env.episodes(16)
    views = ep.sensor.views
    i = int(ep.slide_idx[0])
    target = views[i].target
    cx, cy = target["target_center_px"]
    centre = views[i].frame.from_slide(torch.tensor([[cx / 1024 - 1, cy / 1024 - 1]]))
    loc = torch.cat([centre, torch.tensor([[-0.99, -0.99]], dtype=torch.float64)]).float()
    lab = int(ep.labels[0])
    got = views[i].glimpse_labels(loc, lab)
    assert got.tolist() == [lab + 1, 0]
    locations = torch.zeros(16, 3, 2)
    under = ep.glimpse_labels(locations)
    assert under.shape == (16, 3) and set(under.unique().tolist()) <= {0, 1, 2}


def test_trainer_and_learner_share_the_guided_update(cohort, tmp_path):
    """With the head and the target reward on, the live update and the learner's replay of
    the same episodes (their glimpse labels shipped by the actor) move weights identically."""
    cfg = load_config(None, _overrides(cohort, tmp_path, **GUIDED))
    a, b, res_a, res_b = live_and_replayed_update(cfg, glimpse_labels=True)
    assert a.model.glimpse_head is not None
    assert res_a.loss == res_b and "glimpse" in res_b and np.isfinite(res_b["glimpse"])
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
