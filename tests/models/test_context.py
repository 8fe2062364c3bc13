"""The context net ("glance, then look"): gradient routing, sampling/replay, exactness."""

import pickle

import pytest
import torch

from ram_wsi.config import ModelConfig
from ram_wsi.distributed.batch import EpisodeBatch
from ram_wsi.models import RecurrentAttentionModel, ReplaySensor, RetinaSensor
from ram_wsi.models.ram import ContextNetwork
from ram_wsi.train.losses import hybrid_loss, rewards_from_logits


def _setup(core="rnn", seed=0, grid=4):
    torch.manual_seed(seed)
    cfg = ModelConfig(core=core, glimpses=3, patch=8, scales=2, hidden=32, glimpse_hidden=16,
                      loc_hidden=16, glimpse_out=32, context="thumbnail", context_size=32,
                      context_grid=grid, context_channels=8)
    model = RecurrentAttentionModel(cfg, channels=3, classes=2)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 3, 40, 40, generator=gen)
    ctx = (torch.rand(16, 3, 32, 32, generator=gen) * 255).round() / 255
    y = torch.randint(0, 2, (16,), generator=gen)
    return model, x, ctx, y, gen


def _grads(module):
    return [p.grad for p in module.parameters()]


def _moved(grads):
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_first_location_is_a_cell_centre_and_learned():
    model, x, ctx, _y, gen = _setup()
    traj = model.unroll(RetinaSensor(x, model.spec), 16, generator=gen, context=ctx)
    assert traj.policy_mask.tolist() == [1.0, 1.0, 1.0]  # glimpse 0 is the context's choice
    first = traj.locations[:, 0]
    g = model.context.grid
    cells = (first + 1) / 2 * g - 0.5  # cell centres sit at integer + 0.5 positions
    assert torch.allclose(cells, cells.round(), atol=1e-5)
    assert (traj.log_probs[:, 0] < 0).all()  # a proper categorical log-probability


def test_context_gradients_are_routed():
    """Cross-entropy reaches the encoder (h0) but not the first-location policy; REINFORCE
    reaches the policy but not the encoder."""
    model, x, ctx, y, gen = _setup()
    traj = model.unroll(RetinaSensor(x, model.spec), 16, generator=gen, context=ctx)
    terms = hybrid_loss(traj, y)
    terms.classification.backward(retain_graph=True)
    assert _moved(_grads(model.context.encoder))
    assert not _moved(_grads(model.context.policy))
    model.zero_grad(set_to_none=True)
    terms.reinforce.backward()
    assert _moved(_grads(model.context.policy))
    assert not _moved(_grads(model.context.encoder))
    assert not _moved(_grads(model.classifier))


@pytest.mark.parametrize("core", ["rnn", "lstm"])
def test_replay_with_context_gives_identical_gradients(core):
    """An actor's recorded batch (uint8 thumbnail, glimpses, raw locations), pickled as Ray
    does, replayed: the same log-probs, logits and gradients, bit for bit."""
    model, x, ctx, y, gen = _setup(core)
    live = model.unroll(RetinaSensor(x, model.spec), 16, generator=gen, context=ctx,
                        keep_glimpses=True)
    hybrid_loss(live, y).total.backward()
    g_live = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    batch = EpisodeBatch(glimpses=live.glimpses.detach(), locations=live.locations.detach(),
                         behaviour_log_probs=live.log_probs.detach(), labels=y,
                         rewards=rewards_from_logits(live.logits, y), version=0,
                         context=(ctx * 255).round().to(torch.uint8))
    batch = pickle.loads(pickle.dumps(batch))
    replay = model.unroll(ReplaySensor(batch.float_glimpses()), 16, locations=batch.locations,
                          context=batch.context.float() / 255)
    hybrid_loss(replay, y).total.backward()
    assert torch.equal(replay.log_probs, live.log_probs)
    assert torch.equal(replay.logits, live.logits)
    for a, p in zip(g_live, model.parameters()):
        assert torch.equal(p.grad, a)


def test_mean_policy_picks_the_most_probable_cell_and_needs_the_thumbnail():
    model, x, ctx, _y, _gen = _setup()
    a = model.unroll(RetinaSensor(x, model.spec), 16, policy="mean", context=ctx,
                     generator=torch.Generator().manual_seed(1))
    b = model.unroll(RetinaSensor(x, model.spec), 16, policy="mean", context=ctx,
                     generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.locations, b.locations)  # nothing random left
    assert torch.equal(a.locations[:, 0], a.means[:, 0])
    with pytest.raises(ValueError, match="thumbnail"):
        model.unroll(RetinaSensor(x, model.spec), 16)


def test_cells_and_centres_invert():
    net = ContextNetwork(3, 32, 8, 4, 16)
    cells = torch.arange(64)
    assert torch.equal(net.cells_of(net.cell_centres(cells, torch.float32)), cells)
    # the top-left cell is (-1, -1)'s: x first, then y (row-major cells)
    c = net.cell_centres(torch.tensor([1, 8]), torch.float32)
    assert c[0, 0] > c[1, 0] and c[0, 1] < c[1, 1]


def test_context_policy_learns_where_the_target_is():
    """REINFORCE on the first location alone, a reward of 1 when the chosen cell holds the
    bright spot of the thumbnail: a fully convolutional head learns it in a few hundred
    updates (what makes the first glimpse cheap to learn on slides)."""
    torch.manual_seed(0)
    net = ContextNetwork(1, 32, 4, 8, 16)
    opt = torch.optim.Adam(net.policy.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def batch(n):
        cells = torch.randint(0, 16, (n,), generator=gen)
        img = torch.full((n, 1, 32, 32), 0.3)
        for i, c in enumerate(cells.tolist()):
            r, q = divmod(c, 4)
            img[i, 0, r * 8 + 2:r * 8 + 6, q * 8 + 2:q * 8 + 6] = 0.9
        return img, cells

    for _ in range(300):
        img, cells = batch(64)
        loc, _, logp = net.act(img, generator=gen)
        reward = (net.cells_of(loc) == cells).float()
        loss = -((reward - reward.mean()) * logp).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    img, cells = batch(256)
    loc, _, _ = net.act(img, policy="mean")
    assert (net.cells_of(loc) == cells).float().mean() > 0.9  # chance: 1/16


def test_the_glance_runs_once_per_distinct_thumbnail_with_the_same_outputs_and_gradients():
    """Episodes of one slide share its thumbnail: the context net runs once per distinct one,
    and gives the outputs and gradients of running every row."""
    from torch import nn

    from ram_wsi.models.ram import _per_distinct

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    thumbs = torch.rand(3, 3, 8, 8)
    x = thumbs[[0, 1, 0, 2, 1, 0]]
    x[5, 0, 0, 0] += 1e-3  # equal up to one pixel: distinct, never merged
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    got = _per_distinct(net, x)
    assert calls == [4]
    grads = torch.autograd.grad(got.square().sum(), list(net.parameters()))
    want = net(x)
    assert torch.allclose(got, want, atol=1e-6)
    for g, w in zip(grads, torch.autograd.grad(want.square().sum(), list(net.parameters()))):
        assert torch.allclose(g, w, atol=1e-5)
