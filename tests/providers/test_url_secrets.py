"""Credentials in provider URLs never reach the log file, an error message, a log record or repr().

The rule (docs/providers.md, "Secrets"): a provider identity keeps ``scheme://host:port`` and
the path segments that do not look like credentials. Userinfo (``user:password@``), values of
secret-named query parameters, path segments after a credential word (``/token/<x>``),
``;key=value`` path parameters, declared ``{env:VAR}`` parts and secret-named header values
are masked everywhere; a token-shaped path segment (16+ letters and digits) is masked too, and
such a URL needs ``name=`` (or ``{env:VAR}``) because the identity cannot keep it.

Before the fix, ``HTTPProvider("https://host/v1/<token>/classify")`` wrote the token into the
identity stored in every call header of the log (and into error messages quoting it).
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("requests")

from doubles import tiny_http_server  # noqa: E402
from robust_api import RobustAPI  # noqa: E402
from robust_api.dispatch import RetryPolicy  # noqa: E402
from robust_api.errors import CredentialsError, InvalidParameterError, ProviderError  # noqa: E402
from robust_api.providers.cloud import host_port, split_path_secrets, url_secrets  # noqa: E402
from robust_api.providers.http import HTTPProvider  # noqa: E402

PATH_TOKEN = "sk9F8e7D6c5B4a3210zyXW"  # token-shaped: 22 letters and digits
WORD_TOKEN = "pathtok-Qq"  # short, only recognisable by the /token/ segment before it
PASSWORD = "pw-Secret-77"
HEADER_KEY = "hdr-literal-key-55"
ENV_TOKEN = "env tok/with+odd&chars"
BASIC = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()  # what requests sends for the userinfo
SECRETS = (PATH_TOKEN, WORD_TOKEN, PASSWORD, HEADER_KEY, ENV_TOKEN, quote(ENV_TOKEN, safe=""), BASIC)
FAST = RetryPolicy(max_attempts=2, initial_backoff_s=0.0, max_backoff_s=0.0)


def echo_server():
    """A model server on 127.0.0.1 that echoes what it got (path, Authorization, X-API-Key)
    into every answer: a 200 with labels on paths ending in /classify, a 503 on /busy/, a 404
    elsewhere. Yields its base URL ``http://127.0.0.1:PORT``."""

    def answer(method, path, headers):
        echo = {"path": path, "authorization": headers.get("Authorization"), "key": headers.get("X-API-Key")}
        if "/busy/" in path:
            return 503, {"error": "busy", **echo}
        if path.split("?")[0].endswith("/classify"):
            return 200, [{"label": "cat", "score": 0.9, "echo": echo}, {"label": "dog", "score": 0.1}]
        return 404, {"error": f"no route {path}"}

    return tiny_http_server(answer)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {where}"


def log_bytes(folder: Path) -> bytes:
    """Every byte the query log left in ``folder`` (database, WAL, shared memory)."""
    return b"".join(path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file())


def url_variants(base: str) -> dict:
    """name → (url, provider options): one URL per way a credential can sit in it."""
    user = f"http://alice:{PASSWORD}@{base.split('://')[1]}"
    return {
        "token-shaped segment": (f"{base}/v1/{PATH_TOKEN}/classify", {"name": "my-model"}),
        "after /token/": (f"{base}/v1/token/{WORD_TOKEN}/classify", {}),
        "userinfo": (f"{user}/v1/classify", {}),
        "declared {env:VAR}": (f"{base}/v1/{{env:URL_TOKEN}}/classify", {}),
        "literal secret header": (f"{base}/v1/classify", {"headers": {"X-API-Key": HEADER_KEY}}),
    }


@pytest.mark.parametrize("case", list(url_variants("http://h:1")))
def test_url_credentials_never_reach_the_log_messages_records_or_repr(case, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("URL_TOKEN", ENV_TOKEN)
    caplog.set_level(logging.DEBUG)  # urllib3 logs every request line, the path included
    image = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    log_dir = tmp_path / "log"
    with echo_server() as base:
        url, options = url_variants(base)[case]
        provider = HTTPProvider(url, **options)
        api = RobustAPI(provider, log=str(log_dir / "queries.sqlite3"), retry=FAST, rate_limit=math.inf, seed=0)
        prediction = api.predict(image, N=4, noise_sd=0.25)  # answers echo the path and headers
        assert dict(prediction.counts) == {"cat": 4}
        # a transient failure (503 echoing the path and headers), recorded as errors
        busy = HTTPProvider(url.replace("/v1/", "/busy/v1/"), **options)
        busy_api = RobustAPI(busy, log=str(log_dir / "queries.sqlite3"), retry=FAST, rate_limit=math.inf, seed=1)
        failed = busy_api.predict(image, N=2, noise_sd=0.25)
        assert failed.errors == 2
        # a fatal failure (404): the exception quotes the identity and the server's body
        lost = HTTPProvider(url.replace("/classify", "/nowhere"), **options)
        lost_api = RobustAPI(lost, log=str(log_dir / "queries.sqlite3"), retry=FAST, rate_limit=math.inf, seed=2)
        with pytest.raises(ProviderError) as info:
            lost_api.predict(image, N=1, noise_sd=0.25)
        for each in (api, busy_api, lost_api):
            each.close()
    stored = [*prediction.logs, *failed.logs]
    assert any("***" in json.dumps(record.raw) for record in prediction.logs)  # the echo was masked
    assert_no_secret(str(info.value), "the exception")
    assert_no_secret(repr(info.value), "the exception's repr")
    for each in (provider, busy, lost):
        assert_no_secret(repr(each), "repr()")
        assert_no_secret(each.identity, "the identity")
    assert_no_secret(json.dumps([(r.raw, r.error) for r in stored]), "the records")
    assert any("urllib3" in record.name for record in caplog.records)
    assert_no_secret(caplog.text, "the logging output")
    data = log_bytes(log_dir)
    assert data  # the log was written
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret!r} in the log file"


def test_a_token_shaped_path_segment_needs_a_name():
    with pytest.raises(InvalidParameterError, match="name=") as info:
        HTTPProvider(f"https://api.example.test/v1/{PATH_TOKEN}/classify")
    assert PATH_TOKEN not in str(info.value) and "***" in str(info.value)
    named = HTTPProvider(f"https://api.example.test/v1/{PATH_TOKEN}/classify", name="resnet")
    assert named.identity == "http:resnet" and PATH_TOKEN not in repr(named)
    assert PATH_TOKEN in named.url  # it is still sent


def test_identities_keep_the_public_parts_of_the_url(monkeypatch):
    monkeypatch.setenv("URL_TOKEN", ENV_TOKEN)
    cases = {
        f"http://127.0.0.1:8080/v1/token/{WORD_TOKEN}/classify": "http:http://127.0.0.1:8080/v1/token/***/classify",
        f"http://127.0.0.1:8080/v1/api_key/{WORD_TOKEN}/classify": "http:http://127.0.0.1:8080/v1/api_key/***/classify",
        f"http://127.0.0.1:8080/v1;key={WORD_TOKEN}/classify": "http:http://127.0.0.1:8080/v1;key=***/classify",
        f"https://bob:{PASSWORD}@models.example.test/predict": "http:https://models.example.test/predict",
        f"https://{PATH_TOKEN}@models.example.test/predict": "http:https://models.example.test/predict",
        "http://127.0.0.1:8080/v1/{env:URL_TOKEN}/classify": "http:http://127.0.0.1:8080/v1/{env:URL_TOKEN}/classify",
        # model names, versions and UUIDs are not credentials
        "http://127.0.0.1:8080/v2/models/resnet50/versions/3/infer": "http:http://127.0.0.1:8080/v2/models/resnet50/versions/3/infer",
        "http://127.0.0.1:8080/d/123e4567-e89b-12d3-a456-426614174000/p": "http:http://127.0.0.1:8080/d/123e4567-e89b-12d3-a456-426614174000/p",
    }
    for url, identity in cases.items():
        assert HTTPProvider(url).identity == identity, url
    expanded = HTTPProvider("http://127.0.0.1:8080/v1/{env:URL_TOKEN}/classify")
    assert expanded.url == f"http://127.0.0.1:8080/v1/{quote(ENV_TOKEN, safe='')}/classify"
    assert ENV_TOKEN not in expanded.redact(f"got {ENV_TOKEN}") and quote(ENV_TOKEN, safe="") not in repr(expanded)
    monkeypatch.delenv("URL_TOKEN")
    with pytest.raises(CredentialsError, match="URL_TOKEN"):
        HTTPProvider("http://127.0.0.1:8080/v1/{env:URL_TOKEN}/classify")


def test_sdk_adapter_identities_leave_out_the_endpoints_userinfo(monkeypatch):
    pytest.importorskip("google.cloud.vision")
    pytest.importorskip("boto3")
    from google.auth.credentials import AnonymousCredentials

    from robust_api.providers.aws import RekognitionProvider
    from robust_api.providers.google import GoogleVisionProvider

    provider = GoogleVisionProvider(endpoint=f"http://ann:{PASSWORD}@127.0.0.1:9", credentials=AnonymousCredentials())
    assert provider.identity == "google:label_detection@127.0.0.1:9"
    assert PASSWORD not in repr(provider) and PASSWORD not in provider.redact(f"url http://ann:{PASSWORD}@x")
    # boto3's own endpoint variable
    monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", f"http://ann:{PASSWORD}@127.0.0.1:9")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    aws = RekognitionProvider(aws_access_key_id="AKID", aws_secret_access_key="aws-secret-key", region_name="us-east-1")
    assert aws.identity == "aws:rekognition.detect_labels@127.0.0.1:9"
    assert PASSWORD not in aws.redact(f"cannot reach http://ann:{PASSWORD}@127.0.0.1:9")


def test_url_helpers():
    assert host_port(f"https://u:{PASSWORD}@[::1]:8443/p") == "[::1]:8443"
    assert host_port("vision.example.test") == "vision.example.test"
    parts = split_path_secrets(f"/a/token/{WORD_TOKEN}/b/{PATH_TOKEN}/c")
    assert parts.public == "/a/token/***/b/***/c" and parts.token_shaped
    assert {WORD_TOKEN, PATH_TOKEN} <= set(parts.secrets)
    assert not split_path_secrets("/v1/models/resnet50/token").token_shaped  # a trailing credential word
    found = url_secrets(f"http://alice:{PASSWORD}@h:notaport/p?access_token=QK-1&model=m")
    assert PASSWORD in found and "QK-1" in found and "alice" not in found and "m" not in found
    assert f"{PATH_TOKEN}" in url_secrets(f"https://{PATH_TOKEN}@h/")  # a token in the user-name slot


def test_a_very_short_credential_does_not_garble_every_sdk_log_record():
    # the SDK log filter is process-wide: a one-letter test key once turned "http" into "htt***"
    # for every later provider, so a later test's assertion depended on test order
    from robust_api.providers.cloud import SecretRedactingFilter

    shared = SecretRedactingFilter()
    shared.add("p")
    shared.add("a-real-looking-key-123")
    record = logging.LogRecord("urllib3.connectionpool", logging.DEBUG, __file__, 1,
                               'http://127.0.0.1:1 "POST /predict?key=%s HTTP/1.1"', ("a-real-looking-key-123",), None)
    assert shared.filter(record)
    assert record.getMessage() == 'http://127.0.0.1:1 "POST /predict?key=*** HTTP/1.1"'
