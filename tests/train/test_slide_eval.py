"""Slide-level metrics, the leave-one-out baseline and the tissue frame, on known values."""

import numpy as np
import pytest
import torch

from ram_wsi.data.slides import SlideFrame
from ram_wsi.train.losses import group_baseline
from ram_wsi.train.slide_eval import auc_binary, auc_macro, slide_metrics


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    pos = rng.random(40) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0)
             for a in scores[pos] for b in scores[~pos]]
    assert auc_binary(scores, pos) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert auc_binary([0.1, 0.9], [False, True]) == 1.0
    assert auc_binary([0.9, 0.1], [False, True]) == 0.0
    assert np.isnan(auc_binary([0.1, 0.2], [True, True]))


def test_macro_auc_is_the_mean_one_vs_rest():
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    y = np.array([0, 1, 2, 1])
    want = np.mean([auc_binary(p[:, c], y == c) for c in range(3)])
    assert auc_macro(p, y, 3) == pytest.approx(want)


def _row(label, p_mean, p_samples, **kw):
    return {"label": label, "probs_mean": np.array(p_mean),
            "probs_samples": np.array(p_samples), "on_tissue": 1.0, "seconds": 0.5,
            "seconds_open": 0.25,
            "pixels_decoded": 100, "pixels_requested": 10, "bytes_read": 0,
            "blocks_decoded": 1, **kw}


def test_slide_metrics_on_known_rows():
    rows = [
        _row(0, [0.9, 0.1], [[0.2, 0.8], [0.9, 0.1]], on_target=1.0),  # mean right, 1st sample wrong
        _row(0, [0.6, 0.4], [[0.6, 0.4], [0.6, 0.4]], on_target=0.0),
        _row(1, [0.7, 0.3], [[0.1, 0.9], [0.1, 0.9]], on_target=0.5),  # mean wrong
        _row(1, [0.2, 0.8], [[0.3, 0.7], [0.3, 0.7]], on_target=1.0),
        {"label": 1, "error": "slide.svs: cannot open"},
    ]
    m = slide_metrics(rows, ["neg", "pos"])
    assert m["slides"] == 5 and m["slides_failed"] == 1
    assert m["error_mean"] == 25.0 and m["error_stochastic"] == 25.0 and m["error_m_avg"] == 0.0
    assert m["confusion"] == [[2, 0], [1, 1]]
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["auc"] == pytest.approx(0.75)  # positive-class scores .1 .4 | .3 .8
    assert m["on_target"] == pytest.approx(0.625)
    assert m["pixels_decoded_per_slide"] == 100


def test_group_baseline_is_leave_one_out():
    r = torch.tensor([1.0, 0.0, 0.5, 2.0, 3.0])
    g = torch.tensor([7, 7, 7, 2, 9])
    b = group_baseline(r, g)
    assert torch.allclose(b[:3], torch.tensor([0.25, 0.75, 0.5]))
    assert torch.isnan(b[3]) and torch.isnan(b[4])  # alone in its group: no such mean


def test_frame_is_the_tissue_square_and_inverts():
    mask = np.zeros((100, 200), bool)
    mask[20:40, 50:90] = True  # tissue 40 x 20 mask px of a 2000 x 1000 px slide (10 px each)
    fr = SlideFrame.around(mask, 2000, 1000, margin=0.0)
    assert (fr.w, fr.h) == (400.0, 400.0)  # the square of the bounding box's longer side
    assert (fr.x0, fr.y0) == (500.0, 100.0)  # centred on the box (500..900, 200..400)
    loc = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.3, -0.2]])
    assert torch.allclose(fr.to_pixels(loc.double())[0], torch.tensor([500.0, 100.0],
                                                                         dtype=torch.float64))
    assert torch.allclose(fr.from_slide(fr.to_slide(loc)).float(), loc, atol=1e-6)
    whole = SlideFrame.around(np.zeros((10, 10), bool), 300, 200)
    assert whole == SlideFrame.whole(300, 200)
