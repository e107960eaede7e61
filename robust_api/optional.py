"""Optional dependencies: one place that says what to install when one is missing.

PyTorch (with safetensors) is the ``[torch]`` extra: denoisers, local PyTorch models and the
bundled classifier need it; cloud providers, callables, emulators, offline re-certification
and analysis do not.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["TORCH_INSTALL", "require_torch", "has_torch"]

#: The install command named in every "PyTorch is missing" error.
TORCH_INSTALL = "pip install 'robust-api[torch]'"
_TORCH_EXTRA = ("torch", "safetensors")


def has_torch() -> bool:
    """True when PyTorch and safetensors (the ``[torch]`` extra) are installed, found without
    importing them."""
    return all(importlib.util.find_spec(module) is not None for module in _TORCH_EXTRA)


def require_torch(purpose: str) -> ModuleType:
    """The ``torch`` module; raises MissingDependencyError naming the extra when it (or
    safetensors, which every weight file here uses) is not installed.

    Args:
        purpose: what needs it, for the message (e.g. ``"the denoiser 'photo-0.25'"``).
    """
    for module in _TORCH_EXTRA:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(
                f"{purpose} needs PyTorch and safetensors ({module} is not installed): {TORCH_INSTALL}, "
                "or install a PyTorch build for your machine first (https://pytorch.org) and then "
                "pip install safetensors. Cloud providers, callables, offline re-certification and "
                "analysis work without it."
            ) from exc
    return importlib.import_module("torch")
