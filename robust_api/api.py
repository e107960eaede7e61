"""``RobustAPI``: the public facade — argument checks, then the engine (online) or the offline path.

Online: :class:`robust_api.engine.Engine` fills the query log; the result is then computed
from the log by :mod:`robust_api.offline`, the same code that re-certifies a stored call.
Offline (``online=False``): only that second half, on logs the caller passes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union

from .dispatch import Budget, RateLimiter, RetryPolicy, Spending
from .errors import InvalidParameterError, OfflineModeError
from .image_sources import _default_name, image_paths, is_image_collection, iter_image_sources
from .offline import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0, CertifySettings, as_call_log, certify_from_log, \
    predict_from_log
from .providers.base import Provider
from .query_logs.records import CallLog
from .query_logs.store import QueryLog
from .results import Certificate, Prediction
from .validation import MAX_CONCURRENCY, MAX_SAMPLES, MAX_TOTAL_QUERIES, check_alpha, check_choice, \
    check_count, check_noise_sd, check_sample_count, check_seed, check_text

__all__ = ["RobustAPI", "DEFAULT_N0", "DEFAULT_N", "DEFAULT_ALPHA"]

logger = logging.getLogger(__name__)


def _image_list(images: Any) -> list:
    """``images`` as a list, or InvalidParameterError (a single image or an array stack is refused)."""
    import numpy as np

    if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or not isinstance(images, Sequence) or not images:
        raise InvalidParameterError(
            "images must be a non-empty list of images (for a NumPy stack of images pass list(stack))"
        )
    return list(images)


def _call_info(image: Any, name: Any, tag: Any) -> dict:
    """What a call records about its image besides the pixels: ``image_name`` and ``tag`` (checked)."""
    name = check_text(name, "name")
    if name is None:
        name = _default_name(image)
    tag = check_text(tag, "tag")
    return {key: value for key, value in (("image_name", name), ("tag", tag)) if value is not None}


def _call_infos(images: list, names: Any, tag: Any) -> list[dict]:
    if names is None:
        return [_call_info(image, None, tag) for image in images]
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) != len(images):
        raise InvalidParameterError(f"names must be a list of {len(images)} strings, one per image (or None)")
    return [_call_info(image, name, tag) for image, name in zip(images, names)]


def _check_names(names: Any, count: Optional[int]) -> Optional[Sequence]:
    """``names`` for a run of ``count`` images (None: not known yet): None, or a sequence of
    one name per image (each checked when its image is drawn)."""
    if names is None:
        return None
    wrong_count = isinstance(names, Sequence) and count is not None and len(names) != count
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or wrong_count:
        per = f"{count} strings" if count is not None else "strings"
        raise InvalidParameterError(f"names must be a list of {per}, one per image (or None)")
    return names


def _run_preparer(engine: Any, settings: CertifySettings, names: Optional[Sequence], tag: Any):
    """``prepare(source) -> (canonical image, call info)`` for the streaming scheduler: the
    image's checks (:meth:`Engine.check_image`) and what its call records (name, tag)."""
    check_text(tag, "tag")

    def prepare(source):
        if names is None:
            name = source.name
        elif source.index < len(names):
            name = names[source.index]
        else:
            raise InvalidParameterError(f"names has {len(names)} entries, but images yielded more images than that")
        info = _call_info(source.image, name, tag)
        return engine.check_image(source.image, settings.noise_sd), info

    return prepare


def _names_used_up(sources: Any, names: Optional[Sequence]):
    """``sources``, then InvalidParameterError if a stream of unknown length had fewer images than ``names``."""
    drawn = 0
    for source in sources:
        drawn += 1
        yield source
    if names is not None and drawn != len(names):
        raise InvalidParameterError(f"names has {len(names)} entries, but images yielded {drawn} images")


def _certificates_only(stream: Iterator[tuple[int, Certificate]]) -> Iterator[Certificate]:
    """The certificates of ``(index, certificate)`` pairs; closing it closes ``stream`` (the run stops)."""
    try:
        for _, certificate in stream:
            yield certificate
    finally:
        stream.close()


def _check_engine(engine: Any, address: Any, workers: Any, gpus_per_worker: Any) -> bool:
    """True for ``engine="ray"`` (Ray importable; MissingDependencyError naming the extra
    otherwise), False for "local"; InvalidParameterError for anything else, or Ray-only
    options with the local engine. Before any image is read or query sent."""
    from .scale.ray_engine import check_engine_options, require_ray

    if check_engine_options(engine, address, workers, gpus_per_worker) != "ray":
        return False
    require_ray()
    return True


def _no_naming_offline(name: Any, tag: Any) -> None:
    if name is not None or tag is not None:
        raise InvalidParameterError(
            "name= and tag= are recorded when a call is made online; a logged call keeps the ones it was made with "
            "(logs.header.image_name, logs.header.tag)"
        )


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
        log: where the query log goes: None → ``query_logs/queries.sqlite3`` in the user's data
            directory (``$ROBUST_API_HOME`` if set, else ``$XDG_DATA_HOME/robust-api`` or
            ``~/.local/share/robust-api`` on Linux, ``~/Library/Application Support/robust-api``
            on macOS, ``%LOCALAPPDATA%\\robust-api`` on Windows; see
            :func:`robust_api.paths.data_dir`); a folder; an SQLite file; a
            :class:`~robust_api.query_logs.QueryLog`; or False (memory only).
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
        progress: tqdm progress bars on stderr: True (always), False (never) or None (only on
            an interactive terminal). :meth:`certify_many` draws one bar for the whole run
            (images done out of the total, queries sent, their list price, time left), shown
            as soon as the run starts; a single call draws a bar per phase when it sends
            ≥ 500 queries. Retries and throttled answers are summarised in one INFO log line
            per call (logger ``robust_api.engine.calls``) and per run.
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
        provider: Union[str, Provider, Callable[..., Sequence[Any]]],
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
        from .engine.options import EngineOptions

        # every argument is checked here, before a provider, a log file or a thread exists
        self.options = EngineOptions.check(
            online=online, seed=seed, batch_size=batch_size, concurrency=concurrency, rate_limit=rate_limit,
            progress=progress, retry=retry, max_queries=max_queries, max_cost_usd=max_cost_usd,
            memory_limit_mb=memory_limit_mb, max_pixels=max_pixels, downscale=downscale, class_names=class_names,
        )
        self.budget = Budget(self.options.max_queries, self.options.max_cost_usd)
        self.provider_name = provider if isinstance(provider, str) else getattr(provider, "identity", None)
        # what a worker of a distributed run needs to build the same provider and denoiser
        self._recipe = dict(
            provider=provider, denoiser=denoiser, device=device, model=model, class_names=class_names,
            label_fn=label_fn, batch_size=batch_size, provider_options=dict(provider_options),
            options=dict(seed=seed, batch_size=batch_size, concurrency=concurrency, retry=retry,
                         memory_limit_mb=memory_limit_mb, max_pixels=max_pixels, downscale=downscale,
                         class_names=class_names),
        )
        self.last_run = None
        self.engine = None
        self._offline_log = None
        if not self.online:
            if denoiser is not None:
                logger.info("offline mode: the denoiser is not used (results come from the logs)")
            if isinstance(log, QueryLog):
                self._offline_log = log
            return
        from .engine import Engine, make_denoiser, make_provider

        if device is not None:  # checked even when nothing here runs on it (a callable without a denoiser)
            from .torch_utils import resolve_device

            resolve_device(device)
        built = make_provider(provider, model, class_names, label_fn, batch_size, device, provider_options)
        self.engine = Engine(built, make_denoiser(denoiser, device), self.options, self.budget, log)

    # -- settings and state (read-only views of the options and the engine) -------------------
    online = property(lambda self: self.options.online)
    seed = property(lambda self: self.options.seed)
    retry = property(lambda self: self.options.retry)
    batch_size = property(lambda self: self.options.batch_size)
    memory_limit = property(lambda self: self.options.memory_limit)
    max_pixels = property(lambda self: self.options.max_pixels)
    downscale = property(lambda self: self.options.downscale)
    provider = property(lambda self: self.engine.provider if self.engine else None)
    denoiser = property(lambda self: self.engine.denoising.runner if self.engine else None)
    log = property(lambda self: self.engine.log if self.engine else self._offline_log)
    dispatcher = property(lambda self: self._online("the dispatcher sends queries").dispatcher)
    memory = property(lambda self: self._online("the memory pool holds noisy copies").memory)
    pixel_limit = property(lambda self: self._online("the pixel limit comes from the provider").pixel_limit)

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
        return self.engine.dispatcher.concurrency if self.engine else None

    @property
    def rate_limiter(self) -> Optional[RateLimiter]:
        return self.engine.dispatcher.rate_limiter if self.engine else None

    def worker_recipe(self) -> dict:
        """What builds this object's provider and denoiser in another process (a worker of
        ``certify_many(..., engine="ray")``, see :class:`robust_api.scale.worker.ShardWorker`):
        the constructor's arguments except the log, the caps, the rate limit and
        ``progress``, which a distributed run shares between its workers instead. It may hold
        credentials: it is sent to the workers, never logged."""
        return dict(self._recipe)

    def close(self) -> None:
        """Stop the worker threads (the log and the provider stay usable; a later call restarts them)."""
        if self.engine:
            self.engine.close()

    def __enter__(self) -> "RobustAPI":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _online(self, what: str):
        """The engine; OfflineModeError when this object is offline (the one offline check)."""
        if self.engine is None:
            raise OfflineModeError(
                f"{what}, but this RobustAPI is offline (online=False): re-certify logged calls one by "
                "one with certify(logs), or create it with online=True"
            )
        return self.engine

    def _is_log(self, image: Any) -> bool:
        """True for a logged call (a CallLog; offline also anything list-like, which the offline
        path checks and explains). An offline RobustAPI raises OfflineModeError for anything
        else, before any parameter is looked at: the one offline check of every method."""
        if isinstance(image, CallLog):
            return True
        if self.online:
            return False
        if isinstance(image, (list, tuple)):
            return True  # the offline path says what a log must be
        raise OfflineModeError(
            "this RobustAPI is offline (online=False): pass logs (result.logs or an item of "
            "robust_api.open_log(path)) instead of an image, or create it with online=True"
        )

    def _answers_call(self, answers: Any, noise_sd: Any, N0: Any, alpha: Any, kind: str) -> CallLog:
        """The predecessor's list of answers (offline, with this object's API) as a call."""
        from .query_logs.legacy import LEGACY_APIS, call_from_answers

        if self.provider_name not in LEGACY_APIS:
            as_call_log(answers)  # raises, saying what a log must be
        return call_from_answers(
            self.provider_name, answers, noise_sd=noise_sd, N0=DEFAULT_N0 if N0 is None else N0,
            alpha=DEFAULT_ALPHA if alpha is None else alpha, kind=kind,
        )

    # -- public API ----------------------------------------------------------------------
    def predict(
        self,
        image: Any,
        N: Optional[int] = None,
        noise_sd: Optional[float] = None,
        alpha: Optional[float] = None,
        *,
        seed: Optional[int] = None,
        name: Optional[str] = None,
        tag: Optional[str] = None,
    ) -> Prediction:
        """Predict with the smoothed classifier (Cohen et al.'s PREDICT), or re-predict from logs.

        Args:
            image: an image (NumPy array or torch tensor [H, W], [H, W, C] or [C, H, W],
                uint8 or float in [0, 1]; PIL image; path; or the bytes of an image file: see
                :func:`robust_api.images.as_image`) — or a :class:`CallLog` to re-predict offline.
            N: number of noisy samples (queries), ≥ 1 (online default 100). Offline: the first N
                logged (default all).
            noise_sd: σ ≥ 0 in [0, 1] pixel units; 0 sends clean copies (``predict(img,
                N=1, noise_sd=0)`` is one clean query: the provider's label on the image as it
                is, without the denoiser).
                Offline: must equal the logged σ if given.
            alpha: α in (0, 1) for the binomial test (online default 0.001; offline default:
                the logged α).
            seed: overrides the instance's seed for this call.
            name: the image's name, recorded with the call and shown by analyses and exports
                (default: the file name of a path or of a PIL image read from a file; none for
                arrays). 1 to 1,000 printable characters. Online only.
            tag: free text recorded with the call (an experiment, a class), same rules.

        Returns:
            A :class:`Prediction`; unpacks as ``label, counts, logs`` (online) or
            ``label, counts`` (offline). With noise_sd > 0 the label is wrong (≠ g(x)) with
            probability ≤ α, and ABSTAIN when the vote is not clear.
        """
        if self._is_log(image):
            _no_naming_offline(name, tag)
            if not isinstance(image, CallLog):  # the predecessor's list of answers
                return predict_from_log(self._answers_call(image, noise_sd, None, alpha, "predict"), N=N, alpha=alpha)
            return predict_from_log(image, N=N, noise_sd=noise_sd, alpha=alpha)
        N = check_sample_count(DEFAULT_N if N is None else N, "N")
        noise_sd = check_noise_sd(noise_sd, allow_zero=True)
        alpha = check_alpha(DEFAULT_ALPHA if alpha is None else alpha)
        if noise_sd == 0 and N > 1:
            logger.warning("noise_sd=0 with N=%d sends %d identical clean queries", N, N)
        info = _call_info(image, name, tag)
        canonical = self.engine.check_image(image, noise_sd)
        return self.engine.predict(canonical, N, noise_sd, alpha, seed, info)

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
        name: Optional[str] = None,
        tag: Optional[str] = None,
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
            method: online default: ``"sequential"`` with a target ``radius``, else
                ``"cohen"``; offline: the logged method. ``"cohen"``: Cohen et al.'s
                CERTIFY with a one-sided Clopper–Pearson bound on N fresh samples.
                ``"top2"``: also bounds the runner-up and every other label from above
                (α split 1/2, 1/4, 1/4), for votes spread over many labels.
                ``"sequential"``: queries in growing batches and stops as soon as the
                answer is settled (:mod:`robust_api.sequential`). With a target it
                certifies on every vote sequence on which ``"cohen"`` with the same N
                would, at an exactly computed error ≤ α, usually with a fraction of the
                queries.
            selection: ``"noise"`` (N0 noisy, denoised samples; the default for cohen and
                top2, and for sequential when N0 is given) or ``"clean"`` (one query on the
                image as it is, without the denoiser; the default for sequential). Either is
                valid: the guess only has to be independent of the estimation noise.
            radius: the target radius (≥ 0; 0 certifies the label alone); implies the
                sequential method. The call certifies the target (or more), stopping as
                soon as it is certified, or abstains once it is out of reach within N. A
                target that N cannot reach even with unanimous votes is refused before
                any query.
            tolerance: sequential without a target: the grid step of the radii it tests
                (default 0.1·σ); it stops when more queries within N are not expected to
                certify the next one.
            name, tag: recorded with the call (see :meth:`predict`). Online only.

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
        if self._is_log(image):
            _no_naming_offline(name, tag)
            if not isinstance(image, CallLog):  # the predecessor's list of answers
                image = self._answers_call(image, noise_sd, N0, alpha, "certify")
            return certify_from_log(
                image, noise_sd=noise_sd, N0=N0, N=N, alpha=alpha, method=method, radius=radius, tolerance=tolerance
            )
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        settings = CertifySettings.online(noise_sd, N0, N, alpha, method, selection, radius, tolerance)
        info = _call_info(image, name, tag)
        canonical = self.engine.check_image(image, settings.noise_sd)
        return self.engine.certify(canonical, settings, seed, self.engine.hold_for(settings), info)

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
        names: Optional[Sequence[str]] = None,
        tag: Optional[str] = None,
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
            names: one name per image (default: file names of paths), tag: for every
                image; recorded with each call (see :meth:`predict`).

        Returns:
            One :class:`Certificate` per image, in order. Guarantee: each holds with
            probability ≥ 1 − α on its own (the sequential rule is valid whatever stops it);
            images stopped by the shared budget report stop_reason "ended".

        Raises:
            InvalidParameterError: bad parameters, or a total budget too small for every
                image's selection and first look (before any query is sent).
        """
        from .engine.scheduling import certify_batch, check_batch_budget

        engine = self._online("certify_batch sends queries")
        images = _image_list(images)
        total_queries = check_count(total_queries, "total_queries", MAX_TOTAL_QUERIES)
        cap = min(MAX_SAMPLES, max(1, math.ceil(2 * total_queries / len(images)))) if N is None else N
        settings = CertifySettings.online(noise_sd, N0, cap, alpha, "sequential", selection, radius, tolerance)
        check_batch_budget(settings, len(images), total_queries)
        infos = _call_infos(images, names, tag)
        canonical = [engine.check_image(image, settings.noise_sd) for image in images]
        return certify_batch(engine, canonical, settings, seed, total_queries, infos)

    def _run_setup(self, what: str, images: Any, noise_sd: Any, N0: Any, N: Any, alpha: Any, seed: Any, method: Any,
                   selection: Any, radius: Any, tolerance: Any, parallel: Any, names: Any, tag: Any):
        """The checked pieces of a many-image run (``certify_many`` / ``certify_iter``), every
        argument checked before any image is read: (engine, settings, parallel, images, count,
        sources, prepare). A folder or pattern becomes its list of files (listed once)."""
        engine = self._online(f"{what} sends queries")
        if parallel is not None:
            parallel = check_count(parallel, "parallel", MAX_CONCURRENCY, why=" (one thread per image in progress)")
        if seed is not None:
            check_seed(seed)
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        settings = CertifySettings.online(noise_sd, N0, N, alpha, method, selection, radius, tolerance)
        check_text(tag, "tag")
        if is_image_collection(images):
            images = image_paths(images)  # listed once: every pass over the run sees the same files
        sources = iter_image_sources(images)  # refuses a single image or an empty collection
        count = len(images) if isinstance(images, Sequence) else None
        names = _check_names(names, count)
        if names is not None and count is None:
            sources = _names_used_up(sources, names)
        return engine, settings, parallel, images, count, sources, _run_preparer(engine, settings, names, tag)

    def certify_many(
        self,
        images: Any,
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
        names: Optional[Sequence[str]] = None,
        tag: Optional[str] = None,
        engine: str = "local",
        ray_address: Optional[str] = None,
        workers: Optional[int] = None,
        gpus_per_worker: float = 0,
    ) -> list[Certificate]:
        """Certify several images, several at a time, each exactly as :meth:`certify` would.

        The calls share this object's limits (``concurrency`` requests in flight, the rate
        limit, the caps), so a one-image-per-request API is kept busy up to its rate limit
        instead of idling between one image's phases. One progress bar shows the whole run
        (images done, queries sent, their list price, time left; see ``progress``), and one
        INFO log line sums up its retries and throttled answers.

        Args:
            images: a list, tuple or other sequence of images (each as in :meth:`predict`:
                path, PIL image, array or tensor [H, W], [H, W, C] or [C, H, W] with uint8
                values or floats in [0, 1], bytes of an image file); a folder (its image files,
                recursively, sorted by relative path); a glob pattern (``"data/**/*.png"``, its
                files sorted); or any iterable or generator of images (drawn one at a time).
                See :mod:`robust_api.image_sources` for the exact order rules. For a
                sequence, folder or pattern, all images are checked, and the whole set is
                checked against the caps (fixed-N methods; sequential: selections and first
                looks), before any query: a first pass reads and checks each image and
                drops it, and each is read again when it starts. A one-shot iterable or
                generator cannot be checked ahead: each image is checked when it is drawn
                and held from the caps when it starts (as :meth:`certify_iter`).
            noise_sd, N0, N, alpha, seed, method, selection, radius, tolerance: as in
                :meth:`certify`, for every image.
            parallel: images in progress at once (default: ``concurrency``, capped at the
                number of images when known; 1 certifies them one after the other).
            names: one name per image (default: file names of paths), tag: for every
                image; recorded with each call (see :meth:`predict`).
            engine: ``"local"`` (default): threads of this process. ``"ray"`` (the ``[ray]``
                extra): the images are sharded over the workers of a Ray cluster, each with
                its own provider, denoiser (on its own GPU with ``gpus_per_worker``) and log
                shard (``<log>.shards/worker-<k>.sqlite3``), under **one** rate limit and
                **one** set of caps for all of them (a quota actor hands out request slots
                and holds). Each finished call is merged into this object's log and
                certified from there, so the certificates equal the local engine's for the
                same seed (with a deterministic classifier). A worker that dies is replaced
                and its images are redone on another worker, reusing the answers it had
                committed to its shard (not paid twice); ``self.last_run`` reports the
                workers, the redone images and the spend. ``parallel`` is then per worker
                (default ``concurrency``). See docs/scaling.md.
            ray_address: the Ray cluster to join (e.g. ``"auto"`` or ``"ray://head:10001"``;
                default: the one this process is connected to, else a new local cluster,
                stopped at the end). workers: Ray workers (default: the cluster's CPUs,
                at most 64). gpus_per_worker: GPUs each worker reserves (default 0).

        Memory: about ``parallel + 1`` decoded images at once (float32 [H, W, C] each),
        whatever the number of images: 50,000 ImageNet files are never all in memory. The
        returned certificates (each with its call's log) are.

        Resuming: with a fixed seed (``seed=`` here or the instance's) and the same log, a
        run that was interrupted (an error, Ctrl-C, a crash) can simply be run again: every
        answer already in the log is reused at no cost (``Certificate.queries`` counts only
        the paid ones), and the certificates equal those of an uninterrupted run.

        Returns:
            One :class:`Certificate` per image, in input order; each holds with probability
            ≥ 1 − α on its own (as one :meth:`certify` call).

        Raises:
            InvalidParameterError: bad parameters, a single image instead of a collection,
                or an empty list, folder, pattern or iterable (before any query).
            The first error of any image: once an image fails, no further image starts; the
            images already in progress finish (their queries are in the log), then the
            error is raised.
        """
        from .engine.scheduling import certify_many

        on_ray = _check_engine(engine, ray_address, workers, gpus_per_worker)
        engine, settings, parallel, images, count, sources, prepare = self._run_setup(
            "certify_many", images, noise_sd, N0, N, alpha, seed, method, selection, radius, tolerance, parallel,
            names, tag,
        )
        again = (lambda: iter_image_sources(images)) if count is not None else None
        if on_ray:
            from .scale.ray_engine import ray_certify

            results = dict(ray_certify(self, sources, settings, seed, parallel, prepare, again=again, order="completed",
                                       address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker))
            return [results[index] for index in sorted(results)]
        return certify_many(engine, sources, settings, seed, parallel, prepare, again=again)

    def certify_iter(
        self,
        images: Any,
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
        names: Optional[Sequence[str]] = None,
        tag: Optional[str] = None,
        order: str = "input",
        engine: str = "local",
        ray_address: Optional[str] = None,
        workers: Optional[int] = None,
        gpus_per_worker: float = 0,
    ) -> Iterator[Union[Certificate, tuple[int, Certificate]]]:
        """Certify a stream of images, several at a time, yielding each result as it is ready.

        Every argument is checked by this call (and a generator's first image drawn, to
        refuse an empty one); the images are then certified while the caller iterates, each
        exactly as :meth:`certify` would, sharing this object's limits (as
        :meth:`certify_many`, with one progress bar for the run).

        Args:
            images: as in :meth:`certify_many`: a sequence, a folder, a glob pattern, or any
                iterable or generator of images, drawn one at a time and only when a thread
                is about to be free (see :mod:`robust_api.image_sources` for the order rules).
                Unlike :meth:`certify_many` nothing is checked ahead: each image is checked
                (:meth:`~robust_api.engine.Engine.check_image`) when it is drawn, and its
                queries are held from the caps when it starts (a stream of unknown length
                cannot be held up front), so the first result comes after one image's work.
            noise_sd, N0, N, alpha, seed, method, selection, radius, tolerance: as in
                :meth:`certify`, for every image.
            parallel: images in progress at once (default: ``concurrency``).
            names: one name per image (a sequence, read by index; with a stream of unknown
                length, a count that does not match is an error when it shows), tag: for
                every image (see :meth:`predict`).
            order: ``"input"`` (default): certificates in input order (a slow image holds
                back those after it, which wait finished, at most ``2 · parallel`` drawn and
                not yet yielded). ``"completed"``: as each image finishes, as
                ``(index, certificate)`` pairs, ``index`` being the image's position in the
                input (from 0): the way to match a result to its image, since names need
                not exist (arrays) nor be unique.
            engine, ray_address, workers, gpus_per_worker: as in :meth:`certify_many`.

        Yields:
            ``order="input"``: one :class:`Certificate` per image, in input order.
            ``order="completed"``: one ``(index, Certificate)`` per image, in completion
            order. Each certificate holds with probability ≥ 1 − α on its own (as one
            :meth:`certify` call).

        Memory: at most ``parallel + 1`` decoded images (float32 [H, W, C]) at once, and the
        next image is drawn only when there is room and the caller asks for more: O(parallel),
        never O(number of images). A caller that stops iterating (``break``) stops the run:
        no new image starts, and closing the generator waits for the ones in progress.

        Resuming: with a fixed seed (``seed=`` here or the instance's) and the same log, a
        run that was interrupted can be run again from the start: answers already in the log
        are reused at no cost (``Certificate.queries`` counts only the paid ones), and the
        certificates equal those of an uninterrupted run.

        Raises:
            InvalidParameterError: bad parameters, a single image instead of a collection,
                or an empty list, folder, pattern or iterable (by this call, before any query).
            While iterating, the first error of any image (its check, its hold from the
            caps, its queries, or the source itself): once an image fails, no further image
            is drawn or started and nothing more is yielded; the images in progress finish
            (their queries are in the log), then the error is raised.
        """
        from .engine.scheduling import certify_stream

        order = check_choice(order, "order", ("input", "completed"))
        on_ray = _check_engine(engine, ray_address, workers, gpus_per_worker)
        engine, settings, parallel, images, count, sources, prepare = self._run_setup(
            "certify_iter", images, noise_sd, N0, N, alpha, seed, method, selection, radius, tolerance, parallel,
            names, tag,
        )
        if on_ray:
            from .scale.ray_engine import ray_certify

            stream = ray_certify(self, sources, settings, seed, parallel, prepare, order=order, address=ray_address,
                                 workers=workers, gpus_per_worker=gpus_per_worker)
            return stream if order == "completed" else _certificates_only(stream)
        stream = certify_stream(engine, sources, settings, seed, parallel, prepare, order=order, total=count,
                                description="certify_iter")
        return stream if order == "completed" else _certificates_only(stream)
