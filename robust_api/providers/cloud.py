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

import base64
import hashlib
import io
import logging
import math
import os
import re
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import numpy as np

from ..errors import InvalidImageError, InvalidParameterError, ProviderResponseError, TransientProviderError
from ..pricing import check_cost_per_query, price_per_query
from .base import Provider, QueryFailure, apply_label_fn, check_label_fn

__all__ = [
    "CloudProvider",
    "ImageLimits",
    "NO_LABEL",
    "SecretRedactingFilter",
    "top_label",
    "env_endpoint",
    "host_port",
    "is_loopback_url",
    "PathSecrets",
    "split_path_secrets",
    "url_query_secrets",
    "url_secrets",
    "query_digest",
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


# --------------------------------------------------------------------------- secrets in URLs

#: names of query parameters (searched) and header names (searched) whose values are credentials
SECRET_NAME = re.compile(r"key|token|secret|passw|pwd|auth|credential|signature|cookie|^sig$|^code$", re.IGNORECASE)
#: a whole path segment that names a credential: the segment after it is one (``/token/<x>``)
_SECRET_SEGMENT_NAME = re.compile(
    r"(api[-_]?)?(key|token)s?|(access|auth|bearer|session|id|refresh)[-_]?token|secrets?|passw(or)?d|pwd"
    r"|credentials?|signature|sig|bearer",
    re.IGNORECASE,
)
#: a piece of a path segment shaped like a generated credential: 16+ letters and digits (with
#: at least two of each), as API keys, hex digests, base64 and JWT parts are
_TOKEN_PIECE = re.compile(r"[A-Za-z0-9+/=]{16,}")
_SEGMENT_SEPARATORS = re.compile(r"[-_.~:;,!$&'()*@]")


def _looks_like_token(segment: str) -> bool:
    for piece in _SEGMENT_SEPARATORS.split(segment):
        if _TOKEN_PIECE.fullmatch(piece) and sum(c.isdigit() for c in piece) >= 2 and sum(c.isalpha() for c in piece) >= 2:
            return True
    return False


def _forms(value: str) -> set[str]:
    """``value`` as written, percent-decoded and percent-encoded the way HTTP clients
    re-quote a URL (any of them may reach a message)."""
    forms = {value, unquote(value), unquote_plus(value)}
    forms |= {quote(form, safe="!#$%&'()*+,/:;=?@[]~") for form in list(forms)}
    return forms - {""}


def url_query_secrets(query: str) -> list[str]:
    """Values (raw and decoded) of the secret-named parameters of a URL query (``key=``,
    ``access_token=``, ``sig=`` ...; see :data:`SECRET_NAME`)."""
    secrets: set[str] = set()
    for piece in re.split(r"[&;]", query):
        name, _, value = piece.partition("=")
        if value and SECRET_NAME.search(unquote_plus(name)):
            secrets |= _forms(value)
    return sorted(secrets)


def query_digest(query: str) -> str:
    """A short sha256 of a URL query with the values of secret-named parameters left out
    ("" for an empty query or one made of such parameters only)."""
    kept, public = [], False
    for piece in re.split(r"[&;]", query):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        if SECRET_NAME.search(unquote_plus(name)):
            kept.append(name)  # the parameter's presence, not its value
        else:
            kept.append(f"{name}={value}")
            public = True
    if not public:
        return ""
    return hashlib.sha256("&".join(kept).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class PathSecrets:
    """What :func:`split_path_secrets` found in a URL path.

    Attributes:
        public: the path with every credential segment (or ``name=value`` parameter value)
            replaced by ``***``; safe to write to a log.
        secrets: the replaced values, as written and percent-decoded.
        token_shaped: True when a segment was replaced only for its shape (16+ letters and
            digits, not after a credential word): it may be a model or version id, so a
            public identity that drops it could merge two models.
    """

    public: str
    secrets: tuple[str, ...]
    token_shaped: bool


def split_path_secrets(path: str) -> PathSecrets:
    """Split the credentials out of a URL path (see :class:`PathSecrets`).

    A segment is a credential when it follows a segment naming one (``key``, ``api_key``,
    ``token``, ``access_token``, ``secret``, ``password``, ``signature``, ``bearer``, ...),
    when it is a ``name=value`` parameter with a secret name (``;key=value``), or when it is
    shaped like a generated token (a piece of 16+ letters and digits, at least two of each).
    """
    out, secrets, shaped = [], set(), False
    after_name = False
    for segment in path.split("/"):
        decoded = unquote(segment)
        if after_name and segment:
            secrets |= _forms(segment)
            out.append("***")
            after_name = False
            continue
        params = decoded.split(";")
        if any("=" in p and SECRET_NAME.search(p.partition("=")[0]) and p.partition("=")[2] for p in params):
            pieces = []
            for raw_piece in segment.split(";"):
                name, eq, value = raw_piece.partition("=")
                if eq and value and SECRET_NAME.search(unquote(name)):
                    secrets |= _forms(value)
                    pieces.append(f"{name}=***")
                else:
                    pieces.append(raw_piece)
            out.append(";".join(pieces))
            continue
        if _looks_like_token(decoded):
            secrets |= _forms(segment)
            out.append("***")
            shaped = True
            continue
        after_name = bool(_SECRET_SEGMENT_NAME.fullmatch(decoded))
        out.append(segment)
    return PathSecrets("/".join(out), tuple(sorted(secrets, key=len, reverse=True)), shaped)


def url_secrets(url: str) -> list[str]:
    """Every credential in ``url`` (raw and percent-decoded): the userinfo (the password, and
    the user name when there is no password or it is token-shaped), the values of secret-named query parameters, and the
    credential segments of the path (:func:`split_path_secrets`). Works on URLs too broken
    for :func:`urllib.parse.urlsplit` (bad ports, brackets), so that a message about such a
    URL can still be masked."""
    rest = url.split("://", 1)[-1]
    netloc, slash, tail = rest.partition("/")
    netloc = netloc.split("?", 1)[0].split("#", 1)[0]
    secrets: set[str] = set()
    userinfo, at, _ = netloc.rpartition("@")
    if at and userinfo:
        user, colon, password = userinfo.partition(":")
        secrets |= _forms(userinfo) | _forms(password)
        if not colon or not password or _looks_like_token(unquote(user)):
            secrets |= _forms(user)  # a token in the user-name slot (https://TOKEN@host/)
        # HTTP clients send the userinfo as "Authorization: Basic base64(user:password)"
        plain = f"{unquote(user)}:{unquote(password)}"
        for encoding in ("latin-1", "utf-8"):
            try:
                secrets.add(base64.b64encode(plain.encode(encoding)).decode("ascii"))
            except UnicodeEncodeError:
                continue
    path = (slash + tail).split("?", 1)[0].split("#", 1)[0]
    secrets |= set(split_path_secrets(path).secrets)
    query = url.split("?", 1)[1].split("#", 1)[0] if "?" in url else ""
    secrets |= set(url_query_secrets(query))
    return sorted(secrets, key=len, reverse=True)


def host_port(url: str) -> str:
    """``host[:port]`` of ``url`` (with or without a scheme), without any userinfo
    (``user:password@``); IPv6 hosts in brackets."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number: keep what follows the userinfo
        return parts.netloc.rpartition("@")[2]
    if not host:
        return parts.netloc.rpartition("@")[2]
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


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

    #: Shorter secrets are not masked in SDK log records: the filter is shared by the whole
    #: process, and masking a one- to three-character string would garble every record of
    #: every provider (a test key "p" turned "http" into "htt***"). Real keys are far longer;
    #: messages robust-api builds itself still mask secrets of any length.
    MIN_LENGTH = 4

    def add(self, secret: Optional[str]) -> None:
        """Mask ``secret`` from now on (ignored when shorter than :attr:`MIN_LENGTH`)."""
        if secret and len(str(secret)) >= self.MIN_LENGTH:
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
            :mod:`robust_api.pricing`): finite, in [0, $1]
            (:data:`~robust_api.pricing.MAX_COST_PER_QUERY_USD`).
        allow_high_cost: accept a ``cost_per_query_usd`` above $1 (default False: such a
            value is refused as a likely price per 1,000 queries).
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
        allow_high_cost: bool = False,
        max_labels: int = 10,
    ):
        self._secrets: list[str] = []
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.strip()):
            raise InvalidParameterError(f"endpoint must be a URL string, got {type(endpoint).__name__}")
        self.endpoint = endpoint.strip() if endpoint else (env_endpoint(self.ENDPOINT_ENV) if self.ENDPOINT_ENV else None)
        if self.endpoint:
            for secret in url_secrets(self.endpoint):  # before any message can quote the endpoint
                self._add_secret(secret)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (0 < timeout_s < math.inf):
            raise InvalidParameterError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.label_fn = check_label_fn(label_fn, "[(name, score), ...]")
        if resize not in RESIZE_MODES:
            raise InvalidParameterError(f"resize must be None or 'fit', got {resize!r}")
        self.resize = resize
        if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
            raise InvalidParameterError(f"max_labels must be a positive integer, got {max_labels!r}")
        self.max_labels = max_labels
        if cost_per_query_usd is None:
            cost_per_query_usd = price_per_query(self.name)
        self.cost_per_query_usd = check_cost_per_query(cost_per_query_usd, allow_high_cost=allow_high_cost)
        self.allow_high_cost = allow_high_cost

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
        emulator must never be reused as if they came from the real service). Never the
        endpoint's userinfo, path or query: they may hold credentials."""
        if not self.endpoint:
            return base
        return f"{base}@{host_port(self.endpoint)}"

    # -- images --------------------------------------------------------------------------
    def sent_shape(self, height: int, width: int, channels: int = 3) -> tuple[int, int]:
        """(height, width) of the image actually sent for an [height, width, channels] input.

        With ``resize="fit"`` the sides are scaled into [min_side, max_side], then both are
        shrunk by one factor until the worst-case (uncompressed) PNG fits ``max_bytes``.

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
            worst = _worst_case_png_bytes(h, w, channels)
            if worst > limits.max_bytes:
                scale = math.sqrt(limits.max_bytes / worst)
                while True:
                    small_h, small_w = self._scaled_side(h, scale), self._scaled_side(w, scale)
                    if _worst_case_png_bytes(small_h, small_w, channels) <= limits.max_bytes or scale < 1e-6:
                        break
                    scale *= 0.995
                h, w = small_h, small_w
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

    #: encoding buffers of one image in flight (uint8 rows, Pillow's copy), in float32 copies
    request_scratch_copies = 0.75

    @property
    def max_input_pixels(self) -> int:
        """The pixel limit checked before decoding: with ``resize="fit"`` query images are
        scaled after the noise, so the generic limit (50 MP); otherwise the most pixels the
        service can take (its largest side squared, and one byte per pixel of its byte limit,
        an upper bound; :meth:`check_image` applies the exact rule)."""
        from ..images import DEFAULT_MAX_PIXELS

        if self.resize == "fit":
            return DEFAULT_MAX_PIXELS
        return int(min(DEFAULT_MAX_PIXELS, self.limits.max_side ** 2, self.limits.max_bytes))

    def check_image(self, image: np.ndarray) -> None:
        channels = 1 if image.shape[2] == 1 else 3
        h, w = self.sent_shape(image.shape[0], image.shape[1], channels)
        worst = _worst_case_png_bytes(h, w, channels)
        if worst > self.limits.max_bytes:
            raise InvalidImageError(
                f"a {h}×{w}×{channels} PNG can take up to {worst:,} bytes but {self.name} accepts at most "
                f"{self.limits.max_bytes:,} ({self.limits.source}); noisy copies compress badly. Pass resize='fit' "
                "to scale each query image after the noise (the certificate stays valid for the original image), "
                "or resize the image to fewer pixels before certifying"
            )

    def encode(self, image: np.ndarray) -> bytes:
        """PNG bytes (8-bit, lossless) of one float32 [H, W, C] image in [0, 1], resized per ``resize``."""
        from PIL import Image

        image = np.asarray(image, dtype=np.float32)
        pixels = np.empty(image.shape, dtype=np.uint8)
        rows = max(1, (4 << 20) // max(1, image[0].size))  # 8-bit rounding in bands of ~16 MB of float32
        for top in range(0, image.shape[0], rows):
            band = image[top : top + rows] * 255.0
            np.rint(band, out=band)
            np.clip(band, 0, 255, out=band)
            pixels[top : top + rows] = band
        if pixels.shape[2] == 1:
            pil = Image.fromarray(pixels[:, :, 0], mode="L")
        elif pixels.shape[2] == 3:
            pil = Image.fromarray(pixels, mode="RGB")
        else:
            pil = Image.fromarray(pixels[:, :, :3], mode="RGB")
        h, w = self.sent_shape(pixels.shape[0], pixels.shape[1], 1 if pixels.shape[2] == 1 else 3)
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
        """One answer per image (see :meth:`Provider.send`); any registered secret a server
        echoed in an answer is masked (``***``) before the answer is parsed or stored."""
        encoded = [self.encode(image) for image in images]
        answers = list(self._send_encoded(encoded))
        if len(answers) != len(encoded):
            raise ProviderResponseError(
                f"{self.identity} answered {len(answers)} times for {len(encoded)} images"
            )
        if self._secrets:
            answers = [answer if isinstance(answer, QueryFailure) else self._redact_raw(answer) for answer in answers]
        return answers

    def _redact_raw(self, value: Any) -> Any:
        """``value`` (plain JSON data) with registered secrets masked in every string and key."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self._redact_raw(k) if isinstance(k, str) else k: self._redact_raw(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redact_raw(v) for v in value]
        return value

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
        return apply_label_fn(self.label_fn, labels)
