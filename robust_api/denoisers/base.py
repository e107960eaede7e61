"""The denoiser contract and the registry of architectures.

A denoiser is a ``torch.nn.Module`` whose ``forward(x)`` takes a float tensor of shape
[B, C, H, W] holding noisy images x + σ·z (clean x in [0, 1], Gaussian noise of standard
deviation σ = ``noise_sd`` added and **not clipped**: values fall outside [0, 1]) and returns a tensor of the same shape, the estimate of the clean
images. Outputs may stray outside [0, 1]; the runner
(:class:`robust_api.torch_utils.ModuleDenoiser`) clamps them, and only the clamped result is
sent to the classifier. Every architecture in this package subclasses :class:`DenoiserModule`,
which adds what the SDK needs around ``forward``: the number of image channels, the noise
level it was trained for and a JSON-able ``config()`` that rebuilds the same architecture.

σ-conditioned denoisers (one network for a range of σ, such as FFDNet's noise level map)
declare ``noise_sd_range = (lo, hi)`` and override :meth:`DenoiserModule.set_noise_sd`: the
runner calls ``set_noise_sd(σ)`` with the call's σ before every denoising pass of a noisy
phase, so the denoiser is conditioned on the σ of the noise actually added. Denoisers
trained for one σ keep ``noise_sd_range = None`` and the default no-op ``set_noise_sd``;
using them at a σ more than :data:`NOISE_SD_TOLERANCE` (relative) from their ``noise_sd``,
or a σ-conditioned one outside its range, warns once per (denoiser, σ) with
:class:`robust_api.errors.DenoiserNoiseLevelWarning`; the certificate stays valid either way.

Denoisers trained on *clipped* noisy copies clip(x + σ·z, 0, 1) (every robust_api denoiser
file written before the ``noisy_input`` metadata existed, including the shipped Fashion-MNIST
and ``photo-dncnn`` ones) declare ``noisy_input = "clipped"`` and get clipped copies, as they
were trained; the query log records which of the two inputs produced each answer.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import DenoiserError
from ..noise import NOISE_SD_TOLERANCE, NOISY_INPUTS, noisy_input_of  # re-exported: they were defined here before

__all__ = [
    "DenoiserModule", "NOISE_SD_TOLERANCE",
    "NOISY_INPUTS", "noisy_input_of",
]

class DenoiserModule(nn.Module):
    """Base class of the denoiser architectures: noisy [B, C, H, W] (x + σz) → same shape.

    Attributes:
        arch: registry name of the architecture (class attribute).
        image_channels: C, the number of image channels it accepts (1 = gray, 3 = RGB; None = any).
        noise_sd: the Gaussian noise standard deviation σ (in [0, 1] pixel units) the weights
            were trained for, or None when unknown (random weights, a foreign checkpoint). A
            σ-conditioned denoiser keeps here the σ it is conditioned on now (the last
            :meth:`set_noise_sd`, or the one given at load time).
        noise_sd_range: None for a denoiser trained for one σ; (lo, hi), 0 ≤ lo < hi ≤ 1, for a
            σ-conditioned denoiser: the σ its weights were trained on (class or instance attribute).
        fine_tuned_noise_sd: for a σ-conditioned denoiser whose weights were then fine-tuned for
            one σ (a file with both ``noise_sd_range`` and ``noise_sd``), that σ; None otherwise.
            The runner warns when it is used more than 10% away from it.
        noisy_input: "unclipped" (default: ``forward`` gets x + σ·z) or "clipped" (weights
            trained on clip(x + σ·z, 0, 1), which is then what ``forward`` gets); see :data:`NOISY_INPUTS`.
        activation_channels: the widest feature map, in channels; used to size batches.
        parallel_forward: True (the default here): ``forward`` only reads the module and
            gives each image the same bits whatever the batch size and torch's thread count,
            so the runner may call it from several CPU threads at once, each on its own chunk
            of images (:class:`robust_api.torch_utils.CpuWorkers`). A subclass for which
            either does not hold sets it to False (MemNet). A plain ``torch.nn.Module`` passed
            as ``denoiser=`` runs in the caller's thread unless it declares
            ``parallel_forward = True`` itself.
    """

    arch: str = ""
    activation_channels: int = 64
    parallel_forward: bool = True
    noise_sd_range: Optional[Tuple[float, float]] = None
    noisy_input: str = "unclipped"

    def __init__(self, image_channels: int):
        super().__init__()
        if image_channels not in (1, 3):
            raise DenoiserError(f"image_channels must be 1 (gray) or 3 (RGB), got {image_channels!r}")
        self.image_channels = int(image_channels)
        self.noise_sd: Optional[float] = None
        self.fine_tuned_noise_sd: Optional[float] = None

    def config(self) -> Dict[str, Any]:
        """Constructor arguments (JSON-able) that rebuild this architecture with fresh weights."""
        raise NotImplementedError

    def set_noise_sd(self, noise_sd: float) -> None:
        """Condition the following ``forward`` calls on noise of standard deviation ``noise_sd``.

        Called by the runner with the call's σ (a float in (0, 1], [0, 1] pixel units) before
        each denoising pass of a noisy phase; never with 0 (clean queries skip the denoiser).
        The default does nothing: a denoiser trained for one σ ignores it. A σ-conditioned
        denoiser overrides it (typically storing σ in ``self.noise_sd`` for its noise map) and
        declares ``noise_sd_range``. It must not change the weights or ``config()``: σ is
        recorded in the log with every call, separately from the denoiser's digest.
        """

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`DenoiserError` unless ``x`` is a float [B, C, H, W] batch with C channels."""
        if x.ndim != 4 or x.shape[1] != self.image_channels:
            raise DenoiserError(
                f"{type(self).__name__} expects [B, {self.image_channels}, H, W] input, got {tuple(x.shape)}; "
                f"use a denoiser trained for {x.shape[1] if x.ndim == 4 else '?'}-channel images"
            )
        if not x.is_floating_point():
            raise DenoiserError(f"{type(self).__name__} expects a float tensor, got {x.dtype}")
