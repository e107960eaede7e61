"""One rate limit and one budget for many processes.

:class:`SharedQuota` is plain Python: it books request slots on the wall clock (at most
``rate`` per second, evenly spaced, for every process together) and holds, reserves and
refunds queries against the caps (a :class:`~robust_api.dispatch.Budget`). A distributed run
makes one of it a Ray actor (its methods then run one at a time), and each worker talks to it
through :class:`RemoteRateLimiter` and :class:`RemoteBudget`, which have the interface of the
in-process :class:`~robust_api.dispatch.RateLimiter` and :class:`~robust_api.dispatch.Budget`
that the dispatcher and the engine use: the provider's quota and the user's caps hold for the
whole cluster, however many workers and threads send.

Every 1-second window holds at most ``rate`` requests, not one more, as long as each request
leaves within ``slack_s`` of its slot: slots are spaced (1 + ``slack_s``)/``rate`` apart (1%
slower than the rate with the default 10 ms), and a worker that wakes up later than half the
slack after its slot books a new one instead of sending late (a late request next to an
on-time one is what puts rate + 1 requests in a window).

Booking a slot costs one round trip to the quota actor per request (about a millisecond on
one machine): fine for the providers' quotas (10-50 requests per second per account), and the
slack absorbs its jitter. Slots are on the wall clock (``time.time``) of the quota's machine: workers on
other machines sleep until it by their own clocks, so keep clocks in sync (NTP) on a cluster.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Optional

from ..dispatch.budget import Budget, Hold, Spending
from ..dispatch.rates import DEFAULT_SLACK_S, RateLimiter, wait_for_slot

__all__ = ["SharedQuota", "RemoteBudget", "RemoteRateLimiter", "RemoteHold", "DEFAULT_SLACK_S"]


class SharedQuota:
    """The rate limit and caps of one distributed run (one instance, called one at a time).

    Args:
        rate: requests per second for all workers together (None or inf: no limit).
        max_queries, max_cost_usd: the caps left for this run (None: no cap).
        slack_s: the most seconds a request may leave after its slot (see the module docstring).
    """

    def __init__(self, rate: Optional[float], max_queries: Optional[int], max_cost_usd: Optional[float],
                 slack_s: float = DEFAULT_SLACK_S):
        self.rate = None if rate is None or math.isinf(rate) else float(rate)
        self.slack_s = float(slack_s)
        self._limiter = None if self.rate is None else RateLimiter(self.rate, slack_s=self.slack_s, clock=time.time)
        self._budget = Budget(max_queries, max_cost_usd)
        self._holds: dict[int, Hold] = {}
        self._ids = itertools.count(1)
        self.booked = 0

    def book(self) -> float:
        """The wall-clock time (``time.time``) at which the caller may send its next request."""
        self.booked += 1
        return 0.0 if self._limiter is None else self._limiter.book()[0]

    def hold(self, queries: int, price: float, what: str) -> tuple[int, int, float]:
        """Set aside ``queries`` (see :meth:`Budget.hold`): (hold id, queries, cost), or
        BudgetExceededError."""
        hold = self._budget.hold(queries, price, what)
        hold_id = next(self._ids)
        self._holds[hold_id] = hold
        return hold_id, hold.queries, hold.cost

    def release(self, hold_id: Optional[int]) -> None:
        """Give back what is left of a hold (again: nothing more)."""
        self._budget.release(self._holds.pop(hold_id, None))

    def reserve(self, queries: int, cost: float, hold_id: Optional[int]) -> tuple[int, float]:
        """Count queries as sent, from the hold when it has enough (see :meth:`Budget.reserve`);
        returns what is left of the hold (0, 0.0 without one) or raises BudgetExceededError."""
        hold = self._holds.get(hold_id)
        self._budget.reserve(queries, cost, hold)
        return (hold.queries, hold.cost) if hold is not None else (0, 0.0)

    def refund(self, queries: int, cost: float) -> None:
        """Give back a reservation the provider did not process (see :meth:`Budget.refund`)."""
        self._budget.refund(queries, cost)

    def spent(self) -> Spending:
        """Queries and USD sent or set aside so far, by every worker."""
        return self._budget.spent

    def unheld(self) -> Spending:
        """What was really sent: :meth:`spent` less what the holds still set aside."""
        spent = self._budget.spent
        queries = sum(hold.queries for hold in self._holds.values())
        cost = sum(hold.cost for hold in self._holds.values())
        return Spending(spent.queries - queries, max(0.0, spent.cost_usd - cost))


class RemoteHold(Hold):
    """A hold kept by the :class:`SharedQuota`; this copy mirrors what is left of it."""

    def __init__(self, hold_id: int, queries: int, cost: float):
        super().__init__(queries, cost)
        self.hold_id = hold_id


Caller = Callable[..., Any]  # call(method name, *args) -> the quota's answer


class RemoteBudget:
    """The :class:`~robust_api.dispatch.Budget` interface over a :class:`SharedQuota`.

    Args:
        call: ``call(method, *args)`` runs ``SharedQuota.<method>(*args)`` where the quota lives
            (for Ray: ``ray.get(getattr(actor, method).remote(*args))``) and returns its value,
            raising its exceptions.
    """

    max_queries = None  # the caps live in the quota
    max_cost_usd = None

    def __init__(self, call: Caller):
        self._call = call

    @property
    def spent(self) -> Spending:
        return self._call("spent")

    def hold(self, queries: int, price: float, what: str) -> RemoteHold:
        return RemoteHold(*self._call("hold", queries, price, what))

    def release(self, hold: Optional[Hold]) -> None:
        if hold is not None:
            self._call("release", getattr(hold, "hold_id", None))
            hold.queries, hold.cost = 0, 0.0

    def reserve(self, queries: int, cost: float, hold: Optional[Hold] = None) -> None:
        left = self._call("reserve", queries, cost, getattr(hold, "hold_id", None))
        if hold is not None:
            hold.queries, hold.cost = left

    def refund(self, queries: int, cost: float) -> None:
        self._call("refund", queries, cost)


class RemoteRateLimiter:
    """The :class:`~robust_api.dispatch.RateLimiter` interface over a :class:`SharedQuota`:
    each :meth:`acquire` books the next slot of the whole run and sleeps until it.

    Args:
        call: as for :class:`RemoteBudget`.
        rate: the run's rate (requests per second), for display.
        slack_s: the quota's ``slack_s``: a wake-up later than half of it after the slot
            books a new slot (see :func:`~robust_api.dispatch.rates.wait_for_slot`).
    """

    burst = 1

    def __init__(self, call: Caller, rate: float, slack_s: float = DEFAULT_SLACK_S, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time):
        self._call = call
        self.rate = float(rate)
        self.slack_s = float(slack_s)
        self._sleep = sleep
        self._clock = clock
        self.late_bookings = 0

    def acquire(self) -> float:
        """Wait for a slot of the shared rate; return the seconds waited."""
        return wait_for_slot(lambda: (self._call("book"), self._clock()), self._clock, self._sleep, self)

    def __repr__(self) -> str:
        return f"RemoteRateLimiter(rate={self.rate:g}/s, shared by every worker)"
