"""Models: the RAM agent and the paper's comparison rows."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .baselines import ConvNet, FullyConnected
from .ram import RecurrentAttentionModel, ReplaySensor, RetinaSensor, Trajectory

__all__ = [
    "ConvNet",
    "FullyConnected",
    "RecurrentAttentionModel",
    "ReplaySensor",
    "RetinaSensor",
    "Trajectory",
    "build_model",
    "is_attention",
]


def is_attention(cfg: ModelConfig) -> bool:
    """True for the glimpse-based agents (ram, ram_random)."""
    return cfg.arch in ("ram", "ram_random")


def build_model(cfg: ModelConfig, canvas: int, channels: int = 1, classes: int = 10) -> nn.Module:
    """The model a config names."""
    if is_attention(cfg):
        return RecurrentAttentionModel(cfg, channels, classes)
    if cfg.arch == "fc":
        return FullyConnected(cfg, canvas, channels, classes)
    return ConvNet(cfg, canvas, channels, classes)
