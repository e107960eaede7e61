"""Many images at once: ``certify_many`` and ``certify_stream`` (each image as one certify
call, several in flight, drawn from a stream through a bounded window: O(parallel) images in
memory, never the whole run) and ``certify_batch`` (sequential calls sharing one query budget,
look by look)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Optional

import numpy as np

from ..dispatch.progress import RunProgress
from ..errors import InvalidParameterError
from ..image_sources import ImageSource
from ..offline import CertifySettings, certify_from_log
from ..results import Certificate
from .core import Engine
from .looks import SequentialRun

__all__ = ["certify_many", "certify_stream", "certify_batch", "check_batch_budget", "check_all"]

_NOT_STARTED = object()  # what a queued image's task returns once the run has stopped


def certify_stream(engine: Engine, sources: Iterable[ImageSource], settings: CertifySettings, seed: Optional[int],
                   parallel: Optional[int], prepare: Callable[[ImageSource], tuple[np.ndarray, Optional[dict]]], *,
                   order: str = "input", total: Optional[int] = None, holds: Optional[Sequence] = None,
                   description: str = "certify_iter") -> Iterator[tuple[int, Certificate]]:
    """The streaming core of :func:`certify_many` and ``RobustAPI.certify_iter``: certify the
    images of ``sources``, ``parallel`` at a time, each exactly as one certify call; yield
    ``(index, certificate)`` per image.

    Args:
        sources: the run's :class:`~robust_api.image_sources.ImageSource` items, drawn one at a
            time, only when the window below has room.
        parallel: images certified at once (default: the dispatcher's concurrency; capped at
            ``total`` when known). 1 certifies them one after the other in this thread.
        prepare: ``source -> (canonical image float32 [H, W, C] in [0, 1], info)``, called on
            each image as it is drawn (the checks of ``engine.check_image``; ``info`` is what
            its call records besides). An error here is that image's failure.
        order: ``"input"``: yielded in input order; ``"completed"``: as each image finishes.
        total: the number of images when known (the progress bar's total), else None.
        holds: per index, queries already held from the caps for that image (the caller took
            them, and gives back what no call used); an image without one is held
            (``engine.hold_for(settings)``) when it starts.
        description: the progress bar's label.

    Memory: at most ``parallel + 1`` images are decoded at once (the ones in progress and one
    checked ahead, waiting for a free thread); with ``order="input"`` at most ``2 · parallel``
    images are drawn and not yet yielded (finished ones wait for the images before them). An
    image is drawn only when there is room, and the next one only when the generator is
    resumed: a slow consumer slows the run down instead of filling memory.

    Failures: once an image fails (its check, its hold, its queries, or the source itself),
    no further image is drawn or started and nothing more is yielded; the images in progress
    finish (their queries are in the log), then the first error is raised. Closing the
    generator early (``break``) does the same without an error: no new image starts, and the
    close waits for the images in progress.
    """
    workers = parallel or engine.dispatcher.concurrency
    if total is not None:
        workers = max(1, min(workers, total))
    # one bar for the whole run (images, queries, dollars, time left), none per phase
    progress = RunProgress(total, description=description, show=engine.options.progress)
    progress.watch(engine.dispatcher)
    with progress:
        if workers <= 1:
            for source in sources:
                index = source.index
                image, info = _prepare_counted(progress, prepare, source)
                source = None
                certificate = _certify_counted(engine, progress, image, settings, seed, holds, index, info)
                image = None  # not kept while the caller holds the generator
                yield index, certificate
            return
        yield from _certify_window(engine, progress, iter(sources), settings, seed, workers, prepare, order, holds)


def _certify_window(engine: Engine, progress: RunProgress, sources: Iterator[ImageSource], settings: CertifySettings,
                    seed: Optional[int], workers: int, prepare, order: str,
                    holds: Optional[Sequence]) -> Iterator[tuple[int, Certificate]]:
    """:func:`certify_stream` with ``workers`` threads: a bounded window of drawn images."""
    stop = threading.Event()  # set once an image fails or the generator is closed: nothing more starts
    errors: list[BaseException] = []  # in the order they happened
    errors_lock = threading.Lock()

    def failed(exc: BaseException) -> None:
        with errors_lock:
            errors.append(exc)
        stop.set()

    def certify_one(index: int, image: np.ndarray, info: Optional[dict]):
        if stop.is_set():
            return _NOT_STARTED  # another image failed: this one is not started
        try:
            return _certify_counted(engine, progress, image, settings, seed, holds, index, info)
        except BaseException as exc:
            failed(exc)
            raise

    decoded_limit = workers + 1  # in progress, plus one checked ahead for the next free thread
    drawn_limit = 2 * workers if order == "input" else decoded_limit
    pending: dict[int, Future] = {}  # drawn and not yet yielded, in draw order
    exhausted = False
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="robust-api-image")
    try:
        while True:
            while (not exhausted and not stop.is_set() and len(pending) < drawn_limit
                   and sum(not future.done() for future in pending.values()) < decoded_limit):
                try:
                    source = next(sources)
                except StopIteration:
                    exhausted = True
                    break
                except BaseException as exc:  # the source itself failed (a generator's error)
                    failed(exc)
                    break
                try:
                    image, info = _prepare_counted(progress, prepare, source)
                except BaseException as exc:
                    failed(exc)
                    break
                pending[source.index] = pool.submit(certify_one, source.index, image, info)
                source = image = None  # the thread keeps the image only until its call is done
            if stop.is_set():
                wait(list(pending.values()))  # the images in progress finish; queued ones do not start
                raise errors[0]
            if order == "input":
                ready = next(iter(pending), None)
                ready = ready if ready is not None and pending[ready].done() else None
            else:
                ready = next((index for index, future in pending.items() if future.done()), None)
            if ready is not None:
                certificate = pending.pop(ready).result()
                if certificate is _NOT_STARTED or stop.is_set():  # an image failed meanwhile
                    continue
                yield ready, certificate
                certificate = None
                continue
            if not pending:
                if exhausted:
                    return
                continue
            wait([future for future in pending.values() if not future.done()], return_when=FIRST_COMPLETED)
    finally:
        stop.set()  # closed early, or failed: queued images do not start
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare_counted(progress: RunProgress, prepare, source: ImageSource):
    """``prepare(source)``; a failure is counted on the run's progress bar as a failed image."""
    try:
        return prepare(source)
    except BaseException:
        progress.image_done(failed=True)
        raise


def _certify_counted(engine: Engine, progress: RunProgress, image: np.ndarray, settings: CertifySettings,
                     seed: Optional[int], holds: Optional[Sequence], index: int, info) -> Certificate:
    """One image of a run: held from the caps (unless ``holds`` has its hold), certified, and
    counted on the run's progress bar once it is done."""
    try:
        hold = holds[index] if holds is not None and index < len(holds) else engine.hold_for(settings)
        certificate = engine.certify(image, settings, seed, hold, info)
    except BaseException:
        progress.image_done(failed=True)
        raise
    progress.image_done()
    return certificate


def certify_many(engine: Engine, sources: Iterable[ImageSource], settings: CertifySettings, seed: Optional[int],
                 parallel: Optional[int], prepare: Callable[[ImageSource], tuple[np.ndarray, Optional[dict]]], *,
                 again: Optional[Callable[[], Iterable[ImageSource]]] = None) -> list[Certificate]:
    """Certify a run of images, ``parallel`` at a time (default: the dispatcher's concurrency),
    each exactly as one certify call; return the certificates in input order.

    Args:
        sources: the images (see :func:`certify_stream`; ``prepare`` checks each one).
        again: for a re-iterable input (a sequence, a folder's or pattern's files): gives the
            same images afresh. Then every image is first checked (``prepare``, whose decoded
            array is dropped at once: only the count is kept) and the whole set is held from
            the caps (fixed-N: all its queries; sequential: selection and first look), all
            before any query, so a bad image or a set the caps cannot take costs nothing and
            early images cannot starve later ones; the images are then read again as each
            starts. Without it, ``sources`` is streamed: each image is checked when drawn and
            held when it starts.

    Memory: O(parallel) decoded images at once, never O(run) (see :func:`certify_stream`);
    the certificates themselves are all returned.

    Failures: once an image fails, no further image starts (whichever thread is free next);
    the first error is raised once the images in progress have finished. One
    :class:`~robust_api.dispatch.progress.RunProgress` bar shows the whole run (the engine's
    ``progress`` option decides whether it is drawn).
    """
    holds: list = []
    total = None
    try:
        if again is not None:
            total = check_all(sources, prepare)
            for _ in range(total):
                holds.append(engine.hold_for(settings, total))
            sources = again()
        results: dict[int, Certificate] = {}
        for index, certificate in certify_stream(engine, sources, settings, seed, parallel, prepare, order="completed",
                                                 total=total, holds=holds if again is not None else None,
                                                 description="certify_many"):
            results[index] = certificate
        return [results[index] for index in sorted(results)]
    finally:
        # what no call used goes back (a finished call already gave back the rest of its hold)
        for hold in holds:
            engine.budget.release(hold)


def check_all(sources: Iterable[ImageSource], prepare) -> int:
    """Check every image of a re-iterable run with ``prepare`` before any query, dropping each
    decoded array at once (the images are read again when they start); return their number."""
    total = 0
    for source in sources:
        prepare(source)
        total += 1
    return total


def check_batch_budget(settings: CertifySettings, images: int, total_queries: int) -> None:
    """Raise InvalidParameterError when ``total_queries`` cannot give each of ``images``
    images its selection and first look (checked before any image is read)."""
    first_look = settings.rule().looks()[0]
    per_image = settings.selection_queries + first_look
    if per_image * images > total_queries:
        raise InvalidParameterError(
            f"total_queries={total_queries} cannot give each of the {images} images its selection "
            f"({settings.selection_queries}) and first look ({first_look} samples); "
            f"pass total_queries >= {per_image * images}"
        )


def certify_batch(engine: Engine, images: list[np.ndarray], settings: CertifySettings, seed: Optional[int],
                  total_queries: int, infos: Optional[list] = None) -> list[Certificate]:
    """Certify checked canonical images sequentially under one shared budget of
    ``total_queries``: every image gets its selection and first look, then each next look
    goes to the image whose radius is expected to grow most per query (see
    :meth:`SequentialRun.gain_per_query`); an image whose next look does not fit ends there.

    Raises:
        InvalidParameterError: ``total_queries`` too small for every selection and first
            look (see :func:`check_batch_budget`), or caps that cannot take them (before any query).
    """
    check_batch_budget(settings, len(images), total_queries)
    rule = settings.rule()
    per_image = settings.selection_queries + rule.looks()[0]
    params = {**settings.params(), "total_queries": total_queries}
    # refused before any query when the caps cannot take every selection and first look
    engine.budget.release(engine.budget.hold(per_image * len(images), engine.provider.cost_per_query_usd,
                                             "certify_batch's selections and first looks"))
    infos = infos or [None] * len(images)
    calls = [engine.open_call(image, "certify", settings.noise_sd, seed, {**params, **(info or {})})
             for image, info in zip(images, infos)]
    spent = 0
    try:
        active = []
        for call in calls:  # every image gets its selection and first look
            guess = engine.select(call, settings)
            spent += settings.selection_queries
            if guess is not None:
                run = SequentialRun(call, guess, rule)
                spent += run.next_look()
                if run.advance() is None:
                    active.append(run)
        while active:  # then the budget goes where it buys the most radius per query
            active.sort(key=lambda run: -run.gain_per_query())
            run = active[0]
            step = run.next_look() - run.n
            if spent + step > total_queries:
                active.pop(0)  # this image's next look does not fit: it ends here
                continue
            spent += step
            if run.advance() is not None:
                active.pop(0)
    except BaseException:
        for call in calls:
            call.close("failed")
        raise
    for call in calls:
        call.close("complete")
    return [certify_from_log(call.logs(), alpha=settings.alpha, queries=call.queries, offline=False) for call in calls]
