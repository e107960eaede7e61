"""Google Cloud Vision label detection (``google-cloud-vision``) as a provider.

One request carries up to 16 images (``batch_annotate_images`` with LABEL_DETECTION). The
stored raw response of an image is Google's own JSON shape::

    {"labelAnnotations": [{"mid": "/m/01yrx", "description": "Cat", "score": 0.97, "topicality": 0.97}, ...]}

(an empty list is a valid answer and gives :data:`~robust_api.providers.cloud.NO_LABEL`).

No hidden retries: every attempt on the wire is one the dispatcher made and counted against
the budget. The client's built-in retry (up to 600 s on UNAVAILABLE / DEADLINE_EXCEEDED) is
turned off with ``retry=None`` and an explicit ``timeout=timeout_s`` on every call, and every
gRPC channel this adapter opens carries ``grpc.enable_retries=0`` (no channel-level retry
policy, whatever service config a resolver supplies). The REST transport's session has no
retrying HTTP adapter; google-auth's only resend is after an HTTP 401 (refresh the OAuth
token, send again): a request refused for its credentials, not an annotation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from ..errors import CredentialsError, InvalidParameterError, MissingDependencyError, ProviderError
from .base import QueryFailure
from .cloud import CloudProvider, ImageLimits, Labels, is_loopback_url, is_ssl_error, retry_after_seconds, unit_score

try:
    import grpc
    import requests
    import google.auth
    import google.auth.exceptions
    from google.api_core import exceptions as gexc
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import vision
    from google.cloud.vision_v1.services.image_annotator.transports import ImageAnnotatorGrpcTransport
except ImportError as _exc:  # the registry turns this into its install hint; direct imports get it too
    raise MissingDependencyError(
        f"the google provider needs google-cloud-vision ({_exc.name} is missing). "
        "Install it with: pip install 'robust-api[google]'",
        name=_exc.name,
    ) from _exc



__all__ = ["GoogleVisionProvider"]

logger = logging.getLogger(__name__)

#: Public endpoint (host only; the client adds the scheme).
DEFAULT_ENDPOINT = "vision.googleapis.com"

# google.rpc.Code values seen in a per-image ``error`` of an answered batch
_CODE_NAMES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}
_CODE_KINDS = {8: "throttled", 13: "server", 14: "server", 4: "timeout"}

_CREDENTIALS_HELP = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, set GOOGLE_API_KEY to an API key, "
    "run `gcloud auth application-default login`, or pass credentials= / api_key="
)


#: options of every gRPC channel this adapter opens: channel-level retries off, and no
#: message size limit (the transport's own choice, -1; the service enforces its limits)
GRPC_CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 0),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
)


class _NoRetryGrpcTransport(ImageAnnotatorGrpcTransport):
    """The gRPC transport whose own channel (TLS, credentials) also gets
    :data:`GRPC_CHANNEL_OPTIONS`."""

    @classmethod
    def create_channel(cls, *args: Any, **kwargs: Any):
        options = dict(kwargs.pop("options", None) or ())
        options.update(GRPC_CHANNEL_OPTIONS)
        return super().create_channel(*args, options=list(options.items()), **kwargs)


class _ApiKeyInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Adds ``x-goog-api-key`` to every call on an insecure channel (kept out of the
    client's own metadata so the key never reaches the client library's debug logs)."""

    def __init__(self, api_key: str):
        self._metadata = (("x-goog-api-key", api_key),)

    def __repr__(self) -> str:
        return "_ApiKeyInterceptor()"

    def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = tuple(client_call_details.metadata or ()) + self._metadata
        details = client_call_details._replace(metadata=metadata) if hasattr(client_call_details, "_replace") else None
        if details is None:
            details = _CallDetails(
                client_call_details.method,
                client_call_details.timeout,
                metadata,
                client_call_details.credentials,
                getattr(client_call_details, "wait_for_ready", None),
                getattr(client_call_details, "compression", None),
            )
        return continuation(details, request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


class GoogleVisionProvider(CloudProvider):
    """Google Cloud Vision LABEL_DETECTION.

    Args:
        api_key: an API key (sent as ``x-goog-api-key``); default: env ``GOOGLE_API_KEY``.
        credentials: a ``google.auth.credentials.Credentials`` object; takes precedence over
            any API key.
        transport: None (choose from the endpoint), ``"rest"`` or ``"grpc"``. Endpoints:
            ``http://host:port`` → REST (plain HTTP); ``https://host[:port]`` → REST over TLS;
            ``grpc://host:port`` → gRPC over an insecure channel; no endpoint → the public
            endpoint ``vision.googleapis.com`` over REST (``transport="grpc"`` for gRPC over TLS).
        **kwargs: :class:`~robust_api.providers.cloud.CloudProvider` options (``endpoint``,
            ``timeout_s`` = 30, ``label_fn``, ``resize``, ``cost_per_query_usd``, ``max_labels`` = 10).

    Credentials, first found wins: ``credentials`` > ``api_key`` > ``GOOGLE_API_KEY`` >
    Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud). With an
    endpoint on this machine (an emulator) ADC is not consulted (no token is sent to it) and
    anonymous credentials are used when no key is given. Otherwise missing credentials raise
    :class:`~robust_api.errors.CredentialsError` here, before any query.

    Batches: up to 16 images per request; default rate limit 30 requests/s (Google's
    1,800 requests/min quota); images up to 20 MB.
    """

    name = "google"
    ENDPOINT_ENV = "ROBUST_API_GOOGLE_ENDPOINT"
    LOG_NAMES = (
        "urllib3.connectionpool",
        "google.auth.transport.requests",
        "google.cloud.vision_v1.services.image_annotator.transports.rest",
    )
    max_batch_size = 16
    default_rate_limit = 30.0
    limits = ImageLimits(
        max_bytes=20 * 1000 * 1000,
        formats=("JPEG", "PNG", "GIF", "BMP", "WEBP", "RAW", "ICO", "PDF", "TIFF"),
        source="cloud.google.com/vision: 20 MB per image, 16 images per request",
    )

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        credentials: Any = None,
        transport: Optional[str] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if transport not in (None, "rest", "grpc"):
            raise InvalidParameterError(f"transport must be None, 'rest' or 'grpc', got {transport!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise InvalidParameterError("api_key must be a non-empty string")
        api_key = api_key or os.environ.get("GOOGLE_API_KEY", "").strip() or None
        self._add_secret(api_key)
        self.identity = self._identity("google:label_detection")

        endpoint = self.endpoint
        scheme, hostport = "", DEFAULT_ENDPOINT
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            scheme = parts.scheme.lower()
            if scheme not in ("http", "https", "grpc", "grpcs"):
                raise InvalidParameterError(
                    f"google endpoint must start with http://, https:// or grpc://, got {endpoint!r}"
                )
            hostport = parts.netloc
            if not hostport:
                raise InvalidParameterError(f"google endpoint has no host: {endpoint!r}")
        if transport is None:
            transport = "grpc" if scheme in ("grpc", "grpcs") else "rest"
        self.transport = transport
        insecure = scheme in ("http", "grpc")

        loopback = bool(endpoint) and is_loopback_url(endpoint)
        if credentials is None and api_key is None:
            if loopback:
                credentials = AnonymousCredentials()
            else:
                credentials = self._default_credentials()

        if transport == "grpc" and insecure:
            channel = grpc.insecure_channel(hostport, options=list(GRPC_CHANNEL_OPTIONS))
            if api_key is not None and credentials is None:
                channel = grpc.intercept_channel(channel, _ApiKeyInterceptor(api_key))
            self._client = vision.ImageAnnotatorClient(transport=ImageAnnotatorGrpcTransport(channel=channel))
        else:
            if transport == "rest":
                api_endpoint = f"{'http' if insecure else 'https'}://{hostport}"
                transport_init: Any = "rest"
            else:
                api_endpoint = hostport
                transport_init = _NoRetryGrpcTransport
            options = ClientOptions(api_endpoint=api_endpoint, api_key=None if credentials is not None else api_key)
            try:
                self._client = vision.ImageAnnotatorClient(
                    credentials=credentials, transport=transport_init, client_options=options
                )
            except google.auth.exceptions.DefaultCredentialsError as exc:
                raise CredentialsError(self.redact(f"google: no usable credentials ({exc}); {_CREDENTIALS_HELP}")) from None
        logger.debug("google provider %s over %s", self.identity, transport)

    # -- credentials ---------------------------------------------------------------------
    def _default_credentials(self) -> Any:
        try:
            credentials, _project = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-vision", "https://www.googleapis.com/auth/cloud-platform"]
            )
        except google.auth.exceptions.DefaultCredentialsError as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            raise CredentialsError(
                self.redact(f"google: no credentials found ({self._clip(first_line, 200)}); {_CREDENTIALS_HELP}")
            ) from None
        return credentials

    # -- I/O -----------------------------------------------------------------------------
    def _send_encoded(self, images: list[bytes]) -> Sequence[Union[dict, QueryFailure]]:
        feature = vision.Feature(type_=vision.Feature.Type.LABEL_DETECTION, max_results=self.max_labels)
        requests_ = [vision.AnnotateImageRequest(image=vision.Image(content=image), features=[feature]) for image in images]
        try:
            response = self._client.batch_annotate_images(requests=requests_, retry=None, timeout=self.timeout_s)
        except Exception as exc:  # translated; never retried here
            raise self._translate(exc) from None
        responses = list(response.responses)
        if len(responses) != len(images):
            raise self._transient(
                "malformed", f"google answered {len(responses)} responses for {len(images)} images"
            )
        answers: list[Union[dict, QueryFailure]] = []
        for item in responses:
            code = int(item.error.code)
            if code != 0:
                name = _CODE_NAMES.get(code, str(code))
                kind = _CODE_KINDS.get(code, "rejected")
                answers.append(self._failure(kind, f"google could not annotate the image: {name} ({code}): {item.error.message}"))
                continue
            answers.append(
                {
                    "labelAnnotations": [
                        {
                            "mid": str(a.mid),
                            "description": str(a.description),
                            "score": float(a.score),
                            "topicality": float(a.topicality),
                        }
                        for a in item.label_annotations
                    ]
                }
            )
        return answers

    def _translate(self, exc: BaseException) -> Exception:
        """The robust_api error for one exception raised by the client (not raised here)."""
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, gexc.RetryError) and exc.cause is not None:
            return self._translate(exc.cause)
        if is_ssl_error(exc) or (isinstance(exc, gexc.ServiceUnavailable) and _is_tls_failure(str(exc))):
            return ProviderError(self.redact(
                f"google: TLS/SSL error talking to {self._where()} ({text}); check the endpoint's scheme "
                "(http:// and grpc:// are plain, https:// and grpcs:// use TLS) and its certificate"
            ))
        if isinstance(exc, gexc.GoogleAPICallError):
            retry_after = _retry_after(exc)
            reason = (getattr(exc, "reason", None) or "").upper()
            if isinstance(exc, gexc.TooManyRequests):
                return self._transient("throttled", f"google throttled the request ({text})", retry_after)
            if isinstance(exc, gexc.GatewayTimeout):  # includes DeadlineExceeded
                return self._transient("timeout", f"google timed out ({text})", retry_after)
            if isinstance(exc, gexc.ServiceUnavailable) and _is_connection_failure(str(exc)):
                return self._transient("connection", f"cannot reach google at {self._where()} ({text})")
            if isinstance(exc, gexc.InternalServerError) and "deserializ" in str(exc).lower():
                return self._transient("malformed", f"google sent an unreadable answer ({text})")
            if isinstance(exc, (gexc.ServerError, gexc.Aborted)):
                return self._transient("server", f"google server error ({text})", retry_after)
            if isinstance(exc, gexc.Cancelled):
                return self._transient("connection", f"google call cancelled ({text})")
            if isinstance(exc, (gexc.Unauthorized, gexc.Forbidden)) or "API_KEY" in reason or (
                isinstance(exc, gexc.BadRequest) and "api key not valid" in str(exc).lower()
            ):
                return CredentialsError(self.redact(f"google refused the credentials ({text}); {_CREDENTIALS_HELP}"))
            return ProviderError(self.redact(f"google rejected the request ({text})"))
        if isinstance(exc, requests.exceptions.Timeout):
            return self._transient("timeout", f"google timed out after {self.timeout_s:g} s ({text})")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return self._transient("connection", f"cannot reach google at {self._where()} ({text})")
        if isinstance(exc, google.auth.exceptions.RefreshError):
            return CredentialsError(self.redact(f"google credentials could not be refreshed ({text}); {_CREDENTIALS_HELP}"))
        if isinstance(exc, google.auth.exceptions.TransportError):
            return self._transient("connection", f"google token request failed ({text})")
        if isinstance(exc, grpc.RpcError):  # not wrapped by api_core (should not happen)
            return self._transient("server", f"google gRPC error ({text})")
        if isinstance(exc, (ValueError, TypeError, KeyError, IndexError)) or type(exc).__name__ == "ParseError":
            return self._transient("malformed", f"google sent an unreadable answer ({text})")
        return ProviderError(self.redact(f"google call failed ({text})"))

    def _where(self) -> str:
        return self.endpoint or DEFAULT_ENDPOINT

    # -- parsing -------------------------------------------------------------------------
    @staticmethod
    def labels(raw: Any) -> Labels:
        """``[(description, score in [0, 1]), ...]`` of a stored ``{"labelAnnotations": [...]}``
        (a missing list counts as empty)."""
        if not isinstance(raw, dict):
            raise TypeError(f"expected a dict, got {type(raw).__name__}")
        annotations = raw.get("labelAnnotations")
        if annotations is None:
            annotations = []
        if not isinstance(annotations, list):
            raise TypeError("labelAnnotations must be a list")
        return [(str(a["description"]), unit_score(a.get("score", 0.0))) for a in annotations]


def _is_connection_failure(message: str) -> bool:
    message = message.lower()
    return any(
        marker in message
        for marker in ("failed to connect", "connection refused", "connect failed", "dns resolution", "name resolution")
    )


def _is_tls_failure(message: str) -> bool:
    message = message.lower()
    return "handshake failed" in message or "ssl_error" in message or "certificate verify failed" in message


def _retry_after(exc: Any) -> Optional[float]:
    """Retry-After of an api_core error: the HTTP header (REST) or a google.rpc.RetryInfo detail."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        try:
            value = retry_after_seconds(headers.get("Retry-After"))
        except Exception:  # a header mapping of an unexpected kind
            value = None
        if value is not None:
            return value
    if response is not None and hasattr(response, "trailing_metadata"):
        try:
            for key, value in response.trailing_metadata() or ():
                if key.lower() == "retry-after":
                    return retry_after_seconds(value)
        except Exception:
            pass
    for detail in getattr(exc, "details", None) or ():
        delay = getattr(detail, "retry_delay", None)
        if delay is not None:
            try:
                return max(0.0, delay.seconds + delay.nanos / 1e9)
            except AttributeError:
                continue
    return None
