"""What a run shows while it goes: one progress bar for a run of many images, and the counts
of retries and throttled answers that the log summarises at INFO level.

- :class:`AttemptStats` counts, thread-safely, the retries, throttled answers and queries that
  failed for good (after their retries, or refused), for one call; its parent holds the
  dispatcher's lifetime totals.
- :class:`RunProgress` is one bar for a whole run (``RobustAPI.certify_many``, or a
  multi-image ``robust-api certify``/``predict``): images done out of the total, queries sent,
  their list price in USD and the time left. While it watches a dispatcher, the dispatcher
  shows no bar of its own for each phase. It goes to stderr, shows at once when the run
  starts, and is off when stderr is not a terminal unless forced.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional, TextIO

__all__ = ["AttemptStats", "RunProgress", "show_progress"]

logger = logging.getLogger(__name__)

#: Seconds between two redraws of the bar's query and dollar counts while an image runs.
REFRESH_S = 0.2


def _plural(count: int, word: str, plural: Optional[str] = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


class AttemptStats:
    """Retries, throttled answers and queries that failed for good (thread-safe).

    Args:
        parent: another AttemptStats that every count is also added to (a call's counts go
            to its dispatcher's lifetime totals).
    """

    def __init__(self, parent: Optional["AttemptStats"] = None):
        self.parent = parent
        self._lock = threading.Lock()
        self.retries = 0
        self.throttled = 0
        self.failed = 0

    def add(self, retries: int = 0, throttled: int = 0, failed: int = 0) -> None:
        """Count ``retries`` samples sent again, ``throttled`` throttled answers and ``failed``
        samples recorded as errors once their attempts were used up."""
        if not (retries or throttled or failed):
            return
        with self._lock:
            self.retries += retries
            self.throttled += throttled
            self.failed += failed
        if self.parent is not None:
            self.parent.add(retries, throttled, failed)

    def snapshot(self) -> tuple[int, int, int]:
        """(retries, throttled, failed) so far."""
        with self._lock:
            return self.retries, self.throttled, self.failed

    def __bool__(self) -> bool:
        return any(self.snapshot())

    @staticmethod
    def describe(retries: int, throttled: int, failed: int) -> str:
        """The text "N retries, M throttled responses, K failed queries" (the last part when K > 0)."""
        text = f"{_plural(retries, 'retry', 'retries')}, {_plural(throttled, 'throttled response')}"
        if failed:
            text += f", {_plural(failed, 'failed query', 'failed queries')}"
        return text


def show_progress(progress: Optional[bool], stream: Optional[TextIO] = None) -> bool:
    """Whether to draw a bar: always with True, never with False, and with None only when
    ``stream`` (default stderr) is an interactive terminal."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class RunProgress:
    """One progress display for a run of ``total`` images (thread-safe).

    The bar (tqdm) shows images done out of ``total``, the time left, and the queries sent
    and their list price, counted from the records the watched dispatchers settle. Without a
    bar (not a terminal, ``show=False``, tqdm missing) nothing is drawn, but :meth:`note`
    lines are still written when ``detail`` is on.

    Args:
        total: images in the run; None when not known in advance (a stream of images:
            the bar then counts without a percentage or time left).
        description: the bar's label ("certify", "predict").
        show: True (always), False (never) or None (when ``stream`` is a terminal).
        detail: also write one line per image (:meth:`image_done` with a text).
        stream: where it writes (default: ``sys.stderr`` at creation).

    Use it as a context manager, or call :meth:`close`; :meth:`watch` attaches it to a
    dispatcher (which then draws no per-phase bar and reports each settled batch here).
    """

    def __init__(self, total: Optional[int], *, description: str = "certify", show: Optional[bool] = None,
                 detail: bool = False, stream: Optional[TextIO] = None):
        self.total = None if total is None else int(total)
        self.description = description
        self.detail = bool(detail)
        self.stream = sys.stderr if stream is None else stream
        self.images = 0
        self.failed_images = 0
        self.queries = 0
        self.cost_usd = 0.0
        self._lock = threading.RLock()
        self._began = time.monotonic()
        self._refreshed = 0.0
        self._watched: list[tuple[Any, Optional[tuple[int, int, int]]]] = []
        self._closed = False
        self.bar = self._make_bar() if show_progress(show, self.stream) else None

    def _make_bar(self):
        try:
            from tqdm import tqdm
        except ImportError:
            logger.info("install tqdm for a progress bar")
            return None
        bar = tqdm(total=self.total, desc=self.description, unit="image", file=self.stream, dynamic_ncols=True,
                   leave=True, mininterval=REFRESH_S)
        bar.set_postfix_str(self._counts(), refresh=True)  # drawn at once, before the first query
        return bar

    def _counts(self) -> str:
        return f"{_plural(self.queries, 'query', 'queries')}, ${self.cost_usd:.4f}"

    # -- what the run reports ------------------------------------------------------------
    def watch(self, dispatcher: Any) -> None:
        """Count the batches ``dispatcher`` settles from now on (and hide its per-phase bars)."""
        stats = getattr(dispatcher, "stats", None)
        with self._lock:
            self._watched.append((dispatcher, stats.snapshot() if stats is not None else None))
        dispatcher.add_listener(self.settled)

    def settled(self, records: Sequence[Any]) -> None:
        """A batch's final records arrived: add its queries and their price (the log's costs)."""
        with self._lock:
            self.queries += len(records)
            self.cost_usd += sum(float(getattr(record, "cost_usd", 0.0) or 0.0) for record in records)
            now = time.monotonic()
            if self.bar is not None and now - self._refreshed >= REFRESH_S:
                self._refreshed = now
                self.bar.set_postfix_str(self._counts(), refresh=True)

    def image_done(self, text: Optional[str] = None, failed: bool = False) -> None:
        """One more image finished (``failed``: with an error); ``text`` is its detail line."""
        with self._lock:
            self.images += 1
            self.failed_images += bool(failed)
            if self.detail and text:
                self.note(text)
            if self.bar is not None:
                self.bar.set_postfix_str(self._counts(), refresh=False)
                self.bar.update(1)

    def note(self, text: str) -> None:
        """Write a line to the stream, above the bar when there is one."""
        with self._lock:
            if self.bar is not None:
                self.bar.write(text, file=self.stream)
            else:  # the caller's stream (the CLI's stderr), as the bar would write it
                self.stream.write(text + "\n")
                self.stream.flush()

    def retry_counts(self) -> tuple[int, int, int]:
        """(retries, throttled, failed) of the watched dispatchers since :meth:`watch`."""
        totals = [0, 0, 0]
        for dispatcher, before in self._watched:
            stats = getattr(dispatcher, "stats", None)
            if stats is None or before is None:
                continue
            for i, (now, then) in enumerate(zip(stats.snapshot(), before)):
                totals[i] += now - then
        return totals[0], totals[1], totals[2]

    def close(self) -> None:
        """Stop watching, close the bar and log the run's summary (INFO): images, queries,
        dollars, time, retries and throttled answers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for dispatcher, _ in self._watched:
                dispatcher.remove_listener(self.settled)
            if self.bar is not None:
                self.bar.set_postfix_str(self._counts(), refresh=False)
                self.bar.close()
        seconds = time.monotonic() - self._began
        failed = f" ({self.failed_images} failed)" if self.failed_images else ""
        of_total = "" if self.total is None else f" of {self.total}"
        logger.info("%s: %d%s images done%s, %s ($%.4f) in %.1f s; %s", self.description, self.images, of_total,
                    failed, _plural(self.queries, "query", "queries"), self.cost_usd, seconds,
                    AttemptStats.describe(*self.retry_counts()))

    def __enter__(self) -> "RunProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
