"""The attempts of one batch: send, parse, retry what failed transiently, until every sample
of the batch has exactly one final record (its answer, or an error record)."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Optional

import numpy as np

from ..errors import ProviderResponseError, TransientProviderError
from ..providers.base import Provider, QueryFailure
from ..query_logs.records import QueryRecord, dumps_raw
from .budget import Budget, Hold
from .progress import AttemptStats
from .rates import RateLimiter
from .retry import UNBILLED_KINDS, RetryPolicy

__all__ = ["BatchAttempts", "BatchFailed"]

logger = logging.getLogger(__name__)


class BatchFailed(Exception):
    """A fatal failure inside a batch, carrying one final record per sample of the batch
    (index within the batch → record; the unfinished samples as errors)."""

    def __init__(self, cause: BaseException, finished: dict[int, QueryRecord]):
        super().__init__(str(cause))
        self.cause = cause
        self.finished = finished


class BatchAttempts:
    """Query images [B, H, W, C] (samples start … start+B−1) until each has a final record.

    When ``abort`` is set (another batch of the call failed for good), no further attempt is
    made: the samples still pending are recorded as errors.

    Accounting: ``billed[i]`` is the number of attempts of sample i the budget counted
    (reserved before sending, given back for a throttled attempt). Every record — answer,
    error, abandoned, or the failure record of a batch that stopped — carries
    ``price × billed[i]``, so the log's cost column always equals what the budget counted.
    """

    def __init__(self, provider: Provider, budget: Budget, retry: RetryPolicy, rate_limiter: Optional[RateLimiter],
                 rng: random.Random, phase: str, start: int, images: np.ndarray,
                 abort: Optional[threading.Event] = None, hold: Optional[Hold] = None,
                 stats: Optional[AttemptStats] = None):
        self.provider, self.budget, self.retry, self.rate_limiter, self.rng = provider, budget, retry, rate_limiter, rng
        self.phase, self.start, self.images, self.hold = phase, start, images, hold
        self.stats = stats if stats is not None else AttemptStats()  # retries and throttled answers
        self.abort = abort or threading.Event()
        self.price = provider.cost_per_query_usd
        self.count = len(images)
        self.attempts = [0] * self.count
        self.billed = [0] * self.count
        self.finished: dict[int, QueryRecord] = {}
        self.pending = list(range(self.count))

    def run(self) -> list[QueryRecord]:
        """The final records of the batch, in sample order.

        Raises:
            BatchFailed: a non-transient failure (credentials, a bug, the budget); it carries
                a record for every sample of the batch (the unfinished ones as errors).
        """
        try:
            while self.pending:
                if self.abort.is_set():
                    self._abandon()
                    break
                batch = self._reserve_and_pace()
                began = time.perf_counter()
                try:
                    answers = self.provider.send(batch)
                except TransientProviderError as exc:
                    retry_after = self._after_transient(exc, time.perf_counter() - began)
                else:
                    retry_after = self._after_answers(list(answers), time.perf_counter() - began)
                if self.pending:
                    self.abort.wait(self.retry.delay(max(self.attempts[i] for i in self.pending), retry_after, self.rng))
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
            for i in range(self.count):
                if i not in self.finished:  # what the budget counted for it stays on its record
                    self.finished[i] = self._error(i, message, 0.0)
            raise BatchFailed(exc, self.finished) from exc
        return [self.finished[i] for i in range(self.count)]

    def _error(self, i: int, message: str, latency: float, raw: Any = None) -> QueryRecord:
        """The error record of sample i (a raw answer kept only when it is plain data)."""
        if raw is not None:
            try:
                dumps_raw(raw)
            except ProviderResponseError:
                raw = None
        cost = self.price * self.billed[i]
        return QueryRecord(self.phase, self.start + i, None, raw, latency, cost, time.time(), self.provider.redact(message))

    def _abandon(self) -> None:
        for i in self.pending:
            self.finished[i] = self._error(i, f"abandoned after {self.attempts[i]} attempts: the call failed", 0.0)
        self.pending = []

    def _reserve_and_pace(self) -> np.ndarray:
        """Count the pending samples against the caps, wait for the rate limiter, and return
        their images."""
        pending = self.pending
        self.budget.reserve(len(pending), self.price * len(pending), self.hold)
        for i in pending:
            self.billed[i] += 1  # counted by the budget from here on
        if self.rate_limiter is not None:
            self.rate_limiter.acquire()
        return self.images if len(pending) == self.count else self.images[pending]

    def _after_transient(self, exc: TransientProviderError, latency: float) -> Optional[float]:
        """The whole request failed transiently: refund it if it was not billed, finish the
        samples out of attempts, keep the rest pending. Returns the Retry-After, if any."""
        pending = self.pending
        if exc.kind in UNBILLED_KINDS:
            self.budget.refund(len(pending), self.price * len(pending))
            for i in pending:
                self.billed[i] -= 1
        retry_later = []
        for i in pending:
            self.attempts[i] += 1
            if self.attempts[i] >= self.retry.max_attempts:
                self.finished[i] = self._error(i, f"{exc.kind} after {self.attempts[i]} attempts: {exc}", latency)
            else:
                retry_later.append(i)
        logger.debug("%s: %s on %d queries (%s)", self.provider.identity, exc.kind, len(pending),
                     self.provider.redact(str(exc)))
        self.stats.add(retries=len(retry_later), throttled=int(exc.kind == "throttled"),
                       failed=len(pending) - len(retry_later))
        self.pending = retry_later
        return exc.retry_after

    def _after_answers(self, answers: list, latency: float) -> Optional[float]:
        """One answer per pending sample: parse the answers, keep transient failures with
        attempts left pending. Returns the longest Retry-After of those, if any."""
        pending = self.pending
        if len(answers) != len(pending):
            raise ProviderResponseError(
                f"{self.provider.identity} returned {len(answers)} answers for a batch of {len(pending)} images; "
                "it must return exactly one per image, in order"
            )
        retry_later = []
        retry_after: Optional[float] = None
        now = time.time()
        for i in pending:
            self.attempts[i] += 1
        for i, raw in zip(pending, answers):
            if isinstance(raw, QueryFailure):
                throttled = int(raw.kind == "throttled")
                if raw.transient and self.attempts[i] < self.retry.max_attempts:
                    retry_later.append(i)
                    self.stats.add(retries=1, throttled=throttled)
                    if raw.retry_after is not None:
                        retry_after = max(retry_after or 0.0, raw.retry_after)
                else:
                    self.stats.add(throttled=throttled, failed=1)
                    self.finished[i] = self._error(
                        i, f"{raw.kind} after {self.attempts[i]} attempts: {raw.message}", latency)
                continue
            try:
                label = self.provider.parse(raw)
            except BaseException as exc:  # keep this attempt's raw answers for diagnosis
                message = f"{type(exc).__name__}: {exc}"
                for j, other in zip(pending, answers):
                    if j not in self.finished:
                        self.finished[j] = self._error(j, message, latency,
                                                       None if isinstance(other, QueryFailure) else other)
                raise
            self.finished[i] = QueryRecord(self.phase, self.start + i, label, raw, latency,
                                           self.price * self.billed[i], now)
        self.pending = retry_later
        return retry_after
