"""How a failed query is retried: exponential backoff with full jitter, honouring Retry-After."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from numbers import Real
from typing import Optional, Union

from ..errors import InvalidParameterError

__all__ = ["RetryPolicy", "UNBILLED_KINDS"]

#: Kinds of failure a provider did not process, so the attempt is not billed. A dropped
#: connection may have been processed (and billed) before it dropped, so it counts.
UNBILLED_KINDS = frozenset({"throttled"})


@dataclass(frozen=True)
class RetryPolicy:
    """How failed queries are retried: exponential backoff with full jitter, honouring Retry-After.

    Attempt k (k ≥ 1 failed attempts so far) waits a uniform random time in
    [0, min(max_backoff_s, initial_backoff_s · multiplier^(k−1))], or the provider's
    Retry-After when that is longer (capped at ``max_retry_after_s``).

    Attributes:
        max_attempts: attempts per sample, first one included (≥ 1; 1 = no retries).
        initial_backoff_s, max_backoff_s: backoff bounds, seconds (≥ 0).
        multiplier: backoff growth per attempt (≥ 1).
        max_retry_after_s: the longest Retry-After honoured, seconds.
    """

    max_attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    max_retry_after_s: float = 120.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidParameterError(f"max_attempts must be an integer ≥ 1, got {self.max_attempts!r}")
        for name in ("initial_backoff_s", "max_backoff_s", "max_retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not (0 <= value < math.inf):
                raise InvalidParameterError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, Real) or not (1 <= self.multiplier < math.inf):
            raise InvalidParameterError(f"multiplier must be a number ≥ 1, got {self.multiplier!r}")

    def delay(self, failures: int, retry_after: Optional[float], rng: random.Random) -> float:
        """Seconds to wait after ``failures`` (≥ 1) failed attempts."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (failures - 1))
        wait_s = rng.uniform(0.0, ceiling)
        if retry_after is not None and retry_after > 0:
            wait_s = max(wait_s, min(float(retry_after), self.max_retry_after_s))
        return wait_s

    @classmethod
    def coerce(cls, value: Union["RetryPolicy", int, None]) -> "RetryPolicy":
        """None → defaults; an int → that many attempts; a RetryPolicy as is."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_attempts=value)
        raise InvalidParameterError(f"retry must be None, a number of attempts or a RetryPolicy, got {type(value).__name__}")
