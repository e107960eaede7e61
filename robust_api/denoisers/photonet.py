"""PhotoNet: a small noise-level-conditioned U-Net for RGB photos, fast on CPU.

Design (our own; the ideas are FFDNet's and DRUNet's, Zhang et al. 2018 and 2021):

* the noisy image x + σz (not clipped) and a constant map of σ are pixel-unshuffled by 2, so
  every convolution runs at half resolution or lower (4× fewer positions than DnCNN);
* three levels (1/2, 1/4, 1/8 of the input size) of residual blocks, joined by strided
  convolutions down and transposed convolutions up, with additive skips;
* the network predicts the noise, which is subtracted from the input.

One set of weights serves every σ in :attr:`PhotoNet.noise_sd_range`; the σ used is the one
given to ``forward``, else the one set with :meth:`set_noise_sd`. Inputs of any size work:
they are padded (reflection) to a multiple of 8 and the output cropped back.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DenoiserError
from .base import DenoiserModule

__all__ = ["PhotoNet"]


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x), inplace=True))


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[_ResidualBlock(channels) for _ in range(blocks)])


class PhotoNet(DenoiserModule):
    """Noise-level-conditioned U-Net denoiser: [B, C, H, W] (noisy, unclipped) → [B, C, H, W].

    Args:
        image_channels: 1 (gray) or 3 (RGB).
        widths: channels at 1/2, 1/4 and 1/8 of the input resolution.
        blocks: residual blocks per level on each side of the U (the bottom level has this many).
        noise_sd_range: (low, high), the σ range the weights were trained for (pixel units).
    """

    arch = "photonet"

    def __init__(self, image_channels: int = 3, widths: Sequence[int] = (48, 96, 192), blocks: int = 2,
                 noise_sd_range: Sequence[float] = (0.0, 0.55)):
        super().__init__(image_channels)
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1 or int(blocks) < 1:
            raise DenoiserError(f"PhotoNet needs three positive widths and blocks >= 1, got {widths}, {blocks}")
        low, high = (float(v) for v in noise_sd_range)
        if not 0.0 <= low < high <= 1.0:
            raise DenoiserError(f"noise_sd_range must satisfy 0 <= low < high <= 1, got {noise_sd_range}")
        self.widths, self.blocks, self.noise_sd_range = widths, int(blocks), (low, high)
        self.activation_channels = widths[0] * 4  # widest map per input pixel (48 channels at 1/4 the pixels ≈ 12)
        c1, c2, c3 = widths
        unshuffled = (image_channels + 1) * 4
        self.head = nn.Conv2d(unshuffled, c1, 3, padding=1)
        self.enc1 = _stage(c1, blocks)
        self.down1 = nn.Conv2d(c1, c2, 2, stride=2)
        self.enc2 = _stage(c2, blocks)
        self.down2 = nn.Conv2d(c2, c3, 2, stride=2)
        self.bottom = _stage(c3, blocks)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = _stage(c2, blocks)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = _stage(c1, blocks)
        self.tail = nn.Conv2d(c1, image_channels * 4, 3, padding=1)

    def config(self) -> Dict[str, Any]:
        return {"image_channels": self.image_channels, "widths": list(self.widths), "blocks": self.blocks,
                "noise_sd_range": list(self.noise_sd_range)}

    def set_noise_sd(self, noise_sd: Optional[float]) -> None:
        """Use σ = ``noise_sd`` (pixel units) in later calls of ``forward`` without an explicit σ."""
        self.noise_sd = None if noise_sd is None else float(noise_sd)

    def forward(self, x: torch.Tensor, noise_sd: Union[None, float, torch.Tensor] = None) -> torch.Tensor:
        """Denoise ``x`` float [B, C, H, W] (x + σz, any range); ``noise_sd`` a float or a [B]
        tensor of per-image σ, default :attr:`noise_sd`. Returns the estimate, same shape."""
        self.check_input(x)
        if noise_sd is None:
            noise_sd = self.noise_sd
        if noise_sd is None:
            raise DenoiserError("PhotoNet needs σ: load it with load_denoiser(..., noise_sd=σ), call set_noise_sd(σ) "
                                "or pass noise_sd= (RobustAPI sets each call's σ itself)")
        batch, _, height, width = x.shape
        sigma = torch.as_tensor(noise_sd, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        pad_h, pad_w = (-height) % 8, (-width) % 8
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
        sigma_map = sigma.expand(batch, 1, padded.shape[2], padded.shape[3])
        features = self.head(F.pixel_unshuffle(torch.cat([padded, sigma_map], 1), 2))
        skip1 = self.enc1(features)
        skip2 = self.enc2(self.down1(skip1))
        deep = self.bottom(self.down2(skip2))
        up = self.dec2(self.up2(deep) + skip2)
        up = self.dec1(self.up1(up) + skip1)
        noise = F.pixel_shuffle(self.tail(up), 2)
        return (padded - noise)[:, :, :height, :width]
