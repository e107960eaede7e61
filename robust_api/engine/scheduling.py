"""Many images at once: ``certify_many`` (each image as one certify call, several in flight)
and ``certify_batch`` (sequential calls sharing one query budget, look by look)."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Optional

import numpy as np

from ..dispatch.progress import RunProgress
from ..errors import InvalidParameterError
from ..offline import CertifySettings, certify_from_log
from ..results import Certificate
from .core import Engine
from .looks import SequentialRun

__all__ = ["certify_many", "certify_batch", "check_batch_budget"]


def certify_many(engine: Engine, images: list[np.ndarray], settings: CertifySettings, seed: Optional[int],
                 parallel: Optional[int], infos: Optional[list] = None) -> list[Certificate]:
    """Certify checked canonical images, ``parallel`` at a time (default: the dispatcher's
    concurrency), each exactly as one certify call. Every image's start (fixed-N: all its
    queries; sequential: selection and first look) is held from the caps before any query,
    so early images cannot starve later ones. Once an image fails, no further image starts
    (whichever thread is free next); the first error is raised once the images in progress
    have finished. ``infos``: per image, what its call records besides (name, tag). One
    :class:`~robust_api.dispatch.progress.RunProgress` bar shows the whole run (the engine's
    ``progress`` option decides whether it is drawn)."""
    infos = infos or [None] * len(images)
    holds = []
    try:
        for _ in images:
            holds.append(engine.hold_for(settings, len(images)))
        workers = min(len(images), parallel or engine.dispatcher.concurrency)
        # one bar for the whole run (images, queries, dollars, time left), none per phase
        progress = RunProgress(len(images), description="certify_many", show=engine.options.progress)
        progress.watch(engine.dispatcher)
        with progress:
            if workers <= 1:
                return [_certify_counted(engine, progress, image, settings, seed, hold, info)
                        for image, hold, info in zip(images, holds, infos)]
            failed = threading.Event()

            def certify_one(image: np.ndarray, hold, info) -> Optional[Certificate]:
                if failed.is_set():
                    return None  # another image failed: this one is not started
                try:
                    return _certify_counted(engine, progress, image, settings, seed, hold, info)
                except BaseException:
                    failed.set()
                    raise

            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="robust-api-image") as pool:
                futures = [pool.submit(certify_one, image, hold, info)
                           for image, hold, info in zip(images, holds, infos)]
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    future.cancel()
            for future in futures:
                if not future.cancelled() and future.exception() is not None:
                    raise future.exception()
            return [future.result() for future in futures]
    finally:
        # what no call used goes back (a finished call already gave back the rest of its hold)
        for hold in holds:
            engine.budget.release(hold)


def _certify_counted(engine: Engine, progress: RunProgress, image: np.ndarray, settings: CertifySettings,
                     seed: Optional[int], hold, info) -> Certificate:
    """One image of :func:`certify_many`, counted on the run's progress bar once it is done."""
    try:
        certificate = engine.certify(image, settings, seed, hold, info)
    except BaseException:
        progress.image_done(failed=True)
        raise
    progress.image_done()
    return certificate


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
