"""A training-free denoiser for CPU-only users: non-local means (scikit-image).

Each image is denoised on the CPU with ``skimage.restoration.denoise_nl_means`` in fast mode,
with the filter strength tied to the known noise level (h = ``h_factor``·σ and the noise
variance subtracted from patch distances, as scikit-image documents for Gaussian noise).
The defaults (5×5 patches, search radius 6, h = 0.4σ) were the best of a small grid on the
held-out photos at σ = 0.12 and 0.25 (``docs/benchmarks.md``) — a choice that favours this
baseline in the comparison with the learned denoisers.
It follows the same contract as the learned denoisers and works on any device's tensors
(it copies them to the CPU and back). Needs ``pip install 'robust-api[classical]'``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from ..errors import DenoiserError, MissingDependencyError
from .base import DenoiserModule

__all__ = ["NonLocalMeans"]


class NonLocalMeans(DenoiserModule):
    """Non-local means with parameters set from σ.

    Args:
        noise_sd: σ of the noise to remove, in (0, 1].
        image_channels: None (default: any channel count) or 1 / 3 to accept only that many.
        patch_size: side of the compared patches (pixels).
        patch_distance: search radius (pixels).
        h_factor: filter strength as a multiple of σ.

    ``forward``: float [B, C, H, W] in [0, 1] → float [B, C, H, W] in [0, 1]; one image at a time.
    """

    arch = "nl-means"

    activation_channels = 1

    def __init__(self, noise_sd: float, image_channels: Optional[int] = None, patch_size: int = 5, patch_distance: int = 6,
                 h_factor: float = 0.4):
        super().__init__(3 if image_channels is None else image_channels)
        self.image_channels = image_channels  # None: works per image on any channel count
        if not 0 < float(noise_sd) <= 1:
            raise DenoiserError(f"NonLocalMeans needs noise_sd in (0, 1], got {noise_sd!r}")
        try:
            from skimage.restoration import denoise_nl_means
        except ImportError:
            raise MissingDependencyError(
                "the 'nl-means' denoiser needs scikit-image: pip install 'robust-api[classical]'"
            ) from None
        self._denoise = denoise_nl_means
        self.noise_sd = float(noise_sd)
        self.patch_size, self.patch_distance, self.h_factor = int(patch_size), int(patch_distance), float(h_factor)

    def config(self) -> Dict[str, Any]:
        return {"noise_sd": self.noise_sd, "image_channels": self.image_channels, "patch_size": self.patch_size,
                "patch_distance": self.patch_distance, "h_factor": self.h_factor}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise DenoiserError(f"NonLocalMeans expects a float [B, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
        images = x.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
        out = np.empty_like(images)
        for i, image in enumerate(images):
            out[i] = self._denoise(image, h=self.h_factor * self.noise_sd, sigma=self.noise_sd, fast_mode=True,
                                   patch_size=self.patch_size, patch_distance=self.patch_distance,
                                   channel_axis=-1).reshape(image.shape)
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype)
