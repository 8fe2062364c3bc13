"""Experiment configuration: dataclasses loaded from YAML, strict about keys and values.

Why strict: a misspelt key (``lerning_rate``) silently ignored costs a day of compute. Every unknown
key and impossible value raises :class:`~ram_wsi.errors.ConfigError` naming the key and the file.
The same file drives single-process and distributed training (``distributed`` is ignored by the
former), and any value can be overridden from the command line as ``section.key=value``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .config_checks import at_least, in_range, one_of, positive
from .config_data import (
    DATA_SECTIONS,
    FLAT_DATA_KEYS,
    TASK_CANVAS,
    DataConfig,
    MnistDataConfig,
    SlideDataConfig,
    nest_flat_data,
)
from .errors import ConfigError
from .retina import RetinaSpec, RetinaSpecError

__all__ = [
    "TASK_CANVAS",
    "DataConfig",
    "DistributedConfig",
    "ExperimentConfig",
    "MnistDataConfig",
    "ModelConfig",
    "SlideDataConfig",
    "TrainConfig",
    "apply_overrides",
    "at_least",
    "in_range",
    "load_config",
    "one_of",
    "positive",
]


# ----------------------------------------------------------------------------- sections
# (the data section, its checks and its flat keys: config_data.py; the checks: config_checks.py)
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
    glimpse_encoder: str = "fc"  # fc (paper: h_g = Lin(rho)) | conv (textures; beyond it)
    core: str = "rnn"  # rnn (paper) | lstm
    hidden: int = 256
    loc_std: float = 0.15
    loc_mean: str = "tanh"  # tanh | clamp | linear: how the policy mean is kept in [-1, 1]
    first_location: str = "random"  # random (paper) | center
    # Beyond the paper ("glance, then look"): ``thumbnail`` reads a small fixed-size view of
    # the whole image (a slide's tissue frame) once per episode; it sets the core's first state
    # and proposes the first location by a categorical policy over a context_grid^2 grid of
    # cells (REINFORCE, like the later glimpses). ``none`` is the paper's model.
    context: str = "none"  # none (paper) | thumbnail
    context_size: int = 128  # side of the square thumbnail, pixels
    context_grid: int = 16  # the first-location policy's cells per side
    context_channels: int = 16  # width of the context convolutions
    # Beyond the paper, for annotated slides: a linear head on each glimpse's features that
    # names what lies under it (0: no lesion, c + 1: the lesion of a class-c slide), trained by
    # train.glimpse_aux_weight from the annotation; the decision does not read it.
    glimpse_aux: bool = False
    fc_hidden: int = 256
    conv_filters: int = 8
    conv_kernel: int = 10
    conv_stride: int = 5

    def validate(self, src: str | None, canvas: int) -> None:
        if self.arch not in ("ram", "ram_random", "fc", "conv"):
            raise ConfigError(f"unknown arch {self.arch!r}; one of ram, ram_random, fc, conv",
                              key="model.arch", source=src)
        one_of(self.core, ("rnn", "lstm"), "model.core", src)
        one_of(self.glimpse_encoder, ("fc", "conv"), "model.glimpse_encoder", src)
        one_of(self.loc_mean, ("tanh", "clamp", "linear"), "model.loc_mean", src)
        one_of(self.first_location, ("random", "center"), "model.first_location", src)
        one_of(self.context, ("none", "thumbnail"), "model.context", src)
        at_least(self.context_channels, 1, "model.context_channels", src)
        at_least(self.context_grid, 1, "model.context_grid", src)
        if self.context_size < 16 or self.context_size % self.context_grid:
            raise ConfigError(f"must be >= 16 and a multiple of model.context_grid "
                              f"({self.context_grid}), got {self.context_size}",
                              key="model.context_size", source=src)
        at_least(self.glimpses, 1, "model.glimpses", src)
        in_range(self.loc_std, 0.0, 2.0, "model.loc_std", src, closed_low=False)
        for name in ("glimpse_hidden", "loc_hidden", "glimpse_out", "hidden", "fc_hidden",
                     "conv_filters"):
            at_least(getattr(self, name), 1, f"model.{name}", src)
        try:
            spec = self.retina()
        except RetinaSpecError as exc:  # the retina names its own field; say it as model.*
            raise ConfigError(exc.reason, key=f"model.{exc.field}", source=src) from None
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
    # REINFORCE's reward: correct (the paper: 1 for a right final decision, else 0) or
    # log_prob (beyond the paper: log p(true class), a graded signal -- a glimpse that makes the
    # classifier surer is rewarded before it makes it right; much lower variance on hard tasks).
    reward: str = "correct"
    # log_prob_steps (beyond the paper; issue 21): the classifier is read after every glimpse
    # and glimpse s earns log p_s(true class) / T; a location's return is what the glimpses
    # from it on earn. A location that makes the decision right sooner earns more: later
    # glimpses must add evidence, not wander. step_loss: the weight of the same cross-entropy
    # after glimpses 1..T-1 (mean over them) beside the final one: an anytime classifier, whose
    # confidence after k glimpses means something (a confidence stop reads it).
    step_loss: float = 0.0
    # REINFORCE's baseline: learned (the paper: b(h_t), regressed on the reward) or group
    # (beyond the paper: the mean reward of the other episodes on the same slide or image in
    # the batch -- leave-one-out, as RLOO; needs data.slides.episodes_per_slide or
    # data.mnist.episodes_per_image > 1).
    advantage: str = "learned"
    baseline_weight: float = 1.0
    # Beyond the paper, both from the annotation of synthetic slides (a tissue mosaic's region,
    # a needle's lesion: what the dense baseline's tile CNN also trains on), at training time
    # only; rows that use them are labelled. glimpse_aux_weight: the weight of the per-glimpse
    # cross-entropy of model.glimpse_aux's head (what lies under each glimpse). target_reward:
    # a reward per glimpse on the lesion, added to the return of every location before it.
    glimpse_aux_weight: float = 0.0
    target_reward: float = 0.0
    # The location net's learning rate relative to ``lr``. Adam normalises the noisy REINFORCE
    # gradient to unit-size steps, so at the supervised rate the policy mean random-walks into
    # tanh saturation (glimpses parked in a corner); a smaller rate lets the signal accumulate.
    policy_lr_scale: float = 0.1
    # The context net's first-location policy (model.context: thumbnail) relative to ``lr``: a
    # categorical over cells is not prone to saturation like the Gaussian mean, and the first
    # glimpse decides an episode, so it learns at the full rate.
    context_lr_scale: float = 1.0
    # Early stopping: epochs without validation improvement. Runs without ``max_minutes`` only:
    # a time-capped run anneals over its budget and trains to the end of it.
    patience: int = 20
    eval_samples: int = 10  # M, for the M-averaged error
    # M for the per-epoch validation of an MNIST run (None: eval_samples). Model selection reads
    # the mean-policy error only, so 1 spares the sampled rollouts: ~15 % of a capped run's time.
    val_samples: int | None = None
    # Wall-clock cap, resumed runs included (the run still evaluates and saves). The schedule
    # anneals over it: the learning rate follows whichever of steps and minutes is further along.
    # A capped run ignores ``patience``.
    max_minutes: float | None = None
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the unrolled model
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    out_dir: str = "runs/{name}"
    # Start from this checkpoint's model weights (fine-tuning, or a curriculum: small slides
    # first); the optimiser, schedule and RNGs start fresh. A resumed run ignores it.
    init_from: str | None = None
    seed: int = 0
    progress: bool = True

    def validate(self, src: str | None) -> None:
        at_least(self.batch_size, 1, "train.batch_size", src)
        at_least(self.epochs, 1, "train.epochs", src)
        one_of(self.optimizer, ("adam", "sgd"), "train.optimizer", src)
        one_of(self.reward, ("correct", "log_prob", "log_prob_steps"), "train.reward", src)
        one_of(self.advantage, ("learned", "group"), "train.advantage", src)
        one_of(self.schedule, ("cosine", "linear", "constant"), "train.schedule", src)
        positive(self.lr, "train.lr", src)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"must be auto, cpu or cuda[:N], got {self.device!r}",
                              key="train.device", source=src)
        at_least(self.eval_samples, 1, "train.eval_samples", src)
        at_least(self.glimpse_aux_weight, 0.0, "train.glimpse_aux_weight", src)
        at_least(self.target_reward, 0.0, "train.target_reward", src)
        at_least(self.step_loss, 0.0, "train.step_loss", src)
        if self.val_samples is not None:
            at_least(self.val_samples, 1, "train.val_samples", src)


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
        one_of(self.glimpse_dtype, ("float32", "float16", "uint8"), "distributed.glimpse_dtype",
               src)
        at_least(self.actors, 1, "distributed.actors", src)
        one_of(self.mode, ("sync", "async"), "distributed.mode", src)
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
        if self.train.glimpse_aux_weight > 0 and not self.model.glimpse_aux:
            raise ConfigError("needs model.glimpse_aux: true (the head it trains)",
                              key="train.glimpse_aux_weight", source=self.source)
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir.format(name=self.name))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str | None = None) -> ExperimentConfig:
        """Build and validate an experiment from a mapping: a parsed YAML file, or
        :meth:`to_dict` of a run (as actors and checkpoints receive it; the flat ``data`` keys
        of earlier checkpoints are accepted)."""
        cfg = _build(cls, dict(raw), "", source)
        cfg.source = source
        return cfg.validate()


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
    if base in ("list", "<class 'list'>"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"must be a list, got {value!r}", key=key, source=src)
        return [str(v) for v in value]
    if base in ("str", "<class 'str'>"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"must be a string, got {value!r}", key=key, source=src)
        return str(value)
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str, src: str | None) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"must be a mapping, got {type(raw).__name__}", key=prefix or None,
                          source=src)
    if cls is DataConfig:
        raw = nest_flat_data(raw)
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    if cls is ExperimentConfig:
        names.discard("source")  # set by the loader, not by the file
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            known = names | set(FLAT_DATA_KEYS) if cls is DataConfig else names
            raise ConfigError(f"unknown key; known keys: {', '.join(sorted(known))}", key=full,
                              source=src)
        if key in _SECTIONS and not prefix:
            kwargs[key] = _build(_SECTIONS[key], value or {}, key, src)
        elif cls is DataConfig and key in DATA_SECTIONS:
            kwargs[key] = _build(DATA_SECTIONS[key], value or {}, full, src)
        else:
            kwargs[key] = _coerce(value, hints[key], full, src)
    return cls(**kwargs)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None, src: str | None = None
                    ) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides or []:
        path, sep, text = item.partition("=")
        parts = path.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"override {item!r} is not of the form section.key=value",
                              source=src)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"the value {text!r} is not valid YAML ({yaml_problem(exc)})",
                              key=path.strip(), source=src) from None
        node = raw
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict):
                break
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("is not a section", key=".".join(parts[:i + 1]), source=src)
        node[parts[-1]] = value
    return raw


def yaml_problem(exc: Exception) -> str:
    """A YAML error on one line, with its line and column: PyYAML's own message spans
    several and names ``<unicode string>`` rather than the file."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "not valid"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


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
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {yaml_problem(exc)}", source=src) from None
        except (UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"cannot be read as YAML text ({type(exc).__name__})",
                              source=src) from None
        if not isinstance(raw, dict):
            raise ConfigError("the top level must be a mapping", source=src)
        raw.setdefault("name", p.stem)
    raw = apply_overrides(raw, overrides, src)
    return ExperimentConfig.from_dict(raw, src)

