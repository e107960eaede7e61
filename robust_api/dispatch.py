"""Sending queries: bounded concurrency, a rate limiter, retries with backoff, and hard budget caps.

Every sample index of a phase ends with exactly one final record: its answer, or — when
the provider still failed after the retries — an error record that counts as a vote
*against* the top class (never as a vote for it, never dropped). Records are written to the
query log by the caller's thread only, as batches finish; worker threads only talk to the
provider.

Caps are reservations: before an attempt is sent, its queries (and their list price) are
reserved under a lock, so no cap is crossed however many requests are in flight. A
throttled attempt is refunded (the provider did not process it); every other attempt stays
counted, so the running total is an upper bound on the bill.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from numbers import Real
from typing import Any, Optional, Union

import numpy as np

from .errors import (
    BudgetExceededError,
    InvalidParameterError,
    ProviderError,
    ProviderResponseError,
    RobustAPIError,
    TransientProviderError,
)
from .pricing import check_cost_per_query
from .providers.base import Provider, QueryFailure
from .query_logs.records import QueryRecord, dumps_raw

__all__ = ["RetryPolicy", "RateLimiter", "Budget", "Hold", "Spending", "Dispatcher", "shared_rate_limiter"]

logger = logging.getLogger(__name__)

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
        if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 0):
            raise InvalidParameterError(f"max_queries must be a non-negative integer or None, got {max_queries!r}")
        if max_cost_usd is not None and (
            isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, Real) or not (0 <= max_cost_usd < math.inf)
        ):
            raise InvalidParameterError(f"max_cost_usd must be a non-negative number or None, got {max_cost_usd!r}")
        self.max_queries = max_queries
        self.max_cost_usd = None if max_cost_usd is None else float(max_cost_usd)
        self._queries = 0
        self._cost = 0.0
        self._lock = threading.Lock()

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

    def refund(self, queries: int, cost: float) -> None:
        """Give back what a reservation counted for queries the provider did not process."""
        with self._lock:
            self._give_back(queries, cost)


@dataclass
class Hold:
    """Queries (and USD) set aside by :meth:`Budget.hold` and not used yet."""

    queries: int
    cost: float


class _BatchFailed(Exception):
    """A fatal failure inside a batch, carrying one final record per sample of the batch
    (index within the batch → record; the unfinished samples as errors)."""

    def __init__(self, cause: BaseException, finished: dict[int, QueryRecord]):
        super().__init__(str(cause))
        self.cause = cause
        self.finished = finished


def _progress_bar(progress: Optional[bool], total: int, description: str):
    """A tqdm bar on stderr: always with progress=True, never with False, and with None only
    for long runs (≥ 500 queries) on an interactive terminal."""
    show = progress if progress is not None else (total >= 500 and sys.stderr.isatty())
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.info("install tqdm for a progress bar")
        return None
    return tqdm(total=total, desc=description, unit="query", leave=False)


class Dispatcher:
    """Sends batches of one phase to a provider with the limits of one RobustAPI.

    Args:
        provider: the provider.
        concurrency: requests in flight at most (1 = one at a time, in the caller's thread).
        rate_limiter: None or a :class:`RateLimiter` every request passes.
        retry: the :class:`RetryPolicy`.
        budget: the :class:`Budget` every attempt is reserved from.
        progress: see :func:`_progress_bar`.

    Raises:
        InvalidParameterError: the provider's ``cost_per_query_usd`` is not a finite number
            in [0, $1] (above $1 only with the provider's ``allow_high_cost`` set to True).
    """

    def __init__(self, provider: Provider, *, concurrency: int = 1, rate_limiter: Optional[RateLimiter] = None,
                 retry: Optional[RetryPolicy] = None, budget: Optional[Budget] = None,
                 progress: Optional[bool] = None):
        # any Provider (a user's own class too): its price feeds the caps and the log, so a
        # NaN, infinite, negative or absurd one is refused here, before any query
        check_cost_per_query(getattr(provider, "cost_per_query_usd", None), f"{provider.identity}'s cost_per_query_usd",
                             allow_high_cost=getattr(provider, "allow_high_cost", False) is True)
        self.provider = provider
        self.concurrency = concurrency
        self.rate_limiter = rate_limiter
        self.retry = retry or RetryPolicy()
        self.budget = budget or Budget()
        self.progress = progress
        self._rng = random.Random()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._serial = threading.Lock()  # concurrency=1: one request at a time, whatever the calling threads
        self._pool_lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        """The one pool of ``concurrency`` workers every call of this dispatcher shares (so
        calls from several threads together stay within ``concurrency`` requests in flight)."""
        with self._pool_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="robust-api")
            return self._executor

    def close(self) -> None:
        """Stop the worker threads once their requests are done (a later call starts new ones)."""
        with self._pool_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    # -- one batch, in a worker ----------------------------------------------------------
    def _error_record(self, phase: str, index: int, message: str, latency: float, billed: int, raw: Any = None) -> QueryRecord:
        if raw is not None:
            try:
                dumps_raw(raw)
            except ProviderResponseError:
                raw = None
        cost = self.provider.cost_per_query_usd * billed
        return QueryRecord(phase, index, None, raw, latency, cost, time.time(), self.provider.redact(message))

    def query_batch(self, phase: str, start: int, images: np.ndarray,
                    abort: Optional[threading.Event] = None, hold: Optional[Hold] = None) -> list[QueryRecord]:
        """Query images [B, H, W, C] (samples start … start+B−1) until each has a final record.

        When ``abort`` is set (another batch of the call failed for good), no further attempt
        is made: the samples still pending are recorded as errors.

        Accounting: ``billed[i]`` is the number of attempts of sample i the budget counted
        (reserved before sending, given back for a throttled attempt). Every record — answer,
        error, abandoned, or the failure record of a batch that stopped — carries
        ``price × billed[i]``, so the log's cost column always equals what the budget counted.

        Raises:
            _BatchFailed: a non-transient failure (credentials, a bug, the budget); it carries
                a record for every sample of the batch (the unfinished ones as errors).
        """
        provider = self.provider
        price = provider.cost_per_query_usd
        count = len(images)
        attempts = [0] * count
        billed = [0] * count
        finished: dict[int, QueryRecord] = {}
        pending = list(range(count))
        abort = abort or threading.Event()
        try:
            while pending:
                if abort.is_set():
                    for i in pending:
                        finished[i] = self._error_record(
                            phase, start + i, f"abandoned after {attempts[i]} attempts: the call failed", 0.0, billed[i]
                        )
                    break
                self.budget.reserve(len(pending), price * len(pending), hold)
                for i in pending:
                    billed[i] += 1  # counted by the budget from here on
                if self.rate_limiter is not None:
                    self.rate_limiter.acquire()
                batch = images if len(pending) == count else images[pending]
                began = time.perf_counter()
                try:
                    answers = provider.send(batch)
                except TransientProviderError as exc:
                    latency = time.perf_counter() - began
                    if exc.kind in UNBILLED_KINDS:
                        self.budget.refund(len(pending), price * len(pending))
                        for i in pending:
                            billed[i] -= 1
                    retry_later = []
                    for i in pending:
                        attempts[i] += 1
                        if attempts[i] >= self.retry.max_attempts:
                            finished[i] = self._error_record(
                                phase, start + i, f"{exc.kind} after {attempts[i]} attempts: {exc}", latency, billed[i]
                            )
                        else:
                            retry_later.append(i)
                    logger.debug("%s: %s on %d queries (%s)", provider.identity, exc.kind, len(pending), provider.redact(str(exc)))
                    pending = retry_later
                    if pending:
                        abort.wait(self.retry.delay(max(attempts[i] for i in pending), exc.retry_after, self._rng))
                    continue
                latency = time.perf_counter() - began
                answers = list(answers)
                if len(answers) != len(pending):
                    raise ProviderResponseError(
                        f"{provider.identity} returned {len(answers)} answers for a batch of {len(pending)} images; "
                        "it must return exactly one per image, in order"
                    )
                retry_later = []
                retry_after: Optional[float] = None
                now = time.time()
                for i in pending:
                    attempts[i] += 1
                for i, raw in zip(pending, answers):
                    if isinstance(raw, QueryFailure):
                        if raw.transient and attempts[i] < self.retry.max_attempts:
                            retry_later.append(i)
                            if raw.retry_after is not None:
                                retry_after = max(retry_after or 0.0, raw.retry_after)
                        else:
                            finished[i] = self._error_record(
                                phase, start + i, f"{raw.kind} after {attempts[i]} attempts: {raw.message}", latency, billed[i]
                            )
                        continue
                    try:
                        label = provider.parse(raw)
                    except BaseException as exc:  # keep this attempt's raw answers for diagnosis
                        message = f"{type(exc).__name__}: {exc}"
                        for j, other in zip(pending, answers):
                            if j not in finished:
                                kept = None if isinstance(other, QueryFailure) else other
                                finished[j] = self._error_record(phase, start + j, message, latency, billed[j], kept)
                        raise
                    finished[i] = QueryRecord(phase, start + i, label, raw, latency, price * billed[i], now)
                pending = retry_later
                if pending:
                    abort.wait(self.retry.delay(max(attempts[i] for i in pending), retry_after, self._rng))
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
            for i in range(count):
                if i not in finished:  # what the budget counted for it stays on its record
                    finished[i] = self._error_record(phase, start + i, message, 0.0, billed[i])
            raise _BatchFailed(exc, finished) from exc
        return [finished[i] for i in range(count)]

    def _query_serially(self, phase: str, start: int, images: np.ndarray,
                        abort: Optional[threading.Event] = None, hold: Optional[Hold] = None) -> list[QueryRecord]:
        with self._serial:
            return self.query_batch(phase, start, images, abort, hold)

    # -- a whole phase, from the caller's thread -----------------------------------------
    def run(self, phase: str, batches: Iterable[tuple[int, np.ndarray]], total: int,
            on_records: Callable[[Sequence[QueryRecord]], None], hold: Optional[Hold] = None) -> None:
        """Send every (start, images) batch and hand each batch's final records to ``on_records``
        (called in this thread, in completion order).

        On a failure that retrying cannot fix — in a batch, in making the batches (the
        denoiser) or in recording them (the log) — no new batch is sent, the batches in flight
        stop retrying, finish and are recorded (the failed batch's unfinished samples as
        errors), and the first failure is raised.

        ``batches`` may carry ``max_in_flight`` (read before each new batch: no more of its
        batches are sent at once, a memory plan's limit) and ``close()`` (called once the
        run is over, to give back what making the batches reserved). A batch is dropped from
        here as soon as it is settled, so its memory can go before the next is made.
        """
        bar = _progress_bar(self.progress, total, phase)
        abort = threading.Event()
        failures: list[BaseException] = []

        def fail(exc: BaseException) -> None:
            failures.append(exc)
            abort.set()

        def deliver(records: Sequence[QueryRecord]) -> None:
            if failures and isinstance(failures[0], _RecordingFailed):
                return  # the log refused a write: do not try again
            try:
                on_records(records)
            except BaseException as exc:
                fail(_RecordingFailed(exc))
                return
            if bar is not None:
                bar.update(len(records))

        def settle(outcome: Callable[[], list[QueryRecord]], start: int, images: np.ndarray) -> None:
            try:
                records = outcome()
            except _BatchFailed as failed:
                records = [failed.finished[i] for i in range(len(images))]  # query_batch fills every slot
                fail(failed.cause)
            deliver(records)

        iterator = iter(batches)

        def next_batch() -> Optional[tuple[int, np.ndarray]]:
            try:
                return next(iterator)
            except StopIteration:
                return None
            except BaseException as exc:  # the denoiser (or the noise) failed: nothing of it was sent
                fail(exc)
                return None

        try:
            if self.concurrency <= 1:
                while not failures:
                    item = next_batch()
                    if item is None:
                        break
                    start, images = item
                    settle(lambda: self._query_serially(phase, start, images, abort, hold), start, images)
                    item = images = None  # the batch's memory can go before the next one is made
            else:
                executor = self._pool()
                in_flight: dict[Future, tuple[int, np.ndarray]] = {}

                def collect() -> None:
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        start, images = in_flight.pop(future)
                        settle(future.result, start, images)

                try:
                    while not failures:
                        while len(in_flight) >= min(self.concurrency, getattr(batches, "max_in_flight", None)
                                                    or self.concurrency):
                            collect()
                        if failures:
                            break
                        item = next_batch()
                        if item is None:
                            break
                        start, images = item
                        in_flight[executor.submit(self.query_batch, phase, start, images, abort, hold)] = (start, images)
                        item = images = None  # only in_flight holds the batch now
                    while in_flight:
                        collect()
                except BaseException as exc:  # e.g. KeyboardInterrupt while waiting
                    abort.set()
                    for future in in_flight:
                        future.cancel()
                    raise exc
        finally:
            if bar is not None:
                bar.close()
            close = getattr(batches, "close", None)
            if callable(close):
                close()
        if failures:
            first = failures[0]
            if isinstance(first, _RecordingFailed):
                raise first.cause
            if isinstance(first, RobustAPIError) or not isinstance(first, Exception):
                raise first
            raise ProviderError(
                self.provider.redact(f"{self.provider.identity} failed: {type(first).__name__}: {first}")
            ) from first


class _RecordingFailed(Exception):
    """Writing a batch's records failed (raised again as its cause once the run is over)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause
