"""Small PyTorch helpers shared by the local provider and denoisers (torch imported lazily)."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np

from .errors import InvalidParameterError

__all__ = ["resolve_device", "state_dict_digest", "ModuleDenoiser"]


def resolve_device(device: Any = None):
    """A ``torch.device``: the one given, else CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError(f"invalid device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return resolved


def state_dict_digest(module) -> str:
    """Hex SHA-256 over a module's state_dict (names, dtypes, shapes and values, sorted by name)."""
    import torch

    hasher = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().view(-1)
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if flat.numel():
            hasher.update(flat.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def nhwc_to_tensor(images: np.ndarray, device):
    """float32 NumPy [B, H, W, C] -> torch float32 [B, C, H, W] on ``device``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)


class ModuleDenoiser:
    """Run a ``torch.nn.Module`` denoiser ([B, C, H, W] in [0, 1] → same) on NumPy NHWC batches.

    Args:
        module: the denoiser; put in eval mode and moved to ``device``.
        device: None (CUDA when available, else CPU), or anything ``torch.device`` takes.
    """

    def __init__(self, module, device: Any = None):
        import torch

        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.identity = f"module:{type(module).__module__}.{type(module).__qualname__}"
        self.digest = state_dict_digest(module)
        self._torch = torch

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Denoise float32 [B, H, W, C] in [0, 1]; returns float32 [B, H, W, C] clamped to [0, 1]."""
        torch = self._torch
        with torch.inference_mode():
            out = self.module(nhwc_to_tensor(images, self.device)).clamp_(0.0, 1.0)
        return out.permute(0, 2, 3, 1).to("cpu", torch.float32).numpy()
