"""The paper's non-attention comparison rows: a 2-layer fully connected net and a conv net.

They see the whole image, so their cost grows with it; they are here to place RAM's numbers in
the same table, trained by the same trainer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig

__all__ = ["ConvNet", "FullyConnected"]


class FullyConnected(nn.Module):
    """FC, 2 layers of ``fc_hidden`` ReLU units, then a linear softmax (paper's 'FC, 2 layers')."""

    def __init__(self, cfg: ModelConfig, canvas: int, channels: int = 1, classes: int = 10):
        super().__init__()
        d = channels * canvas * canvas
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, cfg.fc_hidden), nn.ReLU(),
                                 nn.Linear(cfg.fc_hidden, cfg.fc_hidden), nn.ReLU(),
                                 nn.Linear(cfg.fc_hidden, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ConvNet(nn.Module):
    """The paper's 'Convolutional, 2 layers': ``conv_filters`` filters of ``conv_kernel``
    with stride ``conv_stride`` and ReLU, then ``fc_hidden`` ReLU units, then a linear softmax."""

    def __init__(self, cfg: ModelConfig, canvas: int, channels: int = 1, classes: int = 10):
        super().__init__()
        out = (canvas - cfg.conv_kernel) // cfg.conv_stride + 1
        self.net = nn.Sequential(
            nn.Conv2d(channels, cfg.conv_filters, cfg.conv_kernel, stride=cfg.conv_stride),
            nn.ReLU(), nn.Flatten(), nn.Linear(cfg.conv_filters * out * out, cfg.fc_hidden),
            nn.ReLU(), nn.Linear(cfg.fc_hidden, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
