"""DRUNet (Zhang et al., 2021, "Plug-and-Play Image Restoration with Deep Denoiser Prior").

A four-scale U-Net of residual blocks (conv-ReLU-conv, no BatchNorm, no biases) with strided
2×2 convolutions down, 2×2 transposed convolutions up and additive skip connections. The noise
level σ enters as an extra constant input channel, so one network serves a range of σ; here σ
is the denoiser's ``noise_sd``. Inputs whose height or width is not a multiple of 8 are
replicate-padded and the output cropped back. Parameter names (``m_head``, ``m_down1.0.res.0``,
``m_up1.0`` …, ``m_tail``) follow the authors' layout. The authors' full model
(widths 64-128-256-512, 4 blocks per scale) has 32.6M parameters; smaller widths train on a CPU.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DenoiserError
from .base import DenoiserModule

__all__ = ["DRUNet"]


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.res = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res(x)


class DRUNet(DenoiserModule):
    """Noise-level-conditioned residual U-Net denoiser.

    Args:
        image_channels: 1 or 3.
        widths: channels at the four scales (the authors: 64, 128, 256, 512).
        blocks: residual blocks per scale (the authors: 4).

    ``forward``: float [B, C, H, W] in [0, 1] → float [B, C, H, W]; needs ``noise_sd`` set
    (σ in [0, 1] units), which becomes the constant extra input channel.
    """

    arch = "drunet"

    def __init__(self, image_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512), blocks: int = 4):
        super().__init__(image_channels)
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1 or int(blocks) < 1:
            raise DenoiserError(f"DRUNet needs 4 positive widths and blocks >= 1, got widths={widths}, blocks={blocks}")
        self.widths, self.blocks = widths, int(blocks)
        self.activation_channels = widths[0]
        w0, w1, w2, w3 = widths

        def res(width: int):
            return [_ResBlock(width) for _ in range(self.blocks)]

        self.m_head = nn.Conv2d(image_channels + 1, w0, 3, 1, 1, bias=False)
        self.m_down1 = nn.Sequential(*res(w0), nn.Conv2d(w0, w1, 2, 2, 0, bias=False))
        self.m_down2 = nn.Sequential(*res(w1), nn.Conv2d(w1, w2, 2, 2, 0, bias=False))
        self.m_down3 = nn.Sequential(*res(w2), nn.Conv2d(w2, w3, 2, 2, 0, bias=False))
        self.m_body = nn.Sequential(*res(w3))
        self.m_up3 = nn.Sequential(nn.ConvTranspose2d(w3, w2, 2, 2, 0, bias=False), *res(w2))
        self.m_up2 = nn.Sequential(nn.ConvTranspose2d(w2, w1, 2, 2, 0, bias=False), *res(w1))
        self.m_up1 = nn.Sequential(nn.ConvTranspose2d(w1, w0, 2, 2, 0, bias=False), *res(w0))
        self.m_tail = nn.Conv2d(w0, image_channels, 3, 1, 1, bias=False)

    def config(self) -> Dict[str, Any]:
        return {"image_channels": self.image_channels, "widths": list(self.widths), "blocks": self.blocks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.noise_sd is None:
            raise DenoiserError("DRUNet needs its noise level: set module.noise_sd (σ in [0, 1]) or load it with noise_sd=")
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % 8, (-width) % 8
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        level = torch.full_like(x[:, :1], float(self.noise_sd))
        x1 = self.m_head(torch.cat([x, level], dim=1))
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        out = self.m_body(x4)
        out = self.m_up3(out + x4)
        out = self.m_up2(out + x3)
        out = self.m_up1(out + x2)
        out = self.m_tail(out + x1)
        return out[..., :height, :width]
