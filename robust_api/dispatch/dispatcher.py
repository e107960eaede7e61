"""The dispatcher: every batch of one phase sent under one RobustAPI's limits, each batch's
final records handed back to the caller's thread as the batch settles."""

from __future__ import annotations

import logging
import random
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Optional

import numpy as np

from ..errors import ProviderError, RobustAPIError
from ..pricing import check_cost_per_query
from ..providers.base import Provider
from ..query_logs.records import QueryRecord
from .attempts import BatchAttempts, BatchFailed
from .budget import Budget, Hold
from .progress import AttemptStats
from .rates import RateLimiter
from .retry import RetryPolicy

__all__ = ["Dispatcher", "progress_bar"]

logger = logging.getLogger(__name__)


def progress_bar(progress: Optional[bool], total: int, description: str):
    """A tqdm bar on stderr for one phase: always with progress=True, never with False, and
    with None only for long runs (≥ 500 queries) on an interactive terminal. (A run of many
    images draws one :class:`~robust_api.dispatch.progress.RunProgress` bar instead.)"""
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
        progress: see :func:`progress_bar`.

    Attributes:
        stats: the :class:`~robust_api.dispatch.progress.AttemptStats` of every batch sent
            (retries, throttled answers, queries that failed after their retries).

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
        self.stats = AttemptStats()
        self._listeners: tuple = ()  # called with each settled batch's records (a RunProgress)
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

    def add_listener(self, listener: Callable[[Sequence[QueryRecord]], None]) -> None:
        """Call ``listener(records)`` with every batch's final records once they are recorded
        (in the thread that runs the phase). While any listener is attached, no per-phase
        progress bar is drawn: the listener (a run's progress bar) shows the progress."""
        with self._pool_lock:
            self._listeners = self._listeners + (listener,)

    def remove_listener(self, listener: Callable[[Sequence[QueryRecord]], None]) -> None:
        """Stop calling ``listener`` (nothing happens if it is not attached)."""
        with self._pool_lock:
            listeners = list(self._listeners)
            if listener in listeners:
                listeners.remove(listener)
            self._listeners = tuple(listeners)

    def query_batch(self, phase: str, start: int, images: np.ndarray,
                    abort: Optional[threading.Event] = None, hold: Optional[Hold] = None,
                    stats: Optional[AttemptStats] = None) -> list[QueryRecord]:
        """Query images [B, H, W, C] (samples start … start+B−1) until each has a final record
        (see :class:`~robust_api.dispatch.attempts.BatchAttempts`; raises its BatchFailed).
        Retries and throttled answers are counted in ``stats`` (default: :attr:`stats`)."""
        return BatchAttempts(self.provider, self.budget, self.retry, self.rate_limiter, self._rng, phase, start,
                             images, abort, hold, self.stats if stats is None else stats).run()

    def _query_serially(self, phase: str, start: int, images: np.ndarray,
                        abort: Optional[threading.Event] = None, hold: Optional[Hold] = None,
                        stats: Optional[AttemptStats] = None) -> list[QueryRecord]:
        with self._serial:
            return self.query_batch(phase, start, images, abort, hold, stats)

    def run(self, phase: str, batches: Iterable[tuple[int, np.ndarray]], total: int,
            on_records: Callable[[Sequence[QueryRecord]], None], hold: Optional[Hold] = None,
            stats: Optional[AttemptStats] = None) -> None:
        """Send every (start, images) batch and hand each batch's final records to ``on_records``
        (called in this thread, in completion order). Retries and throttled answers are counted
        in ``stats`` (a call's, whose parent is :attr:`stats`; default: :attr:`stats`).

        On a failure that retrying cannot fix — in a batch, in making the batches (the
        denoiser) or in recording them (the log) — no new batch is sent, the batches in flight
        stop retrying, finish and are recorded (the failed batch's unfinished samples as
        errors), and the first failure is raised.

        ``batches`` may carry ``max_in_flight`` (read before each new batch: no more of its
        batches are sent at once, a memory plan's limit) and ``close()`` (called once the
        run is over, to give back what making the batches reserved). A batch is dropped from
        here as soon as it is settled, so its memory can go before the next is made.
        """
        PhaseRun(self, phase, batches, total, on_records, hold, stats).run()


class _RecordingFailed(Exception):
    """Writing a batch's records failed (raised again as its cause once the run is over)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class PhaseRun:
    """One :meth:`Dispatcher.run`: the batches of a phase, their settling and the first failure."""

    def __init__(self, dispatcher: Dispatcher, phase: str, batches: Iterable[tuple[int, np.ndarray]], total: int,
                 on_records: Callable[[Sequence[QueryRecord]], None], hold: Optional[Hold],
                 stats: Optional[AttemptStats] = None):
        self.dispatcher, self.phase, self.batches, self.on_records, self.hold = dispatcher, phase, batches, on_records, hold
        self.stats = dispatcher.stats if stats is None else stats
        # a run's bar (a listener) shows the progress of the whole run: no bar per phase then
        self.bar = progress_bar(False if dispatcher._listeners else dispatcher.progress, total, phase)
        self.abort = threading.Event()
        self.failures: list[BaseException] = []
        self._iterator = iter(batches)

    def run(self) -> None:
        try:
            if self.dispatcher.concurrency <= 1:
                self._send_serially()
            else:
                self._send_concurrently()
        finally:
            if self.bar is not None:
                self.bar.close()
            close = getattr(self.batches, "close", None)
            if callable(close):
                close()
        self._raise_first_failure()

    def _fail(self, exc: BaseException) -> None:
        self.failures.append(exc)
        self.abort.set()

    def _deliver(self, records: Sequence[QueryRecord]) -> None:
        if self.failures and isinstance(self.failures[0], _RecordingFailed):
            return  # the log refused a write: do not try again
        try:
            self.on_records(records)
        except BaseException as exc:
            self._fail(_RecordingFailed(exc))
            return
        if self.bar is not None:
            self.bar.update(len(records))
        for listener in self.dispatcher._listeners:
            try:
                listener(records)
            except Exception:  # a display must never fail the run
                logger.debug("a progress listener failed", exc_info=True)

    def _settle(self, outcome: Callable[[], list[QueryRecord]], images: np.ndarray) -> None:
        try:
            records = outcome()
        except BatchFailed as failed:
            records = [failed.finished[i] for i in range(len(images))]  # BatchAttempts fills every slot
            self._fail(failed.cause)
        self._deliver(records)

    def _next_batch(self) -> Optional[tuple[int, np.ndarray]]:
        try:
            return next(self._iterator)
        except StopIteration:
            return None
        except BaseException as exc:  # the denoiser (or the noise) failed: nothing of it was sent
            self._fail(exc)
            return None

    def _send_serially(self) -> None:
        dispatcher = self.dispatcher
        while not self.failures:
            item = self._next_batch()
            if item is None:
                break
            start, images = item
            self._settle(lambda: dispatcher._query_serially(self.phase, start, images, self.abort, self.hold,
                                                            self.stats), images)
            item = images = None  # the batch's memory can go before the next one is made

    def _send_concurrently(self) -> None:
        dispatcher = self.dispatcher
        executor = dispatcher._pool()
        in_flight: dict[Future, np.ndarray] = {}

        def collect() -> None:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                self._settle(future.result, in_flight.pop(future))

        try:
            while not self.failures:
                limit = min(dispatcher.concurrency, getattr(self.batches, "max_in_flight", None) or dispatcher.concurrency)
                while len(in_flight) >= limit:
                    collect()
                if self.failures:
                    break
                item = self._next_batch()
                if item is None:
                    break
                start, images = item
                future = executor.submit(dispatcher.query_batch, self.phase, start, images, self.abort, self.hold,
                                         self.stats)
                in_flight[future] = images
                item = images = None  # only in_flight holds the batch now
            while in_flight:
                collect()
        except BaseException:  # e.g. KeyboardInterrupt while waiting
            self.abort.set()
            for future in in_flight:
                future.cancel()
            raise

    def _raise_first_failure(self) -> None:
        if not self.failures:
            return
        first = self.failures[0]
        if isinstance(first, _RecordingFailed):
            raise first.cause
        if isinstance(first, RobustAPIError) or not isinstance(first, Exception):
            raise first
        provider = self.dispatcher.provider
        raise ProviderError(provider.redact(f"{provider.identity} failed: {type(first).__name__}: {first}")) from first
