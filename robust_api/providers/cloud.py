"""What every remote provider shares: lossless image encoding, the provider's input limits
checked before any query, one normalized label form, endpoints and secrets.

An adapter (Google, AWS, Azure, Clarifai, HTTP) subclasses :class:`CloudProvider` and writes
two methods: ``_send_encoded`` (encoded images → one plain-data response or
:class:`~robust_api.providers.base.QueryFailure` per image; the only I/O) and the pure
``labels`` (one stored response → ``[(name, score in [0, 1]), ...]``).

The smoothed classifier's base classifier is "encode, then ask the API": quantizing to 8
bits and resizing happen *after* the noise and the denoiser, so they are part of the base
classifier and the certificate still holds for the original image.
"""

from __future__ import annotations

import io
import logging
import math
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import numpy as np

from ..errors import InvalidImageError, InvalidParameterError, ProviderResponseError, TransientProviderError
from ..pricing import price_per_query
from .base import Provider, QueryFailure

__all__ = [
    "CloudProvider",
    "ImageLimits",
    "NO_LABEL",
    "SecretRedactingFilter",
    "top_label",
    "env_endpoint",
    "is_loopback_url",
    "is_ssl_error",
    "redact_logs",
    "retry_after_seconds",
    "unit_score",
]

logger = logging.getLogger(__name__)

#: The label of an answer with no labels at all: a class of its own, never dropped.
NO_LABEL = "<no label>"

#: Label lists as every adapter's ``labels`` returns them.
Labels = list[tuple[str, float]]

RESIZE_MODES = (None, "fit")


@dataclass(frozen=True)
class ImageLimits:
    """A provider's documented input limits for one image.

    Attributes:
        max_bytes: largest encoded image, bytes.
        min_side, max_side: allowed range of height and width, pixels.
        formats: accepted encodings (upper case, e.g. "PNG", "JPEG").
        source: where the numbers come from.
    """

    max_bytes: int
    min_side: int = 1
    max_side: int = 1 << 20
    formats: tuple[str, ...] = ("PNG", "JPEG")
    source: str = ""


def top_label(labels: Sequence[tuple[str, float]]) -> str:
    """The base classifier's label: the highest score; ties go to the alphabetically first name.

    Args:
        labels: ``[(name, score), ...]`` (any order). Empty → :data:`NO_LABEL`.
    """
    if not labels:
        return NO_LABEL
    return min(labels, key=lambda pair: (-pair[1], pair[0]))[0]


def env_endpoint(variable: str) -> Optional[str]:
    """The endpoint override in environment variable ``variable`` (None when unset or empty)."""
    value = os.environ.get(variable, "").strip()
    return value or None


def is_loopback_url(url: str) -> bool:
    """True when ``url`` (with or without a scheme) names this machine (localhost, 127.0.0.1, ::1)."""
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    return host in ("localhost", "127.0.0.1", "::1")


def retry_after_seconds(value: Any) -> Optional[float]:
    """Seconds to wait from a Retry-After value.

    Args:
        value: a header value — delta-seconds (``"2"``, ``"0.5"``) or an HTTP-date — or a
            number; None or anything unreadable gives None.

    Returns:
        seconds ≥ 0 (an HTTP-date in the past gives 0.0), or None.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            seconds = float(text)
        except ValueError:
            from email.utils import parsedate_to_datetime
            from datetime import datetime, timezone

            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when is None:
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class SecretRedactingFilter(logging.Filter):
    """A :class:`logging.Filter` that masks registered secrets in a record's message.

    SDKs dump requests at DEBUG (botocore logs the session token and the canonical request,
    Clarifai's JSON channel its headers). A logger's filters only see records logged on that
    very logger, not those of its children, so :func:`redact_logs` attaches the filter to
    each exact logger name an SDK writes its wire dumps to.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: Optional[str]) -> None:
        """Mask ``secret`` (ignored when empty) from now on."""
        if secret:
            with self._lock:
                self._secrets.add(str(secret))

    @property
    def secrets(self) -> tuple[str, ...]:
        """The registered secrets, longest first (so one that contains another is masked whole)."""
        with self._lock:
            return tuple(sorted(self._secrets, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler to report
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            # the traceback of an SDK error may quote a request: when it does, format it now, masked
            try:
                text = logging.Formatter().formatException(record.exc_info)
            except Exception:
                return True
            if self.redact(text) != text:
                record.exc_text = self.redact(text)
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


#: The one filter every provider registers its secrets with.
LOG_FILTER = SecretRedactingFilter()
_FILTERED_LOGGERS: set[str] = set()
_FILTERED_LOCK = threading.Lock()


def redact_logs(logger_names: Sequence[str], secrets: Sequence[Optional[str]] = ()) -> None:
    """Mask ``secrets`` in every record logged on the loggers named ``logger_names`` (exact names)."""
    for secret in secrets:
        LOG_FILTER.add(secret)
    with _FILTERED_LOCK:
        for name in logger_names:
            if name not in _FILTERED_LOGGERS:
                logging.getLogger(name).addFilter(LOG_FILTER)
                _FILTERED_LOGGERS.add(name)


def is_ssl_error(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it wraps is a TLS/SSL failure (wrong scheme, bad or
    untrusted certificate): a configuration problem that retrying does not fix."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    while pending:
        error = pending.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ssl.SSLError) or type(error).__name__ in (
            "SSLError", "SSLCertVerificationError", "CertificateError", "SSLZeroReturnError"
        ):
            return True
        pending.extend([error.__cause__, error.__context__, getattr(error, "inner_exception", None),
                        getattr(error, "reason", None), getattr(error, "original_error", None)])
        pending.extend(arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException))
    return False


def unit_score(value: Any, scale: float = 1.0) -> float:
    """A label score as a float in [0, 1]: ``value / scale``.

    Args:
        value: a real number (not a bool), e.g. 0.97 or, with ``scale=100``, 97.0.
        scale: what ``value`` is a fraction of (1 for probabilities, 100 for percentages).

    Raises:
        TypeError: not a number. ValueError: not finite or outside [0, 1] by more than 1e-6
        (values within that tolerance, e.g. float32 rounding, are clipped).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"score must be a number, got {type(value).__name__}")
    score = float(value) / scale
    if not math.isfinite(score) or score < -1e-6 or score > 1.0 + 1e-6:
        raise ValueError(f"score {value!r} outside [0, {scale:g}]")
    return min(1.0, max(0.0, score))


def _worst_case_png_bytes(height: int, width: int, channels: int) -> int:
    """An upper bound on a PNG's size: stored (uncompressed) deflate blocks plus headers."""
    raw = height * (width * channels + 1)
    return raw + 5 * (raw // 16383 + 1) + 12 * (raw // 8192 + 1) + 1024


class CloudProvider(Provider):
    """Base class of the remote adapters.

    Args (keyword-only, shared by every adapter):
        endpoint: URL of another server speaking the provider's protocol (an emulator from
            :mod:`robust_api.emulators`, a private deployment). Default: the environment
            variable named by ``ENDPOINT_ENV``, else the provider's public endpoint.
        timeout_s: seconds allowed for one request (every request gets one), > 0.
        label_fn: optional pure function ``[(name, score in [0, 1]), ...] → str`` choosing the
            base classifier's label from the normalized labels (default: :func:`top_label`).
        resize: None (an image outside the provider's size limits is refused before any
            query, with this option named) or ``"fit"``: each query image is scaled after the
            noise and the denoiser — up by the smallest integer factor (nearest neighbour) to
            reach the minimum side, down (box filter) to respect the maximum side and byte
            limit. Deterministic, so it is part of the base classifier.
        cost_per_query_usd: USD recorded per query (default: the list price in
            :mod:`robust_api.pricing`).
        max_labels: how many labels to ask for (the top one decides the vote).
    """

    #: provider name in the registry and the price table
    name: str = "cloud"
    #: environment variable holding an endpoint override
    ENDPOINT_ENV: str = ""
    limits: ImageLimits = ImageLimits(max_bytes=4 << 20)
    default_concurrency = 16
    #: exact names of the loggers the adapter's SDK writes request dumps to: every secret the
    #: adapter registers is masked in their records
    LOG_NAMES: tuple[str, ...] = ("urllib3.connectionpool",)

    def __init__(
        self,
        *,
        endpoint: Optional[str] = None,
        timeout_s: float = 30.0,
        label_fn: Optional[Callable[[Labels], str]] = None,
        resize: Optional[str] = None,
        cost_per_query_usd: Optional[float] = None,
        max_labels: int = 10,
    ):
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.strip()):
            raise InvalidParameterError(f"endpoint must be a URL string, got {endpoint!r}")
        self.endpoint = endpoint.strip() if endpoint else (env_endpoint(self.ENDPOINT_ENV) if self.ENDPOINT_ENV else None)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (0 < timeout_s < math.inf):
            raise InvalidParameterError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        if label_fn is not None and not callable(label_fn):
            raise InvalidParameterError("label_fn must be a callable [(name, score), ...] -> str")
        self.label_fn = label_fn
        if resize not in RESIZE_MODES:
            raise InvalidParameterError(f"resize must be None or 'fit', got {resize!r}")
        self.resize = resize
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise InvalidParameterError(f"max_labels must be a positive integer, got {max_labels!r}")
        self.max_labels = max_labels
        if cost_per_query_usd is None:
            cost_per_query_usd = price_per_query(self.name)
        elif isinstance(cost_per_query_usd, bool) or not isinstance(cost_per_query_usd, (int, float)) or not (
            0 <= cost_per_query_usd < math.inf
        ):
            raise InvalidParameterError(f"cost_per_query_usd must be a non-negative number, got {cost_per_query_usd!r}")
        self.cost_per_query_usd = float(cost_per_query_usd)
        self._secrets: list[str] = []

    # -- secrets -------------------------------------------------------------------------
    def _add_secret(self, value: Optional[str]) -> None:
        """Mask ``value`` in every message of this provider and in its SDK's log records."""
        if value:
            value = str(value)
            if value not in self._secrets:
                self._secrets.append(value)
                # longest first, so a secret that contains another is masked whole
                self._secrets.sort(key=len, reverse=True)
            redact_logs(self.LOG_NAMES, [value])

    def redact(self, text: str) -> str:
        text = str(text)
        for secret in getattr(self, "_secrets", ()):  # also safe on a half-built object
            if secret and secret in text:
                text = text.replace(secret, "***")
        return text

    def _clip(self, text: Any, limit: int) -> str:
        """``text`` redacted, then cut to ``limit`` characters (in that order: a cut inside a
        secret must not leave its prefix in the message)."""
        text = self.redact(str(text))
        return text if len(text) <= limit else text[:limit] + "…"

    def __repr__(self) -> str:
        endpoint = getattr(self, "endpoint", None)
        return self.redact(f"{type(self).__name__}(identity={self.identity!r}, endpoint={endpoint or 'default'!r})")

    def _transient(self, kind: str, message: str, retry_after: Optional[float] = None) -> TransientProviderError:
        """A :class:`TransientProviderError` of ``kind`` with a redacted message (to ``raise``)."""
        return TransientProviderError(kind, self.redact(message), retry_after)

    def _failure(self, kind: str, message: str, retry_after: Optional[float] = None) -> QueryFailure:
        """A :class:`QueryFailure` for one image's slot, with a redacted message."""
        return QueryFailure(kind, self.redact(message), retry_after)

    def _identity(self, base: str) -> str:
        """``base``, plus ``@host:port`` when an endpoint override is in use (answers of an
        emulator must never be reused as if they came from the real service)."""
        if not self.endpoint:
            return base
        parts = urlsplit(self.endpoint if "://" in self.endpoint else f"//{self.endpoint}")
        return f"{base}@{parts.netloc or self.endpoint}"

    # -- images --------------------------------------------------------------------------
    def sent_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the image actually sent for an [height, width] input.

        Raises:
            InvalidImageError: the image does not fit the limits and ``resize`` is None.
        """
        limits = self.limits
        h, w = height, width
        if self.resize == "fit":
            if min(h, w) < limits.min_side:
                factor = math.ceil(limits.min_side / min(h, w))
                h, w = h * factor, w * factor
            if max(h, w) > limits.max_side:
                scale = limits.max_side / max(h, w)
                h, w = self._scaled_side(h, scale), self._scaled_side(w, scale)
            if min(h, w) < limits.min_side or max(h, w) > limits.max_side:
                ratio = max(height, width) / min(height, width)
                raise InvalidImageError(
                    f"resize='fit' cannot fit a {height}×{width} image into {self.name}'s limits: both sides must "
                    f"be between {limits.min_side} and {limits.max_side} px ({limits.source}), so the aspect ratio "
                    f"can be at most {limits.max_side / limits.min_side:g}:1, and this one is {ratio:g}:1. Crop or "
                    "pad the image to a less elongated shape before certifying"
                )
            return h, w
        if min(h, w) < limits.min_side or max(h, w) > limits.max_side:
            raise InvalidImageError(
                f"{self.name} takes images with sides between {limits.min_side} and {limits.max_side} px "
                f"({limits.source}); this one is {height}×{width}. Pass resize='fit' to scale each query image "
                "after the noise (the certificate stays valid for the original image), or resize it yourself"
            )
        return h, w

    def _scaled_side(self, side: int, scale: float) -> int:
        """``side × scale`` rounded down, but not below the minimum side when only the rounding
        would take it there."""
        exact = side * scale
        scaled = max(1, math.floor(exact))
        if scaled < self.limits.min_side <= math.ceil(exact):
            scaled = self.limits.min_side
        return scaled

    def check_image(self, image: np.ndarray) -> None:
        h, w = self.sent_shape(image.shape[0], image.shape[1])
        channels = 1 if image.shape[2] == 1 else 3
        worst = _worst_case_png_bytes(h, w, channels)
        if worst > self.limits.max_bytes:
            raise InvalidImageError(
                f"a {h}×{w}×{channels} PNG can take up to {worst:,} bytes but {self.name} accepts at most "
                f"{self.limits.max_bytes:,} ({self.limits.source}); noisy copies compress badly, so resize the "
                "image to fewer pixels before certifying"
            )

    def encode(self, image: np.ndarray) -> bytes:
        """PNG bytes (8-bit, lossless) of one float32 [H, W, C] image in [0, 1], resized per ``resize``."""
        from PIL import Image

        pixels = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
        if pixels.shape[2] == 1:
            pil = Image.fromarray(pixels[:, :, 0], mode="L")
        elif pixels.shape[2] == 3:
            pil = Image.fromarray(pixels, mode="RGB")
        else:
            pil = Image.fromarray(pixels[:, :, :3], mode="RGB")
        h, w = self.sent_shape(pixels.shape[0], pixels.shape[1])
        if (h, w) != pixels.shape[:2]:
            if h >= pixels.shape[0] and h % pixels.shape[0] == 0 and w % pixels.shape[1] == 0:
                pil = pil.resize((w, h), Image.NEAREST)
            else:
                pil = pil.resize((w, h), Image.BOX)
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG", compress_level=6)
        return buffer.getvalue()

    # -- the contract --------------------------------------------------------------------
    def send(self, images: np.ndarray) -> list[Union[Any, QueryFailure]]:
        encoded = [self.encode(image) for image in images]
        answers = list(self._send_encoded(encoded))
        if len(answers) != len(encoded):
            raise ProviderResponseError(
                f"{self.identity} answered {len(answers)} times for {len(encoded)} images"
            )
        return answers

    def _send_encoded(self, images: list[bytes]) -> Sequence[Union[Any, QueryFailure]]:
        """Send encoded images (at most ``max_batch_size``); the only method that does I/O."""
        raise NotImplementedError

    @staticmethod
    def labels(raw: Any) -> Labels:
        """Normalized labels of one stored response: ``[(name, score in [0, 1]), ...]`` (pure)."""
        raise NotImplementedError

    def parse(self, raw: Any) -> str:
        try:
            labels = self.labels(raw)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderResponseError(
                f"not a {self.name} response ({type(exc).__name__}): {self._clip(repr(raw), 120)}"
            ) from None
        if self.label_fn is None:
            return top_label(labels)
        label = self.label_fn(labels)
        if not isinstance(label, str):
            raise ProviderResponseError(f"label_fn returned {type(label).__name__}; it must return a str label")
        return label
