"""Amazon Rekognition ``DetectLabels`` (``boto3``) as a provider.

One image per call. The stored raw response is Rekognition's answer without
``ResponseMetadata``::

    {"Labels": [{"Name": "Cat", "Confidence": 97.5, "Instances": [], "Parents": [...]}, ...],
     "LabelModelVersion": "3.0"}

``Confidence`` is a percentage; :meth:`RekognitionProvider.labels` divides it by 100.

botocore's own retries are turned off (``total_max_attempts=1`` in the client's Config,
which ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` and ``~/.aws/config`` cannot override):
every attempt on the wire is one the dispatcher made and counted against the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from ..errors import CredentialsError, InvalidParameterError, MissingDependencyError, ProviderError
from .base import QueryFailure
from .cloud import (
    CloudProvider,
    ImageLimits,
    Labels,
    host_port,
    is_ssl_error,
    retry_after_seconds,
    unit_score,
    url_secrets,
)

try:
    import boto3
    import botocore.config
    import botocore.exceptions as bexc
except ImportError as _exc:
    raise MissingDependencyError(
        f"the aws provider needs boto3 ({_exc.name} is missing). Install it with: pip install 'robust-api[aws]'",
        name=_exc.name,
    ) from _exc

__all__ = ["RekognitionProvider"]

logger = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"

_THROTTLED = {
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "ProvisionedThroughputExceededException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "LimitExceededException",
    "429",
}
_SERVER = {"InternalServerError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException"}
_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AccessDeniedException",
    "AccessDenied",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "UnauthorizedOperation",
}
_REJECTED = {"InvalidImageFormatException", "ImageTooLargeException", "InvalidParameterException"}

_CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile with AWS_PROFILE, "
    "write ~/.aws/credentials (`aws configure`), or pass aws_access_key_id= / aws_secret_access_key= / profile_name="
)


class RekognitionProvider(CloudProvider):
    """Amazon Rekognition DetectLabels.

    Args:
        region_name: AWS region (default: the session's region from AWS_REGION /
            AWS_DEFAULT_REGION / the profile, else ``"us-east-1"``).
        aws_access_key_id, aws_secret_access_key, aws_session_token: explicit credentials
            (default: the AWS default chain — environment, profile files, SSO, instance role).
        profile_name: a profile in ~/.aws/config / ~/.aws/credentials (default: AWS_PROFILE).
        min_confidence: Rekognition's ``MinConfidence``, a percentage in [0, 100] (default 0:
            every label, so the vote sees the model's actual top label).
        **kwargs: :class:`~robust_api.providers.cloud.CloudProvider` options (``endpoint``,
            default env ``ROBUST_API_AWS_ENDPOINT``; boto3 itself also honours
            ``AWS_ENDPOINT_URL_REKOGNITION``; ``timeout_s`` = 30 for connect and read; ...).

    One image per call; images PNG/JPEG, ≤ 5 MB, sides 80–10,000 px (use ``resize="fit"``
    for smaller images). ``default_rate_limit`` is 50 requests/s: a placeholder — set
    ``rate_limit=`` to your account's DetectLabels TPS quota.

    ``model_version`` is None: Rekognition cannot be pinned to a version; the version that
    answered is kept in each stored answer (``LabelModelVersion``).

    Raises:
        CredentialsError: no credentials in the default chain (raised here, before any query).
    """

    name = "aws"
    ENDPOINT_ENV = "ROBUST_API_AWS_ENDPOINT"
    # botocore.endpoint logs the prepared request (X-Amz-Security-Token included) and
    # botocore.auth the canonical request at DEBUG
    LOG_NAMES = ("botocore.endpoint", "botocore.auth", "botocore.parsers", "botocore.hooks", "urllib3.connectionpool")
    max_batch_size = 1
    default_rate_limit = 50.0
    limits = ImageLimits(
        max_bytes=5 * 1024 * 1024,
        min_side=80,
        max_side=10000,
        formats=("PNG", "JPEG"),
        source="docs.aws.amazon.com/rekognition/latest/dg/limits.html: 5 MB of image bytes, PNG/JPEG, 80-10,000 px",
    )

    def __init__(
        self,
        *,
        region_name: Optional[str] = None,
        aws_access_key_id: Optional[str] = None,
        aws_secret_access_key: Optional[str] = None,
        aws_session_token: Optional[str] = None,
        profile_name: Optional[str] = None,
        min_confidence: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)) or not (
            0.0 <= float(min_confidence) <= 100.0
        ):
            raise InvalidParameterError(f"min_confidence must be a percentage in [0, 100], got {min_confidence!r}")
        self.min_confidence = float(min_confidence)
        self._add_secret(aws_secret_access_key)
        self._add_secret(aws_session_token)
        try:
            session = boto3.session.Session(
                aws_access_key_id=aws_access_key_id,
                aws_secret_access_key=aws_secret_access_key,
                aws_session_token=aws_session_token,
                region_name=region_name,
                profile_name=profile_name,
            )
            credentials = session.get_credentials()
        except bexc.ProfileNotFound as exc:
            raise CredentialsError(self.redact(f"aws: {exc}; {_CREDENTIALS_HELP}")) from None
        except (bexc.PartialCredentialsError, bexc.CredentialRetrievalError, bexc.NoCredentialsError) as exc:
            raise CredentialsError(self.redact(f"aws: {exc}; {_CREDENTIALS_HELP}")) from None
        if credentials is None:
            raise CredentialsError(f"aws: no credentials found; {_CREDENTIALS_HELP}")
        try:
            frozen = credentials.get_frozen_credentials()
        except bexc.BotoCoreError as exc:
            raise CredentialsError(self.redact(f"aws: credentials could not be loaded ({exc}); {_CREDENTIALS_HELP}")) from None
        self._add_secret(frozen.secret_key)
        self._add_secret(frozen.token)
        self.region_name = region_name or session.region_name or DEFAULT_REGION
        config = botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=self.timeout_s,
            read_timeout=self.timeout_s,
            max_pool_connections=max(10, 2 * self.default_concurrency),
        )
        try:
            self._client = session.client(
                "rekognition", region_name=self.region_name, endpoint_url=self.endpoint, config=config
            )
        except ValueError as exc:  # e.g. an endpoint URL botocore cannot use
            raise InvalidParameterError(self.redact(f"aws: cannot use endpoint {self.endpoint!r}: {exc}")) from None
        base = "aws:rekognition.detect_labels"
        url = self._client.meta.endpoint_url
        if self.endpoint is None and url and not (urlsplit(url).hostname or "").endswith(
            ("amazonaws.com", "amazonaws.com.cn")
        ):  # boto3's own AWS_ENDPOINT_URL_REKOGNITION / AWS_ENDPOINT_URL override
            for secret in url_secrets(url):
                self._add_secret(secret)
            self.identity = f"{base}@{host_port(url)}"
        else:
            self.identity = self._identity(base)
        logger.debug("aws provider %s in %s", self.identity, self.region_name)

    # -- I/O -----------------------------------------------------------------------------
    def _send_encoded(self, images: list[bytes]) -> Sequence[Union[dict, QueryFailure]]:
        return [self._detect(image) for image in images]

    def _detect(self, image: bytes) -> Union[dict, QueryFailure]:
        try:
            response = self._client.detect_labels(
                Image={"Bytes": image}, MaxLabels=self.max_labels, MinConfidence=self.min_confidence
            )
        except bexc.ClientError as exc:
            error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or str(exc)
            meta = exc.response.get("ResponseMetadata", {}) if isinstance(exc.response, dict) else {}
            status = int(meta.get("HTTPStatusCode") or 0)
            headers = meta.get("HTTPHeaders") or {}
            retry_after = retry_after_seconds(headers.get("retry-after") or headers.get("Retry-After"))
            text = f"{code or status}: {message}"
            if code in _THROTTLED or status == 429:
                raise self._transient("throttled", f"aws throttled the request ({text})", retry_after) from None
            if code in _CREDENTIALS or status in (401, 403):
                raise CredentialsError(self.redact(f"aws refused the credentials ({text}); {_CREDENTIALS_HELP}")) from None
            if code in _REJECTED:
                return self._failure("rejected", f"aws refused the image ({text})")
            if code in _SERVER or status >= 500:
                kind = "timeout" if status == 504 else "server"
                raise self._transient(kind, f"aws server error ({text})", retry_after) from None
            raise ProviderError(self.redact(f"aws rejected the request ({text})")) from None
        except bexc.SSLError as exc:  # before ConnectionError, its base class
            raise ProviderError(self.redact(
                f"aws: TLS/SSL error talking to {self._client.meta.endpoint_url} ({exc}); check the endpoint's "
                "scheme (http:// or https://), its certificate and the CA bundle (AWS_CA_BUNDLE)"
            )) from None
        except (bexc.ReadTimeoutError, bexc.ConnectTimeoutError) as exc:
            raise self._transient("timeout", f"aws timed out after {self.timeout_s:g} s ({exc})") from None
        except (bexc.EndpointConnectionError, bexc.ConnectionClosedError, bexc.ConnectionError, bexc.HTTPClientError) as exc:
            raise self._transient("connection", f"cannot reach aws ({exc})") from None
        except bexc.ResponseParserError as exc:
            raise self._transient("malformed", f"aws sent an unreadable answer ({exc})") from None
        except (bexc.NoCredentialsError, bexc.PartialCredentialsError, bexc.CredentialRetrievalError) as exc:
            raise CredentialsError(self.redact(f"aws: {exc}; {_CREDENTIALS_HELP}")) from None
        except bexc.BotoCoreError as exc:
            if is_ssl_error(exc):
                raise ProviderError(self.redact(
                    f"aws: TLS/SSL error ({type(exc).__name__}: {exc}); check the endpoint's scheme and certificate"
                )) from None
            raise ProviderError(self.redact(f"aws call failed ({type(exc).__name__}: {exc})")) from None
        raw = {key: value for key, value in response.items() if key != "ResponseMetadata"}
        labels = raw.get("Labels")
        if not isinstance(labels, list) or not all(isinstance(label, dict) and "Name" in label for label in labels):
            # botocore turns a non-JSON body into {"message": body}; a real answer always has Labels
            raise self._transient("malformed", f"aws sent an answer without Labels: {self._clip(raw, 120)}")
        # LabelModelVersion stays in the stored answer only: model_version is fixed at
        # construction (the query log matches reusable answers on it)
        return _plain(raw)

    # -- parsing -------------------------------------------------------------------------
    @staticmethod
    def labels(raw: Any) -> Labels:
        """``[(Name, Confidence / 100 in [0, 1]), ...]`` of a stored DetectLabels answer (a
        label without Confidence scores 0; a missing Labels list counts as empty)."""
        if not isinstance(raw, dict):
            raise TypeError(f"expected a dict, got {type(raw).__name__}")
        labels = raw.get("Labels")
        if labels is None:
            labels = []
        if not isinstance(labels, list):
            raise TypeError("Labels must be a list")
        return [(str(label["Name"]), unit_score(label.get("Confidence", 0.0), 100.0)) for label in labels]


def _plain(value: Any) -> Any:
    """``value`` as JSON-serializable plain data (botocore may hand back datetimes or Decimals)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
