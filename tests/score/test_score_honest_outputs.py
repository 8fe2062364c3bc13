"""A scoring run's outputs are readable by the team, honest about units, and a single-level
slide costs no more than its own pixels (issue 26, sections 4-6), on the real fixtures
(in-process scorer: no Ray, a few seconds)."""

from __future__ import annotations

import csv
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ram_wsi.score.runner import RunOptions, score_slides

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "slides" / "boxes.tiff").exists(),
                                  reason="../shared/data is not here")


@pytest.fixture(scope="module")
def scored_077(slide_checkpoint, tmp_path_factory):
    """boxes.tiff (72-dpi placeholder), small.svs and the DICOM pair (16 x 16, one level), a
    GlaS field (775 x 522 JPEG) and a PNG, scored under umask 077."""
    ckpt, _ = slide_checkpoint
    folder = tmp_path_factory.mktemp("honest")
    for name in ("boxes.tiff", "small.svs", "boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(SHARED / "slides" / name, folder / name)
    shutil.copy(min((SHARED / "tissue" / "glas").glob("testA_*[0-9].jpg")),
                folder / "glas.jpg")
    rgb = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "photo.png", dpi=(72, 72))
    out = tmp_path_factory.mktemp("out") / "run"
    old = os.umask(0o077)
    try:
        summary = score_slides(folder, ckpt, out,
                               run_options=RunOptions(workers=0, progress=False),
                               log=lambda *_: None)
    finally:
        os.umask(old)
    with open(out / "results.csv", newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    return out, summary, rows


@needs_shared
def test_every_output_has_the_umask_mode(scored_077):
    out, summary, rows = scored_077
    assert summary["counts"] == {"ok": 5}, [r["error"] for r in rows.values()]
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    for must in ("results.csv", "results.parquet", "run_metadata.json", "journal.jsonl",
                 "geojson", "thumbnails"):
        assert must in names
    assert any(n.endswith(".geojson") for n in names)
    assert any(n.endswith(".png") for n in names)
    for p in [out, *out.rglob("*")]:
        want = 0o700 if p.is_dir() else 0o600  # 0o777 / 0o666 less umask 077
        assert stat.S_IMODE(p.stat().st_mode) == want, p


@needs_shared
def test_mpp_column_is_empty_without_a_microscope_size(scored_077):
    _, _, rows = scored_077
    assert rows["boxes.tiff"]["mpp"] == ""  # OpenSlide says 352.78: a 72-dpi placeholder
    assert rows["photo.png"]["mpp"] == "" and rows["glas.jpg"]["mpp"] == ""
    assert float(rows["small.svs"]["mpp"]) == pytest.approx(0.499, abs=1e-3)
    assert float(rows["boxes_0.dcm"]["mpp"]) == pytest.approx(0.499, abs=1e-3)


@needs_shared
def test_single_level_slides_read_no_more_than_their_pixels(scored_077):
    """Thumbnail, mean path and the sampled rollouts together decode each pixel of a one-level
    slide at most once (small.svs once counted 22 MB, the DICOM 46 MB)."""
    _, _, rows = scored_077
    for name in ("small.svs", "boxes_0.dcm", "glas.jpg", "photo.png"):
        r = rows[name]
        assert r["levels"] == "1", name
        slide_px = int(r["width"]) * int(r["height"])
        assert 0 < int(r["pixels_decision"]) <= int(r["pixels_read"]) <= slide_px, name
    for name in ("small.svs", "boxes_0.dcm"):
        assert int(rows[name]["bytes_read"]) <= (SHARED / "slides" / name).stat().st_size
