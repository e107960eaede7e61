"""Clarifai model predictions (``clarifai-grpc``) as a provider.

One ``PostModelOutputs`` call carries up to 128 images. The stored raw response of an image
is its ``Output`` as ``MessageToDict(..., preserving_proto_field_name=True)``, kept to the
fields that matter::

    {"status": {"code": "SUCCESS", ...},
     "data": {"concepts": [{"id": "ai_1", "name": "cat", "value": 0.98}, ...]},
     "model": {"id": "general-image-recognition", "model_version": {"id": "aa7f..."}}}

Service errors are status codes in the answer, not exceptions; transport errors are
``grpc.RpcError``.

No hidden retries: every attempt on the wire is one the dispatcher made and counted against
the budget. ``ClarifaiChannel``'s gRPC channels carry a service-config retry policy (up to
5 attempts on UNAVAILABLE, 0.01–5 s backoff) that would resend a batch the budget counted
once, so this adapter builds its gRPC channel itself: same target, TLS and message limits,
no service config, and ``grpc.enable_retries=0``; the stub calls ``PostModelOutputs`` on it
directly. The JSON channel (``http(s)://`` endpoints) takes no per-call timeout and its
session retries failed connections twice, so this adapter mounts its own HTTP adapter on
that channel's session with ``timeout_s`` and ``max_retries=0``.
"""

from __future__ import annotations

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
    import grpc
    import requests
    from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
    from clarifai_grpc.channel.errors import ApiError
    from clarifai_grpc.grpc.api import resources_pb2, service_pb2, service_pb2_grpc
    from clarifai_grpc.grpc.api.status import status_code_pb2
    from google.protobuf.json_format import MessageToDict
except ImportError as _exc:
    raise MissingDependencyError(
        f"the clarifai provider needs clarifai-grpc ({_exc.name} is missing). "
        "Install it with: pip install 'robust-api[clarifai]'",
        name=_exc.name,
    ) from _exc

__all__ = ["ClarifaiProvider"]

logger = logging.getLogger(__name__)

PAT_ENVS = ("CLARIFAI_PAT", "CLARIFAI_API_KEY")

_SUCCESS = 10000
_MIXED = 10010
_FAILURE = 10020
_THROTTLED = {11005}
# CONN_EXCEED_HOURLY_LIMIT, CONN_EXCEEDS_LIMITS: the account's limit, not a burst: no short
# backoff fixes them
_ACCOUNT_LIMIT = {11003, 11006}
_CREDENTIALS = {11000, 11001, 11002, 11007, 11008, 11009, 11200}
_TIMEOUT = {40032, 98009, 21310}
_CONNECTION = {40034}
_SERVER = {10030, 21351, 21352, 21354, 21355, 40011, 40013, 40015, 40016, 40030, 40031, 99009}

_CREDENTIALS_HELP = (
    "set CLARIFAI_PAT (or CLARIFAI_API_KEY) to a Personal Access Token from clarifai.com "
    "(Settings → Secrets), or pass pat="
)

# ClarifaiChannel.get_json_channel sets a module-global deserializer that V2Stub reads when
# built: the JSON channel and its stub are made together under this lock.
_STUB_LOCK = threading.Lock()

_POST_MODEL_OUTPUTS = "/clarifai.api.V2/PostModelOutputs"
_MAX_MESSAGE_BYTES = 1024 * 1024 * 1024  # ClarifaiChannel's own limit (1 GB)
#: options of every gRPC channel this adapter opens: retries off (no service config is
#: given, and ``grpc.enable_retries=0`` also ignores one a resolver might supply)
GRPC_CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
)


def _grpc_channel(target: str, secure: bool) -> "grpc.Channel":
    """A gRPC channel to ``target`` ("host:port") with :data:`GRPC_CHANNEL_OPTIONS` (TLS with
    the system's root certificates when ``secure``)."""
    if secure:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=list(GRPC_CHANNEL_OPTIONS))
    return grpc.insecure_channel(target, options=list(GRPC_CHANNEL_OPTIONS))


def _code_kind(code: int) -> Optional[str]:
    """The transient kind of a Clarifai status code, or None when retrying would not help."""
    if code in _THROTTLED:
        return "throttled"
    if code in _TIMEOUT:
        return "timeout"
    if code in _CONNECTION:
        return "connection"
    if code in _SERVER or 98000 <= code < 99000:
        return "server"
    return None


def _code_name(code: int) -> str:
    try:
        return status_code_pb2.StatusCode.Name(code)
    except ValueError:
        return str(code)


def _is_connection_failure(details: str) -> bool:
    """True when a gRPC UNAVAILABLE's details say the server was never reached."""
    lowered = details.lower()
    return any(
        marker in lowered
        for marker in (
            "failed to connect",
            "connection refused",
            "errors resolving",
            "dns resolution failed",
            "name resolution",
            "domain name not found",
        )
    )


def _is_tls_failure(details: str) -> bool:
    """True when a gRPC failure's details say the TLS handshake failed (a wrong scheme or an
    untrusted certificate: configuration, not a transient failure)."""
    lowered = details.lower()
    return "handshake failed" in lowered or "ssl_error" in lowered or "certificate verify failed" in lowered


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """An HTTP adapter that gives every request ``timeout`` seconds (when none is given)."""

    def __init__(self, timeout: float, **kwargs: Any):
        self._timeout = timeout
        super().__init__(**kwargs)

    def send(self, request, **kwargs):  # noqa: D102 - requests' signature
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


class ClarifaiProvider(CloudProvider):
    """A Clarifai image model (default: the public ``general-image-recognition``).

    Args:
        pat: Personal Access Token (default: env ``CLARIFAI_PAT``, then ``CLARIFAI_API_KEY``).
        user_id, app_id: owner of the model (default ``"clarifai"`` / ``"main"``).
        model_id: the model (default ``"general-image-recognition"``).
        version_id: a model version to pin (default None: the model's current version).
        **kwargs: :class:`~robust_api.providers.cloud.CloudProvider` options. Endpoints:
            ``grpc://host:port`` → insecure gRPC; ``grpcs://host:port`` → gRPC over TLS;
            ``http(s)://...`` → Clarifai's JSON/REST channel; none → ``api.clarifai.com`` over
            gRPC with TLS. ``timeout_s`` (default 30) bounds every call.

    Up to 128 images per request (``max_batch_size``); images up to 20 MB; default rate limit
    15 requests/s (Clarifai's documented limit on every plan).

    ``model_version`` is ``version_id`` (None when unpinned); the version that answered is kept
    in each stored answer (``model.model_version.id``).

    Raises:
        CredentialsError: no PAT (here, before any query).
    """

    name = "clarifai"
    ENDPOINT_ENV = "ROBUST_API_CLARIFAI_ENDPOINT"
    # the JSON channel logs request headers, the PAT included, at DEBUG on "clarifai"
    LOG_NAMES = ("clarifai", "clarifai_grpc", "urllib3.connectionpool")
    max_batch_size = 128
    default_rate_limit = 15.0
    limits = ImageLimits(
        max_bytes=20 * 1000 * 1000,
        formats=("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"),
        source="docs.clarifai.com: up to 128 inputs per call, each image under 20 MB",
    )

    def __init__(
        self,
        *,
        pat: Optional[str] = None,
        user_id: str = "clarifai",
        app_id: str = "main",
        model_id: str = "general-image-recognition",
        version_id: Optional[str] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        for option, value in (("user_id", user_id), ("app_id", app_id), ("model_id", model_id)):
            if not isinstance(value, str) or not value.strip():
                raise InvalidParameterError(f"{option} must be a non-empty string, got {value!r}")
        if version_id is not None and (not isinstance(version_id, str) or not version_id.strip()):
            raise InvalidParameterError(f"version_id must be None or a non-empty string, got {version_id!r}")
        if pat is not None and (not isinstance(pat, str) or not pat.strip()):
            raise InvalidParameterError("pat must be a non-empty string")
        if pat is None:
            for variable in PAT_ENVS:
                value = os.environ.get(variable, "").strip()
                if value:
                    pat = value
                    break
        if pat is None:
            raise CredentialsError(f"clarifai: no Personal Access Token found; {_CREDENTIALS_HELP}")
        pat = pat.strip()
        self._add_secret(pat)
        self._metadata = (("authorization", "Key " + pat),)
        self.user_id, self.app_id, self.model_id, self.version_id = user_id, app_id, model_id, version_id
        # fixed here: the query log matches reusable answers on it
        self.model_version = version_id
        base = f"clarifai:{user_id}/{app_id}/{model_id}" + (f"@{version_id}" if version_id else "")
        self.identity = self._identity(base)
        self._json = False
        endpoint = self.endpoint
        if not endpoint:
            # the public endpoint, as ClarifaiChannel.get_grpc_channel() chooses it
            channel = _grpc_channel(os.environ.get("CLARIFAI_GRPC_BASE", "").strip() or "api.clarifai.com", True)
        else:
            parts = urlsplit(endpoint if "://" in endpoint else f"grpcs://{endpoint}")
            scheme = parts.scheme.lower()
            if scheme in ("http", "https"):
                with _STUB_LOCK:
                    channel = ClarifaiChannel.get_json_channel(base_url=endpoint.rstrip("/"))
                    self._stub = service_pb2_grpc.V2Stub(channel)
                # replaces the session's HTTPAdapter(max_retries=2): no connection retries
                adapter = _TimeoutAdapter(self.timeout_s, max_retries=0, pool_connections=32, pool_maxsize=32)
                channel.session.mount("http://", adapter)
                channel.session.mount("https://", adapter)
                self._json = True
            elif scheme in ("grpc", "grpcs"):
                try:
                    host, port = parts.hostname, parts.port
                except ValueError as exc:  # a port that is not a number
                    raise InvalidParameterError(self.redact(f"clarifai endpoint {endpoint!r}: {exc}")) from None
                if not host:
                    raise InvalidParameterError(self.redact(f"clarifai endpoint has no host: {endpoint!r}"))
                # an IPv6 address goes in brackets in a gRPC target ("[::1]:18080")
                base = f"[{host}]" if ":" in host else host
                if scheme == "grpc":
                    channel = _grpc_channel(f"{base}:{port or 18080}", False)
                else:
                    channel = _grpc_channel(f"{base}:{port or 443}", True)
            else:
                raise InvalidParameterError(self.redact(
                    f"clarifai endpoint must start with grpc://, grpcs://, http:// or https://, got {endpoint!r}"
                ))
        if not self._json:
            self._post_model_outputs = channel.unary_unary(
                _POST_MODEL_OUTPUTS,
                request_serializer=service_pb2.PostModelOutputsRequest.SerializeToString,
                response_deserializer=service_pb2.MultiOutputResponse.FromString,
            )
        self._channel = channel
        logger.debug("clarifai provider %s (%s channel)", self.identity, "json" if self._json else "gRPC")

    # -- I/O -----------------------------------------------------------------------------
    def _request(self, images: list[bytes]) -> "service_pb2.PostModelOutputsRequest":
        output_config = resources_pb2.OutputConfig(max_concepts=self.max_labels, min_value=0.0)
        request = service_pb2.PostModelOutputsRequest(
            user_app_id=resources_pb2.UserAppIDSet(user_id=self.user_id, app_id=self.app_id),
            model_id=self.model_id,
            inputs=[resources_pb2.Input(data=resources_pb2.Data(image=resources_pb2.Image(base64=b))) for b in images],
            model=resources_pb2.Model(
                model_version=resources_pb2.ModelVersion(
                    output_info=resources_pb2.OutputInfo(output_config=output_config)
                )
            ),
        )
        if self.version_id:
            request.version_id = self.version_id
        return request

    def _send_encoded(self, images: list[bytes]) -> Sequence[Union[dict, QueryFailure]]:
        request = self._request(images)
        try:
            if self._json:
                response = self._stub.PostModelOutputs(request, metadata=self._metadata)
            else:
                response = self._post_model_outputs(request, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc) from None
        except ApiError as exc:
            raise self._api_error(exc) from None
        except requests.exceptions.RequestException as exc:
            if is_ssl_error(exc):
                raise self._ssl_error(type(exc).__name__) from None
            kind = "timeout" if isinstance(exc, requests.exceptions.Timeout) else "connection"
            raise self._transient(kind, f"clarifai request failed ({type(exc).__name__})") from None
        except Exception as exc:  # the JSON channel's dict → protobuf conversion
            if type(exc).__name__ in ("ParseError", "DecodeError") or isinstance(exc, (ValueError, TypeError, KeyError)):
                raise self._transient("malformed", f"clarifai sent an unreadable answer ({type(exc).__name__}: {exc})") from None
            raise
        return self._answers(response, len(images))

    def _answers(self, response: Any, count: int) -> list[Union[dict, QueryFailure]]:
        code = int(response.status.code)
        text = f"{_code_name(code)} ({code}): {response.status.description}" + (
            f" — {response.status.details}" if response.status.details else ""
        )
        if code == 0:
            raise self._transient("malformed", "clarifai sent an answer without a status")
        if code not in (_SUCCESS, _MIXED, _FAILURE):
            if code in _CREDENTIALS:
                raise CredentialsError(self.redact(f"clarifai refused the token: {text}; {_CREDENTIALS_HELP}"))
            if code in _ACCOUNT_LIMIT:
                raise ProviderError(self.redact(
                    f"clarifai: your account's usage limit was reached ({text}); waiting a few seconds does not "
                    "lift it: wait for the limit to reset, or raise it in your Clarifai plan"
                ))
            kind = _code_kind(code)
            if kind is not None:
                raise self._transient(kind, f"clarifai: {text}")
            raise ProviderError(self.redact(f"clarifai refused the request: {text}"))
        outputs = list(response.outputs)
        if len(outputs) != count:
            if code == _FAILURE:
                raise ProviderError(self.redact(f"clarifai refused the request: {text}"))
            raise self._transient("malformed", f"clarifai answered {len(outputs)} outputs for {count} images ({text})")
        answers: list[Union[dict, QueryFailure]] = []
        for output in outputs:
            output_code = int(output.status.code)
            if output_code in _ACCOUNT_LIMIT:
                raise ProviderError(self.redact(
                    f"clarifai: your account's usage limit was reached ({_code_name(output_code)} ({output_code}): "
                    f"{output.status.description}); wait for the limit to reset, or raise it in your Clarifai plan"
                ))
            if output_code not in (_SUCCESS, 0):  # 0: no per-output status (success)
                kind = _code_kind(output_code) or "rejected"
                answers.append(
                    self._failure(
                        kind,
                        f"clarifai could not process the image: {_code_name(output_code)} ({output_code}): "
                        f"{output.status.description}" + (f" — {output.status.details}" if output.status.details else ""),
                    )
                )
                continue
            answers.append(self._raw(output))
        return answers

    def _raw(self, output: Any) -> dict:
        full = MessageToDict(output, preserving_proto_field_name=True)
        raw: dict[str, Any] = {}
        if "status" in full:
            raw["status"] = {k: full["status"][k] for k in ("code", "description") if k in full["status"]}
        concepts = (full.get("data") or {}).get("concepts") or []
        raw["data"] = {
            "concepts": [{k: c[k] for k in ("id", "name", "value") if k in c} for c in concepts]
        }
        model = full.get("model") or {}
        model_raw: dict[str, Any] = {}
        if "id" in model:
            model_raw["id"] = model["id"]
        version = (model.get("model_version") or {}).get("id")
        if version:  # kept in the stored answer only: model_version is fixed at construction
            model_raw["model_version"] = {"id": version}
        if model_raw:
            raw["model"] = model_raw
        return raw

    def _rpc_error(self, exc: Any) -> Exception:
        try:
            code = exc.code()
            details = exc.details() or ""
        except Exception:  # an RpcError that is not a call
            code, details = None, str(exc)
        name = getattr(code, "name", str(code))
        text = f"gRPC {name}: {details}"
        retry_after = None
        try:
            for key, value in exc.trailing_metadata() or ():
                if key.lower() == "retry-after":
                    retry_after = retry_after_seconds(value)
        except Exception:
            pass
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return self._transient("throttled", f"clarifai throttled the request ({text})", retry_after)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return self._transient("timeout", f"clarifai timed out after {self.timeout_s:g} s ({text})")
        if code == grpc.StatusCode.UNAVAILABLE:
            if _is_tls_failure(details):
                return self._ssl_error(text)
            kind = "connection" if _is_connection_failure(details) else "server"
            return self._transient(kind, f"clarifai unavailable ({text})", retry_after)
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return CredentialsError(self.redact(f"clarifai refused the token ({text}); {_CREDENTIALS_HELP}"))
        if code == grpc.StatusCode.INTERNAL and "deserializ" in details.lower():
            return self._transient("malformed", f"clarifai sent an unreadable answer ({text})")
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS):
            return self._transient("server", f"clarifai server error ({text})", retry_after)
        if code == grpc.StatusCode.CANCELLED:
            return self._transient("connection", f"clarifai call cancelled ({text})")
        return ProviderError(self.redact(f"clarifai rejected the request ({text})"))

    def _api_error(self, exc: Any) -> Exception:
        """The error for the JSON channel's ApiError: a transport failure (the requests
        exception is its context) or a body that is not JSON (its args carry the response)."""
        cause = exc.__context__
        if isinstance(cause, BaseException) and is_ssl_error(cause):
            return self._ssl_error(type(cause).__name__)
        if isinstance(cause, requests.exceptions.Timeout):
            return self._transient("timeout", f"clarifai timed out after {self.timeout_s:g} s ({type(cause).__name__})")
        if isinstance(cause, requests.exceptions.RequestException):
            return self._transient("connection", f"cannot reach clarifai at {self.endpoint} ({type(cause).__name__})")
        response = exc.args[3] if len(exc.args) > 3 else None
        status = int(getattr(response, "status_code", 0) or 0)
        if status == 429:
            retry_after = retry_after_seconds(getattr(response, "headers", {}).get("Retry-After"))
            return self._transient("throttled", "clarifai throttled the request (HTTP 429)", retry_after)
        if status in (401, 403):
            return CredentialsError(self.redact(f"clarifai refused the token (HTTP {status}); {_CREDENTIALS_HELP}"))
        if status >= 500:
            return self._transient("server", f"clarifai server error (HTTP {status}, body not JSON)")
        return self._transient("malformed", f"clarifai sent a body that is not JSON (HTTP {status or '?'})")

    def _ssl_error(self, text: str) -> ProviderError:
        return ProviderError(self.redact(
            f"clarifai: TLS/SSL error talking to {self.endpoint or 'api.clarifai.com'} ({text}); check the "
            "endpoint's scheme (grpc:// is plain gRPC, grpcs:// is gRPC over TLS, http:// or https:// the JSON "
            "channel) and its certificate"
        ))

    # -- parsing -------------------------------------------------------------------------
    @staticmethod
    def labels(raw: Any) -> Labels:
        """``[(concept name, value in [0, 1]), ...]`` of a stored output (``data.concepts``; a
        concept without a name is named by its id; missing data counts as no concepts)."""
        if not isinstance(raw, dict):
            raise TypeError(f"expected a dict, got {type(raw).__name__}")
        data = raw.get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TypeError("data must be a dict")
        concepts = data.get("concepts")
        if concepts is None:
            concepts = []
        if not isinstance(concepts, list):
            raise TypeError("data.concepts must be a list")
        return [(str(c.get("name") or c["id"]), unit_score(c.get("value", 0.0))) for c in concepts]
