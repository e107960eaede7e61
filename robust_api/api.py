"""``RobustAPI``: certified-robust predictions from any image classifier — orchestration only.

Online path: validate → seeded noisy copies → optional denoiser → provider.send → parse →
query log (committed per batch) → read the call back from the log → offline statistics.
Offline path: the same statistics on a recorded :class:`~robust_api.query_logs.CallLog`.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Optional, Union

import numpy as np

from .dispatch import Budget, Dispatcher, RateLimiter, RetryPolicy, Spending, shared_rate_limiter
from .errors import (
    BudgetExceededError,
    DenoiserError,
    ImageTooLargeError,
    InvalidParameterError,
    OfflineModeError,
    ProviderError,
    ProviderResponseError,
    RobustAPIError,
)
from .images import DEFAULT_MAX_PIXELS, as_image, image_digest
from .memory import MemoryPool, activation_bytes_for, check_memory_limit, minimum_bytes, plan_blocks
from .noise import NoiseSampler, clips_noisy_copies
from .offline import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0, CertifySettings, certify_from_log, guess_from_records, predict_from_log
from .providers.base import Provider, create_provider, provider_factory
from .providers.callable import CallableProvider
from .query_logs.records import PREPROCESSING_CLIPPED, PREPROCESSING_UNCLIPPED, CallHeader, CallLog, QueryRecord
from .query_logs.store import QueryLog, open_store
from .results import Certificate, Prediction
from .validation import (
    MAX_ATTEMPTS, MAX_BACKOFF_S, MAX_BATCH_SIZE, MAX_CONCURRENCY, MAX_SAMPLES, MAX_SEED, MAX_TOTAL_QUERIES,
    _is_integer, check_alpha, check_count, check_flag, check_noise_sd, check_rate_limit, check_sample_count, check_seed,
)

__all__ = ["RobustAPI", "DEFAULT_N0", "DEFAULT_N", "DEFAULT_ALPHA"]

logger = logging.getLogger(__name__)


def _contiguous_runs(indices: Sequence[int], max_len: int) -> Iterator[tuple[int, int]]:
    """Split sorted indices into [start, stop) runs of consecutive values, each ≤ max_len long."""
    position = 0
    while position < len(indices):
        start = indices[position]
        stop = start + 1
        position += 1
        while position < len(indices) and indices[position] == stop and stop - start < max_len:
            stop += 1
            position += 1
        yield start, stop


class _CallableDenoiser:
    """A plain function float32 [B, H, W, C] → same shape, checked on every batch.

    Its input is the unclipped noisy copies x + σ·z (values outside [0, 1]); its output is
    clipped to [0, 1] here, and that is what the classifier gets.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]):
        self.fn = fn
        module = getattr(fn, "__module__", None) or type(fn).__module__
        self.identity = f"callable:{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        self.digest = None
        self.noisy_input = "unclipped"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(images), dtype=np.float32)
        if out.shape != images.shape:
            raise DenoiserError(f"denoiser {self.identity} returned shape {out.shape} for input {images.shape}")
        if not np.all(np.isfinite(out)):
            raise DenoiserError(f"denoiser {self.identity} returned NaN or infinite values")
        return np.clip(out, 0.0, 1.0)


def _make_denoiser(denoiser: Any, device: Any):
    if denoiser is None:
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if isinstance(denoiser, (str, os.PathLike)):
        from .denoisers.loading import load_denoiser

        denoiser = load_denoiser(denoiser, device=device)
    if torch is not None and isinstance(denoiser, torch.nn.Module):
        from .torch_utils import ModuleDenoiser

        return ModuleDenoiser(denoiser, device=device)
    if callable(denoiser) and not isinstance(denoiser, (str, bytes)):
        return _CallableDenoiser(denoiser)
    raise InvalidParameterError(
        f"denoiser must be None, a shipped name (robust_api.denoisers.available()), a path, a torch.nn.Module "
        f"([B, C, H, W] in [0, 1] -> same) or a callable on float32 [B, H, W, C] arrays; got {type(denoiser).__name__}"
    )


def _check_class_names(class_names: Any) -> None:
    if class_names is None:
        return
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence) or not class_names \
            or not all(isinstance(name, str) and name for name in class_names):
        raise InvalidParameterError(
            "class_names must be a non-empty list of label strings (one per model output, e.g. "
            f"[str(i) for i in range(10)]), got {class_names!r:.100}"
        )


def _accepted_options(factory: Any) -> Optional[set]:
    """The keyword options a provider factory takes (following ``**kwargs`` up a class's
    ``__init__`` chain), or None when it takes any (a function with ``**kwargs``)."""
    if isinstance(factory, type):
        functions = [vars(cls)["__init__"] for cls in factory.__mro__ if cls is not object and "__init__" in vars(cls)]
    else:
        functions = [factory]
    names: set = set()
    for function in functions:
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in parameters
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self")
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None  # every __init__ passes **kwargs on: anything may be taken


def _refuse_options(what: str, names: Sequence[str], hint: str) -> None:
    if names:
        raise InvalidParameterError(
            f"{what} does not take {', '.join(f'{name}=' for name in names)}; {hint}"
        )


def _checked_provider(provider: Provider) -> Provider:
    """The provider, once the settings RobustAPI reads from it are in range (a third-party
    Provider with max_batch_size=0 would otherwise fail, or hang, in the middle of a call)."""
    name = f"{type(provider).__name__}"
    check_count(provider.max_batch_size, f"{name}.max_batch_size", 2**31)
    check_count(provider.default_concurrency, f"{name}.default_concurrency", MAX_CONCURRENCY)
    if provider.default_rate_limit is not None:
        try:
            check_rate_limit(provider.default_rate_limit)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"{name}.default_rate_limit: {exc}") from None
    return provider


class RobustAPI:
    """Certified-robust predictions from an image classifier, API or function (denoised smoothing).

    To classify an image, draw Gaussian-noised copies (std ``noise_sd`` in [0, 1] pixel
    units, clipped to [0, 1]), optionally denoise them, query the base classifier, and take
    the vote (Cohen et al. 2019; Salman et al. 2020). Every query goes to a query log
    first; results are computed from that log.

    Args:
        provider: a registered name (``"local"``; see ``robust_api.known_providers()``), a
            :class:`~robust_api.providers.Provider`, or any callable mapping float32 images
            [N, H, W, C] in [0, 1] to N str labels (or N raw responses with ``label_fn``).
        denoiser: None; the name of a shipped denoiser (``robust_api.denoisers.available()``,
            e.g. ``"fashion-mnist-dncnn-0.25"``) or a path to a denoiser file (see
            :func:`robust_api.load_denoiser`); a ``torch.nn.Module`` mapping [B, C, H, W] in
            [0, 1] to the same; or a callable on float32 [B, H, W, C] arrays.
        online: True or False (a bool: ``"no"`` or 0 is refused, not read as a truth value).
            False is offline mode: only re-analysis of logs, nothing is ever sent and no
            provider is built (the provider name is then informational).
        log: where the query log goes: None → ``./query_logs/queries.sqlite3``; a folder; an
            SQLite file; a :class:`~robust_api.query_logs.QueryLog`; or False (memory only).
        seed: None draws a fresh seed per call (recorded in the log); an integer in
            [0, 2⁶³) makes the noisy copies of an image reproducible, and a repeated call
            with the same image, seed and log reuses the logged answers at no cost.
        device: torch device for the local model and denoiser (default CUDA if available);
            checked when given, even if nothing runs on it.
        model, class_names: for ``"local"``: the classifier (module or checkpoint path;
            None = bundled Fashion-MNIST CNN) and its label names (a non-empty list of str).
            Refused with a callable or a Provider object, which name their own labels.
        label_fn: for a callable provider or a cloud provider: raw response (cloud: the
            normalized ``[(name, score), ...]``) → str label.
        batch_size: images per provider request, in [1, 65536] (default: the provider's maximum).
        concurrency: requests in flight at most, in [1, 1024] (default: the provider's — 16
            for the cloud providers, 1 for local models and callables); 1 sends one request
            at a time in the calling thread, as the predecessor did.
        rate_limit: requests per second at most, ≥ 0.001 (default: the provider's documented
            quota, see the README; ``math.inf`` for none). Shared by every RobustAPI of this
            process that talks to the same provider.
        retry: a :class:`~robust_api.dispatch.RetryPolicy` (its waits ≤ 3600 s) or a number of
            attempts per query in [1, 100] (default 6). Throttling, 5xx, timeouts, dropped connections and malformed bodies
            are retried with exponential backoff and jitter, honouring Retry-After; a query
            that still fails is recorded as an error and counts as a vote against the top
            class (``Certificate.errors`` says how many).
        max_queries, max_cost_usd: hard caps on what this object ever sends (retries
            included; an integer ≥ 0) and its list price (a finite number ≥ 0). A fixed-N call that would cross one is refused
            before its first query; a sequential call stops early ("ended"); no cap is
            crossed, however many requests are in flight.
        progress: a tqdm progress bar on stderr: True, False, or None (only for calls of
            ≥ 500 queries on an interactive terminal).
        memory_limit_mb: host memory, in MB (default 1024, at least 16), for the noise path
            of the calls in progress: the float64 noise slab, the float32 noisy and denoised
            copies of a block, the copies held by requests in flight, and (on the CPU) a torch
            denoiser's activations, which get a quarter of it (an image too large for that is
            denoised in overlapping tiles). Blocks, request sizes and requests in flight
            shrink to fit; ``certify_many``'s images share it. An image whose copies cannot
            fit even one at a time raises ImageTooLargeError before any query. The clean
            image, the provider's own memory (a local model's activations) are not counted.
        max_pixels: the most pixels (height × width) an image may have; default: the
            provider's input limit (``Provider.max_input_pixels``: 50 megapixels for local
            models and callables, what the service accepts for cloud providers without
            ``resize="fit"``). Checked from a file's header before its pixels are decoded.
        downscale: False (default): an image above ``max_pixels`` raises ImageTooLargeError
            before any query or log write. True: it is box-filtered to fit ``max_pixels``
            first, and the *smaller* image is what gets certified: its digest and shape are
            what the log records, and the radius is in its pixel space. (Unlike a cloud
            provider's ``resize="fit"``, which scales each noisy query image after the noise
            and keeps the certificate about the original image.)
        **provider_options: passed to the registered provider's constructor (for the cloud
            providers: ``endpoint=``, ``timeout_s=``, ``resize=``, credentials ...; see
            the README's provider sections), or to ``CallableProvider`` for a callable
            (``name=``, ``cost_per_query_usd=`` ...). An option the provider does not take
            raises InvalidParameterError naming it (never silently ignored).

    Raises:
        InvalidParameterError: any argument of the wrong type or out of its range (the
            message names it and the range), before any provider, thread or log file exists.
    """

    def __init__(
        self,
        provider: Union[str, Provider, Callable[[np.ndarray], Sequence[Any]]],
        denoiser: Any = None,
        online: bool = True,
        log: Union[str, "os.PathLike[str]", QueryLog, None, bool] = None,
        seed: Optional[int] = None,
        device: Any = None,
        *,
        model: Any = None,
        class_names: Optional[Sequence[str]] = None,
        label_fn: Optional[Callable[[Any], str]] = None,
        batch_size: Optional[int] = None,
        concurrency: Optional[int] = None,
        rate_limit: Optional[float] = None,
        retry: Union[RetryPolicy, int, None] = None,
        max_queries: Optional[int] = None,
        max_cost_usd: Optional[float] = None,
        progress: Optional[bool] = None,
        memory_limit_mb: Optional[float] = None,
        max_pixels: Optional[int] = None,
        downscale: bool = False,
        **provider_options: Any,
    ):
        # every argument is checked here, before a provider, a log file or a thread exists
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
        _check_class_names(class_names)
        self.memory_limit = check_memory_limit(memory_limit_mb)
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer))
                                       or max_pixels < 1):
            raise InvalidParameterError(f"max_pixels must be a positive integer (height × width), got {max_pixels!r}")
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        if not isinstance(downscale, bool):
            raise InvalidParameterError(f"downscale must be True or False, got {downscale!r}")
        self.downscale = downscale
        self.retry = RetryPolicy.coerce(retry)
        if self.retry.max_attempts > MAX_ATTEMPTS:
            raise InvalidParameterError(
                f"retry allows at most {MAX_ATTEMPTS} attempts per query, got a RetryPolicy with "
                f"max_attempts={self.retry.max_attempts}"
            )
        for field in ("initial_backoff_s", "max_backoff_s", "max_retry_after_s"):
            if getattr(self.retry, field) > MAX_BACKOFF_S:
                raise InvalidParameterError(
                    f"RetryPolicy.{field} must be <= {MAX_BACKOFF_S:g} seconds (one wait between two attempts), "
                    f"got {getattr(self.retry, field)!r}"
                )
        self.budget = Budget(max_queries, max_cost_usd)
        self.online = online
        self.seed = None if seed is None else check_seed(seed)
        self.provider_name = provider if isinstance(provider, str) else getattr(provider, "identity", None)
        self.provider: Optional[Provider] = None
        self.denoiser = None
        self.log: Optional[QueryLog] = None
        self.batch_size = batch_size
        if not self.online:
            if denoiser is not None:
                logger.info("offline mode: the denoiser is not used (results come from the logs)")
            if isinstance(log, QueryLog):
                self.log = log
            return
        if device is not None:  # checked even when nothing here runs on it (a callable without a denoiser)
            from .torch_utils import resolve_device

            resolve_device(device)
        self.provider = self._make_provider(provider, model, class_names, label_fn, batch_size, device, provider_options)
        self.denoiser = _make_denoiser(denoiser, device)
        self._denoise_lock = threading.Lock()
        noise_budget = self.memory_limit
        if getattr(self.denoiser, "device", None) is not None and self.denoiser.device.type == "cpu" \
                and hasattr(self.denoiser, "activation_bytes"):
            # one denoiser batch runs at a time (the lock above): its activations get one share
            self.denoiser.activation_bytes = activation_bytes_for(self.memory_limit)
            noise_budget -= self.denoiser.activation_bytes
        self.memory = MemoryPool(noise_budget)
        rate = self.provider.default_rate_limit if rate_limit is None else rate_limit
        limiter = None if rate is None or math.isinf(rate) else shared_rate_limiter(self.provider.identity, rate)
        self.dispatcher = Dispatcher(
            self.provider,
            concurrency=concurrency or self.provider.default_concurrency,
            rate_limiter=limiter,
            retry=self.retry,
            budget=self.budget,
            progress=progress,
        )
        self.log = open_store(log)

    @staticmethod
    def _make_provider(provider, model, class_names, label_fn, batch_size, device, options) -> Provider:
        # an option the provider does not take is refused (by name), never silently dropped
        if isinstance(provider, Provider):
            given = {"model": model, "class_names": class_names, "label_fn": label_fn, **options}
            _refuse_options(f"a Provider object ({type(provider).__name__})", sorted(k for k, v in given.items() if v is not None),
                            "configure the Provider object itself")
            return _checked_provider(provider)
        if isinstance(provider, str):
            # device and batch_size are this object's own settings too (the denoiser's device, the
            # request size); only the local model also takes them
            extra = {"model": model, "class_names": class_names, "label_fn": label_fn}
            if provider == "local":
                extra.update(device=device, batch_size=batch_size)
            elif provider == "http":  # a JSON model server batches as many images as it is told
                extra.update(batch_size=batch_size)
            options = {**{k: v for k, v in extra.items() if v is not None}, **options}
            accepted = _accepted_options(provider_factory(provider))
            if accepted is not None:
                _refuse_options(f"provider {provider!r}", sorted(set(options) - accepted),
                                f"it takes {', '.join(sorted(accepted)) or 'no options'}")
            return _checked_provider(create_provider(provider, **options))
        if callable(provider):
            _refuse_options("a callable provider", [k for k, v in (("model", model), ("class_names", class_names))
                                                    if v is not None],
                            "the callable itself is the classifier and names its labels")
            accepted = _accepted_options(CallableProvider)
            _refuse_options("a callable provider", sorted(set(options) - accepted - {"fn", "label_fn", "batch_size"}),
                            f"it takes {', '.join(sorted(accepted - {'fn'}))}")
            return _checked_provider(CallableProvider(provider, label_fn=label_fn, batch_size=batch_size or 256, **options))
        raise InvalidParameterError(
            f"provider must be a registered name, a Provider or a callable, got {type(provider).__name__}"
        )

    def __repr__(self) -> str:
        mode = "online" if self.online else "offline"
        return f"RobustAPI({self.provider_name!r}, {mode}, log={getattr(self.log, 'path', None)!r})"

    @property
    def spent(self) -> Spending:
        """Running totals of this object: queries sent (retries included, throttled attempts
        and answers reused from the log not) and their list price in USD."""
        return self.budget.spent

    @property
    def concurrency(self) -> Optional[int]:
        return self.dispatcher.concurrency if self.online else None

    @property
    def rate_limiter(self) -> Optional[RateLimiter]:
        return self.dispatcher.rate_limiter if self.online else None

    def close(self) -> None:
        """Stop the worker threads (the log and the provider stay usable; a later call restarts them)."""
        if self.online:
            self.dispatcher.close()

    def __enter__(self) -> "RobustAPI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------
    def predict(
        self,
        image: Any,
        N: Optional[int] = None,
        noise_sd: Optional[float] = None,
        alpha: Optional[float] = None,
        *,
        seed: Optional[int] = None,
    ) -> Prediction:
        """Predict with the smoothed classifier (Cohen et al.'s PREDICT), or re-predict from logs.

        Args:
            image: an image (NumPy [H, W] / [H, W, C] uint8 or float in [0, 1], PIL image,
                or path) — or a :class:`CallLog` to re-predict offline.
            N: number of noisy samples (queries), ≥ 1 (online default 100). Offline: the first N
                logged (default all).
            noise_sd: σ ≥ 0 in [0, 1] pixel units; 0 sends clean copies (``predict(img,
                N=1, noise_sd=0)`` is one clean query: the provider's label on the image as it
                is, without the denoiser).
                Offline: must equal the logged σ if given.
            alpha: α in (0, 1) for the binomial test (online default 0.001; offline default:
                the logged α).
            seed: overrides the instance's seed for this call.

        Returns:
            A :class:`Prediction`; unpacks as ``label, counts, logs`` (online) or
            ``label, counts`` (offline). With noise_sd > 0 the label is wrong (≠ g(x)) with
            probability ≤ α, and ABSTAIN when the vote is not clear.
        """
        if isinstance(image, CallLog) or self._offline_input(image):
            return predict_from_log(image, N=N, noise_sd=noise_sd, alpha=alpha)
        N = check_sample_count(DEFAULT_N if N is None else N, "N")
        noise_sd = check_noise_sd(noise_sd, allow_zero=True)
        alpha = check_alpha(DEFAULT_ALPHA if alpha is None else alpha)
        phase = "clean" if noise_sd == 0 else "predict"
        if noise_sd == 0 and N > 1:
            logger.warning("noise_sd=0 with N=%d sends %d identical clean queries", N, N)
        canonical = self._check_image(image, noise_sd)
        hold = self.budget.hold(N, self.provider.cost_per_query_usd, f"predict with N={N}")
        call = self._open_call(canonical, "predict", noise_sd, seed, {"N": N, "alpha": alpha}, checked=True, hold=hold)
        with call:
            call.query(phase, 0, N)
        return predict_from_log(call.logs(), N=N, alpha=alpha, queries=call.queries, offline=False)

    def certify(
        self,
        image: Any,
        noise_sd: Optional[float] = None,
        N0: Optional[int] = None,
        N: Optional[int] = None,
        alpha: Optional[float] = None,
        *,
        seed: Optional[int] = None,
        method: Optional[str] = None,
        selection: Optional[str] = None,
        radius: Optional[float] = None,
        tolerance: Optional[float] = None,
    ) -> Certificate:
        """Certify the smoothed classifier's prediction, or re-certify a logged call.

        Args:
            image: an image (see :meth:`predict`) — or a :class:`CallLog` of a certify call
                to re-certify offline.
            noise_sd: σ > 0 in [0, 1] pixel units (required online; offline it must equal
                the logged σ if given).
            N0: noisy selection samples that choose the class (default 20; ignored with
                ``selection="clean"``). Offline: the first N0 logged (default all).
            N: estimation samples, fresh and disjoint from selection (default 100). With
                ``method="sequential"`` N is the most the call may spend; it usually stops
                earlier. Offline: the first N logged (default all).
            alpha: α in (0, 1) (online default 0.001; offline default: the logged α).
            seed: overrides the instance's seed for this call.
            method: ``"cohen"`` (default online; offline: the logged method): Cohen et al.'s
                CERTIFY with a one-sided Clopper–Pearson bound on N fresh samples.
                ``"top2"``: also bounds the runner-up and every other label from above
                (α split 1/2, 1/4, 1/4), for votes spread over many labels.
                ``"sequential"``: queries in growing batches and stops as soon as the
                answer is settled, with an anytime-valid confidence sequence
                (:mod:`robust_api.sequential`).
            selection: ``"noise"`` (N0 noisy, denoised samples; the default for cohen and
                top2) or ``"clean"`` (one query on the image as it is, without the denoiser;
                the default for sequential). Either is valid: the guess only has to be
                independent of the estimation noise.
            radius: sequential only: the target radius. The call stops once it is
                certified, or once it is out of reach within N. A target that N cannot
                reach even with unanimous votes is refused before any query.
            tolerance: sequential without a target: stop when more queries within N cannot
                raise the radius by more than this (default 0.1·σ).

        Returns:
            A :class:`Certificate`; unpacks as ``label, radius, logs`` (online) or
            ``label, radius`` (offline). Guarantee: with probability ≥ 1 − α, if the label
            is not ABSTAIN the smoothed classifier returns it everywhere within L2 ``radius``
            — for every method, including the sequential one whatever its stopping time.
            Paid queries: selection + estimation samples, minus answers reused from the log.

        Raises:
            InvalidParameterError: bad parameters, or a target the budget cannot reach
                (before any query is sent).
        """
        if isinstance(image, CallLog) or self._offline_input(image):
            return certify_from_log(
                image, noise_sd=noise_sd, N0=N0, N=N, alpha=alpha, method=method, radius=radius, tolerance=tolerance
            )
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        settings = CertifySettings.online(noise_sd, N0, N, alpha, method, selection, radius, tolerance)
        canonical = self._check_image(image, settings.noise_sd)
        return self._certify_online(canonical, settings, seed, self._start_hold(settings))

    def _start_hold(self, settings: CertifySettings, images: int = 1):
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

    def _certify_online(self, canonical: np.ndarray, settings: CertifySettings, seed: Optional[int], hold) -> Certificate:
        try:
            call = self._open_call(canonical, "certify", settings.noise_sd, seed, settings.params(), checked=True, hold=hold)
        except BaseException:
            self.budget.release(hold)
            raise
        with call:
            guess = self._select(call, settings)
            if guess is None:
                pass  # nothing to certify: ABSTAIN without paying for estimation queries
            elif settings.method == "sequential":
                self._estimate_sequentially(call, guess, settings.rule())
            else:
                call.query("estimation", 0, settings.N)
        return certify_from_log(call.logs(), alpha=settings.alpha, queries=call.queries, offline=False)

    def certify_batch(
        self,
        images: Sequence[Any],
        noise_sd: float,
        total_queries: int,
        N: Optional[int] = None,
        alpha: float = DEFAULT_ALPHA,
        *,
        seed: Optional[int] = None,
        selection: str = "clean",
        N0: Optional[int] = None,
        radius: Optional[float] = None,
        tolerance: Optional[float] = None,
    ) -> list[Certificate]:
        """Certify many images sequentially under one shared budget (input-specific sample sizes).

        Each image is certified with ``method="sequential"``; the budget goes, one look at a
        time, to the image whose radius is expected to grow most per query (with a target:
        up to the target), so clear images stop early and borderline ones get more queries
        (in the spirit of Chen et al.'s input-specific sampling, AAAI 2022).

        Args:
            images: a sequence of images (see :meth:`predict`), all checked before any query.
            noise_sd: σ > 0. alpha: α in (0, 1), per image.
            total_queries: the most queries (selection included) spent on all images together.
            N: the most estimation queries for one image, ≤ 10⁷ (default: twice the fair
                share, ⌈2·total_queries / len(images)⌉, at most 10⁷).
            seed, selection, N0, radius, tolerance: as in :meth:`certify` with
                ``method="sequential"``.

        Returns:
            One :class:`Certificate` per image, in order. Guarantee: each holds with
            probability ≥ 1 − α on its own (the confidence sequence is valid whatever the
            allocation); images stopped by the shared budget report stop_reason "ended".

        Raises:
            InvalidParameterError: bad parameters, or a total budget too small for every
                image's selection and first look (before any query is sent).
        """
        if not self.online:
            raise OfflineModeError("certify_batch sends queries; re-certify logged calls one by one with certify(logs)")
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or not isinstance(images, Sequence) or not images:
            raise InvalidParameterError(
                "images must be a non-empty list of images (for a NumPy stack of images pass list(stack))"
            )
        total_queries = check_count(total_queries, "total_queries", MAX_TOTAL_QUERIES)
        cap = min(MAX_SAMPLES, max(1, math.ceil(2 * total_queries / len(images)))) if N is None else N
        settings = CertifySettings.online(noise_sd, N0, cap, alpha, "sequential", selection, radius, tolerance)
        rule = settings.rule()
        first_look = rule.looks()[0]
        per_image = settings.selection_queries + first_look
        if per_image * len(images) > total_queries:
            raise InvalidParameterError(
                f"total_queries={total_queries} cannot give each of the {len(images)} images its selection "
                f"({settings.selection_queries}) and first look ({first_look} samples); "
                f"pass total_queries >= {per_image * len(images)}"
            )
        params = {**settings.params(), "total_queries": total_queries}
        canonical = [self._check_image(image, settings.noise_sd) for image in images]
        # refused before any query when the caps cannot take every selection and first look
        self.budget.release(self.budget.hold(per_image * len(images), self.provider.cost_per_query_usd,
                                             "certify_batch's selections and first looks"))
        calls = [self._open_call(image, "certify", settings.noise_sd, seed, params, checked=True) for image in canonical]
        spent = 0
        try:
            active = []
            for call in calls:  # every image gets its selection and first look
                guess = self._select(call, settings)
                spent += settings.selection_queries
                if guess is not None:
                    run = _SequentialRun(call, guess, rule)
                    spent += run.next_look()
                    if run.advance(self) is None:
                        active.append(run)
            while active:  # then the budget goes where it buys the most radius per query
                active.sort(key=lambda run: -run.gain_per_query())
                run = active[0]
                step = run.next_look() - run.n
                if spent + step > total_queries:
                    active.pop(0)  # this image's next look does not fit: it ends here
                    continue
                spent += step
                if run.advance(self) is not None:
                    active.pop(0)
        except BaseException:
            for call in calls:
                call.close("failed")
            raise
        for call in calls:
            call.close("complete")
        return [certify_from_log(call.logs(), alpha=settings.alpha, queries=call.queries, offline=False) for call in calls]

    def certify_many(
        self,
        images: Sequence[Any],
        noise_sd: Optional[float] = None,
        N0: Optional[int] = None,
        N: Optional[int] = None,
        alpha: Optional[float] = None,
        *,
        seed: Optional[int] = None,
        method: Optional[str] = None,
        selection: Optional[str] = None,
        radius: Optional[float] = None,
        tolerance: Optional[float] = None,
        parallel: Optional[int] = None,
    ) -> list[Certificate]:
        """Certify several images, several at a time, each exactly as :meth:`certify` would.

        The calls share this object's limits (``concurrency`` requests in flight, the rate
        limit, the caps), so a one-image-per-request API is kept busy up to its rate limit
        instead of idling between one image's phases.

        Args:
            images: a sequence of images (see :meth:`predict`); all are checked, and the
                whole set is checked against the caps (fixed-N methods), before any query.
            noise_sd, N0, N, alpha, seed, method, selection, radius, tolerance: as in
                :meth:`certify`, for every image.
            parallel: images in progress at once (default: ``concurrency``, capped at the
                number of images; 1 certifies them one after the other).

        Returns:
            One :class:`Certificate` per image, in order; each holds with probability ≥ 1 − α
            on its own (as one :meth:`certify` call).

        Raises:
            The first error of any image, after the images already in progress have finished
            (their queries are in the log).
        """
        if not self.online:
            raise OfflineModeError("certify_many sends queries; re-certify logged calls one by one with certify(logs)")
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or not isinstance(images, Sequence) or not images:
            raise InvalidParameterError(
                "images must be a non-empty list of images (for a NumPy stack of images pass list(stack))"
            )
        if parallel is not None:
            parallel = check_count(parallel, "parallel", MAX_CONCURRENCY, why=" (one thread per image in progress)")
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        settings = CertifySettings.online(noise_sd, N0, N, alpha, method, selection, radius, tolerance)
        canonical = [self._check_image(image, settings.noise_sd) for image in images]
        # every image's start (fixed-N: all its queries; sequential: selection and first look) is
        # held from the caps before any query, so early images cannot starve later ones
        holds = []
        try:
            for _ in canonical:
                holds.append(self._start_hold(settings, len(canonical)))
            workers = min(len(images), parallel or self.dispatcher.concurrency)
            if workers <= 1:
                return [self._certify_online(image, settings, seed, hold) for image, hold in zip(canonical, holds)]
            from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="robust-api-image") as pool:
                futures = [pool.submit(self._certify_online, image, settings, seed, hold)
                           for image, hold in zip(canonical, holds)]
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    future.cancel()  # after a failure, images not started yet stay unqueried
            for future in futures:
                if not future.cancelled() and future.exception() is not None:
                    raise future.exception()
            return [future.result() for future in futures]
        finally:
            # what no call used goes back (a finished call already gave back the rest of its hold)
            for hold in holds:
                self.budget.release(hold)

    def _select(self, call: "_Call", settings: "CertifySettings") -> Optional[str]:
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

    def _estimate_sequentially(self, call: "_Call", guess: str, rule) -> None:
        run = _SequentialRun(call, guess, rule)
        while run.advance(self) is None:
            pass

    def _offline_input(self, image: Any) -> bool:
        """True when an offline RobustAPI got something log-like (checked by the offline path);
        raises OfflineModeError for anything else, before any parameter is looked at."""
        if self.online:
            return False
        if isinstance(image, (list, tuple)):
            return True
        raise OfflineModeError(
            "this RobustAPI is offline (online=False): pass logs (result.logs or an item of "
            "robust_api.open_log(path)) instead of an image, or create it with online=True"
        )

    # -- the online path -----------------------------------------------------------------
    def _check_image(self, image: Any, noise_sd: float) -> np.ndarray:
        """The canonical image (float32 [H, W, C] in [0, 1]; downscaled when asked), checked
        against the pixel limit, the provider, the denoiser and the memory budget; raises a
        typed error before any query or log write."""
        canonical = as_image(image, max_pixels=self.pixel_limit, downscale=self.downscale)
        self.provider.check_image(canonical)
        self._check_denoiser_fits(canonical, noise_sd)
        self._check_memory(canonical)
        return canonical

    @property
    def pixel_limit(self) -> int:
        """The most pixels (H × W) an image may have: ``max_pixels``, else the provider's limit."""
        if self.max_pixels is not None:
            return self.max_pixels
        limit = getattr(self.provider, "max_input_pixels", DEFAULT_MAX_PIXELS)
        return DEFAULT_MAX_PIXELS if limit is None else int(limit)

    def _block_planner(self, image_shape: tuple, samples: int):
        """(planner(available bytes) -> BlockPlan or None, describe() -> error message) for
        the noisy copies of an image of ``image_shape`` (see :func:`robust_api.memory.plan_blocks`)."""
        copy_bytes = 4 * int(np.prod(image_shape))
        batch = min(self.batch_size or self.provider.max_batch_size, self.provider.max_batch_size)
        concurrency = self.dispatcher.concurrency
        copies = 0
        if self.denoiser is not None:
            copies = 2 if hasattr(self.denoiser, "activation_bytes") else 3
        scratch = float(getattr(self.provider, "request_scratch_copies", 0.0))

        def planner(available: int):
            return plan_blocks(copy_bytes, samples, batch, concurrency, available, copies, scratch)

        def describe() -> str:
            need = minimum_bytes(copy_bytes, self.memory.budget, copies, scratch)
            shape = "×".join(map(str, image_shape))
            return (
                f"a {shape} image takes {copy_bytes / 2**20:,.1f} MB per float32 noisy copy; its noise path needs "
                f"at least {need / 2**20:,.0f} MB, but memory_limit_mb={self.memory_limit / 2**20:g} leaves "
                f"{self.memory.budget / 2**20:,.0f} MB for it. Raise memory_limit_mb=, or pass downscale=True "
                "with a smaller max_pixels= (the certificate is then for the smaller image)"
            )

        return planner, describe

    def _check_memory(self, image: np.ndarray) -> None:
        planner, describe = self._block_planner(image.shape, 1)
        if planner(self.memory.budget) is None:
            raise ImageTooLargeError(describe())
        tile_size = getattr(self.denoiser, "tile_size", None)
        if tile_size is not None:
            try:
                tile_size(image.shape)
            except DenoiserError as exc:
                raise ImageTooLargeError(str(exc)) from None

    def _open_call(self, image, kind, noise_sd, seed, params, checked: bool = False, hold=None) -> "_Call":
        canonical = image if checked else self._check_image(image, noise_sd)
        seed = check_seed(seed) if seed is not None else self.seed
        if seed is None:
            seed = secrets.randbits(63)
        header = CallHeader(
            run_id=uuid.uuid4().hex,
            kind=kind,
            image_digest=image_digest(canonical),
            image_shape=tuple(canonical.shape),
            provider=self.provider.identity,
            model_version=self.provider.model_version,
            denoiser_id=getattr(self.denoiser, "identity", None),
            denoiser_digest=getattr(self.denoiser, "digest", None),
            noise_sd=noise_sd,
            seed=seed,
            params={**params, "preprocessing": self._preprocessing()},
            created=time.time(),
        )
        self.log.begin_call(header)
        return _Call(self, header, canonical, hold)

    def _clips_before_denoiser(self) -> bool:
        """True when the noisy copies are clipped to [0, 1] before anything uses them: without a
        denoiser, or for one trained on clipped copies (``noisy_input == "clipped"``)."""
        return clips_noisy_copies(self.denoiser)

    def _preprocessing(self) -> str:
        """The log's name for how this object prepares noisy copies (``CallHeader.preprocessing``)."""
        return PREPROCESSING_CLIPPED if self._clips_before_denoiser() else PREPROCESSING_UNCLIPPED

    def _check_denoiser_fits(self, image: np.ndarray, noise_sd: float) -> None:
        channels = getattr(self.denoiser, "image_channels", None)
        if channels is not None and image.shape[-1] != channels:
            raise DenoiserError(
                f"denoiser {self.denoiser.identity} takes {channels}-channel images but the image has "
                f"{image.shape[-1]} channels; use a denoiser for {image.shape[-1]}-channel images"
            )
        warn_if_untrained = getattr(self.denoiser, "warn_if_untrained", None)
        if warn_if_untrained is not None and noise_sd > 0:
            warn_if_untrained(noise_sd)  # DenoiserNoiseLevelWarning, once per (denoiser, σ)

    def _run_phase(self, header: CallHeader, image: np.ndarray, phase: str, start: int, stop: int,
                   hold=None) -> list[QueryRecord]:
        """Query samples [start, stop) of a phase; return their records in index order.

        One payer: the source lock of (image, seed, σ, provider, model, denoiser; phase) is held
        from the search for reusable answers until the last missing answer is committed, so a
        concurrent call on the same source (another thread, or another process writing this
        log) waits, then reuses these answers instead of paying for them again. A call holds
        one source lock at a time (no deadlock); see :mod:`robust_api.query_logs.locks`.
        """
        records: dict[int, QueryRecord] = {}
        with self.log.source_lock(header, phase):
            # searched under the lock: what another payer committed meanwhile is reused, not re-bought
            reusable = {i: r for i, r in self.log.find_reusable(header, phase, stop).items() if i >= start}
            if reusable:
                copies = [replace(reusable[i], reused=True, cost_usd=0.0) for i in sorted(reusable)]
                self.log.append(header.run_id, copies)
                records.update((r.sample_index, r) for r in copies)
                logger.info("%s: reused %d logged %s answers", header.run_id, len(reusable), phase)
            missing = [i for i in range(start, stop) if i not in reusable]
            if missing:
                batches = self._batches(header, image, phase, missing)

                def record(batch_records: Sequence[QueryRecord]) -> None:
                    self._append(header, batch_records)
                    records.update((r.sample_index, r) for r in batch_records)

                self.dispatcher.run(phase, batches, len(missing), record, hold)
        return [records[i] for i in range(start, stop)]

    def _batches(self, header: CallHeader, image: np.ndarray, phase: str, missing: Sequence[int]) -> "_NoisyBatches":
        """(first sample index, images [B, H, W, C]) per provider request, generated lazily.

        Noise is generated and denoised a block at a time, and each block is cut into
        provider-sized requests: a one-image-per-request API still gets a batched denoiser.
        Block size, request size and requests in flight follow the memory budget (see
        :class:`_NoisyBatches`). Clean queries send the image as it is: a denoiser is for
        noisy copies (and the provider's label on the clean image is the predecessor's reference).
        """
        return _NoisyBatches(self, header, image, phase, missing)

    def _denoise(self, images: np.ndarray, noise_sd: float) -> np.ndarray:
        """The denoiser on noisy copies (float32 [B, H, W, C], unclipped unless the denoiser
        was trained on clipped ones) of noise level ``noise_sd`` > 0; returns float32
        [B, H, W, C] in [0, 1]. A σ-conditioned denoiser is
        told σ first (``set_noise_sd``), under the same lock as the pass it conditions."""
        set_noise_sd = getattr(self.denoiser, "set_noise_sd", None)
        try:
            with self._denoise_lock:  # a user's denoiser need not be thread-safe (certify_many)
                if set_noise_sd is not None:
                    set_noise_sd(noise_sd)
                return self.denoiser(images)
        except RobustAPIError:
            raise
        except Exception as exc:
            raise DenoiserError(f"the denoiser failed: {type(exc).__name__}: {exc}") from exc

    def _append(self, header: CallHeader, records: Sequence[QueryRecord]) -> None:
        """Write one batch's final records; a raw answer the store refuses (not plain data)
        turns the batch into error records and fails the call."""
        try:
            self.log.append(header.run_id, records)
        except ProviderResponseError as exc:
            message = f"{type(exc).__name__}: {exc}"
            failed = [replace(r, label=None, raw=None, error=r.error or message) for r in records]
            try:
                self.log.append(header.run_id, failed)
            except Exception:  # the original error matters more than a failed write of its trace
                logger.exception("could not record the failed batch of call %s", header.run_id)
            raise


class _NoisyBatches:
    """The requests of one phase, made block by block within the RobustAPI's memory budget.

    Iterating it (the dispatcher does, once) first reserves a :class:`~robust_api.memory.BlockPlan`
    from the API's :class:`~robust_api.memory.MemoryPool` (waiting while other phases in
    progress hold too much), then yields ``(first index, images)`` per request. ``max_in_flight``
    tells the dispatcher the plan's limit on requests in flight; ``close()`` (the dispatcher
    calls it when the phase is over) gives the reservation back — so does garbage collection.
    """

    def __init__(self, api: "RobustAPI", header: CallHeader, image: np.ndarray, phase: str, missing: Sequence[int]):
        self._api = api
        self._header = header
        self._image = image
        self._phase = phase
        self._missing = list(missing)
        self.plan = None
        self.max_in_flight: Optional[int] = None
        self._generator = None
        self._release = None

    def __iter__(self):
        if self._generator is None:
            self._generator = self._generate()
        return self._generator

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
        if self._release is not None:
            self._release()

    def _generate(self) -> Iterator[tuple[int, np.ndarray]]:
        api, header, image, phase = self._api, self._header, self._image, self._phase
        planner, describe = api._block_planner(image.shape, len(self._missing))
        plan = api.memory.reserve(planner, describe)
        self.plan, self.max_in_flight = plan, plan.in_flight
        self._release = weakref.finalize(self, api.memory.release, plan)
        noise_sd = 0.0 if phase == "clean" else header.noise_sd
        sampler = NoiseSampler(image, header.image_digest, header.seed, phase, noise_sd, slab_bytes=plan.slab_bytes)
        denoise = api.denoiser is not None and phase != "clean"
        for first, last in _contiguous_runs(self._missing, plan.block):
            # the denoiser gets x + σz unclipped (saturated pixels keep their noise statistics)
            # unless it was trained on clipped copies; what is sent is clipped to [0, 1]: the
            # denoiser's output, or the noisy copy itself
            block = sampler.noisy(first, last, clip=not denoise or header.preprocessing == PREPROCESSING_CLIPPED)
            if denoise:
                block = api._denoise(block, noise_sd)  # the noisy copies go when this returns
            for offset in range(0, last - first, plan.batch):
                piece = block[offset : offset + plan.batch]
                yield first + offset, (piece.copy() if plan.copy_batches else piece)
                piece = None
            block = None  # freed (with its last request settled) before the next block is made


class _Call:
    """One open call in the log: queries ranges of samples and counts what was paid for.

    Used as a context manager: the call is marked "complete" on success and "failed" when an
    exception escapes (the partial work stays in the log).
    """

    def __init__(self, api: RobustAPI, header: CallHeader, image: np.ndarray, hold=None):
        self.api = api
        self.header = header
        self.image = image
        self.queries = 0
        self.hold = hold  # queries set aside from the caps for this call (see Budget.hold)
        self._closed = False

    def query(self, phase: str, start: int, stop: int) -> list[QueryRecord]:
        records = self.api._run_phase(self.header, self.image, phase, start, stop, self.hold)
        self.queries += sum(not r.reused for r in records)
        return records

    def hold_more(self, queries: int) -> None:
        """Set aside ``queries`` more (what is left of the current hold goes back first)."""
        self.api.budget.release(self.hold)
        self.hold = self.api.budget.hold(queries, self.api.provider.cost_per_query_usd, "the next look")

    def close(self, status: str) -> None:
        if not self._closed:
            self._closed = True
            self.api.budget.release(self.hold)
            self.api.log.finish_call(self.header.run_id, status)

    def logs(self) -> CallLog:
        return self.api.log.load_call(self.header.run_id)

    def __enter__(self) -> "_Call":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type is not None else "complete")


class _SequentialRun:
    """The online state of one sequential certification: where it is and where it looks next."""

    def __init__(self, call: _Call, guess: str, rule):
        self.call = call
        self.guess = guess
        self.rule = rule
        self.looks = rule.looks()
        self.position = 0
        self.n = 0
        self.successes = 0
        self.p_lower = 0.0

    def next_look(self) -> int:
        return self.looks[self.position]

    def advance(self, api: RobustAPI) -> Optional[str]:
        """Query up to the next look and apply the rule; return the stop reason or None
        ("ended" without a query when the budget caps leave no room for the look)."""
        look = self.next_look()
        if self.position > 0:  # the first look was held with the selection when the call began
            try:
                self.call.hold_more(look - self.n)
            except BudgetExceededError:
                logger.info("%s: the budget caps leave no room for the next look; stopping", self.call.header.run_id)
                return "ended"
        try:
            records = self.call.query("estimation", self.n, look)
        except BudgetExceededError:
            # retries used up the room (or another thread took it): what was answered is in the
            # log and the offline replay ends at the last complete look
            logger.info("%s: the budget caps were reached during a look; stopping", self.call.header.run_id)
            return "ended"
        self.successes += sum(r.error is None and r.label == self.guess for r in records)
        self.n = look
        self.position += 1
        self.p_lower, reason = self.rule.step(self.successes, self.n, self.p_lower)
        return reason

    def gain_per_query(self) -> float:
        """Expected radius gain per query of the next look at the current vote rate (capped at
        the target): the allocation heuristic of certify_batch (it never affects validity)."""
        look = self.next_look()
        rate = (self.successes + 0.5) / (self.n + 1.0)
        projected = self.rule.radius_at(self.successes + round(rate * (look - self.n)), look)
        current = self.rule.radius_at(self.successes, self.n) if self.n else 0.0
        cap = self.rule.radius if self.rule.radius is not None else math.inf
        return (min(projected, cap) - min(current, cap)) / (look - self.n)
