"""Experiment configuration: dataclasses loaded from YAML, strict about keys and values.

Why strict: a misspelt key (``lerning_rate``) silently ignored costs a day of compute. Every unknown
key and impossible value raises :class:`~ram_wsi.errors.ConfigError` naming the key and the file.
The same file drives single-process and distributed training (``distributed`` is ignored by the
former), and any value can be overridden from the command line as ``section.key=value``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import ConfigError
from .retina import RetinaSpec

__all__ = [
    "DataConfig",
    "DistributedConfig",
    "ExperimentConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
]

TASK_CANVAS = {"mnist28": 28, "translated60": 60, "cluttered60": 60, "cluttered100": 100}


@dataclass
class DataConfig:
    """Where digits come from and which of the paper's tasks is built from them."""

    source: str = "mnist"  # mnist (idx files in `dir`) | synthetic (generated digits) | slides
    dir: str | None = None  # idx directory; None -> ../shared/data/mnist if present
    task: str = "cluttered60"  # mnist28 | translated60 | cluttered60 | cluttered100 | custom
    kind: str | None = None  # custom task: centered | translated | cluttered
    canvas: int | None = None  # custom task canvas size
    clutter_pieces: int | None = None
    clutter_size: int = 8
    synthetic_count: int = 10000  # digits generated when source == synthetic
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    eval_size: int | None = None  # size of the fixed val/test sets (None: the held-out digits)
    fallback_synthetic: bool = True  # mnist dir missing -> synthetic digits (said in the log)
    # Slides (source: slides): a CSV manifest with columns path,label (paths relative to it).
    manifest: str | None = None
    retina_base: float = 1.0  # first patch's output pixel, in level-0 px (or um, below)
    retina_units: str = "px"  # px | um (needs mpp on every slide)
    start: str = "tissue"  # first glimpse of a slide episode: tissue (inside the mask) | uniform

    def validate(self, src: str | None) -> None:
        if self.source not in ("mnist", "synthetic", "slides"):
            raise ConfigError(f"must be mnist, synthetic or slides, got {self.source!r}",
                              key="data.source", source=src)
        if self.source == "slides" and not self.manifest:
            raise ConfigError("slides need data.manifest (a CSV of path,label)",
                              key="data.manifest", source=src)
        if self.retina_units not in ("px", "um"):
            raise ConfigError(f"must be px or um, got {self.retina_units!r}",
                              key="data.retina_units", source=src)
        if self.start not in ("tissue", "uniform"):
            raise ConfigError(f"must be tissue or uniform, got {self.start!r}",
                              key="data.start", source=src)
        if self.task not in (*TASK_CANVAS, "custom"):
            raise ConfigError(f"unknown task {self.task!r}; one of {sorted(TASK_CANVAS)} or custom",
                              key="data.task", source=src)
        if self.task == "custom" and (self.kind is None or self.canvas is None):
            raise ConfigError("a custom task needs data.kind and data.canvas", key="data.task",
                              source=src)
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not (0.0 <= v < 0.5):
                raise ConfigError(f"must be in [0, 0.5), got {v}", key=f"data.{name}", source=src)
        if self.synthetic_count < 100:
            raise ConfigError(f"must be >= 100, got {self.synthetic_count}",
                              key="data.synthetic_count", source=src)

    @property
    def canvas_size(self) -> int:
        """Canvas side of an MNIST task; 0 for slides (no fixed size)."""
        if self.source == "slides":
            return 0
        return int(self.canvas) if self.task == "custom" else TASK_CANVAS[self.task]


@dataclass
class ModelConfig:
    """The agent. ``arch``: ram (paper), ram_random (random glimpses), fc, conv (paper's rows)."""

    arch: str = "ram"
    glimpses: int = 8
    patch: int = 12
    scales: int = 3
    scale_factor: float = 2.0
    glimpse_hidden: int = 128  # h_g
    loc_hidden: int = 128  # h_l
    glimpse_out: int = 256  # g
    core: str = "rnn"  # rnn (paper) | lstm
    hidden: int = 256
    loc_std: float = 0.15
    loc_mean: str = "tanh"  # tanh | clamp | linear: how the policy mean is kept in [-1, 1]
    first_location: str = "random"  # random (paper) | center
    fc_hidden: int = 256
    conv_filters: int = 8
    conv_kernel: int = 10
    conv_stride: int = 5

    def validate(self, src: str | None, canvas: int) -> None:
        if self.arch not in ("ram", "ram_random", "fc", "conv"):
            raise ConfigError(f"unknown arch {self.arch!r}; one of ram, ram_random, fc, conv",
                              key="model.arch", source=src)
        if self.core not in ("rnn", "lstm"):
            raise ConfigError(f"must be rnn or lstm, got {self.core!r}", key="model.core",
                              source=src)
        if self.loc_mean not in ("tanh", "clamp", "linear"):
            raise ConfigError(f"must be tanh, clamp or linear, got {self.loc_mean!r}",
                              key="model.loc_mean", source=src)
        if self.first_location not in ("random", "center"):
            raise ConfigError(f"must be random or center, got {self.first_location!r}",
                              key="model.first_location", source=src)
        if self.glimpses < 1:
            raise ConfigError(f"must be >= 1, got {self.glimpses}", key="model.glimpses",
                              source=src)
        if not (0.0 < self.loc_std < 2.0):
            raise ConfigError(f"must be in (0, 2), got {self.loc_std}", key="model.loc_std",
                              source=src)
        for name in ("glimpse_hidden", "loc_hidden", "glimpse_out", "hidden", "fc_hidden",
                     "conv_filters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}",
                                  key=f"model.{name}", source=src)
        try:
            spec = self.retina()
        except ConfigError as exc:
            raise ConfigError(str(exc).split(": ", 1)[-1], key=f"model.{exc.key.split('.')[-1]}",
                              source=src) from None
        if canvas and spec.window(0) > canvas:
            raise ConfigError(f"patch {self.patch} is larger than the {canvas}x{canvas} image",
                              key="model.patch", source=src)
        if self.arch in ("fc", "conv") and not canvas:
            raise ConfigError("fc and conv need a fixed-size image (not slides)",
                              key="model.arch", source=src)
        if self.arch == "conv" and self.conv_kernel > canvas:
            raise ConfigError(f"kernel {self.conv_kernel} is larger than the image",
                              key="model.conv_kernel", source=src)

    def retina(self) -> RetinaSpec:
        return RetinaSpec(patch=self.patch, scales=self.scales, scale_factor=self.scale_factor)


@dataclass
class TrainConfig:
    """Optimisation, schedule, stopping and output."""

    batch_size: int = 128
    epochs: int = 100
    steps_per_epoch: int | None = None  # None: train-pool size / batch size
    optimizer: str = "adam"  # adam | sgd (paper: SGD momentum 0.9)
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | linear (paper: linear to 0) | constant
    warmup_steps: int = 0
    grad_clip: float | None = 5.0
    rl_weight: float = 1.0
    baseline_weight: float = 1.0
    # The location net's learning rate relative to ``lr``. Adam normalises the noisy REINFORCE
    # gradient to unit-size steps, so at the supervised rate the policy mean random-walks into
    # tanh saturation (glimpses parked in a corner); a smaller rate lets the signal accumulate.
    policy_lr_scale: float = 0.1
    patience: int = 20  # early stopping: epochs without validation improvement
    eval_samples: int = 10  # M, for the M-averaged error
    max_minutes: float | None = None  # wall-clock cap (the run still evaluates and saves)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the unrolled model
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    out_dir: str = "runs/{name}"
    seed: int = 0
    progress: bool = True

    def validate(self, src: str | None) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"must be >= 1, got {self.batch_size}", key="train.batch_size",
                              source=src)
        if self.epochs < 1:
            raise ConfigError(f"must be >= 1, got {self.epochs}", key="train.epochs", source=src)
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"must be adam or sgd, got {self.optimizer!r}",
                              key="train.optimizer", source=src)
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"must be cosine, linear or constant, got {self.schedule!r}",
                              key="train.schedule", source=src)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"must be a positive number, got {self.lr}", key="train.lr",
                              source=src)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"must be auto, cpu or cuda[:N], got {self.device!r}",
                              key="train.device", source=src)
        if self.eval_samples < 1:
            raise ConfigError(f"must be >= 1, got {self.eval_samples}", key="train.eval_samples",
                              source=src)


@dataclass
class DistributedConfig:
    """Ray rollout actors and the learner (used by pipelines/train.py)."""

    enabled: bool = True
    address: str | None = None  # None: join a cluster if RAY_ADDRESS is set, else start local
    actors: int = 2
    cpus_per_actor: float = 1.0
    episodes_per_call: int = 64
    mode: str = "sync"  # sync | async
    max_staleness: int = 2  # async: batches older than this many updates are dropped
    rho_clip: float = 1.0  # async: importance ratio clip (V-trace style)
    max_restarts: int = 3
    learner_device: str = "auto"
    # How glimpses travel from actors to the learner: float32 (exact), float16 or uint8 (the
    # actor's own policy sees the quantised values, so the learner's replay stays exact).
    glimpse_dtype: str = "float32"

    def validate(self, src: str | None) -> None:
        if self.glimpse_dtype not in ("float32", "float16", "uint8"):
            raise ConfigError(f"must be float32, float16 or uint8, got {self.glimpse_dtype!r}",
                              key="distributed.glimpse_dtype", source=src)
        if self.actors < 1:
            raise ConfigError(f"must be >= 1, got {self.actors}", key="distributed.actors",
                              source=src)
        if self.mode not in ("sync", "async"):
            raise ConfigError(f"must be sync or async, got {self.mode!r}",
                              key="distributed.mode", source=src)
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"must be > 0, got {self.cpus_per_actor}",
                              key="distributed.cpus_per_actor", source=src)


@dataclass
class ExperimentConfig:
    """One experiment: everything needed to reproduce a run."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    source: str | None = field(default=None, repr=False, compare=False)

    def validate(self) -> ExperimentConfig:
        self.data.validate(self.source)
        self.model.validate(self.source, self.data.canvas_size)
        self.train.validate(self.source)
        self.distributed.validate(self.source)
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir.format(name=self.name))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
             "distributed": DistributedConfig}


def _coerce(value: Any, typ: Any, key: str, src: str | None) -> Any:
    """Check a YAML value against the field's annotated type (int/float/str/bool, optional)."""
    text = str(typ)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ConfigError("must not be empty", key=key, source=src)
    base = text.replace(" | None", "").replace("None | ", "")
    if base in ("bool", "<class 'bool'>"):
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", key=key, source=src)
        return value
    if base in ("int", "<class 'int'>"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"must be an integer, got {value!r}", key=key, source=src)
        return value
    if base in ("float", "<class 'float'>"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {value!r}", key=key, source=src)
        return float(value)
    if base in ("str", "<class 'str'>"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"must be a string, got {value!r}", key=key, source=src)
        return str(value)
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str, src: str | None) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"must be a mapping, got {type(raw).__name__}", key=prefix or None,
                          source=src)
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    if cls is ExperimentConfig:
        names.discard("source")  # set by the loader, not by the file
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown key; known keys: {', '.join(sorted(names))}", key=full,
                              source=src)
        if key in _SECTIONS and not prefix:
            kwargs[key] = _build(_SECTIONS[key], value or {}, key, src)
        else:
            kwargs[key] = _coerce(value, hints[key], full, src)
    return cls(**kwargs)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None, src: str | None = None
                    ) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value",
                              source=src)
        path, text = item.split("=", 1)
        value = yaml.safe_load(text) if text != "" else None
        parts = path.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("is not a section", key=path, source=src)
        node[parts[-1]] = value
    return raw


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None
                ) -> ExperimentConfig:
    """Load and validate an experiment from YAML (or the defaults when ``path`` is None)."""
    raw: dict[str, Any] = {}
    src = str(path) if path is not None else None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("file not found", source=src)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", source=src) from None
        if not isinstance(raw, dict):
            raise ConfigError("the top level must be a mapping", source=src)
        raw.setdefault("name", p.stem)
    raw = apply_overrides(raw, overrides, src)
    cfg = _build(ExperimentConfig, raw, "", src)
    cfg.source = src
    return cfg.validate()
