"""Azure AI Vision tagging as a provider.

Two client libraries, one stored shape. ``api="v3.2"`` (default) uses the legacy
``azure-cognitiveservices-vision-computervision`` client (``tag_image_in_stream`` or
``analyze_image_in_stream`` with the Tags feature); ``api="v4"`` uses
``azure-ai-vision-imageanalysis`` (Image Analysis 4.0, ``analyze`` with TAGS). Both store::

    {"tags": [{"name": "cat", "confidence": 0.99}, ...], "modelVersion": "2021-04-01"}

(v3.2 may add a ``hint`` per tag). Azure takes one image per call.

Neither client retries here: msrest never retries a POST on an error status with urllib3 2.x
(and would re-send an empty body if it did), and its connection retries (3, with backoff) are
set to 0; the v4 client is built with ``retry_total=0``. Retries, backoff and
rate limits belong to the dispatcher.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from ..errors import CredentialsError, InvalidParameterError, MissingDependencyError, ProviderError
from .base import QueryFailure
from .cloud import CloudProvider, ImageLimits, Labels, is_ssl_error, retry_after_seconds, unit_score

try:
    import requests
    from azure.cognitiveservices.vision.computervision import ComputerVisionClient
    from azure.cognitiveservices.vision.computervision.models import VisualFeatureTypes
    from msrest.authentication import CognitiveServicesCredentials
    from msrest.exceptions import ClientRequestError, DeserializationError, HttpOperationError
except ImportError as _exc:
    raise MissingDependencyError(
        f"the azure provider needs azure-cognitiveservices-vision-computervision ({_exc.name} is missing). "
        "Install it with: pip install 'robust-api[azure]'",
        name=_exc.name,
    ) from _exc

__all__ = ["AzureVisionProvider"]

logger = logging.getLogger(__name__)

KEY_ENV = "AZURE_COMPUTER_VISION_SUBSCRIPTION_KEY"
APIS = ("v3.2", "v4")
OPERATIONS = ("tag", "analyze")

#: error codes (top-level or inner) of a 400 that refuses this image, not the request
_IMAGE_CODES = {
    "InvalidImageFormat",
    "InvalidImageSize",
    "InvalidImageDimension",
    "InvalidImageUrl",
    "InvalidImage",
    "NotSupportedImage",
}

_CREDENTIALS_HELP = (
    f"set {KEY_ENV} to a key of your Computer Vision resource (or pass subscription_key=) and "
    "AZURE_COMPUTER_VISION_ENDPOINT to its endpoint (or pass endpoint=)"
)


class AzureVisionProvider(CloudProvider):
    """Azure AI Vision image tagging.

    Args:
        subscription_key: the resource key (default: env ``AZURE_COMPUTER_VISION_SUBSCRIPTION_KEY``).
        operation: ``"tag"`` (default; v3.2 ``/tag``) or ``"analyze"`` (v3.2 ``/analyze`` with
            visualFeatures=Tags). With ``api="v4"`` both mean ``imageanalysis:analyze`` with tags.
        api: ``"v3.2"`` (default; legacy Computer Vision client) or ``"v4"`` (Image Analysis 4.0
            client, imported only when chosen).
        model_version: the model to ask for (default ``"latest"``; v3.2 also takes a date such
            as ``"2021-04-01"``).
        **kwargs: :class:`~robust_api.providers.cloud.CloudProvider` options. ``endpoint`` is
            required — Azure has no global endpoint: pass your resource's URL or set
            ``AZURE_COMPUTER_VISION_ENDPOINT``. ``timeout_s`` (default 30) is passed on every call.

    One image per call; JPEG/PNG/GIF/BMP under 4 MB, sides 50–10,000 px (``resize="fit"`` for
    28×28 images). Default rate limit 10 requests/s (S1 allows up to 20 TPS; free tier 20/min).

    ``model_version`` is the pinned version (None for ``"latest"``); the version that answered
    is kept in each stored answer (``modelVersion``).

    Raises:
        CredentialsError: no endpoint or no key (here, before any query).
    """

    name = "azure"
    ENDPOINT_ENV = "AZURE_COMPUTER_VISION_ENDPOINT"
    LOG_NAMES = (
        "urllib3.connectionpool",
        "msrest.http_logger",
        "msrest.universal_http",
        "azure.core.pipeline.policies.http_logging_policy",
    )
    max_batch_size = 1
    default_rate_limit = 10.0
    limits = ImageLimits(
        max_bytes=4 * 1024 * 1024,
        min_side=50,
        max_side=10000,
        formats=("JPEG", "PNG", "GIF", "BMP"),
        source="learn.microsoft.com (Azure AI Vision v3.2): JPEG/PNG/GIF/BMP under 4 MB, larger than 50×50 px",
    )

    def __init__(
        self,
        *,
        subscription_key: Optional[str] = None,
        operation: str = "tag",
        api: str = "v3.2",
        model_version: str = "latest",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if api not in APIS:
            raise InvalidParameterError(f"api must be one of {APIS}, got {api!r}")
        if operation not in OPERATIONS:
            raise InvalidParameterError(f"operation must be one of {OPERATIONS}, got {operation!r}")
        if not isinstance(model_version, str) or not model_version.strip():
            raise InvalidParameterError(f"model_version must be a non-empty string, got {model_version!r}")
        if subscription_key is not None and (not isinstance(subscription_key, str) or not subscription_key.strip()):
            raise InvalidParameterError("subscription_key must be a non-empty string")
        key = subscription_key or os.environ.get(KEY_ENV, "").strip() or None
        self._add_secret(key)
        if not self.endpoint:
            raise CredentialsError(
                "azure needs your Computer Vision resource's endpoint (Azure has no global endpoint): set "
                "AZURE_COMPUTER_VISION_ENDPOINT or pass endpoint='https://<resource>.cognitiveservices.azure.com/'"
            )
        parts = urlsplit(self.endpoint)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise InvalidParameterError(self.redact(
                f"azure endpoint must be a URL with an http(s):// scheme, got {self.endpoint!r}: pass "
                "'https://<resource>.cognitiveservices.azure.com' (the Endpoint shown under Keys and Endpoint "
                "of your resource)"
            ))
        if key is None:
            raise CredentialsError(f"azure: no subscription key found; {_CREDENTIALS_HELP}")
        self._key = key
        self.api = api
        self.operation = operation
        self.requested_model_version = model_version
        # fixed here: the query log matches reusable answers on it
        self.model_version = None if model_version == "latest" else model_version
        suffix = "" if model_version == "latest" else f":{model_version}"
        if api == "v4":
            self.identity = self._identity(f"azure:image_analysis.v4.tags{suffix}")
            try:
                from azure.ai.vision.imageanalysis import ImageAnalysisClient
                from azure.ai.vision.imageanalysis.models import VisualFeatures
                from azure.core.credentials import AzureKeyCredential
            except ImportError as exc:
                raise MissingDependencyError(
                    f"azure api='v4' needs azure-ai-vision-imageanalysis ({exc.name} is missing). "
                    "Install it with: pip install 'robust-api[azure]'",
                    name=exc.name,
                ) from exc
            self._v4_features = [VisualFeatures.TAGS]
            self._v4_client = ImageAnalysisClient(
                endpoint=self.endpoint,
                credential=AzureKeyCredential(key),
                retry_total=0,
                connection_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
            )
        else:
            self.identity = self._identity(f"azure:computer_vision.v3.2.{operation}{suffix}")
        self._local = threading.local()
        logger.debug("azure provider %s", self.identity)

    # -- clients -------------------------------------------------------------------------
    def _legacy_client(self) -> "ComputerVisionClient":
        """This thread's msrest client (msrest clients are not safely shared across threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = ComputerVisionClient(self.endpoint, CognitiveServicesCredentials(self._key))
            # msrest never retries a POST on a status, but urllib3 does retry failed
            # connections (3 times, 0.8 s backoff): switch that off too.
            client.config.retry_policy.retries = 0
            self._local.client = client
        return client

    # -- I/O -----------------------------------------------------------------------------
    def _send_encoded(self, images: list[bytes]) -> Sequence[Union[dict, QueryFailure]]:
        analyze = self._analyze_v4 if self.api == "v4" else self._analyze_v32
        return [analyze(image) for image in images]

    def _analyze_v32(self, image: bytes) -> Union[dict, QueryFailure]:
        client = self._legacy_client()
        try:
            if self.operation == "tag":
                result = client.tag_image_in_stream(
                    io.BytesIO(image), model_version=self.requested_model_version, timeout=self.timeout_s
                )
            else:
                result = client.analyze_image_in_stream(
                    io.BytesIO(image),
                    visual_features=[VisualFeatureTypes.tags],
                    model_version=self.requested_model_version,
                    timeout=self.timeout_s,
                )
        except HttpOperationError as exc:  # ComputerVisionErrorResponseException and kin
            return self._http_error(exc.response, _legacy_error_code(exc), str(exc))
        except ClientRequestError as exc:
            if is_ssl_error(exc):
                raise self._ssl_error(exc) from None
            inner = getattr(exc, "inner_exception", None)
            if isinstance(inner, requests.exceptions.Timeout) or "timed out" in str(exc).lower():
                raise self._transient("timeout", f"azure timed out after {self.timeout_s:g} s ({exc})") from None
            raise self._transient("connection", f"cannot reach azure at {self.endpoint} ({exc})") from None
        except (DeserializationError, ValueError) as exc:
            raise self._transient("malformed", f"azure sent an unreadable answer ({type(exc).__name__}: {exc})") from None
        except requests.exceptions.RequestException as exc:  # not wrapped by msrest
            if is_ssl_error(exc):
                raise self._ssl_error(exc) from None
            kind = "timeout" if isinstance(exc, requests.exceptions.Timeout) else "connection"
            raise self._transient(kind, f"azure request failed ({type(exc).__name__}: {exc})") from None
        if result is None:
            raise self._transient("malformed", "azure sent an empty answer")
        tags = []
        for tag in result.tags or ():
            if tag.name is None or tag.confidence is None:
                raise self._transient("malformed", "azure sent a tag without name or confidence")
            item = {"name": str(tag.name), "confidence": float(tag.confidence)}
            if getattr(tag, "hint", None):
                item["hint"] = str(tag.hint)
            tags.append(item)
        version = getattr(result, "model_version", None)
        return self._record({"tags": tags, "modelVersion": version})

    def _analyze_v4(self, image: bytes) -> Union[dict, QueryFailure]:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            DecodeError,
            DeserializationError as CoreDeserializationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceRequestTimeoutError,
            ServiceResponseError,
            ServiceResponseTimeoutError,
        )

        kwargs: dict[str, Any] = {}
        if self.requested_model_version != "latest":
            kwargs["model_version"] = self.requested_model_version
        try:
            result = self._v4_client.analyze(
                image_data=image,
                visual_features=self._v4_features,
                connection_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                **kwargs,
            )
        except (ServiceRequestTimeoutError, ServiceResponseTimeoutError) as exc:
            raise self._transient("timeout", f"azure timed out after {self.timeout_s:g} s ({exc})") from None
        except (DecodeError, CoreDeserializationError) as exc:
            raise self._transient("malformed", f"azure sent an unreadable answer ({type(exc).__name__}: {exc})") from None
        except ClientAuthenticationError as exc:
            raise CredentialsError(self.redact(f"azure refused the key ({exc}); {_CREDENTIALS_HELP}")) from None
        except HttpResponseError as exc:
            return self._http_error(exc.response, _v4_error_code(exc), str(exc))
        except ServiceRequestError as exc:
            if is_ssl_error(exc):
                raise self._ssl_error(exc) from None
            raise self._transient("connection", f"cannot reach azure at {self.endpoint} ({exc})") from None
        except ServiceResponseError as exc:
            if is_ssl_error(exc):
                raise self._ssl_error(exc) from None
            raise self._transient("connection", f"azure dropped the connection ({exc})") from None
        tags_result = getattr(result, "tags", None)
        values = list(getattr(tags_result, "list", None) or [])
        tags = []
        for tag in values:
            if tag.name is None or tag.confidence is None:
                raise self._transient("malformed", "azure sent a tag without name or confidence")
            tags.append({"name": str(tag.name), "confidence": float(tag.confidence)})
        return self._record({"tags": tags, "modelVersion": getattr(result, "model_version", None)})

    @staticmethod
    def _record(raw: dict) -> dict:
        # the answered version stays in the stored answer only (model_version is fixed)
        if raw.get("modelVersion"):
            raw["modelVersion"] = str(raw["modelVersion"])
        return raw

    def _ssl_error(self, exc: BaseException) -> ProviderError:
        return ProviderError(self.redact(
            f"azure: TLS/SSL error talking to {self.endpoint} ({type(exc).__name__}: {exc}); check the endpoint's "
            "scheme (https://<resource>.cognitiveservices.azure.com) and its certificate"
        ))

    def _http_error(self, response: Any, code: Optional[str], message: str) -> QueryFailure:
        """Raise (or, for a refused image, return) the error for a non-200 answer."""
        status = int(getattr(response, "status_code", 0) or 0)
        headers = getattr(response, "headers", None) or {}
        try:
            retry_after = retry_after_seconds(headers.get("Retry-After"))
        except Exception:
            retry_after = None
        text = f"HTTP {status}" + (f" {code}" if code else "") + f": {message}"
        if status == 429:
            raise self._transient("throttled", f"azure throttled the request ({text})", retry_after) from None
        if status in (408, 504):
            raise self._transient("timeout", f"azure timed out ({text})", retry_after) from None
        if status >= 500:
            raise self._transient("server", f"azure server error ({text})", retry_after) from None
        if status == 403 and "quota" in message.lower():
            raise ProviderError(self.redact(f"azure: the resource's call quota is used up ({text})")) from None
        if status in (401, 403):
            raise CredentialsError(self.redact(f"azure refused the key ({text}); {_CREDENTIALS_HELP}")) from None
        if status == 400:
            codes = set((code or "").split("/"))
            if codes & _IMAGE_CODES or any(c.startswith("InvalidImage") for c in codes):
                return self._failure("rejected", f"azure refused the image ({text})")
            raise ProviderError(self.redact(
                f"azure rejected the request with error code {code or 'none'} ({text}); this is not about one "
                "image: check model_version=, operation= and api= against your resource's region and API version"
            )) from None
        raise ProviderError(self.redact(f"azure rejected the request ({text})")) from None

    # -- parsing -------------------------------------------------------------------------
    @staticmethod
    def labels(raw: Any) -> Labels:
        """``[(name, confidence in [0, 1]), ...]`` of a stored ``{"tags": [...], "modelVersion": ...}``
        (a missing tags list counts as empty)."""
        if not isinstance(raw, dict):
            raise TypeError(f"expected a dict, got {type(raw).__name__}")
        tags = raw.get("tags")
        if tags is None:
            tags = []
        if not isinstance(tags, list):
            raise TypeError("tags must be a list")
        return [(str(tag["name"]), unit_score(tag["confidence"])) for tag in tags]


def _v4_error_code(exc: Any) -> Optional[str]:
    """``code`` (and the inner error's code) of an azure-core HttpResponseError, when the body had one."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    inner = getattr(error, "innererror", None)
    inner_code = inner.get("code") if isinstance(inner, dict) else getattr(inner, "code", None)
    if inner_code and inner_code != code:
        return f"{code}/{inner_code}"
    return code


def _legacy_error_code(exc: Any) -> Optional[str]:
    """``code`` (and the inner error's code) of a legacy ComputerVisionErrorResponse, when the body had one."""
    error = getattr(getattr(exc, "error", None), "error", None)
    if error is None:
        return None
    code = getattr(error, "code", None)
    inner = getattr(getattr(error, "innererror", None), "code", None)
    if inner and inner != code:
        return f"{code}/{inner}"
    return code
