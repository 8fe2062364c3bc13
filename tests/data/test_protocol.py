"""The paper's MNIST protocol (train digits -> train + validation, t10k -> test) and the pooled
option, on real idx files written into ``tmp_path`` and on ``../shared/data/mnist``."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from ram_wsi.config import load_config
from ram_wsi.data.datasets import build_task_data, split_digits

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def _write_split(directory: Path, split: str, labels: np.ndarray, ink: int) -> None:
    """A split whose every image is filled with ``ink``: which file a digit came from shows."""
    n = len(labels)
    images = np.full((n, 28, 28), ink, dtype=np.uint8)
    for name, arr, magic in ((f"{split}-images-idx3-ubyte.gz", images, 2051),
                             (f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8), 2049)):
        head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (directory / name).write_bytes(gzip.compress(head + arr.tobytes()))


def _cfg(directory: Path, *extra: str):
    return load_config(None, [f"data.mnist.dir={directory}", "data.mnist.task=mnist28",
                              "data.mnist.fallback_synthetic=false", *extra])


@pytest.fixture
def four_files(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    _write_split(tmp_path, "train", rng.integers(0, 10, 400), ink=10)
    _write_split(tmp_path, "t10k", rng.integers(0, 10, 120), ink=200)
    return tmp_path


def test_official_protocol_tests_on_t10k_only(four_files):
    images, _, desc, (tr, va, te) = split_digits(_cfg(four_files, "data.mnist.val_fraction=0.25"))
    assert len(images) == 520
    assert te.tolist() == list(range(400, 520))            # every t10k digit, nothing else
    assert len(va) == 100 and len(tr) == 300                 # validation from the train files
    assert set(tr) | set(va) == set(range(400)) and not set(tr) & set(va)
    assert np.allclose(images[te], 200 / 255) and np.allclose(images[tr], 10 / 255)
    assert "t10k" in desc


def test_pooled_protocol_mixes_both_files(four_files):
    cfg = _cfg(four_files, "data.mnist.protocol=pooled", "data.mnist.test_fraction=0.2")
    _, _, _, (tr, va, te) = split_digits(cfg)
    assert len(te) == 104 and (te < 400).any() and (te >= 400).any()
    assert not (set(tr) & set(te)) and not (set(va) & set(te))


def test_official_without_t10k_splits_test_from_train_and_says_so(tmp_path):
    _write_split(tmp_path, "train", np.arange(300) % 10, ink=10)
    said: list[str] = []
    _, _, _, (tr, va, te) = split_digits(_cfg(tmp_path, "data.mnist.test_fraction=0.2"),
                                         log=said.append)
    assert len(te) == 60 and len(tr) + len(va) + len(te) == 300
    assert any("t10k" in line for line in said)


def test_eval_set_sizes(four_files):
    data = build_task_data(_cfg(four_files, "data.mnist.val_size=7", "data.mnist.test_size=9"))
    assert len(data.val[1]) == 7 and len(data.test[1]) == 9
    data = build_task_data(_cfg(four_files, "data.mnist.eval_size=5"))
    assert len(data.val[1]) == 5 and len(data.test[1]) == 5
    data = build_task_data(_cfg(four_files))                 # default: all held-out digits
    assert len(data.test[1]) == 120


def test_protocol_is_checked():
    from ram_wsi.errors import ConfigError
    with pytest.raises(ConfigError, match="protocol"):
        load_config(None, ["data.mnist.protocol=mixed"])


def test_shared_digits_follow_the_papers_protocol():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    cfg = load_config(None, [f"data.mnist.dir={SHARED}"])
    _, labels, _, (tr, va, te) = split_digits(cfg)
    assert len(tr) == 54000 and len(va) == 6000
    assert te.tolist() == list(range(60000, 68000))
    assert labels[te[:3]].tolist() == [7, 2, 1]
