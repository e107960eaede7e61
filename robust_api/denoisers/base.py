"""The denoiser contract and the registry of architectures.

A denoiser is a ``torch.nn.Module`` whose ``forward(x)`` takes a float tensor of shape
[B, C, H, W] with values in [0, 1] (a batch of noisy images, Gaussian noise of standard
deviation ``noise_sd`` already added and clipped) and returns a tensor of the same shape,
the estimate of the clean images. Outputs may stray slightly outside [0, 1]; the runner
(:class:`robust_api.torch_utils.ModuleDenoiser`) clamps them. Every architecture in this
package subclasses :class:`DenoiserModule`, which adds what the SDK needs around ``forward``:
the number of image channels, the noise level it was trained for and a JSON-able
``config()`` that rebuilds the same architecture.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ..errors import DenoiserError

__all__ = ["DenoiserModule", "register_architecture", "build_architecture", "architecture_names"]

_ARCHITECTURES: Dict[str, Callable[..., "DenoiserModule"]] = {}


class DenoiserModule(nn.Module):
    """Base class of the denoiser architectures: [B, C, H, W] in [0, 1] → same shape.

    Attributes:
        arch: registry name of the architecture (class attribute).
        image_channels: C, the number of image channels it accepts (1 = gray, 3 = RGB; None = any).
        noise_sd: the Gaussian noise standard deviation σ (in [0, 1] pixel units) the weights
            were trained for, or None when unknown (random weights, a foreign checkpoint).
        activation_channels: the widest feature map, in channels; used to size batches.
    """

    arch: str = ""
    activation_channels: int = 64

    def __init__(self, image_channels: int):
        super().__init__()
        if image_channels not in (1, 3):
            raise DenoiserError(f"image_channels must be 1 (gray) or 3 (RGB), got {image_channels!r}")
        self.image_channels = int(image_channels)
        self.noise_sd: Optional[float] = None

    def config(self) -> Dict[str, Any]:
        """Constructor arguments (JSON-able) that rebuild this architecture with fresh weights."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`DenoiserError` unless ``x`` is a float [B, C, H, W] batch with C channels."""
        if x.ndim != 4 or x.shape[1] != self.image_channels:
            raise DenoiserError(
                f"{type(self).__name__} expects [B, {self.image_channels}, H, W] input, got {tuple(x.shape)}; "
                f"use a denoiser trained for {x.shape[1] if x.ndim == 4 else '?'}-channel images"
            )
        if not x.is_floating_point():
            raise DenoiserError(f"{type(self).__name__} expects a float tensor in [0, 1], got {x.dtype}")


def register_architecture(name: str):
    """Class decorator: make ``build_architecture(name, **config)`` construct this class."""

    def decorate(cls):
        cls.arch = name
        _ARCHITECTURES[name] = cls
        return cls

    return decorate


def architecture_names() -> list:
    """Sorted names accepted by :func:`build_architecture`."""
    _import_all()
    return sorted(_ARCHITECTURES)


def build_architecture(name: str, **config: Any) -> DenoiserModule:
    """A fresh (randomly initialised) denoiser of architecture ``name``.

    Raises:
        DenoiserError: unknown name or arguments that do not fit it.
    """
    _import_all()
    try:
        cls = _ARCHITECTURES[name]
    except KeyError:
        raise DenoiserError(
            f"unknown denoiser architecture {name!r}; known: {', '.join(sorted(_ARCHITECTURES))}"
        ) from None
    try:
        return cls(**config)
    except TypeError as exc:
        raise DenoiserError(f"bad configuration for denoiser architecture {name!r}: {exc}") from None


def _import_all() -> None:
    from . import classical, dncnn, drunet, memnet  # noqa: F401  (registration side effect)
