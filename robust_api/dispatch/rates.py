"""Rate limits: at most so many requests per second, shared by every RobustAPI of a process
that talks to the same provider."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from numbers import Real

from ..errors import InvalidParameterError

__all__ = ["RateLimiter", "shared_rate_limiter"]


class RateLimiter:
    """At most ``rate`` requests per second, spaced evenly (thread-safe).

    Each :meth:`acquire` books the next free slot on a 1/rate grid and sleeps until it; with
    ``burst`` > 1 up to that many requests may go back to back after an idle period.

    Args:
        rate: requests per second, > 0.
        burst: requests allowed back to back (≥ 1).
    """

    def __init__(self, rate: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if isinstance(rate, bool) or not isinstance(rate, Real) or not (0 < rate < math.inf):
            raise InvalidParameterError(f"rate_limit must be a positive number of requests per second, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise InvalidParameterError(f"burst must be an integer ≥ 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._interval = 1.0 / self.rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = -math.inf  # theoretical time of the next request

    def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        with self._lock:
            now = self._clock()
            due = max(self._next, now)
            start = max(now, due - self._tolerance)
            self._next = due + self._interval
        waited = start - now
        if waited > 0:
            self._sleep(waited)
        return max(0.0, waited)

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate:g}/s, burst={self.burst})"


_SHARED_LIMITERS: dict[tuple[str, float], RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_rate_limiter(key: str, rate: float) -> RateLimiter:
    """The process-wide limiter of one provider identity at one rate: every RobustAPI talking
    to the same provider in this process shares it, so together they stay under the rate."""
    with _SHARED_LOCK:
        limiter = _SHARED_LIMITERS.get((key, float(rate)))
        if limiter is None:
            limiter = _SHARED_LIMITERS[(key, float(rate))] = RateLimiter(rate)
        return limiter
