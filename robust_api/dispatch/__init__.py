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

One job per module: :mod:`.retry` (the backoff policy), :mod:`.rates` (rate limits),
:mod:`.budget` (the caps), :mod:`.attempts` (one batch until every sample has a final
record), :mod:`.dispatcher` (a phase's batches across the worker threads) and
:mod:`.progress` (one progress bar per run, retry and throttling counts).
"""

from .attempts import BatchAttempts, BatchFailed
from .budget import Budget, Hold, Spending
from .dispatcher import Dispatcher
from .progress import AttemptStats, RunProgress
from .rates import RateLimiter, shared_rate_limiter
from .retry import UNBILLED_KINDS, RetryPolicy

__all__ = [
    "RetryPolicy", "RateLimiter", "Budget", "Hold", "Spending", "Dispatcher", "shared_rate_limiter", "BatchAttempts",
    "BatchFailed", "UNBILLED_KINDS", "AttemptStats", "RunProgress",
]
