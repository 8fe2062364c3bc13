"""One scorer: a trained checkpoint, loaded once, that turns a slide path into a result row,
its QuPath GeoJSON and its annotated thumbnail.

It is what a Ray scoring actor holds (:mod:`.runner`), and what ``--workers 0`` runs in the
driver. It opens each slide itself (paths travel, never pixels), reads the one thumbnail and the
glimpses (:func:`~ram_wsi.train.slide_eval.rollout_slide`: the mean-policy path, then M sampled
rollouts whose probabilities are averaged), closes the slide and drops the process's block
caches, so that memory does not grow with the number of slides scored and ``pixels_read`` is
what one slide not seen before costs. The episodes' RNG is seeded from the ``slide_id``: a slide
scores the same whichever worker takes it, in whatever order, in a resumed run too.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, RamWsiError, SlideError
from .inputs import ScoreInput

__all__ = ["Scored", "ScorerOptions", "SlideScorer", "load_scoring_model"]


@dataclass(frozen=True)
class ScorerOptions:
    """How a scorer runs (everything a Ray actor needs besides the checkpoint path).

    Attributes:
        samples: M, the sampled rollouts averaged (None: the checkpoint's ``eval_samples``).
        seed: mixed with each ``slide_id`` into the slide's episode seed.
        threads: torch's intra-op threads (one per CPU a worker is given).
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when present).
        geojson, thumbnails: make those outputs.
        thumb_px: the annotated thumbnail's side.
        fallback_mpp: micrometres per pixel assumed for a slide that states none, when the
            checkpoint's retina is in micrometres (None: such a slide is an error row).
        stop_at: a confidence stop: each rollout decides at its first glimpse whose decision
            is at least this sure, and the mean policy reads no further (None: every glimpse).
        storage_options: fsspec options for slides named by URIs (``--storage-option``;
            never credentials: :func:`ram_wsi.slide.remote.check_storage_options`), taken by
            each scorer's process; None: the process's own.
    """

    samples: int | None = None
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    geojson: bool = True
    thumbnails: bool = True
    thumb_px: int = 512
    fallback_mpp: float | None = None
    stop_at: float | None = None
    storage_options: dict[str, Any] | None = None


@dataclass
class Scored:
    """What scoring one slide gives back: small enough to travel from an actor."""

    row: dict[str, Any]
    geojson: dict[str, Any] | None = None
    thumbnail_png: bytes | None = None


def load_scoring_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(model, config, metadata)`` of a slide checkpoint.

    Raises:
        CheckpointError: the file is missing, unreadable, not a slide agent's checkpoint, or its
            weights do not fit the model its config builds.
    """
    from ..config import ExperimentConfig
    from ..models import RecurrentAttentionModel, build_model
    from ..train.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint, device)
    missing = [k for k in ("model", "config", "retina", "class_names") if k not in ck]
    if missing:
        raise CheckpointError(checkpoint, "not a slide agent's checkpoint (it lacks "
                                          f"{', '.join(missing)}; train with data.source: slides)")
    try:
        cfg = ExperimentConfig.from_dict(ck["config"])
        model = build_model(cfg.model, 0, int(ck.get("channels", 3)), int(ck["classes"]))
        model.load_state_dict(ck["model"])
    except (RamWsiError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(checkpoint, f"does not build its model: {exc}") from None
    if not isinstance(model, RecurrentAttentionModel):
        raise CheckpointError(checkpoint, f"model {cfg.model.arch!r} is not a glimpse agent")
    meta = {k: ck[k] for k in ("class_names", "retina", "context", "package_version",
                               "classes", "channels") if k in ck}
    meta["step"] = int(ck.get("step", 0))
    return model.to(device).eval(), cfg, meta


def slide_seed(slide_id: str, seed: int) -> int:
    """The episode seed of a slide: the same for the same ``slide_id`` and ``seed``."""
    return (zlib.crc32(slide_id.encode()) ^ (int(seed) * 0x9E3779B1)) & 0x7FFFFFFF


class SlideScorer:
    """Score slides with one checkpoint (module docstring).

    Raises (on construction):
        CheckpointError: see :func:`load_scoring_model`.
    """

    def __init__(self, checkpoint: str | os.PathLike, options: ScorerOptions | None = None):
        from ..train.optim import resolve_device

        self.options = opt = options or ScorerOptions()
        torch.set_num_threads(max(1, int(opt.threads)))
        if opt.storage_options is not None:  # a Ray actor opens remote slides with them
            from ..slide.remote import set_storage_options

            set_storage_options(opt.storage_options)
        self.device = resolve_device(opt.device)
        self.checkpoint = str(checkpoint)
        self.model, self.cfg, self.meta = load_scoring_model(checkpoint, self.device)
        self.class_names = [str(c) for c in self.meta["class_names"]]
        self.samples = int(opt.samples or self.cfg.train.eval_samples or 1)
        r = self.meta["retina"]
        self.spec = dataclasses.replace(self.cfg.model.retina(), base=float(r["base"]))
        self.units = str(r["units"])
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def describe(self) -> dict[str, Any]:
        """Where this scorer runs (for the run's metadata and the ``worker`` column)."""
        return {"worker": self.worker, "device": str(self.device),
                "threads": torch.get_num_threads(), "samples": self.samples,
                "stop_at": self.options.stop_at}

    def _slide_set(self, inp: ScoreInput):
        from ..data.manifest import SlideRecord
        from ..data.slides import SlideSet

        m, r = self.cfg.model, self.meta["retina"]
        rec = SlideRecord(inp.path, 0, "score", inp.path, 0)
        return SlideSet([rec], self.class_names, self.spec, self.units,
                        frame=str(r.get("frame", "tissue")),
                        context_size=m.context_size if m.context != "none" else None,
                        thumb_size=int(r.get("thumb_size", 512)),
                        start=self.cfg.data.slides.start, previews=self.options.thumbnails,
                        stain=str(r.get("stain", "none")))

    def _physical(self, slides, source) -> None:
        """A micrometre retina on a slide without mpp: the fallback, or a clear error."""
        if self.units != "um" or source.mpp is not None:
            return
        fb = self.options.fallback_mpp
        if not fb:
            raise SlideError(source.path, "states no mpp (microns per pixel) and this "
                                          "checkpoint's retina is in micrometres; pass "
                                          "--fallback-mpp to assume one")
        slides.units = "px"
        slides.spec = dataclasses.replace(self.spec, base=self.spec.base / float(fb))

    @torch.no_grad()
    def score(self, inp: ScoreInput, worker: str | None = None) -> Scored:
        """Score one input; a slide that cannot be read gives an ``error`` row (never raises
        for a bad slide)."""
        from ..slide import clear_caches
        from ..train.slide_eval import rollout_slide

        t0 = time.perf_counter()
        base = {"path": inp.path, "slide_id": inp.slide_id, "label": inp.label,
                "files": inp.files, "worker": worker or self.worker}
        slides = self._slide_set(inp)
        seed = slide_seed(inp.slide_id, self.options.seed)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        rng = np.random.default_rng(seed)
        source = None
        clear_caches()  # cold: what a slide not seen before costs; memory stays bounded
        try:
            view = slides.view(0)
            source = view.source
            self._physical(slides, source)
            r = rollout_slide(self.model, slides, 0, samples=self.samples, gen=gen, rng=rng,
                              cold=False, stop_at=self.options.stop_at)
            if "error" in r:
                raise SlideError(inp.path, r["error"])
            info = source.info
            row = self._row(base, r, source, info)
        except (SlideError, OSError) as exc:
            msg = str(exc) if isinstance(exc, SlideError) else f"{inp.path}: {exc}"
            return Scored({**base, "status": "error", "error": msg,
                           "seconds": round(time.perf_counter() - t0, 4)})
        finally:
            if source is not None:
                source.close()
            clear_caches()
        t1 = time.perf_counter()
        out = Scored(row)
        probs = [row[f"prob_{c}"] for c in self.class_names]
        if self.options.geojson:
            from .outputs import slide_geojson

            out.geojson = slide_geojson(r, self.class_names, probs)
        if self.options.thumbnails:
            from .outputs import annotated_thumbnail

            buf = io.BytesIO()
            annotated_thumbnail(r, self.class_names, self.options.thumb_px, probs).save(
                buf, format="PNG")
            out.thumbnail_png = buf.getvalue()
        row["seconds_write"] = round(time.perf_counter() - t1, 4)  # the driver adds its writes
        return out

    def _row(self, base: dict[str, Any], r: dict[str, Any], source, info) -> dict[str, Any]:
        names = self.class_names
        p_avg = np.asarray(r["probs_samples"], dtype=np.float64).mean(0)
        p_mean = np.asarray(r["probs_mean"], dtype=np.float64)
        t = int(np.asarray(r["path_px"]).shape[0])
        seconds = float(r["seconds_total"])
        glimpse_s = float(r["seconds_glimpses_total"])
        return {
            **base, "status": "ok", "error": "",
            "predicted": names[int(p_avg.argmax())],
            **{f"prob_{c}": round(float(p), 6) for c, p in zip(names, p_avg)},
            "predicted_mean_policy": names[int(p_mean.argmax())],
            "rollouts": self.samples, "glimpses": t, "glimpses_read": int(r["glimpses_read"]),
            "pixels_read": int(r["pixels_decoded_total"]),
            "bytes_read": int(r["bytes_read_total"]),
            "pixels_decision": int(r["pixels_decoded"]),
            "tissue_fraction": round(float(r["tissue_fraction"]), 6),
            "on_tissue": round(float(r["on_tissue"]), 6),
            "width": int(r["dimensions"][0]), "height": int(r["dimensions"][1]),
            "levels": len(info.level_dimensions),
            "mpp": None if source.mpp is None else round(float(source.mpp), 6),
            "backend": source.backend,
            "seconds": round(seconds, 4),
            "seconds_open": round(float(r["seconds_open"]), 4),
            "seconds_glimpses": round(glimpse_s, 4),
            "seconds_model": round(max(0.0, seconds - float(r["seconds_open"]) - glimpse_s), 4),
        }


def write_outputs(out: str | os.PathLike, scored: Scored) -> float:
    """Write a scored slide's GeoJSON and thumbnail under ``out`` (atomically); the seconds
    it took."""
    from ..io_utils import atomic_path
    from .outputs import write_geojson

    t0 = time.perf_counter()
    sid = scored.row["slide_id"]
    if scored.geojson is not None:
        write_geojson(Path(out) / "geojson" / f"{sid}.geojson", scored.geojson)
    if scored.thumbnail_png is not None:
        path = Path(out) / "thumbnails" / f"{sid}.png"
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(scored.thumbnail_png)
    return time.perf_counter() - t0
