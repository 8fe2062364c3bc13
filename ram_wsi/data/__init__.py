"""Digits for the paper's tasks: MNIST idx files, a synthetic stand-in, and episode generation.

``mnist`` reads and validates the idx files (and can download them); ``synthetic_digits`` makes
MNIST-like digits from strokes when no files are available (tests, CI, smoke runs); ``tasks``
turns a pool of 28x28 digits into centred, translated or cluttered canvases, batched in torch.
"""

from .mnist import download_mnist, load_mnist, load_pool, read_idx, split_indices
from .synthetic_digits import synthetic_digits
from .tasks import TASK_PRESETS, EpisodeSampler, TaskSpec, make_batch, task_preset

__all__ = [
    "TASK_PRESETS",
    "EpisodeSampler",
    "TaskSpec",
    "download_mnist",
    "load_mnist",
    "load_pool",
    "make_batch",
    "read_idx",
    "split_indices",
    "synthetic_digits",
    "task_preset",
]
