"""Any HTTP model server as a provider (TorchServe, Hugging Face, KServe v1 style), with
``requests``.

Two request bodies:

- ``body="raw"``: ``POST`` the PNG bytes (``Content-Type: image/png``), one image per
  request; the whole JSON answer (or the part at ``labels_at``) is that image's answer.
- ``body="json"``: ``POST {"instances": [{"b64": "<base64 PNG>"}, ...]}`` with up to
  ``batch_size`` images; the answers are the list at ``labels_at`` (default ``"predictions"``),
  one per image, in order.

One image's answer may be a label string, a class index (int), a dict of label → score, a
list of ``{label_key: ..., score_key: ...}`` dicts, or one such dict (score optional). It is
stored normalized next to the original::

    {"labels": [{"name": "cat", "score": 0.9}, ...], "response": <the answer as sent>}

so :meth:`HTTPProvider.labels` is pure and reads the stored record alone.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union
from urllib.parse import quote, urlsplit

from ..errors import CredentialsError, InvalidParameterError, MissingDependencyError, ProviderError, ProviderResponseError
from .base import QueryFailure
from .cloud import (
    SECRET_NAME,
    CloudProvider,
    ImageLimits,
    Labels,
    query_digest,
    retry_after_seconds,
    split_path_secrets,
    unit_score,
)

try:
    import requests
except ImportError as _exc:
    raise MissingDependencyError(
        f"the http provider needs requests ({_exc.name} is missing). Install it with: pip install 'robust-api[http]'",
        name=_exc.name,
    ) from _exc

__all__ = ["HTTPProvider", "normalize_answer"]

logger = logging.getLogger(__name__)

BODIES = ("raw", "json")

#: a declared secret in the URL: ``{env:VAR}`` is replaced by environment variable VAR
_ENV_PLACEHOLDER = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

#: client errors that refuse one image (for one-image requests); any other 4xx is fatal
_IMAGE_STATUSES = {400, 413, 422}
_FATAL_HINTS = {
    404: "not found: check the URL's path",
    405: "method not allowed: the URL must accept POST",
    406: "not acceptable: the server cannot answer with JSON",
    410: "gone: check the URL's path",
    411: "length required",
    415: "unsupported media type: the server does not take {content_type}; try body='{other}'",
}


def normalize_answer(answer: Any, label_key: str = "label", score_key: str = "score") -> Labels:
    """``[(name, score in [0, 1]), ...]`` of one image's answer from a model server.

    Args:
        answer: a label string (score 1.0); an int class index (its decimal string, score
            1.0); a dict of label → score; a list of dicts with ``label_key`` and ``score_key``;
            or one dict with ``label_key`` and optionally ``score_key`` (score 1.0 when absent).
        label_key, score_key: key names in dict answers (default "label" / "score").

    Raises:
        TypeError / KeyError / ValueError: any other shape, or a score outside [0, 1].
    """
    if isinstance(answer, str):
        return [(answer, 1.0)]
    if isinstance(answer, int) and not isinstance(answer, bool):
        return [(str(answer), 1.0)]
    if isinstance(answer, Mapping):
        if label_key in answer:
            score = answer.get(score_key, 1.0)
            return [(str(answer[label_key]), unit_score(score))]
        return [(str(name), unit_score(score)) for name, score in answer.items()]
    if isinstance(answer, list):
        labels = []
        for item in answer:
            if not isinstance(item, Mapping):
                raise TypeError(f"a list answer must hold dicts with {label_key!r}/{score_key!r}, got {type(item).__name__}")
            labels.append((str(item[label_key]), unit_score(item.get(score_key, 1.0))))
        return labels
    raise TypeError(f"cannot read labels from a {type(answer).__name__} answer")


def _at(document: Any, path: str) -> Any:
    """The part of ``document`` at dotted ``path`` ("" = all of it; integer parts index lists)."""
    for part in [p for p in path.split(".") if p] if path else []:
        if isinstance(document, list):
            document = document[int(part)]
        elif isinstance(document, Mapping):
            document = document[part]
        else:
            raise KeyError(part)
    return document


class HTTPProvider(CloudProvider):
    """A model served over HTTP.

    Args:
        url: the prediction URL, e.g. ``"http://127.0.0.1:8080/predictions/resnet"`` (default:
            ``endpoint=`` or env ``ROBUST_API_HTTP_URL``; required).
        body: ``"raw"`` (default; PNG bytes, one image per request) or ``"json"``
            (``{"instances": [{"b64": ...}]}``, up to ``batch_size`` images per request).
        headers: extra request headers; a value ``"env:VAR"`` is read from environment
            variable VAR (and treated as a secret: masked in every message).
        bearer_token_env: name of an environment variable holding a token sent as
            ``Authorization: Bearer <token>`` (default None).
        labels_at: dotted path of the answer(s) in the JSON body (default ``"predictions"``
            for json, ``""`` — the whole body — for raw).
        label_key, score_key: key names in dict answers (default "label" / "score").
        batch_size: images per request for ``body="json"`` (default 1; must be 1 for raw).
        name: a name for the identity (``http:<name>``; the caller vouches that everything
            sent to that name is one model); default: ``http:<scheme://host:port/path>``, plus
            ``?<sha256 of the query>[:12]`` when the URL has a query. See "Credentials in the
            URL" below for what the default identity leaves out.
        **kwargs: :class:`~robust_api.providers.cloud.CloudProvider` options (``timeout_s`` = 30,
            ``label_fn``, ``resize``, ``cost_per_query_usd`` = 0, ``max_labels`` — not sent).

    Credentials in the URL never reach the identity, the log, a message or ``repr()``:

    - the userinfo (``https://user:password@host/``) is left out of the identity, and the
      password (the user name too when there is no password) is masked everywhere;
    - values of secret-named query parameters (key, token, secret, password, auth,
      signature, ...) are left out of the query digest and masked everywhere;
    - ``{env:VAR}`` anywhere in the URL is a declared secret: it is replaced by environment
      variable VAR (percent-encoded; unset → CredentialsError), the identity keeps the
      placeholder text, and the value is masked everywhere;
    - a path segment after one that names a credential (``/token/<x>``, ``/api_key/<x>``,
      ``/secret/<x>`` ...) and the value of a secret-named ``;name=value`` path parameter
      are ``***`` in the identity and masked everywhere;
    - a path segment shaped like a generated credential (a piece of 16+ letters and
      digits, e.g. ``/v1/sk9f8e7d6c5b4a3210/classify``) is masked everywhere too, but it may
      also be a model or version id that tells two models apart, so without ``name=`` such a
      URL is refused (InvalidParameterError) rather than given an identity that drops it:
      pass ``name=``, or declare the segment as ``{env:VAR}``.

    Header values (``headers=``) whose name looks secret (Authorization, X-API-Key, Cookie,
    ...) and every ``env:`` header value are masked everywhere as well.

    Defaults: 32 requests in flight, no rate limit, images up to 50 MB (a guard; the server's
    own limit applies — TorchServe's default ``max_request_size`` is 6.5 MB).

    Raises:
        InvalidParameterError: no URL, a bad option, or a token-shaped path segment without
            ``name=``. CredentialsError: a named environment variable (``bearer_token_env``,
            an ``env:`` header, an ``{env:VAR}`` in the URL) is unset (here, before any query).
    """

    name = "http"
    ENDPOINT_ENV = "ROBUST_API_HTTP_URL"
    default_concurrency = 32  # a model server queues requests; it has no documented quota
    default_rate_limit = None
    limits = ImageLimits(
        max_bytes=50 * 1000 * 1000,
        formats=("PNG",),
        source="a self-hosted server: no documented limit; 50 MB guard",
    )

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        body: str = "raw",
        headers: Optional[Mapping[str, str]] = None,
        bearer_token_env: Optional[str] = None,
        labels_at: Optional[str] = None,
        label_key: str = "label",
        score_key: str = "score",
        batch_size: int = 1,
        name: Optional[str] = None,
        **kwargs: Any,
    ):
        if url is not None:
            if not isinstance(url, str) or not url.strip():
                raise InvalidParameterError(f"url must be an http(s) URL string, got {type(url).__name__}")
            if kwargs.get("endpoint") not in (None, url):
                raise InvalidParameterError("pass the URL once: url= or endpoint=, not both")
            kwargs["endpoint"] = url
        super().__init__(**kwargs)
        if not self.endpoint:
            raise InvalidParameterError(
                "the http provider needs the model server's URL: pass url='http://host:port/path' "
                "(or endpoint=) or set ROBUST_API_HTTP_URL"
            )
        template = self.endpoint  # secrets already registered (CloudProvider), placeholders unexpanded
        try:
            parts = urlsplit(template)
            hostname, port_number = parts.hostname, parts.port
        except ValueError as exc:  # bad brackets or port
            raise InvalidParameterError(self.redact(f"url {self.endpoint!r} is not a valid URL ({exc})")) from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise InvalidParameterError(
                self.redact(f"url must start with http:// or https:// and name a host, got {self.endpoint!r}")
            )
        if body not in BODIES:
            raise InvalidParameterError(f"body must be one of {BODIES}, got {body!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
        if body == "raw" and batch_size != 1:
            raise InvalidParameterError("body='raw' sends one image per request; use body='json' for batch_size > 1")
        for option, value in (("label_key", label_key), ("score_key", score_key)):
            if not isinstance(value, str) or not value:
                raise InvalidParameterError(f"{option} must be a non-empty string, got {value!r}")
        if labels_at is not None and not isinstance(labels_at, str):
            raise InvalidParameterError(f"labels_at must be a dotted path string, got {labels_at!r}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise InvalidParameterError(f"name must be a non-empty string, got {name!r}")
        self.body = body
        self.batch_size = batch_size
        self.max_batch_size = batch_size
        self.labels_at = labels_at if labels_at is not None else ("predictions" if body == "json" else "")
        self.label_key, self.score_key = label_key, score_key
        path = split_path_secrets(parts.path)
        if path.token_shaped and name is None:
            raise InvalidParameterError(self.redact(
                f"the path of url {template!r} has a segment shaped like a credential (16+ letters and "
                "digits); the log must not store it, and an identity without it could mix up two models "
                "whose URLs differ only there. Pass name='<model name>' to name the model in the log, or "
                "write that segment as {env:VAR} and put its value in environment variable VAR"
            ))
        self._headers = self._resolve_headers(headers, bearer_token_env)
        self.url = self._expand(template)
        port = f":{port_number}" if port_number else ""
        host = f"[{hostname}]" if ":" in hostname else hostname
        digest = query_digest(parts.query)
        query = f"?{digest}" if digest else ""
        self.identity = f"http:{name}" if name else f"http:{parts.scheme}://{host}{port}{path.public}{query}"
        self._local = threading.local()
        logger.debug("http provider %s (%s body)", self.identity, body)

    def _expand(self, template: str) -> str:
        """``template`` with each ``{env:VAR}`` replaced by VAR's value, percent-encoded (each
        value is registered as a secret first)."""

        def value(match: "re.Match[str]") -> str:
            variable = match.group(1)
            secret = os.environ.get(variable, "")
            if not secret:
                raise CredentialsError(f"http: the url reads {{env:{variable}}} from environment variable {variable}, which is unset")
            encoded = quote(secret, safe="")
            self._add_secret(secret)
            self._add_secret(encoded)
            return encoded

        return _ENV_PLACEHOLDER.sub(value, template)

    def _resolve_headers(self, headers: Optional[Mapping[str, str]], bearer_token_env: Optional[str]) -> dict[str, str]:
        resolved: dict[str, str] = {}
        if headers is not None and not isinstance(headers, Mapping):
            raise InvalidParameterError("headers must be a mapping of header name → value")
        for key, value in (headers or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidParameterError("header names and values must be strings")
            if value.startswith("env:"):
                variable = value[4:]
                secret = os.environ.get(variable, "")
                if not secret:
                    raise CredentialsError(f"http: header {key!r} is read from environment variable {variable}, which is unset")
                self._add_secret(secret)
                value = secret
            elif SECRET_NAME.search(key):  # a literal credential (Authorization, X-API-Key, Cookie ...)
                self._add_secret(value)
                scheme, _, credential = value.partition(" ")
                if credential and scheme.lower() in ("bearer", "basic", "key", "token", "apikey"):
                    self._add_secret(credential)
            resolved[key] = value
        if bearer_token_env is not None:
            if not isinstance(bearer_token_env, str) or not bearer_token_env:
                raise InvalidParameterError("bearer_token_env must name an environment variable")
            token = os.environ.get(bearer_token_env, "")
            if not token:
                raise CredentialsError(
                    f"http: the bearer token is read from environment variable {bearer_token_env}, which is unset"
                )
            self._add_secret(token)
            resolved["Authorization"] = f"Bearer {token}"
        return resolved

    def _session(self) -> "requests.Session":
        """This thread's session (requests sessions are not guaranteed thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # no urllib3 Retry: every attempt on the wire is one the dispatcher counted
            adapter = requests.adapters.HTTPAdapter(max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update(self._headers)
            self._local.session = session
        return session

    # -- I/O -----------------------------------------------------------------------------
    def _send_encoded(self, images: list[bytes]) -> Sequence[Union[dict, QueryFailure]]:
        if self.body == "raw":
            answers: list[Union[dict, QueryFailure]] = []
            for image in images:
                document = self._post(data=image, headers={"Content-Type": "image/png"}, count=1)
                if isinstance(document, QueryFailure):
                    answers.append(document)
                    continue
                answers.append(self._record(self._locate(document)))
            return answers
        payload = {"instances": [{"b64": base64.b64encode(image).decode("ascii")} for image in images]}
        document = self._post(json=payload, count=len(images))
        if isinstance(document, QueryFailure):
            return [document]
        predictions = self._locate(document)
        if not isinstance(predictions, list) or len(predictions) != len(images):
            got = f"{len(predictions)} answers" if isinstance(predictions, list) else f"a {type(predictions).__name__}"
            raise self._transient(
                "malformed", f"{self.identity} sent {got} at {self.labels_at!r} for {len(images)} images"
            )
        return [self._record(answer) for answer in predictions]

    def _post(self, count: int, **kwargs: Any) -> Union[Any, QueryFailure]:
        try:
            response = self._session().post(self.url, timeout=self.timeout_s, **kwargs)
        except requests.exceptions.SSLError as exc:  # before ConnectionError, its base class
            raise ProviderError(self.redact(
                f"{self.identity}: TLS/SSL error ({exc}); check the URL's scheme (http:// or https://), the "
                "server's certificate and the CA bundle (REQUESTS_CA_BUNDLE)"
            )) from None
        except requests.exceptions.Timeout as exc:
            raise self._transient("timeout", f"{self.identity} timed out after {self.timeout_s:g} s ({exc})") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise self._transient("connection", f"cannot reach {self.identity} ({exc})") from None
        except requests.exceptions.ContentDecodingError as exc:
            raise self._transient("malformed", f"{self.identity} sent an undecodable body ({exc})") from None
        except requests.exceptions.RequestException as exc:
            raise ProviderError(self.redact(f"{self.identity}: request failed ({type(exc).__name__}: {exc})")) from None
        status = response.status_code
        snippet = self._clip(response.text, 200) if status >= 400 else ""
        if status == 429:
            raise self._transient(
                "throttled", f"{self.identity} throttled the request (HTTP 429: {snippet})",
                retry_after_seconds(response.headers.get("Retry-After")),
            )
        if status in (408, 504):
            raise self._transient("timeout", f"{self.identity} timed out (HTTP {status}: {snippet})",
                                  retry_after_seconds(response.headers.get("Retry-After")))
        if status >= 500:
            raise self._transient(
                "server", f"{self.identity} server error (HTTP {status}: {snippet})",
                retry_after_seconds(response.headers.get("Retry-After")),
            )
        if status in (401, 403):
            raise CredentialsError(
                self.redact(f"{self.identity} refused the credentials (HTTP {status}: {snippet}); check headers= / bearer_token_env=")
            )
        if status in _IMAGE_STATUSES and count == 1:
            return self._failure("rejected", f"{self.identity} refused the image (HTTP {status}: {snippet})")
        if status >= 400:
            hint = _FATAL_HINTS.get(status, "the request itself was refused, not one image")
            hint = hint.format(
                content_type="image/png" if self.body == "raw" else "application/json",
                other="json" if self.body == "raw" else "raw",
            )
            raise ProviderError(self.redact(f"{self.identity} answered HTTP {status} ({hint}): {snippet}"))
        if status >= 300:
            raise ProviderError(self.redact(f"{self.identity} answered HTTP {status}; give the final URL"))
        try:
            return response.json()
        except ValueError:
            raise self._transient(
                "malformed", f"{self.identity} sent a body that is not JSON: {self._clip(response.text, 120)!r}"
            ) from None

    def _locate(self, document: Any) -> Any:
        try:
            return _at(document, self.labels_at)
        except (KeyError, IndexError, ValueError, TypeError):
            raise self._transient(
                "malformed", f"{self.identity} sent an answer without {self.labels_at!r}: {self._clip(document, 120)}"
            ) from None

    def _record(self, answer: Any) -> dict:
        try:
            labels = normalize_answer(answer, self.label_key, self.score_key)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderResponseError(
                self.redact(
                    f"cannot read labels from {self.identity}'s answer {self._clip(answer, 120)} ({type(exc).__name__}: {exc}); "
                    "set labels_at=, label_key= and score_key= to match the server's JSON"
                )
            ) from None
        return {"labels": [{"name": n, "score": s} for n, s in labels], "response": answer}

    # -- parsing -------------------------------------------------------------------------
    @staticmethod
    def labels(raw: Any) -> Labels:
        """``[(name, score in [0, 1]), ...]`` of a stored ``{"labels": [{"name", "score"}], "response": ...}``."""
        if not isinstance(raw, dict):
            raise TypeError(f"expected a dict, got {type(raw).__name__}")
        labels = raw["labels"]
        if not isinstance(labels, list):
            raise TypeError("labels must be a list")
        return [(str(item["name"]), unit_score(item["score"])) for item in labels]
