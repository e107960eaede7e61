"""The engine's settings, checked from RobustAPI's keyword arguments before anything is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..dispatch import Budget, RetryPolicy
from ..errors import InvalidParameterError
from ..memory import check_memory_limit
from ..validation import (
    MAX_ATTEMPTS, MAX_BACKOFF_S, MAX_BATCH_SIZE, MAX_CONCURRENCY, MAX_SEED, _is_integer, check_count, check_flag,
    check_rate_limit, check_seed,
)
from .building import check_class_names

__all__ = ["EngineOptions"]


@dataclass(frozen=True)
class EngineOptions:
    """Validated settings of one RobustAPI (see its docstring for each argument's meaning).

    Attributes:
        online: bool. seed: None or an integer in [0, 2⁶³).
        batch_size, concurrency: None (the provider's) or a count in range.
        rate_limit: None (the provider's) or requests per second ≥ 0.001 (inf: none).
        progress: True, False or None. retry: a RetryPolicy.
        max_queries, max_cost_usd: the caps (None: none).
        memory_limit: bytes. max_pixels: None or a positive int. downscale: bool.
    """

    online: bool
    seed: Optional[int]
    batch_size: Optional[int]
    concurrency: Optional[int]
    rate_limit: Optional[float]
    progress: Optional[bool]
    retry: RetryPolicy
    max_queries: Optional[int]
    max_cost_usd: Optional[float]
    memory_limit: int
    max_pixels: Optional[int]
    downscale: bool

    @classmethod
    def check(cls, *, online, seed, batch_size, concurrency, rate_limit, progress, retry, max_queries,
              max_cost_usd, memory_limit_mb, max_pixels, downscale, class_names) -> "EngineOptions":
        """Check every argument (InvalidParameterError naming it and its range), before a
        provider, a log file or a thread exists."""
        online = check_flag(online, "online")
        if batch_size is not None:
            batch_size = check_count(batch_size, "batch_size", MAX_BATCH_SIZE)
        if concurrency is not None:
            concurrency = check_count(concurrency, "concurrency", MAX_CONCURRENCY, why=" (one thread per request in flight)")
        if rate_limit is not None:
            rate_limit = check_rate_limit(rate_limit)
        if progress is not None and not isinstance(progress, bool):
            raise InvalidParameterError(f"progress must be True, False or None, got {progress!r}")
        if _is_integer(retry):
            retry = check_count(retry, "retry", MAX_ATTEMPTS, why=" attempts per query")
        if max_queries is not None and _is_integer(max_queries):
            max_queries = check_count(max_queries, "max_queries", MAX_SEED, minimum=0)
        check_class_names(class_names)
        memory_limit = check_memory_limit(memory_limit_mb)
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer))
                                       or max_pixels < 1):
            raise InvalidParameterError(f"max_pixels must be a positive integer (height × width), got {max_pixels!r}")
        if not isinstance(downscale, bool):
            raise InvalidParameterError(f"downscale must be True or False, got {downscale!r}")
        retry = RetryPolicy.coerce(retry)
        if retry.max_attempts > MAX_ATTEMPTS:
            raise InvalidParameterError(
                f"retry allows at most {MAX_ATTEMPTS} attempts per query, got a RetryPolicy with "
                f"max_attempts={retry.max_attempts}"
            )
        for field in ("initial_backoff_s", "max_backoff_s", "max_retry_after_s"):
            if getattr(retry, field) > MAX_BACKOFF_S:
                raise InvalidParameterError(
                    f"RetryPolicy.{field} must be <= {MAX_BACKOFF_S:g} seconds (one wait between two attempts), "
                    f"got {getattr(retry, field)!r}"
                )
        max_queries, max_cost_usd = Budget.check_caps(max_queries, max_cost_usd)
        return cls(
            online=online, seed=None if seed is None else check_seed(seed), batch_size=batch_size,
            concurrency=concurrency, rate_limit=rate_limit, progress=progress, retry=retry, max_queries=max_queries,
            max_cost_usd=max_cost_usd, memory_limit=memory_limit,
            max_pixels=None if max_pixels is None else int(max_pixels), downscale=downscale,
        )
