"""From a config to the tensors a run trains and evaluates on.

The digit pool (real MNIST from an idx directory, or generated digits) is split into disjoint
train / validation / test digits *before* any canvas is built, so no test digit is ever seen in
training, even inside clutter: each split draws its clutter from its own digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ExperimentConfig
from ..errors import DataError
from .mnist import default_mnist_dir, has_split, load_mnist, load_pool, split_indices
from .synthetic_digits import synthetic_digits
from .tasks import EpisodeSampler, TaskSpec, task_preset

__all__ = ["TaskData", "build_task_data", "default_mnist_dir", "split_digits", "task_spec"]


@dataclass
class TaskData:
    """A task ready to train on: a sampler of fresh training canvases and fixed eval sets."""

    name: str
    sampler: EpisodeSampler
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    canvas: int
    train_size: int
    description: str
    test_centers: torch.Tensor | None = None  # (N, 2) digit centres of the test canvases
    channels: int = 1
    classes: int = 10


def task_spec(cfg: ExperimentConfig) -> TaskSpec:
    d = cfg.data.mnist
    if d.task == "custom":
        return TaskSpec(kind=d.kind, canvas=int(d.canvas), clutter_pieces=d.clutter_pieces or 0,
                        clutter_size=d.clutter_size)
    return task_preset(d.task)


@dataclass
class DigitPool:
    """Digits as one array, and where the official test digits start in it.

    ``test_start`` is the index of the first t10k digit when the directory has them (the
    paper's protocol tests on exactly those), ``None`` for a pool without an official test set.
    """

    images: np.ndarray  # (N, 28, 28) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    description: str
    test_start: int | None = None


def _load_digits(cfg: ExperimentConfig, log) -> DigitPool:
    d = cfg.data.mnist
    if cfg.data.source == "mnist":
        directory = Path(d.dir) if d.dir else default_mnist_dir()
        if directory is not None and directory.is_dir():
            return _read_directory(directory)
        if not d.fallback_synthetic:
            raise DataError(directory or "../shared/data/mnist", "MNIST directory not found")
        log(f"MNIST directory {directory or '../shared/data/mnist'} not found: using "
            f"{d.synthetic_count} generated digits instead")
    images, labels = synthetic_digits(d.synthetic_count, seed=cfg.train.seed)
    return DigitPool(images, labels,
                     f"{d.synthetic_count} generated digits (seed {cfg.train.seed})")


def _read_directory(directory: Path) -> DigitPool:
    """Each split of ``directory`` read once (one ``frombuffer`` per file, no per-digit loop),
    converted to float once, the t10k digits after the training digits."""
    parts = {s: load_mnist(directory, s) for s in ("train", "t10k") if has_split(directory, s)}
    if not parts:
        load_pool(directory)  # raises the one clear "no MNIST idx files" error
    images = np.concatenate([p[0] for p in parts.values()])
    labels = np.concatenate([p[1] for p in parts.values()])
    counts = " + ".join(f"{len(p[1])} {s}" for s, p in parts.items())
    test_start = len(parts["train"][1]) if len(parts) == 2 else None
    return DigitPool(images.astype(np.float32) / 255.0, labels,
                     f"{counts} real MNIST digits from {directory}", test_start)


def split_digits(cfg: ExperimentConfig, log=print
                 ) -> tuple[np.ndarray, np.ndarray, str, tuple[np.ndarray, ...]]:
    """The config's digit pool and its train / val / test index split. The one place the split
    is made: the trainer and the Ray actors must train on the same digits.

    ``protocol: official`` (the default, the paper's): validation digits are drawn from the
    training files and the test set is the t10k digits; ``pooled``: every digit in one pool,
    split by ``val_fraction`` and ``test_fraction``.
    """
    d = cfg.data.mnist
    pool = _load_digits(cfg, log)
    desc = pool.description
    if d.protocol == "official" and pool.test_start is not None:
        tr, va, _ = split_indices(pool.labels[:pool.test_start], d.val_fraction, 0.0,
                                  seed=cfg.train.seed)
        te = np.arange(pool.test_start, len(pool.labels))
        desc += "; the paper's protocol: validation from the training digits, test on t10k"
    else:
        if d.protocol == "official" and cfg.data.source == "mnist":
            log("no t10k files beside the training digits: the test digits are split from "
                "the pool (data.mnist.test_fraction)")
        tr, va, te = split_indices(pool.labels, d.val_fraction, d.test_fraction,
                                   seed=cfg.train.seed)
    return pool.images, pool.labels, desc, (tr, va, te)


def build_task_data(cfg: ExperimentConfig, device: torch.device | str = "cpu",
                    log=print) -> TaskData:
    """Load the digits, split them, and build the training sampler and fixed eval sets."""
    images, labels, desc, (tr, va, te) = split_digits(cfg, log)
    spec = task_spec(cfg)
    dev = torch.device(device)

    def sampler(idx: np.ndarray, seed: int) -> EpisodeSampler:
        return EpisodeSampler(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]),
                              spec, seed=seed, device=dev)

    d = cfg.data.mnist

    def fixed(idx: np.ndarray, seed: int, size: int | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return sampler(idx, seed).fixed_set(size or d.eval_size or len(idx), seed=seed)

    train = sampler(tr, cfg.train.seed + 100)
    # Fixed seeds: the same eval canvases in every run of this config.
    val = fixed(va if len(va) else tr, 10_001, d.val_size)
    test = fixed(te, 20_002, d.test_size) if len(te) else val
    desc += f"; split {len(tr)}/{len(va)}/{len(te)} train/val/test digits"
    return TaskData(cfg.data.mnist.task, train, val[:2], test[:2], spec.canvas, len(tr), desc,
                    test_centers=test[2])
