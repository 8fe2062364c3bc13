"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint holds only tensors and plain containers (model and optimiser state, scheduler
counters, RNG states as byte tensors, the config as a dict), so loading never unpickles code.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ExperimentConfig
from ..errors import CheckpointError
from ..io_utils import atomic_path

__all__ = ["SEED_KEYS", "export_seed", "load_checkpoint", "save_checkpoint", "scoring_metadata"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; typed errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(path, _why_unreadable(exc)) from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _why_unreadable(exc: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file. A file holding
    objects other than tensors and plain containers (a pickled class, a numpy array) is said
    to be no checkpoint of this package, naming the object. PyTorch's own message goes on to
    advise ``weights_only=False``, which would run the file's code: that part is left out."""
    text = _ANSI.sub("", str(exc))
    if "WeightsUnpickler error" in text or "Weights only load failed" in text:
        after = text.partition("WeightsUnpickler error:")[2].strip()
        detail = re.split(r"\.\s|\n", after, maxsplit=1)[0].strip()  # before the advice
        refused = re.match(r"Unsupported global: GLOBAL (\S+)", detail)
        if refused:
            return ("not a checkpoint this package wrote (it holds objects that a safe load "
                    f"refuses: {refused[1]})")
        if not detail or "weights_only" in detail or "safe_globals" in detail:
            detail = "not tensors and plain containers"
        return f"not a readable checkpoint (a safe load refuses it: {detail})"
    first = re.split(r"\.\s|\n", text.strip(), maxsplit=1)[0][:200]  # its first sentence
    return f"not a readable checkpoint ({type(exc).__name__}{': ' + first if first else ''})"


def scoring_metadata(cfg: ExperimentConfig, model: nn.Module, data: Any) -> dict[str, Any]:
    """What scoring needs besides the weights, stated plainly in every checkpoint: the class
    names, the retina as the slides are read (units, base), the context settings, and the
    package version that wrote it. ``data``: the run's task data (its channels, classes;
    slides: class names and the units the slides are read in)."""
    from .. import __version__

    meta: dict[str, Any] = {"package_version": __version__, "data_source": cfg.data.source,
                            "channels": int(data.channels), "classes": int(data.classes)}
    if cfg.data.source == "slides":
        d = cfg.data.slides
        meta["class_names"] = data.class_names
        meta["retina"] = {"patch": cfg.model.patch, "scales": cfg.model.scales,
                          "scale_factor": cfg.model.scale_factor, "base": float(d.retina_base),
                          "units": data.env.units, "frame": d.frame,
                          "thumb_size": d.thumb_size, "stain": d.stain}
    else:
        meta["class_names"] = [str(i) for i in range(int(data.classes))]
    meta["context"] = {"kind": cfg.model.context, "size": cfg.model.context_size,
                       "grid": cfg.model.context_grid}
    return meta


# What a seed keeps of a checkpoint: the weights and what scoring or ``train.init_from`` read.
SEED_KEYS = ("config", "class_names", "retina", "context", "channels", "classes",
             "package_version", "data_source")


def export_seed(src: str | Path, dst: str | Path) -> Path:
    """A small copy of checkpoint ``src`` at ``dst``: the model's weights in float16 (half the
    bytes; ``load_state_dict`` converts them back) and :data:`SEED_KEYS`, without the
    optimiser, RNG states and counters. For ``train.init_from`` (``make demo`` starts its
    short training from one) and for scoring; not for resuming a run."""
    ck = load_checkpoint(src)
    seed = {k: ck[k] for k in SEED_KEYS if k in ck}
    seed["model"] = {k: (v.half() if v.is_floating_point() else v)
                     for k, v in ck["model"].items()}
    seed["seed_of"] = str(Path(src).name)
    return save_checkpoint(dst, seed)
