"""The engine: everything an online RobustAPI does between a checked request and a result.

One :class:`Engine` owns the provider, the denoiser seam, the query log, the caps, the
dispatcher and the memory pool. A call goes: check the image (:meth:`Engine.check_image`) →
hold its queries from the caps → open a :class:`~robust_api.engine.calls.Call` → query its
phases (selection, then estimation: all at once, or look by look) → read the call back from
the log → the offline statistics (:mod:`robust_api.offline`), which is also what re-certifies
a stored log. Nothing here validates user arguments of predict/certify: the facade
(:class:`robust_api.RobustAPI`) and :class:`~robust_api.offline.CertifySettings` do, first.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np

from ..dispatch import Budget, Dispatcher, shared_rate_limiter
from ..errors import DenoiserError, ImageTooLargeError, ProviderError
from ..images import DEFAULT_MAX_PIXELS, as_image
from ..memory import MemoryPool, minimum_bytes, plan_blocks
from ..offline import CertifySettings, certify_from_log, guess_from_records, predict_from_log
from ..providers.base import Provider
from ..query_logs.store import open_store
from ..results import Certificate, Prediction
from .calls import Call
from .denoising import Denoising
from .looks import SequentialRun
from .options import EngineOptions

__all__ = ["Engine"]

logger = logging.getLogger(__name__)


class Engine:
    """Runs online calls for one provider, denoiser and log, under one set of caps.

    Args:
        provider: a checked :class:`~robust_api.providers.Provider`.
        denoiser: a runner from :func:`~robust_api.engine.denoising.make_denoiser`, or None.
        options: the validated :class:`~robust_api.engine.options.EngineOptions`.
        budget: the caps (shared with the facade, which reports ``spent`` offline too).
        log: what :func:`~robust_api.query_logs.open_store` takes (None: the default file).
    """

    def __init__(self, provider: Provider, denoiser: Any, options: EngineOptions, budget: Budget, log: Any):
        self.provider = provider
        self.options = options
        self.budget = budget
        self.denoising = Denoising(denoiser, options.memory_limit)
        self.memory = MemoryPool(self.denoising.noise_budget)
        rate = provider.default_rate_limit if options.rate_limit is None else options.rate_limit
        limiter = None if rate is None or math.isinf(rate) else shared_rate_limiter(provider.identity, rate)
        self.dispatcher = Dispatcher(
            provider,
            concurrency=options.concurrency or provider.default_concurrency,
            rate_limiter=limiter,
            retry=options.retry,
            budget=budget,
            progress=options.progress,
        )
        self.log = open_store(log)

    @property
    def seed(self) -> Optional[int]:
        return self.options.seed

    def close(self) -> None:
        """Stop the worker threads (the log and the provider stay usable)."""
        self.dispatcher.close()

    # -- checks before any query ------------------------------------------------------------
    @property
    def pixel_limit(self) -> int:
        """The most pixels (H × W) an image may have: ``max_pixels``, else the provider's limit."""
        if self.options.max_pixels is not None:
            return self.options.max_pixels
        limit = getattr(self.provider, "max_input_pixels", DEFAULT_MAX_PIXELS)
        return DEFAULT_MAX_PIXELS if limit is None else int(limit)

    def check_image(self, image: Any, noise_sd: float) -> np.ndarray:
        """The canonical image (float32 [H, W, C] in [0, 1]; downscaled when asked), checked
        against the pixel limit, the provider, the denoiser and the memory budget; raises a
        typed error before any query or log write."""
        canonical = as_image(image, max_pixels=self.pixel_limit, downscale=self.options.downscale)
        self.provider.check_image(canonical)
        self.denoising.check_fits(canonical, noise_sd)
        self._check_memory(canonical)
        return canonical

    def block_planner(self, image_shape: tuple, samples: int):
        """(planner(available bytes) -> BlockPlan or None, describe() -> error message) for
        the noisy copies of an image of ``image_shape`` (see :func:`robust_api.memory.plan_blocks`)."""
        copy_bytes = 4 * int(np.prod(image_shape))
        max_batch = self.provider.max_batch_size
        batch = min(self.options.batch_size or max_batch, max_batch)
        concurrency = self.dispatcher.concurrency
        copies = self.denoising.copies_in_memory
        scratch = float(getattr(self.provider, "request_scratch_copies", 0.0))

        def planner(available: int):
            return plan_blocks(copy_bytes, samples, batch, concurrency, available, copies, scratch)

        def describe() -> str:
            need = minimum_bytes(copy_bytes, self.memory.budget, copies, scratch)
            shape = "×".join(map(str, image_shape))
            return (
                f"a {shape} image takes {copy_bytes / 2**20:,.1f} MB per float32 noisy copy; its noise path needs "
                f"at least {need / 2**20:,.0f} MB, but memory_limit_mb={self.options.memory_limit / 2**20:g} leaves "
                f"{self.memory.budget / 2**20:,.0f} MB for it. Raise memory_limit_mb=, or pass downscale=True "
                "with a smaller max_pixels= (the certificate is then for the smaller image)"
            )

        return planner, describe

    def _check_memory(self, image: np.ndarray) -> None:
        planner, describe = self.block_planner(image.shape, 1)
        if planner(self.memory.budget) is None:
            raise ImageTooLargeError(describe())
        try:
            self.denoising.check_tiles(image.shape)
        except DenoiserError as exc:
            raise ImageTooLargeError(str(exc)) from None

    # -- calls ------------------------------------------------------------------------------
    def hold_for(self, settings: CertifySettings, images: int = 1):
        """Hold the queries one certify call needs before it may start (sequential: its
        selection and first look; it stops early, "ended", when later looks do not fit)."""
        if settings.method == "sequential":
            needed = settings.selection_queries + settings.rule().looks()[0]
            what = "the selection and first look of a sequential certify"
        else:
            needed = settings.selection_queries + settings.N
            what = f"certify with {settings.selection_queries} + N={settings.N}"
        if images > 1:
            what = f"{what}, for each of {images} images,"
        return self.budget.hold(needed, self.provider.cost_per_query_usd, what)

    def open_call(self, image: np.ndarray, kind: str, noise_sd: float, seed: Optional[int], params: dict,
                  hold=None) -> Call:
        """Begin a call on a checked canonical image (see :meth:`Call.open`); ``hold`` (queries
        set aside for it) is given back when the call cannot be opened."""
        try:
            return Call.open(self, image, kind, noise_sd, seed, params, hold)
        except BaseException:
            self.budget.release(hold)
            raise

    def predict(self, image: np.ndarray, N: int, noise_sd: float, alpha: float, seed: Optional[int],
                info: Optional[dict] = None) -> Prediction:
        """PREDICT on a checked canonical image with checked N, σ (0: clean queries) and α;
        ``info`` (the image's name and tag, checked) is recorded in the call's params."""
        phase = "clean" if noise_sd == 0 else "predict"
        hold = self.budget.hold(N, self.provider.cost_per_query_usd, f"predict with N={N}")
        call = self.open_call(image, "predict", noise_sd, seed, {"N": N, "alpha": alpha, **(info or {})}, hold)
        with call:
            call.query(phase, 0, N)
        return predict_from_log(call.logs(), N=N, alpha=alpha, queries=call.queries, offline=False)

    def certify(self, image: np.ndarray, settings: CertifySettings, seed: Optional[int], hold,
                info: Optional[dict] = None) -> Certificate:
        """CERTIFY on a checked canonical image, with ``hold`` from :meth:`hold_for` (given back
        when the call cannot be opened): fill the log, then certify from it. ``info`` (the
        image's name and tag, checked) is recorded in the call's params."""
        call = self.open_call(image, "certify", settings.noise_sd, seed, {**settings.params(), **(info or {})}, hold)
        with call:
            guess = self.select(call, settings)
            if guess is None:
                pass  # nothing to certify: ABSTAIN without paying for estimation queries
            elif settings.method == "sequential":
                SequentialRun(call, guess, settings.rule()).run_to_end()
            else:
                call.query("estimation", 0, settings.N)
        return certify_from_log(call.logs(), alpha=settings.alpha, queries=call.queries, offline=False)

    def select(self, call: Call, settings: CertifySettings) -> Optional[str]:
        """Run the selection step; return the guessed class ĉ (None: nothing to certify)."""
        if settings.selection == "clean":
            records = call.query("clean", 0, 1)
        else:
            records = call.query("selection", 0, settings.N0)
        if all(r.error is not None for r in records):
            raise ProviderError(
                f"{self.provider.identity}: every selection query failed after its retries (last error: "
                f"{records[-1].error}); nothing to certify. Check the endpoint, network and quota."
            )
        return guess_from_records(records)
