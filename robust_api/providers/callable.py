"""Any Python callable as a provider: ``fn(images [N, H, W, C] float32 in [0, 1]) -> N answers``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from ..errors import InvalidParameterError, ProviderResponseError
from ..pricing import check_cost_per_query
from ..validation import MAX_BATCH_SIZE, check_count
from .base import Provider, apply_label_fn, check_label_fn

__all__ = ["CallableProvider"]


def _callable_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


class CallableProvider(Provider):
    """Wrap a function (or any callable object) as a provider.

    Args:
        fn: called with float32 [B, H, W, C] in [0, 1]; returns a sequence of B answers:
            str labels, or raw responses (JSON-able) when ``label_fn`` is given.
        label_fn: optional pure function raw response -> str label.
        name: the identity written to the log (default ``"callable:<module>.<qualname>"``).
            Give a stable name when the function is a lambda or a closure and you want
            re-runs to resume from the log.
        batch_size: the most images per call of ``fn``, in [1, 65536] (default 256).
        cost_per_query_usd: price recorded per query (default 0): finite, in [0, $1] unless
            ``allow_high_cost=True`` (see :func:`robust_api.pricing.check_cost_per_query`).
        allow_high_cost: accept a price above $1 per query.
        model_version: recorded in the log when given.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], Sequence[Any]],
        label_fn: Optional[Callable[[Any], str]] = None,
        name: Optional[str] = None,
        batch_size: int = 256,
        cost_per_query_usd: float = 0.0,
        model_version: Optional[str] = None,
        allow_high_cost: bool = False,
    ):
        if not callable(fn):
            raise InvalidParameterError(f"provider must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.label_fn = check_label_fn(label_fn, "raw response")
        self.identity = name or f"callable:{_callable_name(fn)}"
        self.max_batch_size = check_count(batch_size, "batch_size", MAX_BATCH_SIZE)
        self.cost_per_query_usd = check_cost_per_query(cost_per_query_usd, allow_high_cost=allow_high_cost)
        self.allow_high_cost = allow_high_cost
        self.model_version = model_version

    def send(self, images: np.ndarray) -> Sequence[Any]:
        answers = self.fn(images)
        if isinstance(answers, (str, bytes)) or not hasattr(answers, "__len__"):
            raise ProviderResponseError(
                f"{self.identity} returned {type(answers).__name__}; it must return a list with one answer per image "
                f"({len(images)} images in this batch)"
            )
        answers = list(answers.tolist() if isinstance(answers, np.ndarray) else answers)
        if len(answers) != len(images):
            raise ProviderResponseError(
                f"{self.identity} returned {len(answers)} answers for a batch of {len(images)} images; "
                "it must return exactly one label per image, in order"
            )
        return answers

    def parse(self, raw: Any) -> str:
        if self.label_fn is not None:
            return apply_label_fn(self.label_fn, raw)
        label = raw
        if not isinstance(label, str):
            raise ProviderResponseError(
                f"{self.identity} produced a label of type {type(label).__name__} ({label!r:.60}); labels must be str. "
                "Map class indices to names, or pass label_fn= to extract the label from a raw response."
            )
        return label
