"""The distributed learner without Ray: exact replay, the off-policy correction, the NaN guard,
quantised glimpses, and slide episodes.

The key property: the learner, fed the glimpses and locations an actor recorded, computes the
same gradients as the single-process trainer's live unroll that produced them.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from ram_wsi.config import ExperimentConfig, load_config
from ram_wsi.distributed.actors import RolloutWorker
from ram_wsi.distributed.batch import EpisodeBatch, QuantizingSensor, dequantize, quantize
from ram_wsi.distributed.learner import Learner
from ram_wsi.models.ram import ReplaySensor
from ram_wsi.train.losses import hybrid_loss, rewards_from_logits
from ram_wsi.train.trainer import Trainer

OVERRIDES = ["data.source=synthetic", "data.synthetic_count=300", "data.eval_size=40",
             "train.eval_samples=1", "train.batch_size=16", "distributed.episodes_per_call=8",
             "train.steps_per_epoch=2", "train.epochs=1", "train.warmup_steps=0",
             "model.hidden=64", "model.glimpse_hidden=32", "model.loc_hidden=32",
             "model.glimpse_out=64", "model.glimpses=4"]


def _cfg(tmp_path, *extra):
    return load_config("configs/cluttered60_8g.yaml",
                       [*OVERRIDES, f"train.out_dir={tmp_path}/run", *extra])


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _batch_from(traj, labels, version=0):
    return EpisodeBatch(glimpses=traj.glimpses.detach(), locations=traj.locations.detach(),
                        behaviour_log_probs=traj.log_probs.detach(), labels=labels,
                        rewards=rewards_from_logits(traj.logits, labels), version=version)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return Trainer(_cfg(tmp_path_factory.mktemp("dist")), log=lambda *_: None)


def test_replay_gradients_equal_single_process(trainer):
    """Single-process: live unroll over images -> hybrid loss -> grads. Distributed: the same
    trajectory recorded, pickled (as Ray does), replayed by the learner -> grads. Bitwise."""
    model = trainer.model
    x, y, _ = trainer.data.sampler.sample(16)
    model.zero_grad(set_to_none=True)
    traj = trainer.rollout(x, keep_glimpses=True)
    live = hybrid_loss(traj, y)
    live.total.backward()
    g_live = _grads(model)
    assert g_live and all(torch.isfinite(g).all() for g in g_live.values())
    assert float(g_live["locator.fc.weight"].abs().sum()) > 0  # REINFORCE reached the policy

    batch = pickle.loads(pickle.dumps(_batch_from(traj, y)))
    model.zero_grad(set_to_none=True)
    replay = Learner(trainer).loss(batch)
    replay.total.backward()
    g_replay = _grads(model)
    assert g_live.keys() == g_replay.keys()
    for name in g_live:
        assert torch.equal(g_live[name], g_replay[name]), name
    assert torch.equal(live.total, replay.total)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_actor_batch_replays_exactly(trainer, dtype):
    """An actor's batch (any glimpse dtype): the learner's replay gives the actor's log-probs
    and rewards exactly, and the same gradients as a live unroll over the quantised sensor."""
    cfg = ExperimentConfig.from_dict({**trainer.cfg.to_dict(),
                            "distributed": {**trainer.cfg.to_dict()["distributed"],
                                            "glimpse_dtype": dtype}})
    worker = RolloutWorker(cfg, index=0)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = worker.rollout(state, version=trainer.step)
    assert batch.glimpses.dtype == getattr(torch, dtype)
    assert batch.version == trainer.step and len(batch) == 8
    learner = Learner(trainer)
    with torch.no_grad():
        traj = learner.replay(batch)
    assert torch.equal(traj.log_probs, batch.behaviour_log_probs)
    assert torch.equal(rewards_from_logits(traj.logits, batch.labels), batch.rewards)
    seen = batch.float_glimpses()
    if dtype == "float16":  # what the policy saw was representable in the travelling dtype
        assert torch.equal(seen.half().float(), seen)
    if dtype == "uint8":
        assert torch.equal((seen * 255).round() / 255, seen)


def test_quantizing_sensor_records_what_the_policy_saw():
    g = torch.rand(4, 3, 1, 12, 12)
    for dtype in ("float16", "uint8"):
        seen = QuantizingSensor(lambda t, loc: g, dtype)(0, None)
        assert torch.equal(dequantize(quantize(seen, dtype)), seen)
        assert (seen - g).abs().max() <= (1 / 255 if dtype == "uint8" else 1e-3)


def test_off_policy_ratio_is_the_clipped_trajectory_ratio(trainer):
    x, y, _ = trainer.data.sampler.sample(16)
    with torch.no_grad():
        traj = trainer.rollout(x, keep_glimpses=True)
    learner = Learner(trainer, rho_clip=1.0)
    batch = _batch_from(traj, y)
    on = learner.loss(batch, off_policy=False)
    same = learner.loss(batch, off_policy=True)  # behaviour == target: ratio 1
    assert torch.allclose(on.reinforce, same.reinforce, atol=1e-7)
    # Behaviour policy twice as likely at each of the T-1 sampled steps: ratio 2^-(T-1).
    steps = int(traj.policy_mask.sum())
    batch.behaviour_log_probs = batch.behaviour_log_probs + math.log(2.0) * traj.policy_mask
    off = learner.loss(batch, off_policy=True)
    assert torch.allclose(off.reinforce, on.reinforce * 2.0 ** -steps, rtol=1e-5, atol=1e-8)
    assert torch.equal(off.classification, on.classification)
    # A much *less* likely behaviour: the ratio is clipped at rho_clip.
    batch.behaviour_log_probs = batch.behaviour_log_probs - 10.0 * traj.policy_mask
    clipped = learner.loss(batch, off_policy=True)
    assert torch.allclose(clipped.reinforce, on.reinforce, rtol=1e-5, atol=1e-8)


def test_nan_batch_is_skipped_and_counted(tmp_path):
    tr = Trainer(_cfg(tmp_path), log=lambda *_: None)
    learner = Learner(tr)
    x, y, _ = tr.data.sampler.sample(16)
    with torch.no_grad():
        traj = tr.rollout(x, keep_glimpses=True)
    good = _batch_from(traj, y)
    bad = _batch_from(traj, y)
    bad.glimpses = bad.glimpses.clone()
    bad.glimpses[0, 1] = float("nan")
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    applied, loss = learner.update(bad)
    assert not applied and not math.isfinite(loss["total"])
    assert tr.skipped_updates == 1 and tr.step == 0
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    applied, _ = learner.update(good)  # a good batch does move the weights
    assert applied and tr.step == 1 and tr.skipped_updates == 1
    assert any(not torch.equal(v, before[k]) for k, v in tr.model.state_dict().items())


def test_slide_episodes(tmp_path):
    """Slide env inside a worker: opened from manifest paths, first glimpse on tissue, RGB
    glimpses, labels from the manifest, exact replay."""
    from ram_wsi.slide import open_source, tissue_mask, write_synthetic_slide

    rows = ["path,label"]
    for i, label in enumerate(("tumor", "normal")):
        write_synthetic_slide(tmp_path / f"s{i}.tiff", 2048, seed=i, label=i)
        rows.append(f"s{i}.tiff,{label}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, ["data.source=slides", f"data.manifest={tmp_path}/manifest.csv",
                             "data.retina_base=2.0", "distributed.episodes_per_call=12",
                             "model.glimpses=3"])
    worker = RolloutWorker(cfg.to_dict(), index=1)
    batch = worker.rollout(None, version=0)
    assert batch.glimpses.shape == (12, 3, 3, 3, 12, 12)
    assert set(batch.labels.tolist()) <= {0, 1}  # normal=0, tumor=1 (sorted names)
    env = worker.env
    assert env.class_names == ["normal", "tumor"]
    # which slide each episode read: the label tells (one slide per class here); locations
    # are in the slide's tissue frame, which lies inside the slide
    for lab, name in ((1, "s0.tiff"), (0, "s1.tiff")):
        rows_ = batch.labels == lab
        if rows_.any():
            i = next(j for j, r in enumerate(env.train.records) if r.path.endswith(name))
            view = env.train.view(i)
            assert view.on_tissue(batch.locations[rows_, 0]).all()
            # the frame is the tissue's square: the slide's own mask agrees
            mask = tissue_mask(open_source(tmp_path / name))
            inside = mask.contains(view.frame.to_slide(batch.locations[rows_, 0]).numpy())
            assert inside.mean() > 0.9
    with torch.no_grad():
        traj = worker.model.unroll(ReplaySensor(batch.float_glimpses()), len(batch),
                                   locations=batch.locations)
    assert torch.equal(traj.log_probs, batch.behaviour_log_probs)


def test_sync_batches_concatenate():
    def b(n, v):
        return EpisodeBatch(torch.zeros(n, 2, 1, 1, 4, 4), torch.zeros(n, 2, 2), torch.zeros(n, 2),
                            torch.zeros(n, dtype=torch.long), torch.zeros(n), version=v)

    cat = EpisodeBatch.concat([b(3, 5), b(4, 5)])
    assert len(cat) == 7 and cat.version == 5 and cat.glimpses.shape[0] == 7
    with pytest.raises(ValueError):
        EpisodeBatch.concat([b(1, 0), EpisodeBatch(**{**b(1, 0).__dict__,
                                                     "glimpses": torch.zeros(1, 2, 1, 1, 4, 4,
                                                                             dtype=torch.uint8)})])


def _pipeline():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "pipelines" / "train.py"
    spec = importlib.util.spec_from_file_location("pipeline_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pipeline_single_mode_and_bad_config(tmp_path, capsys):
    train = _pipeline()
    assert train.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml: no such file (--config)" in err and err.count("\n") == 1
    sets = [a for o in OVERRIDES + ["train.epochs=1", "train.steps_per_epoch=2"]
            for a in ("--set", o)]
    rc = train.main(["--config", "configs/cluttered60_8g.yaml", "--single", "--out-dir",
                     str(tmp_path / "run"), *sets])
    assert rc == 0
    assert (tmp_path / "run" / "summary.json").is_file()
    assert '"steps": 2' in capsys.readouterr().out


def test_bad_slide_manifest_fails_before_starting_ray(tmp_path):
    from ram_wsi.distributed import train_distributed
    from ram_wsi.errors import DataError

    (tmp_path / "m.csv").write_text("path,label\nx.tiff,0\n")
    cfg = load_config(None, ["data.source=slides", f"data.manifest={tmp_path}/m.csv",
                             f"train.out_dir={tmp_path}/run"])
    with pytest.raises(DataError, match=r"row 2 .*x\.tiff.*no such file"):
        train_distributed(cfg)
    import ray

    assert not ray.is_initialized()
