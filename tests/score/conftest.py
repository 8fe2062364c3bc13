"""A briefly trained slide agent and a folder of everything a real folder holds, for the
scoring tests (module-independent: built once per session)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

SHARED_SLIDES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "slides"

# Good generated slides (name -> format) and the junk beside them: name -> what its error says.
BAD_FILES = {
    "empty.tiff": "empty file",
    "notes.svs": "not a slide",
    "truncated.tiff": "not a slide",
    "x.zarr": "zarr",
    "unopenable.tiff": "cannot open",
    "unreadable.svs": "failed",
}

# Files beside the slides that no reader claims by name (not sidecars: no slide of their stem).
SKIPPED_FILES = ("manifest.csv", "notes.txt", "README.md", "sub/run.json")


@pytest.fixture(scope="session")
def skipped_files():
    """The names (relative to the mixed folder) a scoring run must list as skipped."""
    return sorted(SKIPPED_FILES)


@pytest.fixture(scope="session")
def slide_checkpoint(tmp_path_factory):
    """``(checkpoint, cohort folder)``: a RAM with the context net trained for a few updates
    on 2048^2 needle slides (the tests need a checkpoint of the real kind, not a good one)."""
    from ram_wsi.bench.needle import write_needle_cohort
    from ram_wsi.config import load_config
    from ram_wsi.train.trainer import Trainer

    root = tmp_path_factory.mktemp("score_ckpt")
    m = write_needle_cohort(root / "cohort", 2048, train=8, val=2, test=6, lesion=768,
                            log=lambda *_: None)
    sets = {
        "data.source": "slides", "data.slides.manifest": m, "data.slides.episodes_per_slide": 4,
        "model.glimpses": 2, "model.patch": 16, "model.scales": 2, "model.scale_factor": 4.0,
        "model.hidden": 32, "model.glimpse_hidden": 16, "model.loc_hidden": 16,
        "model.glimpse_out": 32, "model.glimpse_encoder": "conv", "model.context": "thumbnail",
        "model.context_size": 32, "model.context_grid": 4, "model.context_channels": 4,
        "train.batch_size": 16, "train.epochs": 1, "train.steps_per_epoch": 2,
        "train.eval_samples": 2, "train.threads": 1, "train.progress": False,
        "train.out_dir": str(root / "run")}
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    Trainer(cfg, log=lambda *_: None).fit()
    return root / "run" / "best.pt", root / "cohort"


@pytest.fixture(scope="session")
def mixed_folder(slide_checkpoint, tmp_path_factory):
    """A folder as real ones are: 6 generated slides (TIFF + OME-Zarr, with sidecars), every
    file of ../shared/data/slides (a DICOM pair, two bad files), a PNG, a JPEG, a text file
    named .svs, an empty file, a truncated slide, a directory x.zarr that is not a store, a
    sub-folder with one more slide, and files no reader claims (:data:`SKIPPED_FILES`).
    Returns ``(folder, {name: expected error text})``."""
    from PIL import Image

    _, cohort = slide_checkpoint
    folder = tmp_path_factory.mktemp("mixed")
    for p in sorted(cohort.glob("test_*")):
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, folder / p.name)
    for p in sorted(SHARED_SLIDES.iterdir()):
        shutil.copy2(p, folder / p.name)
    rgb = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "photo.png")
    Image.fromarray(rgb).save(folder / "photo.jpg")
    (folder / "notes.svs").write_text("not a slide at all\n")
    (folder / "empty.tiff").write_bytes(b"")
    (folder / "truncated.tiff").write_bytes((cohort / "test_000.tiff").read_bytes()[:4096])
    (folder / "x.zarr").mkdir()
    (folder / "sub").mkdir()
    shutil.copy2(cohort / "test_001.tiff", folder / "sub" / "again.tiff")
    for name in SKIPPED_FILES:  # what no reader claims by name: listed as skipped, no row
        (folder / name).write_text("path,label\n" if name.endswith(".csv") else "notes\n")
    return folder, dict(BAD_FILES)
