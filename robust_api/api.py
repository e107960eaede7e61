"""``RobustAPI``: certified-robust predictions from any image classifier — orchestration only.

Online path: validate → seeded noisy copies → optional denoiser → provider.send → parse →
query log (committed per batch) → read the call back from the log → offline statistics.
Offline path: the same statistics on a recorded :class:`~robust_api.query_logs.CallLog`.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Optional, Union

import numpy as np

from .errors import (
    DenoiserError,
    InvalidParameterError,
    OfflineModeError,
    ProviderError,
    ProviderResponseError,
    RobustAPIError,
)
from .images import as_image, image_digest
from .noise import NoiseSampler
from .offline import certify_from_log, predict_from_log
from .providers.base import Provider, create_provider
from .providers.callable import CallableProvider
from .query_logs.records import CallHeader, CallLog, QueryRecord, dumps_raw
from .query_logs.store import QueryLog, open_store
from .results import Certificate, Prediction
from .validation import check_alpha, check_noise_sd, check_sample_count, check_seed

__all__ = ["RobustAPI", "DEFAULT_N0", "DEFAULT_N", "DEFAULT_ALPHA"]

logger = logging.getLogger(__name__)

#: Defaults of the predecessor's cloud experiment: N₀ = 20 selection and N = 100 estimation
#: samples at α = 0.001 (120 paid queries per image).
DEFAULT_N0 = 20
DEFAULT_N = 100
DEFAULT_ALPHA = 0.001


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


#: Host memory for one block of noisy copies on their way through the denoiser.
DENOISE_BLOCK_BYTES = 256 << 20
MAX_DENOISE_BLOCK = 4096


def _denoise_block_size(image_shape: tuple) -> int:
    """Noisy copies generated and denoised together: as many float32 images as fit
    ``DENOISE_BLOCK_BYTES``, between 1 and ``MAX_DENOISE_BLOCK``."""
    per_image = 4 * int(np.prod(image_shape))
    return int(min(MAX_DENOISE_BLOCK, max(1, DENOISE_BLOCK_BYTES // per_image)))


class _CallableDenoiser:
    """A plain function float32 [B, H, W, C] in [0, 1] → same, checked on every batch."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]):
        self.fn = fn
        module = getattr(fn, "__module__", None) or type(fn).__module__
        self.identity = f"callable:{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        self.digest = None

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
        online: False for offline mode: only re-analysis of logs, nothing is ever sent and
            no provider is built (the provider name is then informational).
        log: where the query log goes: None → ``./query_logs/queries.sqlite3``; a folder; an
            SQLite file; a :class:`~robust_api.query_logs.QueryLog`; or False (memory only).
        seed: None draws a fresh seed per call (recorded in the log); an integer in
            [0, 2⁶³) makes the noisy copies of an image reproducible, and a repeated call
            with the same image, seed and log reuses the logged answers at no cost.
        device: torch device for the local model and denoiser (default CUDA if available).
        model, class_names: for ``"local"``: the classifier (module or checkpoint path;
            None = bundled Fashion-MNIST CNN) and its label names.
        label_fn: for a callable provider: raw response → str label.
        batch_size: images per provider request (default: the provider's maximum).
        **provider_options: passed to the registered provider's constructor.
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
        **provider_options: Any,
    ):
        if batch_size is not None:
            batch_size = check_sample_count(batch_size, "batch_size")
        self.online = bool(online)
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
        self.provider = self._make_provider(provider, model, class_names, label_fn, batch_size, device, provider_options)
        self.denoiser = _make_denoiser(denoiser, device)
        self.log = open_store(log)

    @staticmethod
    def _make_provider(provider, model, class_names, label_fn, batch_size, device, options) -> Provider:
        if isinstance(provider, Provider):
            return provider
        if isinstance(provider, str):
            extra = {"model": model, "class_names": class_names, "device": device, "batch_size": batch_size}
            options = {**{k: v for k, v in extra.items() if v is not None}, **options}
            return create_provider(provider, **options)
        if callable(provider):
            return CallableProvider(provider, label_fn=label_fn, batch_size=batch_size or 256, **options)
        raise InvalidParameterError(
            f"provider must be a registered name, a Provider or a callable, got {type(provider).__name__}"
        )

    def __repr__(self) -> str:
        mode = "online" if self.online else "offline"
        return f"RobustAPI({self.provider_name!r}, {mode}, log={getattr(self.log, 'path', None)!r})"

    # -- public API ----------------------------------------------------------------------
    def predict(
        self,
        image: Any,
        N: Optional[int] = None,
        noise_sd: Optional[float] = None,
        alpha: float = DEFAULT_ALPHA,
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
                N=1, noise_sd=0)`` is one clean query: the base classifier's label).
                Offline: must equal the logged σ if given.
            alpha: α in (0, 1) for the binomial test.
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
        alpha = check_alpha(alpha)
        phase = "clean" if noise_sd == 0 else "predict"
        if noise_sd == 0 and N > 1:
            logger.warning("noise_sd=0 with N=%d sends %d identical clean queries", N, N)
        logs, queries = self._query(image, "predict", noise_sd, seed, [(phase, N)], {"N": N, "alpha": alpha})
        return predict_from_log(logs, N=N, alpha=alpha, queries=queries, offline=False)

    def certify(
        self,
        image: Any,
        noise_sd: Optional[float] = None,
        N0: Optional[int] = None,
        N: Optional[int] = None,
        alpha: float = DEFAULT_ALPHA,
        *,
        seed: Optional[int] = None,
    ) -> Certificate:
        """Certify the smoothed classifier's prediction (Cohen et al.'s CERTIFY), or re-certify logs.

        Args:
            image: an image (see :meth:`predict`) — or a :class:`CallLog` of a certify call
                to re-certify offline.
            noise_sd: σ > 0 in [0, 1] pixel units (required online; offline it must equal
                the logged σ if given).
            N0: selection samples that choose the class (online default 20; offline default:
                all logged, or the first N0).
            N: estimation samples, fresh and disjoint from selection (online default 100;
                offline default: all logged, or the first N).
            alpha: α in (0, 1).
            seed: overrides the instance's seed for this call.

        Returns:
            A :class:`Certificate`; unpacks as ``label, radius, logs`` (online) or
            ``label, radius`` (offline). Guarantee: with probability ≥ 1 − α, if the label
            is not ABSTAIN the smoothed classifier returns it everywhere within L2 ``radius``.
            Paid queries: N0 + N, minus answers reused from the log.
        """
        if isinstance(image, CallLog) or self._offline_input(image):
            return certify_from_log(image, noise_sd=noise_sd, N0=N0, N=N, alpha=alpha)
        noise_sd = check_noise_sd(noise_sd, allow_zero=False)
        N0 = check_sample_count(DEFAULT_N0 if N0 is None else N0, "N0")
        N = check_sample_count(DEFAULT_N if N is None else N, "N")
        alpha = check_alpha(alpha)
        plan = [("selection", N0), ("estimation", N)]
        logs, queries = self._query(image, "certify", noise_sd, seed, plan, {"N0": N0, "N": N, "alpha": alpha})
        return certify_from_log(logs, N0=N0, N=N, alpha=alpha, queries=queries, offline=False)

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
    def _query(self, image, kind, noise_sd, seed, plan, params) -> tuple[CallLog, int]:
        canonical = as_image(image)
        self.provider.check_image(canonical)
        self._check_denoiser_fits(canonical, noise_sd)
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
            params=params,
            created=time.time(),
        )
        self.log.begin_call(header)
        queries = 0
        try:
            for phase, count in plan:
                queries += self._run_phase(header, canonical, phase, count)
        except BaseException:
            self.log.finish_call(header.run_id, "failed")
            raise
        self.log.finish_call(header.run_id, "complete")
        return self.log.load_call(header.run_id), queries

    def _check_denoiser_fits(self, image: np.ndarray, noise_sd: float) -> None:
        channels = getattr(self.denoiser, "image_channels", None)
        if channels is not None and image.shape[-1] != channels:
            raise DenoiserError(
                f"denoiser {self.denoiser.identity} takes {channels}-channel images but the image has "
                f"{image.shape[-1]} channels; use a denoiser for {image.shape[-1]}-channel images"
            )
        trained_for = getattr(self.denoiser, "noise_sd", None)
        if trained_for is not None and noise_sd > 0 and abs(trained_for - noise_sd) > 1e-9:
            logger.warning(
                "denoiser %s was trained for noise_sd=%s but is used at noise_sd=%s; the certificate stays "
                "valid but will be weaker than with a denoiser trained for this σ",
                self.denoiser.identity, trained_for, noise_sd,
            )

    def _run_phase(self, header: CallHeader, image: np.ndarray, phase: str, count: int) -> int:
        reusable = self.log.find_reusable(header, phase, count)
        if reusable:
            self.log.append(
                header.run_id, [replace(reusable[i], reused=True, cost_usd=0.0) for i in sorted(reusable)]
            )
            logger.info("%s: reused %d logged %s answers", header.run_id, len(reusable), phase)
        missing = [i for i in range(count) if i not in reusable]
        if not missing:
            return 0
        sampler = NoiseSampler(image, header.image_digest, header.seed, phase, header.noise_sd)
        batch = min(self.batch_size or self.provider.max_batch_size, self.provider.max_batch_size)
        # Noise is generated and denoised a block at a time (bounded host memory), and each block
        # is cut into provider-sized requests: a one-image-per-request API still gets a batched
        # denoiser.
        block = max(batch, _denoise_block_size(image.shape)) if self.denoiser is not None else batch
        sent = 0
        for start, stop in _contiguous_runs(missing, block):
            images = sampler.noisy(start, stop)
            if self.denoiser is not None:
                images = self._denoise(images)
            for offset in range(0, stop - start, batch):
                sent += self._send_batch(header, phase, start + offset, images[offset : offset + batch])
        return sent

    def _denoise(self, images: np.ndarray) -> np.ndarray:
        try:
            return self.denoiser(images)
        except RobustAPIError:
            raise
        except Exception as exc:
            raise DenoiserError(f"the denoiser failed: {type(exc).__name__}: {exc}") from exc

    def _send_batch(self, header: CallHeader, phase: str, start: int, images: np.ndarray) -> int:
        provider = self.provider
        began = time.perf_counter()
        answers: Optional[Sequence[Any]] = None
        try:
            answers = provider.send(images)
            latency = time.perf_counter() - began
            now = time.time()
            cost = provider.cost_per_query_usd
            records = [
                QueryRecord(phase, start + offset, provider.parse(raw), raw, latency, cost, now)
                for offset, raw in enumerate(answers)
            ]
        except BaseException as exc:
            self._record_failure(header, phase, start, images, answers, time.perf_counter() - began, exc)
            if isinstance(exc, RobustAPIError) or not isinstance(exc, Exception):
                raise
            raise ProviderError(f"{provider.identity} failed: {type(exc).__name__}: {exc}") from exc
        try:
            self.log.append(header.run_id, records)
        except ProviderResponseError as exc:  # the store refused a raw response (not plain data): the batch failed
            self._record_failure(header, phase, start, images, answers, latency, exc)
            raise
        return len(records)

    def _record_failure(self, header, phase, start, images, answers, latency, exc) -> None:
        """Log the failed batch as error records (never as votes), so the log shows what happened."""
        matched = answers is not None and len(answers) == len(images)
        message = f"{type(exc).__name__}: {exc}"
        now = time.time()
        records = []
        for offset in range(len(images)):
            raw = answers[offset] if matched else None
            try:
                dumps_raw(raw)
            except ProviderResponseError:
                raw = None
            records.append(
                QueryRecord(phase, start + offset, None, raw, latency, self.provider.cost_per_query_usd, now, message)
            )
        try:
            self.log.append(header.run_id, records)
        except Exception:  # the original error matters more than a failed write of its trace
            logger.exception("could not record the failed batch of call %s", header.run_id)
