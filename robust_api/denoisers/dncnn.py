"""DnCNN (Zhang et al., 2017) as used by denoised smoothing (Salman et al., 2020).

``depth`` 3×3 convolutions: the first with bias and ReLU, ``depth - 2`` middle ones without
bias followed by BatchNorm (eps 1e-4) and ReLU, and a last one back to the image channels;
the network predicts the noise, so the output is ``x - dncnn(x)``. Parameter names
(``dncnn.<i>.weight`` …) follow the paper's code, so its ``cifar_dncnn`` (depth 17, 64
channels), ``cifar_dncnn_wide`` (128 channels) and ``imagenet_dncnn`` checkpoints load
unchanged.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from ..errors import DenoiserError
from .base import DenoiserModule

__all__ = ["DnCNN"]


class DnCNN(DenoiserModule):
    """Residual DnCNN denoiser.

    Args:
        image_channels: 1 (gray) or 3 (RGB).
        depth: number of convolutions, ≥ 3 (the paper: 17).
        channels: feature channels of the hidden layers (the paper: 64; "wide": 128).

    ``forward``: float [B, C, H, W] in [0, 1] → float [B, C, H, W] (any H, W ≥ 1).
    """

    arch = "dncnn"

    def __init__(self, image_channels: int = 3, depth: int = 17, channels: int = 64):
        super().__init__(image_channels)
        if int(depth) < 3 or int(channels) < 1:
            raise DenoiserError(f"DnCNN needs depth >= 3 and channels >= 1, got depth={depth}, channels={channels}")
        self.depth, self.channels = int(depth), int(channels)
        self.activation_channels = self.channels
        layers: list = [nn.Conv2d(image_channels, channels, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(self.depth - 2):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels, eps=1e-4, momentum=0.05),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels, image_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)
        self._initialise()

    def _initialise(self) -> None:
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            nn.init.orthogonal_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        # The last layer starts at zero, so an untrained DnCNN is the identity map.
        nn.init.zeros_(convs[-1].weight)

    def config(self) -> Dict[str, Any]:
        return {"image_channels": self.image_channels, "depth": self.depth, "channels": self.channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x - self.dncnn(x)
