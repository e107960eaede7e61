"""A simulated vision API: a fixed latency per request, a price, a quota, a deterministic
classifier, and a record of when each request was sent. For dry runs of a deployment (a Ray
cluster, a rate limit, a budget) without an account or a network, and for the scale
benchmark (``benchmarks/scale.py``).

The classifier is a fixed random linear map of the image's 2 × 2 block means (per channel)
onto ``classes`` labels ``"class-0"``, ``"class-1"``, ...: the same image gets the same label
in every process, and Gaussian noise flips it near the class boundaries, so certificates
range from abstentions to large radii.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from numbers import Real
from typing import Any, Optional

import numpy as np

from ..errors import InvalidParameterError, ProviderResponseError
from ..pricing import check_cost_per_query
from ..validation import MAX_BATCH_SIZE, MAX_CONCURRENCY, check_count
from .base import Provider

__all__ = ["SimulatedProvider", "read_send_times"]

_FEATURES = 12  # 2 × 2 blocks × 3 channels


def _check_seconds(value: Any, name: str, upper: float = 3600.0) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (0 <= value <= upper):
        raise InvalidParameterError(f"{name} must be a number of seconds in [0, {upper:g}], got {value!r}")
    return float(value)


def _block_means(image: np.ndarray) -> np.ndarray:
    """The means of the 2 × 2 blocks of a [H, W, C] image, per channel (gray repeated), [12]."""
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    h, w = image.shape[0] // 2 or 1, image.shape[1] // 2 or 1
    blocks = [image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:]]
    return np.concatenate([b.reshape(-1, 3).mean(axis=0) if b.size else np.full(3, 0.5) for b in blocks])


class SimulatedProvider(Provider):
    """A simulated cloud vision API (registered as ``"simulated"``).

    Args:
        latency_s: seconds each request waits for its answer, in [0, 3600] (default 0.05);
            the process is idle meanwhile, as with a remote API.
        busy_s: seconds of CPU work per image, in [0, 60] (default 0), holding the GIL, as a
            local model does: what makes one process CPU-bound.
        classes: number of labels, in [2, 1000] (default 10).
        batch_size: images per request, in [1, 65536] (default 1, as the cloud APIs).
        cost_per_query_usd: list price per image (default $0.0015, Google's).
        rate_limit: the default requests per second (``RobustAPI(rate_limit=None)``; default
            None: unlimited).
        concurrency: the default requests in flight (default 16, as the cloud providers).
        record_dir: a folder; every request appends "<send time> <images>" (wall clock,
            seconds) to ``requests-<pid>.txt`` there, read back by :func:`read_send_times`.
        exit_after: fault injection: the process exits (``os._exit(75)``, as a killed
            worker) at its ``exit_after``-th request, before answering it; only the first
            process to get there exits (it creates ``exit_marker``, which must then not exist).
        exit_marker: the file that marks that the fault was injected (needed with ``exit_after``).
        seed: the classifier's weights (default 0): the same seed gives the same labels.
    """

    identity = "simulated"
    default_concurrency = 16

    def __init__(self, latency_s: float = 0.05, busy_s: float = 0.0, classes: int = 10, batch_size: int = 1,
                 cost_per_query_usd: float = 0.0015, rate_limit: Optional[float] = None, concurrency: int = 16,
                 record_dir: Optional[str] = None, exit_after: Optional[int] = None,
                 exit_marker: Optional[str] = None, seed: int = 0):
        self.latency_s = _check_seconds(latency_s, "latency_s")
        self.busy_s = _check_seconds(busy_s, "busy_s", 60.0)
        self.classes = check_count(classes, "classes", 1000, minimum=2)
        self.max_batch_size = check_count(batch_size, "batch_size", MAX_BATCH_SIZE)
        self.cost_per_query_usd = check_cost_per_query(cost_per_query_usd)
        if rate_limit is not None and (isinstance(rate_limit, bool) or not isinstance(rate_limit, Real)
                                       or not rate_limit > 0):
            raise InvalidParameterError(f"rate_limit must be a positive number of requests per second, got {rate_limit!r}")
        self.default_rate_limit = None if rate_limit is None else float(rate_limit)
        self.default_concurrency = check_count(concurrency, "concurrency", MAX_CONCURRENCY)
        if exit_after is not None:
            exit_after = check_count(exit_after, "exit_after", 10**9)
            if not exit_marker:
                raise InvalidParameterError("exit_after needs exit_marker= (the file that marks the injected fault)")
        self.exit_after, self.exit_marker = exit_after, exit_marker
        self.record_dir = None if record_dir is None else os.fspath(record_dir)
        self.seed = check_count(seed, "seed", 2**32 - 1, minimum=0)
        self.model_version = f"simulated-{self.classes}-{self.seed}"
        self._weights = np.random.default_rng(self.seed).normal(size=(self.classes, _FEATURES))
        self._bias = -self._weights @ np.full(_FEATURES, 0.5)
        self._requests = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # sent to workers: the lock is made anew there
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def scores(self, images: np.ndarray) -> np.ndarray:
        """Softmax scores [B, classes] of float32 images [B, H, W, C] in [0, 1] (pure)."""
        features = np.stack([_block_means(np.asarray(image, dtype=np.float64)) for image in images])
        logits = 40.0 * (features @ self._weights.T + self._bias)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def send(self, images: np.ndarray) -> Sequence[Any]:
        sent = time.time()
        with self._lock:
            self._requests += 1
            number = self._requests
        if self.exit_after is not None and number >= self.exit_after:
            try:
                os.close(os.open(self.exit_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass  # another process was the one to fail
            else:
                os._exit(75)
        if self.record_dir is not None:
            path = os.path.join(self.record_dir, f"requests-{os.getpid()}.txt")
            with self._lock, open(path, "a", encoding="ascii") as out:
                out.write(f"{sent:.6f} {len(images)}\n")
        if self.latency_s:
            time.sleep(self.latency_s)
        if self.busy_s:
            end = time.perf_counter() + self.busy_s * len(images)
            while time.perf_counter() < end:  # CPU work that holds the GIL
                pass
        scores = self.scores(images)
        best = scores.argmax(axis=1)
        return [{"label": f"class-{int(k)}", "score": round(float(row[k]), 6)} for k, row in zip(best, scores)]

    def parse(self, raw: Any) -> str:
        label = raw.get("label") if isinstance(raw, dict) else None
        if not isinstance(label, str):
            raise ProviderResponseError(f"simulated: an answer without a str 'label': {raw!r:.80}")
        return label


def read_send_times(record_dir: str) -> np.ndarray:
    """The send times (wall clock, seconds, sorted) of every request :class:`SimulatedProvider`
    recorded in ``record_dir``, one entry per image (a batch of B images counts B times)."""
    times: list[float] = []
    for name in sorted(os.listdir(record_dir)):
        if name.startswith("requests-") and name.endswith(".txt"):
            with open(os.path.join(record_dir, name), encoding="ascii") as lines:
                for line in lines:
                    sent, count = line.split()
                    times.extend([float(sent)] * int(count))
    return np.sort(np.asarray(times, dtype=np.float64))
