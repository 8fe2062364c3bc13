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
from .mnist import default_mnist_dir, load_pool, split_indices
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


def _load_digits(cfg: ExperimentConfig, log) -> tuple[np.ndarray, np.ndarray, str]:
    d = cfg.data.mnist
    if cfg.data.source == "mnist":
        directory = Path(d.dir) if d.dir else default_mnist_dir()
        if directory is not None and directory.is_dir():
            images, labels = load_pool(directory)
            return images.astype(np.float32) / 255.0, labels, \
                f"{len(labels)} real MNIST digits from {directory}"
        if not d.fallback_synthetic:
            raise DataError(directory or "../shared/data/mnist", "MNIST directory not found")
        log(f"MNIST directory {directory or '../shared/data/mnist'} not found: using "
            f"{d.synthetic_count} generated digits instead")
    images, labels = synthetic_digits(d.synthetic_count, seed=cfg.train.seed)
    return images, labels, f"{d.synthetic_count} generated digits (seed {cfg.train.seed})"


def split_digits(cfg: ExperimentConfig, log=print
                 ) -> tuple[np.ndarray, np.ndarray, str, tuple[np.ndarray, ...]]:
    """The config's digit pool and its train / val / test index split. The one place the split
    is made: the trainer and the Ray actors must train on the same digits."""
    images, labels, desc = _load_digits(cfg, log)
    split = split_indices(labels, cfg.data.mnist.val_fraction, cfg.data.mnist.test_fraction,
                          seed=cfg.train.seed)
    return images, labels, desc, split


def build_task_data(cfg: ExperimentConfig, device: torch.device | str = "cpu",
                    log=print) -> TaskData:
    """Load the digits, split them, and build the training sampler and fixed eval sets."""
    images, labels, desc, (tr, va, te) = split_digits(cfg, log)
    spec = task_spec(cfg)
    dev = torch.device(device)

    def sampler(idx: np.ndarray, seed: int) -> EpisodeSampler:
        return EpisodeSampler(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]),
                              spec, seed=seed, device=dev)

    def fixed(idx: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = cfg.data.mnist.eval_size or len(idx)
        return sampler(idx, seed).fixed_set(n, seed=seed)

    train = sampler(tr, cfg.train.seed + 100)
    # Fixed seeds: the same eval canvases in every run of this config.
    val = fixed(va, 10_001) if len(va) else fixed(tr, 10_001)
    test = fixed(te, 20_002) if len(te) else val
    desc += f"; split {len(tr)}/{len(va)}/{len(te)} train/val/test digits"
    return TaskData(cfg.data.mnist.task, train, val[:2], test[:2], spec.canvas, len(tr), desc,
                    test_centers=test[2])
