"""Small PyTorch helpers shared by the local provider and denoisers (torch imported lazily)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from typing import Any, Optional

import numpy as np

from .errors import DenoiserError, DenoiserNoiseLevelWarning, InvalidParameterError
from .noise import noisy_input_of, sigma_mismatch
from .optional import require_torch

__all__ = [
    "resolve_device",
    "read_safetensors",
    "state_dict_digest",
    "ModuleDenoiser",
    "denoiser_chunk_size",
    "receptive_radius",
    "activation_bytes_per_pixel",
]


def resolve_device(device: Any = None):
    """A ``torch.device``: the one given, else CUDA when available, else CPU."""
    torch = require_torch(f"device={device!r}" if device is not None else "a PyTorch model or denoiser")

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
    """Run a ``torch.nn.Module`` denoiser ([B, C, H, W] noisy → same, see
    :mod:`robust_api.denoisers.base`) on NumPy NHWC batches.

    Batches are cut into chunks whose activations fit the device's activation budget (see
    :func:`denoiser_chunk_size`). An image too large for the budget on its own is denoised in
    spatial tiles, each extended on every side by the module's receptive radius (the pixels
    an output pixel depends on), so that every output pixel sees exactly the input it sees
    untiled: the result equals the untiled one up to float rounding (the convolution kernels
    may accumulate in another order on another tile size). A module whose receptive radius
    is unknown is not tiled: it raises :class:`DenoiserError` saying what to do. On CUDA the
    module runs in channels_last memory format under autocast (bfloat16 where the GPU
    supports it, else float16); on CPU in float32.

    Args:
        module: the denoiser; put in eval mode and moved to ``device``.
        device: None (CUDA when available, else CPU), or anything ``torch.device`` takes.
        mixed_precision: None = autocast on CUDA only; False = always float32.
        activation_bytes: bytes the activations of one forward pass may take on the CPU
            (default :data:`CPU_ACTIVATION_BYTES`); on CUDA half the free GPU memory.

    Attributes:
        identity: ``"denoiser:<shipped name>"`` or ``"module:<class path>"``.
        digest: hex SHA-256 of the weights, the module's ``config()`` if it has one, and the
            autocast precision if any; recorded in the query log with every call, so logged
            answers are reused only for the same denoiser run the same way.
        noise_sd: the σ the module says it was trained for (at load time), or None.
        noise_sd_range: (lo, hi) for a σ-conditioned module, else None.
        noisy_input: "unclipped" (the module gets x + σ·z) or "clipped" (it was trained on
            clip(x + σ·z, 0, 1), so it gets that); see :data:`robust_api.denoisers.base.NOISY_INPUTS`.
        image_channels: the channel count the module accepts, or None (any / unknown).
        receptive_radius: see :func:`receptive_radius` (None: the module cannot be tiled),
            rounded up to a multiple of the module's ``tile_multiple`` (default 1; FFDNet's 2:
            tiles then start on its 2×2 pixel-unshuffle grid and match the untiled result).
        tiles_run: forward passes run on tiles so far (a counter, for tests and benchmarks).
    """

    def __init__(self, module, device: Any = None, mixed_precision: Optional[bool] = None,
                 activation_bytes: Optional[int] = None):
        import torch

        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        name = (getattr(module, "metadata", None) or {}).get("name")
        self.identity = f"denoiser:{name}" if name else f"module:{type(module).__module__}.{type(module).__qualname__}"
        self.noise_sd = getattr(module, "noise_sd", None)
        self.noise_sd_range = _checked_noise_sd_range(module)
        self.fine_tuned_noise_sd = getattr(module, "fine_tuned_noise_sd", None) if self.noise_sd_range else None
        self.noisy_input = noisy_input_of(module)
        self._warned_noise_sds: set = set()
        self._warn_lock = threading.Lock()
        self.image_channels = getattr(module, "image_channels", None)
        self.activation_bytes = activation_bytes
        # a module that regroups pixels (FFDNet's 2×2 pixel unshuffle) declares tile_multiple:
        # tiles then start and extend on that grid, so they see the pixels grouped as untiled
        self.tile_multiple = int(getattr(module, "tile_multiple", 1) or 1)
        radius = receptive_radius(module)
        self.receptive_radius = None if radius is None else -(-radius // self.tile_multiple) * self.tile_multiple
        self.tiles_run = 0
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

    def set_noise_sd(self, noise_sd: float) -> None:
        """Pass the call's σ (> 0) to the module's ``set_noise_sd`` when it has one (a
        σ-conditioned denoiser); RobustAPI calls it before each denoising pass."""
        set_noise_sd = getattr(self.module, "set_noise_sd", None)
        if callable(set_noise_sd):
            set_noise_sd(float(noise_sd))

    def warn_if_untrained(self, noise_sd: float) -> bool:
        """Warn (:class:`DenoiserNoiseLevelWarning`, once per σ for this runner) when the module
        is used at a σ it was not trained for: outside ``noise_sd_range`` for a σ-conditioned
        module (or more than ``NOISE_SD_TOLERANCE`` from the σ it was fine-tuned for, if any),
        else more than ``NOISE_SD_TOLERANCE`` (relative) from its ``noise_sd``. Nothing when
        neither is known. Returns True when it warned now."""
        noise_sd = float(noise_sd)
        mismatch = sigma_mismatch(self, noise_sd)
        if mismatch is None:
            return False
        trained = mismatch.text
        with self._warn_lock:
            if noise_sd in self._warned_noise_sds:
                return False
            self._warned_noise_sds.add(noise_sd)
        warnings.warn(
            f"denoiser {self.identity} was {trained} but is used at noise_sd={noise_sd:g}; the certificate stays "
            "valid but is likely weaker than with a denoiser trained for this σ (robust_api.denoisers.available())",
            DenoiserNoiseLevelWarning, stacklevel=2,
        )
        return True

    def _budget(self) -> int:
        if self.device.type == "cuda":
            free, _ = self._torch.cuda.mem_get_info(self.device)
            return int(free * CUDA_FREE_MEMORY_SHARE)
        return int(CPU_ACTIVATION_BYTES if self.activation_bytes is None else self.activation_bytes)

    def _forward(self, batch: np.ndarray) -> "Any":
        """The module on float32 NHWC ``batch``; returns a float32 NHWC CPU tensor in [0, 1]."""
        torch = self._torch
        tensor = nhwc_to_tensor(batch, self.device)
        if self.autocast_dtype is not None:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                result = self.module(tensor)
        else:
            result = self.module(tensor)
        if tuple(result.shape) != tuple(tensor.shape):
            raise DenoiserError(
                f"denoiser {self.identity} returned shape {tuple(result.shape)} for input {tuple(tensor.shape)}"
            )
        return result.float().clamp_(0.0, 1.0).permute(0, 2, 3, 1).to("cpu")

    def __call__(self, images: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Denoise float32 [B, H, W, C] noisy copies (unclipped: any finite values; clipped ones
        for a ``noisy_input == "clipped"`` module, which the caller provides); returns float32
        [B, H, W, C] clamped to [0, 1].

        Args:
            out: optional float32 array of the same shape to write into (default: a new one).
        """
        torch = self._torch
        if out is None:
            out = np.empty(images.shape, dtype=np.float32)
        budget = self._budget()
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        per_pixel = activation_bytes_per_pixel(self.module)
        with torch.inference_mode():
            if height * width * per_pixel <= budget:
                chunk = max(1, budget // max(1, height * width * per_pixel))
                for start in range(0, count, chunk):
                    out[start : start + chunk] = self._forward(images[start : start + chunk]).numpy()
                return out
            self._tiled(images, out, budget, per_pixel)
        return out

    def tile_size(self, image_shape, budget: Optional[int] = None) -> int:
        """The interior side of the square tiles for images of ``image_shape`` (H, W, C)
        (0: untiled). Raises DenoiserError when tiling is impossible under the budget."""
        budget = self._budget() if budget is None else int(budget)
        per_pixel = activation_bytes_per_pixel(self.module)
        height, width = int(image_shape[0]), int(image_shape[1])
        if height * width * per_pixel <= budget:
            return 0
        need_mb = height * width * per_pixel / 2**20
        radius = self.receptive_radius
        if radius is None:
            raise DenoiserError(
                f"denoiser {self.identity} needs about {need_mb:,.0f} MB of activations for one {height}×{width} "
                f"image but its budget is {budget / 2**20:,.0f} MB, and its receptive radius is unknown, so it "
                "cannot be run in tiles. Raise memory_limit_mb= (a quarter of it goes to the denoiser on the CPU), "
                "pass downscale=True with a smaller max_pixels=, or set module.receptive_radius = <pixels an "
                "output pixel depends on, on each side> if you know it"
            )
        side = math.isqrt(max(0, budget // per_pixel))
        interior = side - 2 * radius
        interior -= interior % self.tile_multiple
        if interior < max(8, radius):
            raise DenoiserError(
                f"denoiser {self.identity}: a tile of {side}×{side} pixels fits the activation budget of "
                f"{budget / 2**20:,.1f} MB, too small for its receptive radius of {radius} pixels; raise memory_limit_mb="
            )
        return interior

    def _tiled(self, images: np.ndarray, out: np.ndarray, budget: int, per_pixel: int) -> None:
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        interior = self.tile_size(images.shape[1:], budget)
        radius = self.receptive_radius
        for top in range(0, height, interior):
            bottom = min(height, top + interior)
            ext_top, ext_bottom = max(0, top - radius), min(height, bottom + radius)
            for left in range(0, width, interior):
                right = min(width, left + interior)
                ext_left, ext_right = max(0, left - radius), min(width, right + radius)
                tile_pixels = (ext_bottom - ext_top) * (ext_right - ext_left)
                chunk = max(1, budget // max(1, tile_pixels * per_pixel))
                for start in range(0, count, chunk):
                    stop = min(count, start + chunk)
                    result = self._forward(images[start:stop, ext_top:ext_bottom, ext_left:ext_right])
                    self.tiles_run += 1
                    out[start:stop, top:bottom, left:right] = result[
                        :, top - ext_top : bottom - ext_top, left - ext_left : right - ext_left
                    ].numpy()


def _checked_noise_sd_range(module) -> Optional[tuple]:
    """``module.noise_sd_range`` as a (lo, hi) tuple of floats with 0 ≤ lo < hi ≤ 1, or None."""
    declared = getattr(module, "noise_sd_range", None)
    if declared is None:
        return None
    try:
        low, high = (float(v) for v in declared)
    except (TypeError, ValueError):
        low = high = math.nan
    if not 0.0 <= low < high <= 1.0:
        raise DenoiserError(
            f"{type(module).__name__}.noise_sd_range must be None or (lo, hi) with 0 <= lo < hi <= 1 "
            f"(the σ the weights were trained on), got {declared!r}"
        )
    return (low, high)


def receptive_radius(module) -> Optional[int]:
    """Pixels, on each side, that one output pixel of a denoiser depends on; None if unknown.

    ``module.receptive_radius`` when the module declares it (an int ≥ 0). Otherwise, for the
    shipped stride-1 convolutional architectures (DnCNN, MemNet: convolutions with "same"
    zero padding, pointwise layers, residual sums and channel concatenations only), the
    sum of the convolutions' radii, an upper bound on any path's. None for everything else
    (DRUNet's down/up-sampling and padding to multiples of 8, non-local means, user modules).
    """
    declared = getattr(module, "receptive_radius", None)
    if declared is not None:
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 0:
            raise DenoiserError(f"receptive_radius must be a non-negative int (pixels), got {declared!r}")
        return declared
    try:
        from torch import nn

        from .denoisers.dncnn import DnCNN
        from .denoisers.memnet import MemNet
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if type(module) not in (DnCNN, MemNet):
        return None
    radius = 0
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            kernel, dilation, stride, padding = layer.kernel_size, layer.dilation, layer.stride, layer.padding
            reach = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
            if any(s != 1 for s in stride) or any(k % 2 == 0 for k in kernel) or list(padding) != reach:
                return None
            radius += max(reach)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d, nn.Upsample, nn.ConvTranspose2d, nn.AdaptiveAvgPool2d)):
            return None
    return radius


#: Activation bytes per pixel and feature channel: float32, about four feature maps alive at
#: once (measured with tracemalloc/RSS on DnCNN-17/64 in benchmarks/memory.py).
BYTES_PER_ACTIVATION_CHANNEL = 16


def activation_bytes_per_pixel(module) -> int:
    """Activation bytes per image pixel of ``module``'s forward pass: its
    ``activation_channels`` (default 64) × :data:`BYTES_PER_ACTIVATION_CHANNEL`."""
    return int(getattr(module, "activation_channels", 64)) * BYTES_PER_ACTIVATION_CHANNEL


#: Memory a denoiser chunk may use for activations: a share of free CUDA memory, or this on CPU.
CPU_ACTIVATION_BYTES = 1 << 30
CUDA_FREE_MEMORY_SHARE = 0.5


def denoiser_chunk_size(module, image_shape, device, budget: Optional[int] = None) -> int:
    """Images per denoiser forward pass: activations of the widest layer, times 4 live copies,
    in float32, must fit ``budget`` (default: ``CPU_ACTIVATION_BYTES`` on the CPU, half the
    free CUDA memory on a GPU).

    Args:
        module: the denoiser; its ``activation_channels`` attribute (default 64) is the width.
        image_shape: (H, W, C) of one image.
        device: the ``torch.device`` it runs on.
        budget: activation bytes allowed (None: the device default above).

    Returns:
        An int ≥ 1 (1 also when one image alone exceeds the budget: :class:`ModuleDenoiser`
        then tiles it).
    """
    import torch

    height, width = int(image_shape[0]), int(image_shape[1])
    per_image = height * width * activation_bytes_per_pixel(module)
    if budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(free * CUDA_FREE_MEMORY_SHARE)
        else:
            budget = CPU_ACTIVATION_BYTES
    return max(1, int(budget) // max(per_image, 1))
