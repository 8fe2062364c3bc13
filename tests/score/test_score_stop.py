"""The confidence stop (``ram-wsi score --stop-at P``, issue 21 §2): a rollout decides at its
first glimpse that is P sure and the mean policy reads no further. Its decision is the
classifier the full rollout had read after that glimpse; P = 1 changes nothing."""

import csv

import numpy as np
import pytest
import torch

from ram_wsi.score.inputs import ScoreInput
from ram_wsi.score.runner import RunOptions, score_slides
from ram_wsi.score.scorer import ScorerOptions, SlideScorer
from ram_wsi.train.slide_eval import rollout_slide


def _roll(scorer, path, stop_at):
    slides = scorer._slide_set(ScoreInput(path=path, slide_id="s", label=None, files=1))
    gen = torch.Generator().manual_seed(3)
    return rollout_slide(scorer.model, slides, 0, samples=3, gen=gen,
                         rng=np.random.default_rng(3), stop_at=stop_at)


def test_a_stopped_rollout_decides_as_the_full_one_had_at_that_glimpse(slide_checkpoint):
    ckpt, cohort = slide_checkpoint
    scorer = SlideScorer(ckpt, ScorerOptions(geojson=False, thumbnails=False))
    path = str(cohort / "test_000.tiff")
    full = _roll(scorer, path, None)
    first = _roll(scorer, path, 1e-6)  # every rollout is sure enough after one glimpse
    t = scorer.cfg.model.glimpses
    assert full["path_px"].shape[0] == t and first["path_px"].shape[0] == 1
    assert full["glimpses_read"] == 4 * t and first["glimpses_read"] == 4
    np.testing.assert_allclose(first["probs_mean"], full["probs_by_glimpse"][0], atol=1e-6)
    np.testing.assert_allclose(first["path_px"][0], full["path_px"][0])
    # from the stop on, the decision after k glimpses is the stopped one
    np.testing.assert_allclose(first["probs_by_glimpse"],
                               np.repeat(full["probs_by_glimpse"][:1], t, 0), atol=1e-6)
    assert first["pixels_decoded"] <= full["pixels_decoded"]
    never = _roll(scorer, path, 1.0 + 1e-9)
    np.testing.assert_allclose(never["probs_mean"], full["probs_mean"], atol=1e-6)
    np.testing.assert_allclose(never["probs_samples"], full["probs_samples"], atol=1e-6)


@pytest.mark.parametrize("stop_at", [None, 0.001])
def test_score_stop_at_reads_fewer_glimpses(slide_checkpoint, tmp_path, stop_at):
    ckpt, cohort = slide_checkpoint
    out = tmp_path / "out"
    opts = ScorerOptions(samples=2, geojson=False, thumbnails=False, stop_at=stop_at)
    score_slides(cohort, ckpt, out, options=opts, run_options=RunOptions(workers=0),
                 log=lambda *_: None)
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["status"] == "ok" for r in rows)
    t = SlideScorer(ckpt).cfg.model.glimpses
    want = t if stop_at is None else 1
    assert {int(r["glimpses"]) for r in rows} == {want}
    assert {int(r["glimpses_read"]) for r in rows} == {want * 3}
