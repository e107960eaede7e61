"""Hard caps on queries and dollars: reservations before sending, so no cap is crossed
however many requests are in flight."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from numbers import Real
from typing import Any, Optional

from ..errors import BudgetExceededError, InvalidParameterError

__all__ = ["Budget", "Hold", "Spending"]


@dataclass(frozen=True)
class Spending:
    """Running totals of one RobustAPI: queries sent (retries included, throttled ones not) and
    their list price in USD (an upper bound on the bill)."""

    queries: int
    cost_usd: float


class Budget:
    """Hard caps on queries and dollars, shared by every call of one RobustAPI (thread-safe).

    Args:
        max_queries: the most queries ever sent (None: no cap).
        max_cost_usd: the most USD of list price ever spent (None: no cap).
    """

    def __init__(self, max_queries: Optional[int] = None, max_cost_usd: Optional[float] = None):
        self.max_queries, self.max_cost_usd = self.check_caps(max_queries, max_cost_usd)
        self._queries = 0
        self._cost = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def check_caps(max_queries: Any, max_cost_usd: Any) -> tuple[Optional[int], Optional[float]]:
        """(max_queries, max_cost_usd as float) when both are None or in range, else
        InvalidParameterError naming the cap."""
        if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 0):
            raise InvalidParameterError(f"max_queries must be a non-negative integer or None, got {max_queries!r}")
        if max_cost_usd is not None and (
            isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, Real) or not (0 <= max_cost_usd < math.inf)
        ):
            raise InvalidParameterError(f"max_cost_usd must be a non-negative number or None, got {max_cost_usd!r}")
        return max_queries, None if max_cost_usd is None else float(max_cost_usd)

    @property
    def spent(self) -> Spending:
        with self._lock:
            return Spending(self._queries, self._cost)

    def _shortfall(self, queries: int, cost: float) -> Optional[str]:
        if self.max_queries is not None and self._queries + queries > self.max_queries:
            return f"max_queries={self.max_queries} ({self._queries} already sent or set aside, {queries} more needed)"
        # a relative tolerance keeps a float sum of prices from refusing an exact fit
        if self.max_cost_usd is not None and self._cost + cost > self.max_cost_usd * (1 + 1e-9) + 1e-12:
            return f"max_cost_usd={self.max_cost_usd:g} (${self._cost:.4f} already spent or set aside, ${cost:.4f} more needed)"
        return None

    def _take(self, queries: int, cost: float) -> Optional[str]:
        """Count ``queries`` and ``cost`` if they fit (None), else say which cap they cross.
        Call with the lock held."""
        problem = self._shortfall(queries, cost)
        if problem is None:
            self._queries += queries
            self._cost += cost
        return problem

    def _give_back(self, queries: int, cost: float) -> None:
        """Uncount ``queries`` and ``cost``. Call with the lock held."""
        self._queries -= queries
        self._cost = max(0.0, self._cost - cost)

    def hold(self, queries: int, price: float, what: str) -> "Hold":
        """Set aside ``queries`` at ``price`` USD each for one call (counted as spent until
        released), or raise BudgetExceededError, before anything is sent, when they do not fit.
        Reservations made with the hold draw from it first, so a call that got its hold
        cannot be starved by calls running in other threads."""
        cost = queries * price
        with self._lock:
            problem = self._take(queries, cost)
        if problem is None:
            return Hold(queries, cost)
        raise BudgetExceededError(
            f"{what} needs up to {queries} queries (${cost:.4f}) and that would cross {problem}; "
            "lower N / N0, or raise the cap"
        )

    def release(self, hold: Optional["Hold"]) -> None:
        """Give back what is left of a hold (releasing it again gives nothing more back)."""
        if hold is not None:
            with self._lock:
                self._give_back(hold.queries, hold.cost)
                hold.queries, hold.cost = 0, 0.0

    def reserve(self, queries: int, cost: float, hold: Optional["Hold"] = None) -> None:
        """Count ``queries`` costing ``cost`` USD as sent — from ``hold`` when it has enough
        left — or raise BudgetExceededError (nothing counted)."""
        with self._lock:
            if hold is not None and hold.queries >= queries:
                hold.queries -= queries
                hold.cost = max(0.0, hold.cost - cost)
                return
            problem = self._take(queries, cost)
        if problem is None:
            return
        raise BudgetExceededError(f"sending {queries} more queries would cross {problem}; raise the cap to go on")

    def add_spent(self, queries: int, cost: float) -> None:
        """Count queries that were sent under caps checked elsewhere (a distributed run's
        shared quota, given what this budget had left): never refused, so the totals stay true."""
        with self._lock:
            self._queries += queries
            self._cost += cost

    def refund(self, queries: int, cost: float) -> None:
        """Give back what a reservation counted for queries the provider did not process."""
        with self._lock:
            self._give_back(queries, cost)


@dataclass
class Hold:
    """Queries (and USD) set aside by :meth:`Budget.hold` and not used yet."""

    queries: int
    cost: float
