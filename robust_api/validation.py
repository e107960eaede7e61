"""Parameter checks shared by the API, the statistics core and the CLI (pure, no I/O).

Each check returns the normalized value or raises :class:`InvalidParameterError` with a
message that says what is allowed.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from .errors import InvalidParameterError

__all__ = ["check_alpha", "check_noise_sd", "check_sample_count", "check_seed", "check_radius", "MAX_SEED"]

#: Seeds live in [0, 2⁶³) so that they fit SQLite's signed 64-bit integers.
MAX_SEED = 2**63 - 1


def _is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_alpha(alpha: Any) -> float:
    """α in the open interval (0, 1), as float."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(float(alpha)):
        raise InvalidParameterError(f"alpha must be a float in (0, 1), got {alpha!r}")
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise InvalidParameterError(
            f"alpha must be in the open interval (0, 1), got {alpha!r}; typical values are 0.001 or 0.01"
        )
    return alpha


def check_noise_sd(noise_sd: Any, allow_zero: bool) -> float:
    """σ in [0, 1] pixel units: > 0 to certify (``allow_zero=False``), ≥ 0 to predict."""
    if noise_sd is None:
        raise InvalidParameterError("noise_sd is required, e.g. noise_sd=0.25 (std of the noise on [0, 1] pixels)")
    if isinstance(noise_sd, bool) or not isinstance(noise_sd, Real) or not math.isfinite(float(noise_sd)):
        raise InvalidParameterError(f"noise_sd must be a finite number, got {noise_sd!r}")
    noise_sd = float(noise_sd)
    if noise_sd < 0 or (noise_sd == 0 and not allow_zero):
        allowed = ">= 0 (0 = one clean query per sample)" if allow_zero else "> 0 to certify (radius is 0 without noise)"
        raise InvalidParameterError(f"noise_sd must be {allowed}, got {noise_sd!r}")
    if noise_sd > 1.0:
        raise InvalidParameterError(
            f"noise_sd is in [0, 1] pixel units and must be <= 1, got {noise_sd!r}; for 0..255 images divide by 255"
        )
    return noise_sd


def check_sample_count(value: Any, name: str) -> int:
    """A positive integer sample count (N, N0)."""
    if not _is_integer(value):
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < 1:
        raise InvalidParameterError(f"{name} must be >= 1, got {value}")
    return value


def check_seed(seed: Any) -> int:
    """A seed in [0, 2⁶³ − 1]."""
    if not _is_integer(seed) or not 0 <= int(seed) <= MAX_SEED:
        raise InvalidParameterError(f"seed must be an integer in [0, 2**63 - 1] or None, got {seed!r}")
    return int(seed)


def check_radius(radius: Any) -> Any:
    """A target radius: None, or a positive finite number (as float)."""
    if radius is None:
        return None
    if isinstance(radius, bool) or not isinstance(radius, Real) or not 0 < float(radius) < math.inf:
        raise InvalidParameterError(f"radius must be a positive number or None, got {radius!r}")
    return float(radius)
