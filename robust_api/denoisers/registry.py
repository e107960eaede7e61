"""Denoiser architectures by name: the built-in ones, imported on first use, and any a user registers.

The built-in architecture modules do not import this one (no import cycle): the table below
names them, and :func:`build_architecture` imports the one it needs.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..errors import DenoiserError
from .base import DenoiserModule

__all__ = [
    "register_architecture", "build_architecture", "architecture_names", "architecture_class", "denoiser_from_state_dict",
]

#: Built-in architectures: name → "module:class" inside robust_api.denoisers.
_BUILT_IN = {
    "nl-means": "classical:NonLocalMeans",
    "dncnn": "dncnn:DnCNN",
    "drunet": "drunet:DRUNet",
    "ffdnet": "ffdnet:FFDNet",
    "memnet": "memnet:MemNet",
    "photonet": "photonet:PhotoNet",
}
_REGISTERED: Dict[str, Callable[..., DenoiserModule]] = {}


def register_architecture(name: str):
    """Class decorator: make ``build_architecture(name, **config)`` construct this class
    (a :class:`DenoiserModule` subclass); sets its ``arch`` to ``name``."""

    def decorate(cls):
        cls.arch = name
        _REGISTERED[name] = cls
        return cls

    return decorate


def architecture_names() -> list:
    """Sorted names accepted by :func:`build_architecture`."""
    return sorted(set(_BUILT_IN) | set(_REGISTERED))


def architecture_class(name: str) -> Callable[..., DenoiserModule]:
    """The class registered under ``name``; DenoiserError naming the known ones otherwise."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILT_IN.get(name) if isinstance(name, str) else None
    if target is None:
        raise DenoiserError(f"unknown denoiser architecture {name!r}; known: {', '.join(architecture_names())}")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attribute)


def build_architecture(name: str, **config: Any) -> DenoiserModule:
    """A fresh (randomly initialised) denoiser of architecture ``name``.

    Raises:
        DenoiserError: unknown name or arguments that do not fit it.
    """
    cls = architecture_class(name)
    try:
        return cls(**config)
    except TypeError as exc:
        raise DenoiserError(f"bad configuration for denoiser architecture {name!r}: {exc}") from None


def denoiser_from_state_dict(arch: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                             *, noise_sd: Optional[float] = None, source: str = "state_dict") -> DenoiserModule:
    """Build architecture ``arch`` with ``config`` and load ``state_dict`` strictly (eval mode, CPU).

    Raises:
        DenoiserError: unknown architecture, or keys/shapes that do not match (the message lists
            the first missing and unexpected keys).
    """
    if not isinstance(config, Mapping):
        raise DenoiserError(f"{source}: the architecture configuration must be a JSON object, got {config!r}")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DenoiserError(f"{source}: state_dict entries must be tensors; {bad[:4]} are not")
    module = build_architecture(arch, **dict(config))
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise DenoiserError(
            f"{source} does not fit architecture {arch!r} {dict(config)}: "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}"
        )
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise DenoiserError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)} but architecture {arch!r} "
                f"{dict(config)} needs {tuple(expected[key].shape)} (wrong channel count or width?)"
            )
    module.load_state_dict(state_dict, strict=True)
    module.noise_sd = noise_sd
    if module.noise_sd_range is not None:
        module.fine_tuned_noise_sd = noise_sd
    return module.eval()
