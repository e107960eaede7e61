"""Parameter checks shared by the API, the statistics core and the CLI (pure, no I/O).

Each check returns the normalized value or raises :class:`InvalidParameterError` with a
message that says what is allowed.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from .errors import InvalidParameterError

__all__ = [
    "check_alpha", "check_noise_sd", "check_sample_count", "check_seed", "check_radius", "check_count", "check_flag",
    "check_rate_limit", "check_choice", "check_text", "MAX_TEXT_CHARS", "MAX_SEED", "MAX_SAMPLES", "MAX_BATCH_SIZE", "MAX_CONCURRENCY",
    "MAX_ATTEMPTS", "MAX_BACKOFF_S", "MIN_RATE_LIMIT", "MAX_TOTAL_QUERIES",
]

#: The longest image name or tag a call records (characters).
MAX_TEXT_CHARS = 1_000

#: Seeds live in [0, 2⁶³) so that they fit SQLite's signed 64-bit integers.
MAX_SEED = 2**63 - 1

#: The most samples one call may take in one phase (N, N0): ten million queries. The online
#: path keeps one record per sample in memory (a few hundred bytes each: 10⁷ take gigabytes),
#: so a mistyped N (10**12) would exhaust memory, or a budget, long before it finished; Cohen
#: et al. used N = 100,000.
MAX_SAMPLES = 10_000_000

#: The most queries ``certify_batch`` may share out (it allocates nothing per query).
MAX_TOTAL_QUERIES = 10**12

#: The most images one provider request may carry (``batch_size``).
MAX_BATCH_SIZE = 65_536

#: The most requests in flight (``concurrency``) and images in progress (``parallel``): one
#: worker thread each.
MAX_CONCURRENCY = 1_024

#: The most attempts per query, the first included (``retry``): beyond, a failing service
#: would keep a call waiting (with backoff) for hours.
MAX_ATTEMPTS = 100

#: The longest wait between two attempts, seconds (``RetryPolicy``'s backoff and Retry-After
#: bounds): one hour. time.sleep overflows far above it, and a longer wait is a hang.
MAX_BACKOFF_S = 3600.0

#: The lowest rate limit, requests per second (one request every ~17 minutes): a smaller
#: positive number would make every call wait for days.
MIN_RATE_LIMIT = 1e-3


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


def check_count(value: Any, name: str, maximum: int, minimum: int = 1, why: str = "") -> int:
    """An integer in [minimum, maximum] (NumPy integers accepted; bools, floats and strings
    refused), as int. ``why`` is appended to the message of a value above ``maximum``."""
    if not _is_integer(value):
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidParameterError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum:
        raise InvalidParameterError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise InvalidParameterError(f"{name} must be <= {maximum:,}, got {value:,}{why}")
    return value


def check_sample_count(value: Any, name: str, maximum: int = MAX_SAMPLES) -> int:
    """A positive integer sample count (N, N0), at most ``maximum`` (default ``MAX_SAMPLES``)."""
    return check_count(
        value, name, maximum,
        why="; one call holds a record per sample in memory: split the work into several calls" if maximum == MAX_SAMPLES
        else "",
    )


def check_flag(value: Any, name: str) -> bool:
    """True or False (a NumPy bool too), as bool; anything else (``"no"``, 0, None) is refused
    rather than read by its truth value."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")):
        return bool(value)
    raise InvalidParameterError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_rate_limit(value: Any) -> float:
    """Requests per second in [MIN_RATE_LIMIT, inf] (``math.inf``: no limit), as float."""
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)) or float(value) <= 0:
        raise InvalidParameterError(
            f"rate_limit must be a positive number of requests per second (math.inf for none), got {value!r}"
        )
    if float(value) < MIN_RATE_LIMIT:
        raise InvalidParameterError(
            f"rate_limit must be >= {MIN_RATE_LIMIT:g} requests per second (one every {1 / MIN_RATE_LIMIT:,.0f} s), "
            f"got {value!r}; pass math.inf for no limit"
        )
    return float(value)


def check_choice(value: Any, name: str, choices: tuple) -> Any:
    """One of ``choices`` (compared by equality, only for values of the choices' types)."""
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        raise InvalidParameterError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
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


def check_text(value: Any, name: str) -> Any:
    """None, or a printable string of 1 to :data:`MAX_TEXT_CHARS` characters (an image's
    ``name`` or ``tag``): no control characters, so that it prints on one line and cannot
    forge a line of a table or a log."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParameterError(f"{name} must be a string (or None), got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_TEXT_CHARS or not value.isprintable():
        raise InvalidParameterError(
            f"{name} must be 1 to {MAX_TEXT_CHARS} printable characters (no newline, tab or other control "
            f"character), got {value[:60]!r}{'...' if len(value) > 60 else ''}"
        )
    return value
