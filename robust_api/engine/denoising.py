"""The denoiser seam: the one place the engine talks to a denoiser (or to none).

Whatever the user passes as ``denoiser=`` (a shipped name, a file, a ``torch.nn.Module``, a
function on NumPy batches) becomes one object with one contract: float32 [B, H, W, C] noisy
copies and σ in, float32 [B, H, W, C] in [0, 1] out, plus what the log records about it
(``identity``, ``digest``, how its input is prepared) and what the memory planner needs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

from ..errors import DenoiserError, InvalidParameterError, RobustAPIError
from ..memory import activation_bytes_for
from ..noise import clips_noisy_copies
from ..query_logs.records import PREPROCESSING_CLIPPED, PREPROCESSING_UNCLIPPED

__all__ = ["CallableDenoiser", "Denoising", "make_denoiser"]

logger = logging.getLogger(__name__)


class CallableDenoiser:
    """A plain function float32 [B, H, W, C] → same shape, checked on every batch.

    Its input is the unclipped noisy copies x + σ·z (values outside [0, 1]); its output is
    clipped to [0, 1] here, and that is what the classifier gets.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]):
        self.fn = fn
        module = getattr(fn, "__module__", None) or type(fn).__module__
        self.identity = f"callable:{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        self.digest = None
        self.noisy_input = "unclipped"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(images), dtype=np.float32)
        if out.shape != images.shape:
            raise DenoiserError(f"denoiser {self.identity} returned shape {out.shape} for input {images.shape}")
        if not np.all(np.isfinite(out)):
            raise DenoiserError(f"denoiser {self.identity} returned NaN or infinite values")
        return np.clip(out, 0.0, 1.0)


def _is_torch_module(value: Any) -> bool:
    """True for a ``torch.nn.Module`` (without importing torch when no module could be one)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def make_denoiser(denoiser: Any, device: Any):
    """The runner for ``denoiser=``: None; a ``ModuleDenoiser`` for a shipped name, a file or a
    ``torch.nn.Module``; a :class:`CallableDenoiser` for a function on NumPy batches.

    Raises:
        MissingDependencyError: a name or file without PyTorch installed (names the extra).
        InvalidParameterError: anything else.
    """
    if denoiser is None:
        return None
    if isinstance(denoiser, (str, os.PathLike)):
        from ..optional import require_torch

        require_torch(f"the denoiser {os.fspath(denoiser)!r}")
        from ..denoisers.loading import load_denoiser

        denoiser = load_denoiser(denoiser, device=device)
    if _is_torch_module(denoiser):
        from ..torch_utils import ModuleDenoiser

        return ModuleDenoiser(denoiser, device=device)
    if callable(denoiser) and not isinstance(denoiser, (str, bytes)):
        return CallableDenoiser(denoiser)
    raise InvalidParameterError(
        f"denoiser must be None, a shipped name (robust_api.denoisers.available()), a path, a torch.nn.Module "
        f"([B, C, H, W] in [0, 1] -> same) or a callable on float32 [B, H, W, C] arrays; got {type(denoiser).__name__}"
    )


class Denoising:
    """What the engine needs from its denoiser (``runner`` None: no denoiser).

    Args:
        runner: what :func:`make_denoiser` returned.
        memory_limit: the engine's host-memory budget in bytes; a torch denoiser on the CPU
            gets a share of it for its activations (see :attr:`noise_budget`).
    """

    def __init__(self, runner: Any, memory_limit: int):
        self.runner = runner
        self._lock = threading.Lock()
        self.noise_budget = memory_limit
        if getattr(runner, "device", None) is not None and runner.device.type == "cpu" \
                and hasattr(runner, "activation_bytes"):
            # one denoiser batch runs at a time (the lock): its activations get one share
            runner.activation_bytes = activation_bytes_for(memory_limit)
            self.noise_budget -= runner.activation_bytes

    @property
    def present(self) -> bool:
        return self.runner is not None

    @property
    def identity(self) -> Optional[str]:
        return getattr(self.runner, "identity", None)

    @property
    def digest(self) -> Optional[str]:
        return getattr(self.runner, "digest", None)

    @property
    def clips_noisy_copies(self) -> bool:
        """True when the noisy copies are clipped to [0, 1] before anything uses them: without a
        denoiser, or for one trained on clipped copies (``noisy_input == "clipped"``)."""
        return clips_noisy_copies(self.runner)

    @property
    def preprocessing(self) -> str:
        """The log's name for how noisy copies are prepared (``CallHeader.preprocessing``)."""
        return PREPROCESSING_CLIPPED if self.clips_noisy_copies else PREPROCESSING_UNCLIPPED

    @property
    def copies_in_memory(self) -> int:
        """Float32 copies of a block the denoiser path holds besides the noisy one (memory plan)."""
        if self.runner is None:
            return 0
        return 2 if hasattr(self.runner, "activation_bytes") else 3

    def check_fits(self, image: np.ndarray, noise_sd: float) -> None:
        """Raise DenoiserError when the image's channels do not suit the denoiser; warn
        (:class:`~robust_api.errors.DenoiserNoiseLevelWarning`, once per σ) when σ is not
        one it was trained for."""
        channels = getattr(self.runner, "image_channels", None)
        if channels is not None and image.shape[-1] != channels:
            raise DenoiserError(
                f"denoiser {self.identity} takes {channels}-channel images but the image has "
                f"{image.shape[-1]} channels; use a denoiser for {image.shape[-1]}-channel images"
            )
        warn_if_untrained = getattr(self.runner, "warn_if_untrained", None)
        if warn_if_untrained is not None and noise_sd > 0:
            warn_if_untrained(noise_sd)

    def check_tiles(self, image_shape: tuple) -> None:
        """Raise DenoiserError when the image cannot be denoised even in tiles."""
        tile_size = getattr(self.runner, "tile_size", None)
        if tile_size is not None:
            tile_size(image_shape)

    def __call__(self, images: np.ndarray, noise_sd: float) -> np.ndarray:
        """The denoiser on noisy copies (float32 [B, H, W, C], unclipped unless it was trained
        on clipped ones) of noise level ``noise_sd`` > 0; returns float32 [B, H, W, C] in
        [0, 1]. A σ-conditioned denoiser is told σ first (``set_noise_sd``), under the same
        lock as the pass it conditions (a user's denoiser need not be thread-safe)."""
        set_noise_sd = getattr(self.runner, "set_noise_sd", None)
        try:
            with self._lock:
                if set_noise_sd is not None:
                    set_noise_sd(noise_sd)
                return self.runner(images)
        except RobustAPIError:
            raise
        except Exception as exc:
            raise DenoiserError(f"the denoiser failed: {type(exc).__name__}: {exc}") from exc
