"""Episode sources (environments) for the MNIST tasks and for slides.

An environment turns "give me ``B`` episodes" into a live sensor, the labels, and optionally the
first locations. It is built from the config by the process that runs the episodes (a Ray
rollout actor: the config travels as a plain dict) -- the digits are loaded, or the slides
opened, by the process that reads them; only paths travel.

* :class:`MnistEnv`: the paper's tasks, from the same digit pool and train split as the
  single-process trainer (:func:`ram_wsi.data.datasets.build_task_data`), with its own seed.
* :class:`SlideEnv`: a CSV manifest ``path,label`` (:mod:`.manifest`). An episode
  picks a slide uniformly, starts inside tissue (or uniformly), and every glimpse is read lazily
  through ``source.glimpse``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..models import RetinaSensor
from ..retina import RetinaSpec
from .datasets import split_digits, task_spec
from .manifest import read_manifest
from .tasks import EpisodeSampler

__all__ = [
    "Env",
    "MnistEnv",
    "SlideEnv",
    "SlideSensor",
    "build_env",
    "env_shape",
]


class Env(Protocol):
    channels: int
    classes: int
    spec: RetinaSpec

    def episodes(self, batch: int) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
        """``(sensor, labels (B,), start (B, 2) or None)``."""
        ...


class MnistEnv:
    """Fresh canvases of the config's digit task from the training digits only."""

    channels = 1
    classes = 10

    def __init__(self, cfg: ExperimentConfig, seed: int, log=lambda *_: None):
        images, labels, self.description, (tr, _, _) = split_digits(cfg, log)
        self.sampler = EpisodeSampler(torch.from_numpy(images[tr]), torch.from_numpy(labels[tr]),
                                      task_spec(cfg), seed=seed, device="cpu")
        self.spec = cfg.model.retina()

    def episodes(self, batch: int):
        x, y, _ = self.sampler.sample(batch)
        return RetinaSensor(x, self.spec), y, None


def _open_source(path: str):
    from ..slide import open_source

    return open_source(path)


def _tissue_sampler(source: Any):
    """Draws first locations uniformly over the slide's tissue (thumbnail mask)."""
    from ..slide import tissue_mask

    return tissue_mask(source)


class SlideSensor:
    """Reads each glimpse's patches lazily from the episode's slide."""

    def __init__(self, sources: list[Any], slide_idx: np.ndarray, spec: RetinaSpec, units: str):
        self.sources = sources
        self.slide_idx = slide_idx
        self.spec = spec
        self.units = units
        self.groups = {int(s): np.nonzero(slide_idx == s)[0] for s in np.unique(slide_idx)}

    def __call__(self, t: int, loc: torch.Tensor) -> torch.Tensor:
        k, g = self.spec.scales, self.spec.patch
        out = torch.empty((loc.shape[0], k, 3, g, g), dtype=torch.float32)
        loc = loc.detach().cpu()
        for s, rows in self.groups.items():
            idx = torch.from_numpy(rows)
            out[idx] = self.sources[s].glimpse(loc[idx], self.spec, units=self.units)
        return out.to(loc.dtype)


class SlideEnv:
    """Episodes over a manifest of slides, opened lazily in this process."""

    channels = 3

    def __init__(self, cfg: ExperimentConfig, seed: int, log=lambda *_: None):
        d = cfg.data.slides
        if not d.manifest:
            raise ConfigError("slides need data.manifest", key="data.manifest")
        self.paths, self.labels, self.class_names = read_manifest(d.manifest)
        self.classes = max(2, len(self.class_names))
        import dataclasses

        self.spec = dataclasses.replace(cfg.model.retina(), base=float(d.retina_base))
        self.units = d.retina_units
        self.start_rule = d.start
        self.rng = np.random.default_rng(seed)
        self._sources: dict[int, Any] = {}
        self._tissue: dict[int, Any] = {}

    def source(self, i: int):
        if i not in self._sources:
            self._sources[i] = _open_source(self.paths[i])
        return self._sources[i]

    def _start(self, i: int, n: int) -> np.ndarray:
        if self.start_rule == "uniform":
            return self.rng.uniform(-1, 1, size=(n, 2))
        if i not in self._tissue:
            self._tissue[i] = _tissue_sampler(self.source(i))
        return np.asarray(self._tissue[i].sample(n, self.rng), dtype=np.float64)

    def episodes(self, batch: int):
        idx = self.rng.integers(0, len(self.paths), size=batch)
        start = np.zeros((batch, 2))
        for s in np.unique(idx):
            rows = np.nonzero(idx == s)[0]
            start[rows] = self._start(int(s), len(rows))
        used = set(idx.tolist())
        sources = [self.source(i) if i in used else None for i in range(len(self.paths))]
        labels = torch.as_tensor([self.labels[i] for i in idx], dtype=torch.long)
        return (SlideSensor(sources, idx, self.spec, self.units), labels,
                torch.from_numpy(start).float().clamp_(-1.0, 1.0))


def env_shape(cfg: ExperimentConfig) -> tuple[int, int]:
    """``(channels, classes)`` of the model the config's environment needs."""
    if cfg.data.source == "slides":
        _, _, names = read_manifest(cfg.data.slides.manifest)
        return 3, max(2, len(names))
    return 1, 10


def build_env(cfg: ExperimentConfig, seed: int, log=lambda *_: None):
    """The environment a config names (slides or digits)."""
    if cfg.data.source == "slides":
        return SlideEnv(cfg, seed, log)
    return MnistEnv(cfg, seed, log)
