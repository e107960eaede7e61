"""Rate limits: at most so many requests per second, shared by every RobustAPI of a process
that talks to the same provider."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from numbers import Real
from typing import Any

from ..errors import InvalidParameterError

__all__ = ["RateLimiter", "shared_rate_limiter", "wait_for_slot", "DEFAULT_SLACK_S", "MAX_BOOKINGS"]


#: seconds a request may leave after its slot (the engine's limiters): see :class:`RateLimiter`
DEFAULT_SLACK_S = 0.01
#: bookings one request makes at most before it goes late anyway (it never waits forever)
MAX_BOOKINGS = 5


class RateLimiter:
    """At most ``rate`` requests per second, spaced evenly (thread-safe).

    Each :meth:`acquire` books the next free slot on a grid and sleeps until it; with
    ``burst`` > 1 up to that many requests may go back to back after an idle period.

    A thread that wakes up late sends late, and a late request next to an on-time one can put
    ``rate + 1`` requests in some 1-second window. With ``slack_s`` > 0 that cannot happen
    while each request leaves within ``slack_s`` of its slot: slots are (1 + ``slack_s``)/rate
    apart (that much slower than ``rate``), and a thread that wakes up more than half the
    slack after its slot books another one instead (at most ``MAX_BOOKINGS`` times).

    Args:
        rate: requests per second, > 0.
        burst: requests allowed back to back (≥ 1).
        slack_s: see above, in [0, 1) seconds (default 0: the grid is exactly 1/rate, and a
            late thread sends late).
    """

    def __init__(self, rate: float, burst: int = 1, *, slack_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if isinstance(rate, bool) or not isinstance(rate, Real) or not (0 < rate < math.inf):
            raise InvalidParameterError(f"rate_limit must be a positive number of requests per second, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise InvalidParameterError(f"burst must be an integer ≥ 1, got {burst!r}")
        if isinstance(slack_s, bool) or not isinstance(slack_s, Real) or not 0 <= slack_s < 1:
            raise InvalidParameterError(f"slack_s must be a number of seconds in [0, 1), got {slack_s!r}")
        self.rate = float(rate)
        self.burst = burst
        self.slack_s = float(slack_s)
        self.late_bookings = 0  # slots given up because the thread woke up too late for them
        self._interval = (1.0 + self.slack_s) / self.rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = -math.inf  # theoretical time of the next request

    def book(self) -> tuple[float, float]:
        """Book the next free slot without waiting: (its time, the clock's time now)."""
        with self._lock:
            now = self._clock()
            due = max(self._next, now)
            start = max(now, due - self._tolerance)
            self._next = due + self._interval
        return start, now

    def acquire(self) -> float:
        """Wait for a slot; return the seconds waited."""
        return wait_for_slot(self.book, self._clock, self._sleep, self)


def wait_for_slot(book: Callable[[], tuple[float, float]], clock: Callable[[], float],
                  sleep: Callable[[float], None], limiter: Any) -> float:
    """Book a slot with ``book() -> (slot, now)``, sleep until it, and book again when the
    wake-up came later than half of ``limiter.slack_s`` after the slot (counted in
    ``limiter.late_bookings``; at most ``MAX_BOOKINGS`` bookings). Returns the seconds slept."""
    waited = 0.0
    for _ in range(MAX_BOOKINGS if limiter.slack_s else 1):
        slot, now = book()
        if slot > now:
            sleep(slot - now)
            waited += slot - now
        if not limiter.slack_s or clock() - slot <= limiter.slack_s / 2:
            break
        limiter.late_bookings += 1
    return waited

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate:g}/s, burst={self.burst})"


_SHARED_LIMITERS: dict[tuple[str, float], RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_rate_limiter(key: str, rate: float) -> RateLimiter:
    """The process-wide limiter of one provider identity at one rate: every RobustAPI talking
    to the same provider in this process shares it, so together they stay under the rate in
    every 1-second window (``slack_s=DEFAULT_SLACK_S``: 1% under the rate, see :class:`RateLimiter`)."""
    with _SHARED_LOCK:
        limiter = _SHARED_LIMITERS.get((key, float(rate)))
        if limiter is None:
            limiter = _SHARED_LIMITERS[(key, float(rate))] = RateLimiter(rate, slack_s=DEFAULT_SLACK_S)
        return limiter
