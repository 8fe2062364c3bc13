"""Episode sources (environments) for the MNIST tasks and for slides.

An environment turns "give me ``B`` episodes" into a live sensor, the labels, and optionally the
first locations. It is built from the config by the process that runs the episodes (a Ray
rollout actor: the config travels as a plain dict) -- the digits are loaded, or the slides
opened, by the process that reads them; only paths travel.

* :class:`MnistEnv`: the paper's tasks, from the same digit pool and train split as the
  single-process trainer (:func:`ram_wsi.data.datasets.build_task_data`), with its own seed.
* :class:`SlideEnv`: the train split of a CSV manifest (:mod:`.manifest`). An episode picks a
  slide (uniformly or class-balanced), starts inside tissue (or uniformly, or where the context
  net says), and every glimpse is read lazily through ``source.glimpse``
  (:mod:`.slides`: the slide's frame, thumbnail and context).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..models import RetinaSensor
from ..retina import RetinaSpec
from .datasets import split_digits, task_spec
from .manifest import SlideManifest, load_manifest, write_manifest
from .slides import SlideSensor, SlideSet, resolve_units
from .tasks import EpisodeSampler

__all__ = [
    "Env",
    "Episodes",
    "MnistEnv",
    "SlideEnv",
    "SlideSensor",
    "build_env",
    "context_float",
    "env_shape",
    "image_context",
    "is_prepared",
    "prepare_slide_data",
    "slide_episodes",
]


@dataclass
class Episodes:
    """A batch of ``B`` episodes ready to run: what :meth:`RecurrentAttentionModel.unroll`
    takes besides the model.

    Attributes:
        sensor: ``sensor(t, loc)`` -> ``(B, k, C, g, g)`` glimpses.
        labels: ``(B,)`` int64.
        start: ``(B, 2)`` first locations of a model without a context net, or None (the
            paper's rule).
        context: ``(B, C, S, S)`` uint8 thumbnails for a context net, or None. uint8 so that
            the values the policy saw travel to a learner exactly.
        slide_idx: ``(B,)`` which slide of the split each episode is on (slides), or which
            canvas (MNIST with ``data.mnist.episodes_per_image`` > 1): the groups of
            ``train.advantage: group``.
        images: ``(B, C, H, W)`` the canvases themselves, for a model that reads the whole
            image (the paper's FC and Conv rows; then ``sensor`` is None), else None.
    """

    sensor: Any
    labels: torch.Tensor
    start: torch.Tensor | None = None
    context: torch.Tensor | None = None
    slide_idx: np.ndarray | None = None
    images: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def glimpse_labels(self, locations: torch.Tensor) -> torch.Tensor | None:
        """``(B, T)`` what lies under each glimpse at ``locations`` (annotated slides: see
        :meth:`~ram_wsi.data.slides.SlideView.glimpse_labels`), or None where the sensor knows
        no annotation (MNIST canvases)."""
        read = getattr(self.sensor, "glimpse_labels", None)
        return None if read is None else read(locations, self.labels)

    def model_context(self) -> torch.Tensor | None:
        """The thumbnails as the model reads them: float in [0, 1]."""
        return None if self.context is None else context_float(self.context)


def context_float(context: torch.Tensor) -> torch.Tensor:
    """uint8 thumbnails -> float32 in [0, 1] (the same arithmetic on actor and learner)."""
    return context.to(torch.float32) / 255.0


def image_context(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, H, W)`` images in [0, 1] -> ``(B, C, size, size)`` uint8 thumbnails (area
    resampling): the glance of an in-memory task."""
    small = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="area")
    return (small.clamp(0, 1) * 255.0).round().to(torch.uint8)


class Env(Protocol):
    channels: int
    classes: int
    spec: RetinaSpec

    def episodes(self, batch: int) -> Episodes:
        ...


class MnistEnv:
    """Fresh canvases of the config's digit task from the training digits only: the one
    definition of an MNIST episode, for the Ray actors (which build it from the config) and the
    single-process trainer (which hands it its own ``sampler``, on its device, whose state its
    checkpoints hold).

    Args:
        seed: the canvases' seed (a sampler built here); also numbers the canvases apart.
        sampler: draw from this sampler instead of building one from the config.
        whole_images: episodes for a model that reads the whole canvas (the paper's FC and
            Conv rows): ``Episodes.images`` and no sensor, one episode per canvas.
    """

    channels = 1
    classes = 10
    description = ""  # the digits, when read here

    def __init__(self, cfg: ExperimentConfig, seed: int, log=lambda *_: None, *,
                 sampler: EpisodeSampler | None = None, whole_images: bool = False):
        if sampler is None:
            images, labels, self.description, (tr, _, _) = split_digits(cfg, log)
            sampler = EpisodeSampler(torch.from_numpy(images[tr]),
                                     torch.from_numpy(labels[tr]), task_spec(cfg), seed=seed,
                                     device="cpu")
        self.sampler = sampler
        self.spec = cfg.model.retina()
        self.whole_images = whole_images
        self.context_size = (cfg.model.context_size
                             if cfg.model.context != "none" and not whole_images else None)
        self.per_image = 1 if whole_images else int(cfg.data.mnist.episodes_per_image)
        # Canvas ids unique across actors (seeds differ) and calls: a learner that concatenates
        # several actors' batches must not merge two canvases into one group.
        self._next_image = (int(seed) & 0xFFFFF) << 40

    def episodes(self, batch: int) -> Episodes:
        if self.per_image > 1:
            x, y, image = self.sampler.sample_repeated(batch, self.per_image)
            ids = (image.cpu() + self._next_image).numpy()
            self._next_image += int(image.max()) + 1
        else:
            x, y, _ = self.sampler.sample(batch)
            ids = None
        if self.whole_images:
            return Episodes(None, y, images=x)
        ctx = image_context(x, self.context_size) if self.context_size else None
        return Episodes(RetinaSensor(x, self.spec), y, None, ctx, ids)


def slide_episodes(slides: SlideSet, idx: np.ndarray, rng: np.random.Generator) -> Episodes:
    """Episodes on slides ``idx`` of ``slides`` (one per entry): a sensor reading their
    glimpses, labels, first locations (the set's start rule), thumbnails for a context net."""
    idx = np.asarray(idx, dtype=np.int64)
    views = {int(i): slides.view(int(i)) for i in np.unique(idx)}
    start = torch.zeros(len(idx), 2)
    for i, v in views.items():
        rows = np.nonzero(idx == i)[0]
        start[torch.from_numpy(rows)] = v.start(len(rows), rng, slides.start_rule)
    ctx = None
    if slides.context_size:
        ctx = torch.stack([views[int(i)].context for i in idx])
    all_views = [views.get(i) for i in range(max(views) + 1)]
    labels = torch.as_tensor([slides.records[int(i)].label for i in idx], dtype=torch.long)
    return Episodes(SlideSensor(all_views, idx, slides.spec, slides.units), labels, start,
                    ctx, idx)


def slide_spec(cfg: ExperimentConfig) -> RetinaSpec:
    """The model's retina with the slides' physical scale (``data.slides.retina_base``)."""
    return dataclasses.replace(cfg.model.retina(), base=float(cfg.data.slides.retina_base))


def slide_set(cfg: ExperimentConfig, records: list, class_names: list[str], units: str,
              previews: bool = False) -> SlideSet:
    """A :class:`SlideSet` of ``records`` read as the config says."""
    d, m = cfg.data.slides, cfg.model
    return SlideSet(records, class_names, slide_spec(cfg), units, frame=d.frame,
                    context_size=m.context_size if m.context != "none" else None,
                    thumb_size=d.thumb_size, start=d.start, previews=previews, stain=d.stain)


def load_slide_manifest(cfg: ExperimentConfig, *, check: bool = False,
                        open_slide=None) -> SlideManifest:
    """The config's manifest with its split (seeded by ``train.seed``); ``check`` opens every
    slide (through ``open_slide``, default :func:`ram_wsi.slide.open_source`)."""
    d = cfg.data.slides
    return load_manifest(d.manifest, seed=cfg.train.seed, val_fraction=d.holdout_val,
                         test_fraction=d.holdout_test, check_slides=check,
                         drop_bad=d.drop_bad_rows, open_slide=open_slide)


def prepare_slide_data(cfg: ExperimentConfig, log=print) -> ExperimentConfig:
    """Check every slide once (metadata only), fix the split and the retina's units, and
    return a config that reads them: ``data.slides.manifest`` becomes ``OUT/slides.csv``
    (``path,label,split,case``, absolute paths, the bad rows gone) and ``retina_units`` /
    ``retina_base`` their resolved values -- so every actor and a resumed run see the same
    slides, split and units without opening them all again."""
    from ..slide import open_source

    d = cfg.data.slides
    mpp_of: dict[str, float | None] = {}

    def opened(path: str):  # the check's one open of each slide also gives its mpp
        src = open_source(path)
        mpp_of[str(path)] = src.mpp
        return src

    man = load_slide_manifest(cfg, check=True, open_slide=opened)
    log(man.describe())
    for bad in man.dropped:
        log(f"  dropped row {bad.row} ({bad.path}): {bad.reason}")
    mpps = [mpp_of.get(r.path) for r in man.records] if d.retina_units != "px" else []
    units, base = resolve_units(d.retina_units, mpps, d.retina_base, d.fallback_mpp, log)
    out = cfg.out_dir / "slides.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    names = man.class_names
    write_manifest(out, [(r.path, names[r.label], r.split, r.case) for r in man.records])
    new = copy.deepcopy(cfg)
    new.data.slides.manifest = str(out.resolve())
    new.data.slides.retina_units = units
    new.data.slides.retina_base = base
    new.data.slides.drop_bad_rows = False
    new.data.slides.class_names = list(names)
    return new


def is_prepared(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` already reads the manifest :func:`prepare_slide_data` wrote."""
    m = cfg.data.slides.manifest
    return bool(m) and Path(m).resolve() == (cfg.out_dir / "slides.csv").resolve()


class SlideEnv:
    """Training episodes over the manifest's train split, opened lazily in this process;
    slides drawn uniformly or class-balanced (``data.slides.balanced``)."""

    channels = 3

    def __init__(self, cfg: ExperimentConfig, seed: int, log=lambda *_: None):
        d = cfg.data.slides
        self.manifest = load_slide_manifest(cfg)
        self.class_names = self.manifest.class_names
        self.classes = max(2, len(self.class_names))
        units = d.retina_units
        if units == "auto":  # not prepared (a worker built directly): decide from the slides
            from ..slide import open_source

            mpps = [open_source(r.path).mpp for r in self.manifest.records]
            units, base = resolve_units(units, mpps, d.retina_base, d.fallback_mpp, log)
            cfg = copy.deepcopy(cfg)
            cfg.data.slides.retina_base = base
        self.units = units
        self.train = slide_set(cfg, self.manifest.split("train"), self.class_names, units)
        if not len(self.train):
            raise ConfigError("the manifest's train split is empty", key="data.slides.manifest",
                              source=cfg.source)
        self.spec = self.train.spec
        self.weights = self.manifest.sampling_weights("train", d.balanced)
        self.per_slide = int(d.episodes_per_slide)
        self.rng = np.random.default_rng(seed)

    def split(self, cfg: ExperimentConfig, name: str) -> SlideSet:
        """The ``val`` or ``test`` slides, read like the training ones."""
        return slide_set(cfg, self.manifest.split(name), self.class_names, self.units,
                         previews=True)

    def episodes(self, batch: int) -> Episodes:
        n = -(-batch // self.per_slide)
        idx = np.repeat(self.rng.choice(len(self.train), size=n, p=self.weights),
                        self.per_slide)[:batch]
        return slide_episodes(self.train, idx, self.rng)


def env_shape(cfg: ExperimentConfig) -> tuple[int, int]:
    """``(channels, classes)`` of the model the config's environment needs."""
    if cfg.data.source == "slides":
        names = cfg.data.slides.class_names or load_slide_manifest(cfg).class_names
        return 3, max(2, len(names))
    return 1, 10


def build_env(cfg: ExperimentConfig, seed: int, log=lambda *_: None):
    """The environment a config names (slides or digits)."""
    if cfg.data.source == "slides":
        return SlideEnv(cfg, seed, log)
    return MnistEnv(cfg, seed, log)


class _NumpyRngState:
    """A numpy Generator's state as a uint8 tensor (checkpoints hold tensors only)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def state_dict(self) -> dict[str, torch.Tensor]:
        import json

        raw = json.dumps(self.rng.bit_generator.state).encode()
        return {"generator": torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        import json

        self.rng.bit_generator.state = json.loads(bytes(state["generator"].tolist()).decode())


@dataclass
class SlideTaskData:
    """What the single-process trainer needs of a slide experiment (the slide counterpart of
    :class:`~ram_wsi.data.datasets.TaskData`): training episodes, the val and test slides."""

    env: SlideEnv
    val: SlideSet
    test: SlideSet
    name: str
    description: str
    train_size: int  # training slides
    channels: int = 3
    canvas: int = 0
    test_centers: None = None

    @property
    def classes(self) -> int:
        return self.env.classes

    @property
    def class_names(self) -> list[str]:
        return list(self.env.class_names)

    @property
    def sampler(self) -> _NumpyRngState:
        return _NumpyRngState(self.env.rng)


def build_slide_data(cfg: ExperimentConfig, log=print) -> SlideTaskData:
    """Training episodes and held-out slides of a (prepared) slide config."""
    env = SlideEnv(cfg, cfg.train.seed, log)
    man = env.manifest
    return SlideTaskData(env, env.split(cfg, "val"), env.split(cfg, "test"),
                         name=f"slides:{cfg.data.slides.manifest}",
                         description=man.describe(), train_size=len(env.train))
