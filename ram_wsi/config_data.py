"""The ``data`` section of an experiment: which data it reads (MNIST digits, synthetic digits or
slides) and how, and the flat form of earlier releases routed into its sub-sections."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .config_checks import at_least, in_range, one_of, positive
from .errors import ConfigError

__all__ = [
    "DATA_SECTIONS",
    "FLAT_DATA_KEYS",
    "TASK_CANVAS",
    "DataConfig",
    "MnistDataConfig",
    "SlideDataConfig",
    "nest_flat_data",
]

TASK_CANVAS = {"mnist28": 28, "translated60": 60, "cluttered60": 60, "cluttered100": 100}


@dataclass
class MnistDataConfig:
    """Where digits come from and which of the paper's tasks is built from them."""

    dir: str | None = None  # idx directory; None -> ../shared/data/mnist if present
    task: str = "cluttered60"  # mnist28 | translated60 | cluttered60 | cluttered100 | custom
    kind: str | None = None  # custom task: centered | translated | cluttered
    canvas: int | None = None  # custom task canvas size
    clutter_pieces: int | None = None
    clutter_size: int = 8
    synthetic_count: int = 10000  # digits generated when source == synthetic
    # official: the paper's protocol -- train and validation digits from the train files, test
    # on the t10k digits (a directory without t10k files splits test from train, said in the
    # log); pooled: every digit of the directory in one pool, split by the fractions below.
    protocol: str = "official"
    val_fraction: float = 0.1  # of the training digits (official) or of the pool (pooled)
    test_fraction: float = 0.1  # of the pool; official uses it only when t10k is absent
    eval_size: int | None = None  # size of the fixed val/test sets (None: the held-out digits)
    val_size: int | None = None  # validation canvases (None: eval_size)
    test_size: int | None = None  # test canvases (None: eval_size)
    # Training episodes per canvas (the paper's M in its 1/M sum): a batch of B holds
    # B / episodes_per_image canvases; with train.advantage: group each episode's baseline is
    # the mean reward of the same canvas's other episodes (leave-one-out).
    episodes_per_image: int = 1
    fallback_synthetic: bool = True  # mnist dir missing -> synthetic digits (said in the log)

    def validate(self, src: str | None) -> None:
        if self.task not in (*TASK_CANVAS, "custom"):
            raise ConfigError(f"unknown task {self.task!r}; one of {sorted(TASK_CANVAS)} or custom",
                              key="data.task", source=src)
        if self.task == "custom" and (self.kind is None or self.canvas is None):
            raise ConfigError("a custom task needs data.kind and data.canvas", key="data.task",
                              source=src)
        one_of(self.protocol, ("official", "pooled"), "data.mnist.protocol", src)
        for name in ("val_fraction", "test_fraction"):
            in_range(getattr(self, name), 0.0, 0.5, f"data.{name}", src)
        for name in ("eval_size", "val_size", "test_size"):
            if getattr(self, name) is not None:
                at_least(getattr(self, name), 1, f"data.mnist.{name}", src)
        at_least(self.synthetic_count, 100, "data.synthetic_count", src)
        at_least(self.episodes_per_image, 1, "data.episodes_per_image", src)

    @property
    def canvas_size(self) -> int:
        return int(self.canvas) if self.task == "custom" else TASK_CANVAS[self.task]


@dataclass
class SlideDataConfig:
    """A CSV manifest of slides (``path,label`` and optional ``split``, ``case``; paths relative
    to it) and how an agent reads them."""

    manifest: str | None = None
    # The retina's first patch: one output pixel is retina_base level-0 px (units px) or um
    # (units um: every slide must state its mpp; auto: um when all do, else px at fallback_mpp).
    retina_base: float = 1.0
    retina_units: str = "px"  # px | um | auto
    fallback_mpp: float = 0.25  # auto, when a slide states no mpp: um per level-0 px assumed
    start: str = "tissue"  # first glimpse without a context net: tissue (in the mask) | uniform
    frame: str = "tissue"  # what [-1, 1]^2 spans: tissue (its bounding square) | slide
    thumb_size: int = 512  # the one thumbnail per slide (mask, frame, context), longest side
    # none | reinhard: each slide's stain normalised to one reference (LAB mean and std of its
    # tissue, from the thumbnail) before the glance and every glimpse; for cohorts from several
    # labs, where colour would otherwise be learnt as a class cue.
    stain: str = "none"
    holdout_val: float = 0.15  # seeded stratified split by case, when the manifest has none
    holdout_test: float = 0.15
    balanced: bool = False  # draw training slides class-balanced
    # Training episodes per drawn slide: a batch of B holds B / episodes_per_slide slides, so
    # each slide's glimpses are read in one batched call and its blocks stay cached.
    episodes_per_slide: int = 1
    drop_bad_rows: bool = False  # unreadable/missing/duplicate rows: drop them (said) or fail
    class_names: list | None = None  # set by the run from the manifest (checkpoints keep it)
    # Slides named by URIs (s3://, gs://, az://, http(s)://): fsspec options such as
    # endpoint_url, anon, profile, client_kwargs; flat, or per scheme ({s3: {...}}). No
    # credentials (configs are saved in checkpoints): those come from the environment.
    storage_options: dict | None = None

    def validate(self, src: str | None) -> None:
        if not self.manifest:
            raise ConfigError("slides need data.manifest (a CSV of path,label)",
                              key="data.manifest", source=src)
        one_of(self.retina_units, ("px", "um", "auto"), "data.retina_units", src)
        one_of(self.start, ("tissue", "uniform"), "data.start", src)
        one_of(self.frame, ("tissue", "slide"), "data.frame", src)
        one_of(self.stain, ("none", "reinhard"), "data.stain", src)
        positive(self.retina_base, "data.retina_base", src)
        positive(self.fallback_mpp, "data.fallback_mpp", src)
        at_least(self.thumb_size, 32, "data.thumb_size", src)
        at_least(self.episodes_per_slide, 1, "data.episodes_per_slide", src)
        in_range(self.holdout_val, 0.0, 0.5, "data.holdout_val", src)
        in_range(self.holdout_test, 0.0, 0.5, "data.holdout_test", src)
        from .slide.remote import check_storage_options

        try:
            self.storage_options = check_storage_options(self.storage_options) or None
        except ValueError as exc:
            raise ConfigError(str(exc), key="data.storage_options", source=src) from None


@dataclass
class DataConfig:
    """Which data an experiment reads: ``source`` picks the section that applies.

    In YAML the settings are nested (``data: {source: slides, slides: {manifest: m.csv}}``);
    the flat form of earlier releases (``data: {task: cluttered60}``, ``--set data.task=...``)
    still works: a flat key goes to the section that has it (the names are disjoint).
    """

    source: str = "mnist"  # mnist (idx files in mnist.dir) | synthetic (generated) | slides
    mnist: MnistDataConfig = field(default_factory=MnistDataConfig)
    slides: SlideDataConfig = field(default_factory=SlideDataConfig)

    def validate(self, src: str | None) -> None:
        one_of(self.source, ("mnist", "synthetic", "slides"), "data.source", src)
        if self.source == "slides":
            self.slides.validate(src)
        else:
            self.mnist.validate(src)

    @property
    def canvas_size(self) -> int:
        """Canvas side of an MNIST task; 0 for slides (no fixed size)."""
        return 0 if self.source == "slides" else self.mnist.canvas_size


#: The sub-sections of ``data``, by key.
DATA_SECTIONS = {"mnist": MnistDataConfig, "slides": SlideDataConfig}
#: Each flat ``data`` key of the earlier form -> the sub-section that has it (names disjoint).
FLAT_DATA_KEYS = {f.name: section for section, c in DATA_SECTIONS.items() for f in fields(c)}


def nest_flat_data(raw: dict[str, Any]) -> dict[str, Any]:
    """Route the flat keys of a ``data`` section (the earlier form) into its sub-sections; a
    flat key and its nested spelling in one config: the flat one wins (it is the later
    ``--set`` in practice)."""
    out = {k: v for k, v in raw.items() if k not in FLAT_DATA_KEYS}
    for key, value in raw.items():
        section = FLAT_DATA_KEYS.get(key)
        if section is not None:
            nested = out.get(section) or {}
            if not isinstance(nested, dict):
                return raw  # let the builder report the malformed section
            out[section] = {**nested, key: value}
    return out
