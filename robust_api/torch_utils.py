"""Small PyTorch helpers shared by the local provider and denoisers (torch imported lazily)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import numpy as np

from .errors import InvalidParameterError

__all__ = ["resolve_device", "read_safetensors", "state_dict_digest", "ModuleDenoiser", "denoiser_chunk_size"]


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


def read_safetensors(path, expected_format: str, error: type, hint: str):
    """(metadata dict, CPU state dict) of a robust_api safetensors file whose ``format`` metadata
    is ``expected_format``; anything else raises ``error`` with the file name and ``hint``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    name = os.fspath(path)
    try:
        with safe_open(name, framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(name, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{name!r} is not a readable safetensors file ({exc})") from None
    if metadata.get("format") != expected_format:
        raise error(f"{name!r} has no {expected_format} metadata (format={metadata.get('format')!r}); {hint}")
    return metadata, state


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

    Batches are cut into chunks that fit the device (see :func:`denoiser_chunk_size`). On CUDA
    the module runs in channels_last memory format under autocast (bfloat16 where the GPU
    supports it, else float16); on CPU in float32.

    Args:
        module: the denoiser; put in eval mode and moved to ``device``.
        device: None (CUDA when available, else CPU), or anything ``torch.device`` takes.
        mixed_precision: None = autocast on CUDA only; False = always float32.

    Attributes:
        identity: ``"denoiser:<shipped name>"`` or ``"module:<class path>"``.
        digest: hex SHA-256 of the weights, the module's ``config()`` if it has one, and the
            autocast precision if any; recorded in the query log with every call, so logged
            answers are reused only for the same denoiser run the same way.
        noise_sd: the σ the module says it was trained for, or None.
        image_channels: the channel count the module accepts, or None (any / unknown).
    """

    def __init__(self, module, device: Any = None, mixed_precision: Optional[bool] = None):
        import torch

        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        name = (getattr(module, "metadata", None) or {}).get("name")
        self.identity = f"denoiser:{name}" if name else f"module:{type(module).__module__}.{type(module).__qualname__}"
        self.noise_sd = getattr(module, "noise_sd", None)
        self.image_channels = getattr(module, "image_channels", None)
        self.autocast_dtype = None
        if self.device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)
            if mixed_precision is not False:
                self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Reduced precision is a (slightly) different base classifier: a call logged in float32
        # must not be resumed with bfloat16 votes, so the precision is part of the digest.
        config = module.config() if callable(getattr(module, "config", None)) else None
        parts = [state_dict_digest(module), json.dumps(config, sort_keys=True), str(self.autocast_dtype)]
        self.digest = hashlib.sha256("|".join(parts).encode()).hexdigest()
        self._torch = torch

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Denoise float32 [B, H, W, C] in [0, 1]; returns float32 [B, H, W, C] clamped to [0, 1]."""
        torch = self._torch
        chunk = denoiser_chunk_size(self.module, images.shape[1:], self.device)
        outputs = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], chunk):
                batch = nhwc_to_tensor(images[start : start + chunk], self.device)
                if self.autocast_dtype is not None:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                    with torch.autocast("cuda", dtype=self.autocast_dtype):
                        out = self.module(batch)
                else:
                    out = self.module(batch)
                outputs.append(out.float().clamp_(0.0, 1.0).permute(0, 2, 3, 1).to("cpu").numpy())
        return np.concatenate(outputs)


#: Memory a denoiser chunk may use for activations: a share of free CUDA memory, or this on CPU.
CPU_ACTIVATION_BYTES = 1 << 30
CUDA_FREE_MEMORY_SHARE = 0.5


def denoiser_chunk_size(module, image_shape, device) -> int:
    """Images per denoiser forward pass: activations of the widest layer, times 4 live copies,
    in float32, must fit ``CPU_ACTIVATION_BYTES`` (CPU) or half the free CUDA memory.

    Args:
        module: the denoiser; its ``activation_channels`` attribute (default 64) is the width.
        image_shape: (H, W, C) of one image.
        device: the ``torch.device`` it runs on.

    Returns:
        An int ≥ 1.
    """
    import torch

    height, width = int(image_shape[0]), int(image_shape[1])
    per_image = height * width * int(getattr(module, "activation_channels", 64)) * 4 * 4
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * CUDA_FREE_MEMORY_SHARE)
    else:
        budget = CPU_ACTIVATION_BYTES
    return max(1, budget // max(per_image, 1))
