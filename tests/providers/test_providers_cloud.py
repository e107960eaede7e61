"""Each cloud adapter through its official SDK client against a local emulator (no SDK mocks).

Covers: labels equal to the bundled classifier's, batching, every injected fault mapped to
the right TransientProviderError kind / QueryFailure, SDK retries switched off, credentials
missing / refused, secrets kept out of messages, logs and repr, input limits checked before
any query, a missing SDK, the endpoint environment variables, and a moto smoke test.
"""

import json
import logging
import sys
import time

import numpy as np
import pytest

pytest.importorskip("google.cloud.vision")
pytest.importorskip("boto3")
pytest.importorskip("azure.cognitiveservices.vision.computervision")
pytest.importorskip("clarifai_grpc")
pytest.importorskip("requests")

from doubles import EMULATOR_VARIANTS, HAS_TORCH, bundled_classifier, halfspace_scores, no_cloud_credentials
from robust_api.emulators import emulate, supported_faults
from robust_api.errors import (
    CredentialsError,
    InvalidImageError,
    InvalidParameterError,
    MissingDependencyError,
    TransientProviderError,
)
from robust_api.providers import create_provider
from robust_api.providers.aws import RekognitionProvider
from robust_api.providers.azure import AzureVisionProvider
from robust_api.providers.base import QueryFailure
from robust_api.providers.cloud import _worst_case_png_bytes
from robust_api.providers.clarifai import ClarifaiProvider
from robust_api.providers.google import GoogleVisionProvider
from robust_api.providers.http import HTTPProvider

GOOGLE_KEY = "AIzaSyGOOGLE-test-key-0001"
AWS_KEY_ID = "AKIATESTKEYID0001"
AWS_SECRET = "aws-secret-access-key-0001/xyz"
AZURE_KEY = "azure-subscription-key-0001"
CLARIFAI_PAT = "clarifai-pat-0001-abcdef"
HTTP_TOKEN = "http-bearer-token-0001"
SECRETS = (GOOGLE_KEY, AWS_SECRET, AZURE_KEY, CLARIFAI_PAT, HTTP_TOKEN)

VARIANTS = EMULATOR_VARIANTS

@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No credential or endpoint from the machine leaks in, and nothing probes a metadata server."""
    no_cloud_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("TEST_HTTP_TOKEN", HTTP_TOKEN)


def make(variant, endpoint, **options):
    """The adapter for ``variant`` pointed at ``endpoint`` with the test credentials."""
    if variant.startswith("google"):
        options.setdefault("api_key", GOOGLE_KEY)
        return GoogleVisionProvider(endpoint=endpoint, **options)
    if variant == "aws":
        options.setdefault("aws_access_key_id", AWS_KEY_ID)
        options.setdefault("aws_secret_access_key", AWS_SECRET)
        options.setdefault("resize", "fit")
        return RekognitionProvider(endpoint=endpoint, region_name="us-east-1", **options)
    if variant.startswith("azure"):
        options.setdefault("subscription_key", AZURE_KEY)
        options.setdefault("resize", "fit")
        if variant == "azure-analyze":
            options["operation"] = "analyze"
        if variant == "azure-v4":
            options["api"] = "v4"
        return AzureVisionProvider(endpoint=endpoint, **options)
    if variant.startswith("clarifai"):
        options.setdefault("pat", CLARIFAI_PAT)
        return ClarifaiProvider(endpoint=endpoint, **options)
    if variant == "http-raw":
        options.setdefault("bearer_token_env", "TEST_HTTP_TOKEN")
        return HTTPProvider(endpoint, **options)
    if variant == "http-json":
        options.setdefault("bearer_token_env", "TEST_HTTP_TOKEN")
        return HTTPProvider(endpoint, body="json", batch_size=8, **options)
    raise AssertionError(variant)


def run(emulator_name, protocol, **options):
    """An emulator serving the bundled classifier; without PyTorch, the torch-free half-space
    one (the tests that compare labels with the bundled classifier skip then, see ``fmnist``)."""
    if not HAS_TORCH and "classifier" not in options and "model" not in options:
        options["classifier"] = halfspace_scores
    return emulate(emulator_name, protocol=protocol, **options)


def send_all(provider, images):
    """Answers for every image, in sends of at most max_batch_size (what the engine does)."""
    answers = []
    for start in range(0, len(images), provider.max_batch_size):
        answers.extend(provider.send(images[start : start + provider.max_batch_size]))
    return answers


@pytest.fixture(scope="module")
def fmnist():
    """Twelve Fashion-MNIST test images (float32 [12, 28, 28, 1]) and the bundled CNN's labels."""
    from robust_api.datasets import load_fashion_mnist

    local = bundled_classifier()
    try:
        x, _ = load_fashion_mnist("test")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    images = (x[:12].astype(np.float32) / 255.0)[..., None]
    labels = [local.parse(raw) for raw in local.send(images)]
    assert len(set(labels)) > 3  # a varied sample
    return images, labels


# ----------------------------------------------------------------------------- correct labels


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_labels_equal_the_bundled_classifier(variant, fmnist):
    images, expected = fmnist
    name, protocol = VARIANTS[variant]
    count = 12 if name in ("google", "clarifai") or variant == "http-json" else 4
    with run(name, protocol) as endpoint:
        provider = make(variant, endpoint)
        raws = send_all(provider, images[:count])
        assert endpoint.stats["requests"] == -(-count // provider.max_batch_size)
    assert not any(isinstance(raw, QueryFailure) for raw in raws)
    assert [provider.parse(raw) for raw in raws] == expected[:count]
    for raw in raws:
        stored = json.loads(json.dumps(raw))  # plain JSON data, re-parseable from the log alone
        assert provider.parse(stored) == provider.parse(raw)
        labels = provider.labels(stored)
        assert 1 <= len(labels) <= provider.max_labels
        assert all(0.0 <= score <= 1.0 for _, score in labels)
    assert endpoint.split("//")[1] in provider.identity or variant.startswith("http")
    if name in ("aws", "azure", "clarifai"):
        # the answered version is in the stored answers; model_version stays as constructed
        # (unpinned: None), since the query log matches reusable answers on it
        assert provider.model_version is None
        assert all(str(raw.get("LabelModelVersion") or raw.get("modelVersion")
                       or raw.get("model", {}).get("model_version", {}).get("id") or "") for raw in raws)


@pytest.mark.parametrize("variant", ["google-rest", "google-grpc", "aws", "azure-tag", "azure-v4", "clarifai-json", "http-raw"])
def test_concurrent_sends_from_threads(variant, fmnist):
    """The dispatcher calls send from several threads at once (per-thread clients where needed)."""
    from concurrent.futures import ThreadPoolExecutor

    images, expected = fmnist
    name, protocol = VARIANTS[variant]
    with run(name, protocol, latency_ms=20) as endpoint:
        provider = make(variant, endpoint)
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda i: provider.send(images[i : i + 1])[0], range(8)))
        assert endpoint.stats["requests"] == 8
    assert [provider.parse(a) for a in answers] == expected[:8]


def test_identities_and_defaults():
    with run("google", "rest") as endpoint:
        google = make("google-rest", endpoint)
        assert google.identity == f"google:label_detection@{endpoint.split('//')[1]}"
        assert (google.max_batch_size, google.default_rate_limit, google.name) == (16, 30.0, "google")
        aws = make("aws", endpoint)
        assert aws.identity.startswith("aws:rekognition.detect_labels@")
        assert (aws.max_batch_size, aws.default_rate_limit) == (1, 50.0)
        azure = make("azure-tag", endpoint)
        assert azure.identity.startswith("azure:computer_vision.v3.2.tag@")
        assert (azure.max_batch_size, azure.default_rate_limit) == (1, 10.0)
        assert make("azure-analyze", endpoint).identity.startswith("azure:computer_vision.v3.2.analyze@")
        clarifai = ClarifaiProvider(endpoint="grpc://127.0.0.1:9", pat=CLARIFAI_PAT, version_id="v1")
        assert clarifai.identity == "clarifai:clarifai/main/general-image-recognition@v1@127.0.0.1:9"
        assert (clarifai.max_batch_size, clarifai.default_rate_limit) == (128, 15.0)
        http = HTTPProvider("http://127.0.0.1:8080/predictions/resnet?token=x")
        assert http.identity == "http:http://127.0.0.1:8080/predictions/resnet"  # a secret-only query
        assert HTTPProvider("http://127.0.0.1:8080/p", name="resnet").identity == "http:resnet"
        assert http.cost_per_query_usd == 0.0 and http.default_rate_limit is None


# ----------------------------------------------------------------------------- batching


def test_google_sends_up_to_16_images_per_request(fmnist):
    images, expected = fmnist
    batch = np.concatenate([images, images[:8]])  # 20 images
    for protocol in ("rest", "grpc"):
        with run("google", protocol) as endpoint:
            provider = make(f"google-{protocol}", endpoint)
            assert len(provider.send(batch[:16])) == 16
            assert endpoint.stats["requests"] == 1 and endpoint.stats["images"] == 16
            answers = send_all(provider, batch)
            assert endpoint.stats["requests"] == 3 and endpoint.stats["images"] == 36
        assert [provider.parse(a) for a in answers] == expected + expected[:8]


@pytest.mark.parametrize("protocol", ["grpc", "json"])
def test_clarifai_sends_128_images_in_one_request(protocol, fmnist):
    images, expected = fmnist
    batch = np.concatenate([images] * 11)[:128]
    with run("clarifai", protocol) as endpoint:
        provider = make(f"clarifai-{protocol}", endpoint, max_labels=3)
        answers = provider.send(batch)
        assert endpoint.stats["requests"] == 1 and endpoint.stats["images"] == 128
    assert [provider.parse(a) for a in answers] == (expected * 11)[:128]
    assert all(len(provider.labels(a)) == 3 for a in answers)  # max_labels is sent as max_concepts


# ----------------------------------------------------------------------------- faults


EXPECTED_KIND = {"throttle": "throttled", "server_error": "server", "timeout": "timeout", "malformed": "malformed"}
FAULT_CASES = [
    (variant, fault) for variant in sorted(VARIANTS) for fault in supported_faults(VARIANTS[variant][0])
]


@pytest.mark.parametrize("variant, fault", FAULT_CASES)
def test_injected_fault_maps_to_the_right_kind(variant, fault, fmnist, caplog):
    images, _ = fmnist
    name, protocol = VARIANTS[variant]
    caplog.set_level(logging.DEBUG)
    batch = images[:3] if name in ("google", "clarifai") or variant == "http-json" else images[:1]
    with run(name, protocol, faults={fault: 1.0}, retry_after_s=2, hang_s=3.0) as endpoint:
        provider = make(variant, endpoint, timeout_s=0.4)
        if fault == "image_error":
            answers = provider.send(batch)
            assert len(answers) == len(batch)
            for answer in answers:
                assert isinstance(answer, QueryFailure) and answer.transient and answer.kind == "server"
            return
        with pytest.raises(TransientProviderError) as info:
            provider.send(batch)
        requests_seen = endpoint.stats["requests"]
    error = info.value
    assert error.kind == EXPECTED_KIND[fault], str(error)
    if fault == "throttle" and variant not in ("clarifai-grpc", "clarifai-json"):
        assert error.retry_after == 2.0  # Retry-After / retry-after trailing metadata
    # the SDKs' own retries are off: one request per send (Clarifai's gRPC channel included:
    # ClarifaiChannel's service-config retry sent UNAVAILABLE 5 times)
    assert requests_seen == 1, f"{variant} retried {fault}: {requests_seen} requests"
    for secret in SECRETS:
        assert secret not in str(error) and secret not in caplog.text


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_refused_image_is_a_rejected_query_failure(variant):
    name, protocol = VARIANTS[variant]
    with run(name, protocol) as endpoint:
        provider = make(variant, endpoint)
        answers = provider._send_encoded([b"this is not an image"])  # what the service would refuse
    assert len(answers) == 1 and isinstance(answers[0], QueryFailure)
    assert answers[0].kind == "rejected" and not answers[0].transient


def test_unreachable_endpoints_are_connection_errors():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    images = np.zeros((1, 28, 28, 1), np.float32)
    for variant, scheme in [("google-rest", "http"), ("google-grpc", "grpc"), ("aws", "http"), ("azure-tag", "http"),
                            ("azure-v4", "http"), ("clarifai-json", "http"), ("http-raw", "http")]:
        provider = make(variant, f"{scheme}://127.0.0.1:{port}", timeout_s=2)
        started = time.monotonic()
        with pytest.raises(TransientProviderError) as info:
            provider.send(images)
        assert info.value.kind == "connection", (variant, str(info.value))
        assert time.monotonic() - started < 1.0, f"{variant} retried the connection itself"


# ----------------------------------------------------------------------------- credentials


def test_missing_credentials_are_reported_before_any_query(monkeypatch):
    with pytest.raises(CredentialsError) as info:
        GoogleVisionProvider(endpoint="https://vision.example.invalid")
    for hint in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_API_KEY", "gcloud auth application-default login"):
        assert hint in str(info.value)
    with pytest.raises(CredentialsError) as info:
        RekognitionProvider(region_name="us-east-1")
    for hint in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "~/.aws/credentials"):
        assert hint in str(info.value)
    with pytest.raises(CredentialsError, match="AZURE_COMPUTER_VISION_ENDPOINT"):
        AzureVisionProvider(subscription_key=AZURE_KEY)
    with pytest.raises(CredentialsError, match="AZURE_COMPUTER_VISION_SUBSCRIPTION_KEY"):
        AzureVisionProvider(endpoint="https://example.cognitiveservices.azure.com/")
    with pytest.raises(CredentialsError) as info:
        ClarifaiProvider()
    assert "CLARIFAI_PAT" in str(info.value) and "CLARIFAI_API_KEY" in str(info.value)
    monkeypatch.delenv("TEST_HTTP_TOKEN")
    with pytest.raises(CredentialsError, match="TEST_HTTP_TOKEN"):
        HTTPProvider("http://127.0.0.1:9/predict", bearer_token_env="TEST_HTTP_TOKEN")
    with pytest.raises(CredentialsError, match="MISSING_VAR"):
        HTTPProvider("http://127.0.0.1:9/predict", headers={"X-Api-Key": "env:MISSING_VAR"})
    with pytest.raises(InvalidParameterError) as info:
        HTTPProvider()
    assert "url" in str(info.value) and "ROBUST_API_HTTP_URL" in str(info.value)


def test_credentials_from_the_environment(monkeypatch, fmnist):
    images, expected = fmnist
    monkeypatch.setenv("GOOGLE_API_KEY", GOOGLE_KEY)
    with run("google", "rest", api_key=GOOGLE_KEY) as endpoint:
        assert GoogleVisionProvider(endpoint=endpoint).parse(GoogleVisionProvider(endpoint=endpoint).send(images[:1])[0]) == expected[0]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    with run("aws", None, api_key=AWS_KEY_ID) as endpoint:
        provider = RekognitionProvider(endpoint=endpoint, resize="fit")
        assert provider.region_name == "us-east-1"
        assert provider.parse(provider.send(images[:1])[0]) == expected[0]
        assert AWS_SECRET not in repr(provider)
    monkeypatch.setenv("AZURE_COMPUTER_VISION_SUBSCRIPTION_KEY", AZURE_KEY)
    with run("azure", None, api_key=AZURE_KEY) as endpoint:
        provider = AzureVisionProvider(endpoint=endpoint, resize="fit")
        assert provider.parse(provider.send(images[:1])[0]) == expected[0]
    monkeypatch.setenv("CLARIFAI_API_KEY", CLARIFAI_PAT)  # the predecessor's variable
    with run("clarifai", "grpc", api_key=CLARIFAI_PAT) as endpoint:
        provider = ClarifaiProvider(endpoint=endpoint)
        assert provider.parse(provider.send(images[:1])[0]) == expected[0]
    monkeypatch.setenv("HTTP_KEY_VAR", HTTP_TOKEN)
    with run("http", None, api_key=HTTP_TOKEN) as endpoint:
        provider = HTTPProvider(endpoint, headers={"Authorization": "env:HTTP_KEY_VAR"})
        with pytest.raises(CredentialsError):  # the emulator wants "Bearer <token>"
            provider.send(images[:1])
        provider = HTTPProvider(endpoint, bearer_token_env="HTTP_KEY_VAR")
        assert provider.parse(provider.send(images[:1])[0]) == expected[0]


WRONG = {
    "google": {"api_key": "AIzaWRONG-key-9999"},
    "aws": {"aws_access_key_id": "AKIAWRONGKEY9999"},
    "azure": {"subscription_key": "azure-WRONG-key-9999"},
    "clarifai": {"pat": "clarifai-WRONG-pat-9999"},
    "http": {"bearer_token_env": "WRONG_TOKEN"},
}
RIGHT = {"google": GOOGLE_KEY, "aws": AWS_KEY_ID, "azure": AZURE_KEY, "clarifai": CLARIFAI_PAT, "http": HTTP_TOKEN}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_refused_credentials_raise_credentials_error_without_the_secret(variant, fmnist, monkeypatch, caplog):
    images, expected = fmnist
    name, protocol = VARIANTS[variant]
    monkeypatch.setenv("WRONG_TOKEN", "http-WRONG-token-9999")
    caplog.set_level(logging.DEBUG)
    with run(name, protocol, api_key=RIGHT[name]) as endpoint:
        wrong = make(variant, endpoint, **WRONG[name])
        with pytest.raises(CredentialsError) as info:
            wrong.send(images[:1])
        right = make(variant, endpoint)
        assert right.parse(right.send(images[:1])[0]) == expected[0]
        assert endpoint.stats["auth_failures"] == 1
    message = str(info.value)
    for secret in list(SECRETS) + [value for value in WRONG[name].values() if "WRONG" in value] + ["http-WRONG-token-9999"]:
        if secret == WRONG[name].get("aws_access_key_id"):
            continue  # an access key id is not a secret
        assert secret not in message
        assert secret not in repr(wrong) and secret not in repr(right)
        assert secret not in caplog.text


def test_google_emulator_without_credentials_uses_anonymous_access(fmnist):
    images, expected = fmnist
    with run("google", "rest") as endpoint:
        provider = GoogleVisionProvider(endpoint=endpoint)
        assert provider.parse(provider.send(images[:1])[0]) == expected[0]
    with run("google", "grpc", api_key=GOOGLE_KEY) as endpoint:
        with pytest.raises(CredentialsError):
            GoogleVisionProvider(endpoint=endpoint).send(images[:1])


def test_secrets_are_masked_in_redact_and_repr():
    providers = [
        make("google-rest", "http://127.0.0.1:9"),
        make("aws", "http://127.0.0.1:9"),
        make("azure-tag", "http://127.0.0.1:9"),
        make("clarifai-json", "http://127.0.0.1:9"),
        make("http-raw", "http://127.0.0.1:9/predict"),
    ]
    for provider, secret in zip(providers, (GOOGLE_KEY, AWS_SECRET, AZURE_KEY, CLARIFAI_PAT, HTTP_TOKEN)):
        assert secret not in repr(provider)
        assert secret not in provider.redact(f"the key is {secret}.")


def test_clarifai_json_channel_debug_log_masks_the_pat(fmnist, caplog):
    images, _ = fmnist
    caplog.set_level(logging.DEBUG)
    with run("clarifai", "json") as endpoint:
        make("clarifai-json", endpoint).send(images[:1])
    assert any(r.name == "clarifai" for r in caplog.records)  # the SDK logs its request headers
    assert CLARIFAI_PAT not in caplog.text


# ----------------------------------------------------------------------------- limits


def test_limits_are_checked_before_any_query(fmnist):
    images, expected = fmnist
    small = images[0]
    for variant, name, minimum in (("aws", "aws", 80), ("azure-tag", "azure", 50)):
        with run(name, None) as endpoint:
            strict = make(variant, endpoint, resize=None)
            with pytest.raises(InvalidImageError, match="resize='fit'"):
                strict.check_image(small)
            assert endpoint.stats["requests"] == 0
            fit = make(variant, endpoint)
            fit.check_image(small)
            assert min(fit.sent_shape(28, 28)) >= minimum
            assert fit.parse(fit.send(images[:1])[0]) == expected[0]
            assert endpoint.stats["requests"] == 1 and endpoint.stats["rejected"] == 0
    huge = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (3000, 3000, 3))  # no memory: shape only
    with pytest.raises(InvalidImageError, match="20,000,000"):
        make("google-rest", "http://127.0.0.1:9", resize=None).check_image(huge)
    with pytest.raises(InvalidImageError):
        make("aws", "http://127.0.0.1:9", resize=None).check_image(huge)
    big = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (1200, 1200, 3))
    with pytest.raises(InvalidImageError):
        make("azure-tag", "http://127.0.0.1:9", resize=None).check_image(big)
    # resize='fit' also shrinks a query image (after the noise) until its worst-case PNG fits the byte limit
    for variant, endpoint, image, limit in (("google-rest", "http://127.0.0.1:9", huge, 20_000_000),
                                            ("aws", "http://127.0.0.1:9", huge, 5 * 1024 * 1024),
                                            ("azure-tag", "http://127.0.0.1:9", big, 4 * 1024 * 1024)):
        fit = make(variant, endpoint, resize="fit")
        fit.check_image(image)
        h, w = fit.sent_shape(image.shape[0], image.shape[1], 3)
        assert h == w and h < image.shape[0] and _worst_case_png_bytes(h, w, 3) <= limit
        assert _worst_case_png_bytes(h + 2, w + 2, 3) > limit  # and not much further than needed
    make("clarifai-grpc", "grpc://127.0.0.1:9").check_image(big)  # 20 MB is plenty


# ----------------------------------------------------------------------------- missing SDKs


@pytest.mark.parametrize(
    "name, module, blocked, options",
    [
        ("google", "robust_api.providers.google", "google.cloud.vision", {}),
        ("aws", "robust_api.providers.aws", "boto3", {}),
        ("azure", "robust_api.providers.azure", "azure.cognitiveservices.vision.computervision", {}),
        ("clarifai", "robust_api.providers.clarifai", "clarifai_grpc.channel.clarifai_channel", {}),
        ("http", "robust_api.providers.http", "requests", {}),
    ],
)
def test_missing_sdk_is_a_missing_dependency_error(monkeypatch, name, module, blocked, options):
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, blocked, None)  # "import blocked" now fails as if not installed
    parent, _, child = blocked.rpartition(".")
    if parent in sys.modules:  # "from parent import child" would find the attribute first
        monkeypatch.delattr(sys.modules[parent], child, raising=False)
    with pytest.raises(MissingDependencyError) as info:
        create_provider(name, **options)
    assert f"pip install 'robust-api[{name}]'" in str(info.value)


def test_azure_v4_sdk_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.ai.vision.imageanalysis", None)
    with pytest.raises(MissingDependencyError, match=r"robust-api\[azure\]"):
        AzureVisionProvider(endpoint="http://127.0.0.1:9", subscription_key=AZURE_KEY, api="v4")


# ----------------------------------------------------------------------------- endpoint variables


@pytest.mark.parametrize(
    "variant, variable, options",
    [
        ("google-rest", "ROBUST_API_GOOGLE_ENDPOINT", {"api_key": GOOGLE_KEY}),
        ("google-grpc", "ROBUST_API_GOOGLE_ENDPOINT", {"api_key": GOOGLE_KEY}),
        ("aws", "ROBUST_API_AWS_ENDPOINT", {"aws_access_key_id": AWS_KEY_ID, "aws_secret_access_key": AWS_SECRET,
                                            "region_name": "us-east-1", "resize": "fit"}),
        ("aws", "AWS_ENDPOINT_URL_REKOGNITION", {"aws_access_key_id": AWS_KEY_ID, "aws_secret_access_key": AWS_SECRET,
                                                 "region_name": "us-east-1", "resize": "fit"}),
        ("azure-tag", "AZURE_COMPUTER_VISION_ENDPOINT", {"subscription_key": AZURE_KEY, "resize": "fit"}),
        ("clarifai-grpc", "ROBUST_API_CLARIFAI_ENDPOINT", {"pat": CLARIFAI_PAT}),
        ("clarifai-json", "ROBUST_API_CLARIFAI_ENDPOINT", {"pat": CLARIFAI_PAT}),
        ("http-raw", "ROBUST_API_HTTP_URL", {}),
    ],
)
def test_endpoint_environment_variable(monkeypatch, fmnist, variant, variable, options):
    images, expected = fmnist
    name, protocol = VARIANTS[variant]
    with run(name, protocol) as endpoint:
        monkeypatch.setenv(variable, str(endpoint))
        provider = create_provider(name, **options)
        assert endpoint.split("//")[1].split("/")[0] in provider.identity
        assert provider.parse(provider.send(images[:1])[0]) == expected[0]
        assert endpoint.stats["requests"] == 1


# ----------------------------------------------------------------------------- moto


def test_aws_smoke_test_against_moto():
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        provider = RekognitionProvider(
            endpoint=f"http://{host}:{port}", region_name="us-east-1", aws_access_key_id="testing",
            aws_secret_access_key="testing-secret", resize="fit",
        )
        (raw,) = provider.send(np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32))
    finally:
        server.stop()
    assert provider.parse(raw) == "Mobile Phone"
    assert provider.labels(raw)[0] == ("Mobile Phone", pytest.approx(0.999364013671875))
    assert raw["LabelModelVersion"] == "3.0" and provider.model_version is None
    assert "ResponseMetadata" not in raw
    json.dumps(raw)


# ----------------------------------------------------------------------------- review fixes

from robust_api.errors import ProviderError, ProviderResponseError


def tiny_server(answer):
    """A one-route HTTP server on 127.0.0.1: ``answer(method, path) -> (status, body: dict | str)``."""
    from doubles import tiny_http_server

    return tiny_http_server(lambda method, path, headers: answer(method, path))


def test_model_version_is_fixed_at_construction():
    """Pinned versions only; never the answered one (the log matches reusable answers on it)."""
    assert make("aws", "http://127.0.0.1:9").model_version is None
    assert make("azure-tag", "http://127.0.0.1:9").model_version is None  # "latest"
    assert make("azure-tag", "http://127.0.0.1:9", model_version="2021-04-01").model_version == "2021-04-01"
    assert make("azure-v4", "http://127.0.0.1:9", model_version="2023-10-01").model_version == "2023-10-01"
    assert make("clarifai-grpc", "grpc://127.0.0.1:9").model_version is None
    assert make("clarifai-grpc", "grpc://127.0.0.1:9", version_id="v123").model_version == "v123"


def test_a_repeated_aws_certify_call_reuses_the_logged_answers(tmp_path):
    from robust_api import RobustAPI

    image = np.random.default_rng(0).random((28, 28, 1), dtype=np.float32)
    with run("aws", None) as endpoint:
        options = dict(endpoint=str(endpoint), resize="fit", log=tmp_path / "log.sqlite3", seed=0,
                       aws_access_key_id=AWS_KEY_ID, aws_secret_access_key=AWS_SECRET, region_name="us-east-1")
        api = RobustAPI("aws", **options)
        first = api.certify(image, 0.25, N0=5, N=10)
        sent = endpoint.stats["requests"]
        assert sent == 15 and first.queries == 15
        again = api.certify(image, 0.25, N0=5, N=10)  # the same object: its provider has answered before
        assert endpoint.stats["requests"] == sent and again.queries == 0
        fresh = RobustAPI("aws", **options).certify(image, 0.25, N0=5, N=10)
        assert endpoint.stats["requests"] == sent and fresh.queries == 0
    assert (again.label, again.radius) == (first.label, first.radius) == (fresh.label, fresh.radius)


def test_aws_session_token_never_reaches_the_sdk_debug_logs(fmnist, caplog):
    images, _ = fmnist
    token = "SESSIONTOKEN-very-secret-123"
    caplog.set_level(logging.DEBUG)
    with run("aws", None) as endpoint:
        provider = make("aws", endpoint, aws_session_token=token)
        provider.send(images[:1])
    names = {record.name for record in caplog.records}
    assert {"botocore.endpoint", "botocore.auth"} <= names  # the wire dumps were logged
    for record in caplog.records:
        assert token not in record.getMessage() and AWS_SECRET not in record.getMessage()
    assert token not in caplog.text and AWS_SECRET not in caplog.text


def test_url_query_secrets_are_masked_in_urllib3_debug_logs(fmnist, caplog):
    images, expected = fmnist
    caplog.set_level(logging.DEBUG)
    with run("http", None) as endpoint:
        provider = HTTPProvider(f"{endpoint}?api_key=QUERYKEY-secret-42&model=a")
        assert provider.parse(provider.send(images[:1])[0]) == expected[0]
    client_records = [r for r in caplog.records if not r.name.startswith("robust_api.emulators")]  # the server knows it
    assert any(r.name == "urllib3.connectionpool" and "/predict?" in r.getMessage() for r in client_records)
    assert not any("QUERYKEY-secret-42" in r.getMessage() for r in client_records)
    assert "QUERYKEY-secret-42" not in repr(provider)


def test_messages_are_redacted_before_they_are_cut(monkeypatch):
    token = "ZQXJ" + "k" * 40  # a cut at 200 characters falls inside it
    monkeypatch.setenv("CUT_TOKEN", token)
    with tiny_server(lambda method, path: (503, "x" * 190 + token + " tail")) as url:
        provider = HTTPProvider(f"{url}/predict", bearer_token_env="CUT_TOKEN")
        with pytest.raises(TransientProviderError) as info:
            provider._send_encoded([b"png"])
    assert "ZQXJ" not in str(info.value)
    with pytest.raises(ProviderResponseError) as info:
        provider.parse({"note": "y" * 100 + token})  # repr cut at 120 characters
    assert "ZQXJ" not in str(info.value)
    short = HTTPProvider("http://127.0.0.1:9/p?token=ab1")  # a short secret is still masked
    assert "ab1" not in short.redact("key ab1 here") and "ab1" not in repr(short)


def test_http_url_secrets_are_masked_before_validation():
    for url in ("ftp://user:PASSWORD-123@host/p?api_key=QKEY-456",
                "http://user:PASSWORD-123@host:notaport/p?api_key=QKEY-456",
                "http://user:PASSWORD-123@/p?access_token=QKEY-456"):
        with pytest.raises(InvalidParameterError) as info:
            HTTPProvider(url)
        assert "PASSWORD-123" not in str(info.value) and "QKEY-456" not in str(info.value), url


def test_http_wrong_url_method_or_content_type_is_fatal(fmnist):
    images, _ = fmnist
    with run("http", None) as endpoint:
        wrong_path = HTTPProvider(str(endpoint).replace("/predict", "/wrong"))
        with pytest.raises(ProviderError) as info:
            wrong_path.send(images[:1])
        assert not isinstance(info.value, TransientProviderError) and "404" in str(info.value)
        assert "check the URL" in str(info.value)
    for status, words in ((404, "check the URL"), (405, "POST"), (415, "body='json'"), (409, "HTTP 409")):
        with tiny_server(lambda method, path, status=status: (status, {"error": "no"})) as url:
            with pytest.raises(ProviderError) as info:
                HTTPProvider(f"{url}/p")._send_encoded([b"png"])
        assert not isinstance(info.value, TransientProviderError) and words in str(info.value), status
    for status in (400, 413, 422):  # these refuse one image
        with tiny_server(lambda method, path, status=status: (status, {"error": "bad image"})) as url:
            (answer,) = HTTPProvider(f"{url}/p")._send_encoded([b"png"])
        assert isinstance(answer, QueryFailure) and answer.kind == "rejected", status


def test_http_identity_includes_the_url_query():
    a = HTTPProvider("http://127.0.0.1:8080/p?model=a")
    b = HTTPProvider("http://127.0.0.1:8080/p?model=b")
    plain = HTTPProvider("http://127.0.0.1:8080/p")
    assert len({a.identity, b.identity, plain.identity}) == 3
    assert a.identity.startswith("http:http://127.0.0.1:8080/p?")
    with_key = HTTPProvider("http://127.0.0.1:8080/p?model=a&key=SECRETKEY1")
    other_key = HTTPProvider("http://127.0.0.1:8080/p?model=a&key=SECRETKEY2")
    assert with_key.identity == other_key.identity != a.identity  # the key's value is not in the digest
    assert "SECRETKEY" not in with_key.identity
    assert HTTPProvider("http://[::1]:8080/p").identity == "http:http://[::1]:8080/p"


@pytest.mark.parametrize("api", ["v3.2", "v4"])
def test_azure_400_is_a_rejected_image_only_for_image_codes(api):
    answers = {
        "NotSupportedVisualFeature": (400, {"error": {"code": "NotSupportedVisualFeature", "message": "no"}}),
        "InvalidModelVersion": (400, {"error": {"code": "InvalidRequest", "message": "bad version",
                                                "innererror": {"code": "InvalidModelVersion", "message": "x"}}}),
        "InvalidImageSize": (400, {"error": {"code": "InvalidRequest", "message": "too big",
                                             "innererror": {"code": "InvalidImageSize", "message": "x"}}}),
        "InvalidImageFormat": (400, {"error": {"code": "InvalidImageFormat", "message": "not an image"}}),
    }
    for code, (status, body) in answers.items():
        with tiny_server(lambda method, path, status=status, body=body: (status, body)) as url:
            provider = AzureVisionProvider(endpoint=url, subscription_key=AZURE_KEY, api=api)
            if code.startswith("InvalidImage"):
                (answer,) = provider._send_encoded([b"png"])
                assert isinstance(answer, QueryFailure) and answer.kind == "rejected", code
            else:
                with pytest.raises(ProviderError) as info:
                    provider._send_encoded([b"png"])
                assert not isinstance(info.value, TransientProviderError) and code in str(info.value)


def test_azure_endpoint_without_a_scheme_is_refused_at_construction():
    for endpoint in ("myresource.cognitiveservices.azure.com", "ftp://myresource.cognitiveservices.azure.com"):
        with pytest.raises(InvalidParameterError) as info:
            AzureVisionProvider(endpoint=endpoint, subscription_key=AZURE_KEY)
        assert "https://<resource>.cognitiveservices.azure.com" in str(info.value)


def test_clarifai_over_ipv6_loopback(fmnist):
    images, expected = fmnist
    try:
        emulator = emulate("clarifai", protocol="grpc", host="::1")
        endpoint = emulator.__enter__()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert str(endpoint).startswith("grpc://[::1]:")
        provider = make("clarifai-grpc", endpoint, timeout_s=5)
        assert provider.parse(provider.send(images[:1])[0]) == expected[0]
    finally:
        emulator.__exit__(None, None, None)


def test_clarifai_dns_failures_and_account_limits():
    import grpc
    from clarifai_grpc.grpc.api import service_pb2
    from clarifai_grpc.grpc.api.status import status_pb2

    class Unavailable(grpc.RpcError):
        def __init__(self, details):
            self._details = details

        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return self._details

        def trailing_metadata(self):
            return ()

    provider = make("clarifai-grpc", "grpc://127.0.0.1:9")
    for details in ("errors resolving api.example:443: DNS resolution failed", "DNS resolution failed for x:1",
                    "failed to connect to all addresses"):
        assert provider._rpc_error(Unavailable(details)).kind == "connection", details
    assert provider._rpc_error(Unavailable("upstream busy")).kind == "server"
    for code in (11003, 11006):
        response = service_pb2.MultiOutputResponse(status=status_pb2.Status(code=code, description="limit"))
        with pytest.raises(ProviderError) as info:
            provider._answers(response, 1)
        assert not isinstance(info.value, TransientProviderError) and "limit was reached" in str(info.value)
    throttled = service_pb2.MultiOutputResponse(status=status_pb2.Status(code=11005, description="slow down"))
    with pytest.raises(TransientProviderError):
        provider._answers(throttled, 1)


def test_resize_fit_refuses_shapes_no_scaling_can_fit():
    aws = make("aws", "http://127.0.0.1:9")  # sides 80-10,000 px
    narrow = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (1, 20000, 1))
    with pytest.raises(InvalidImageError, match="aspect ratio"):
        aws.check_image(narrow)
    assert aws.sent_shape(28, 28) == (84, 84)
    assert aws.sent_shape(80, 10001) == (80, 10000)  # rounding alone does not take a side under 80
    assert aws.sent_shape(1, 125) == (80, 10000)
    with pytest.raises(InvalidImageError):
        aws.sent_shape(1, 127)


@pytest.mark.parametrize("variant", ["google-rest", "google-grpc", "aws", "azure-tag", "azure-v4",
                                     "clarifai-grpc", "clarifai-json", "http-raw"])
def test_tls_errors_are_fatal_configuration_errors(variant, fmnist):
    images, _ = fmnist
    name, protocol = VARIANTS[variant]
    with run(name, protocol) as endpoint:  # a plain-text server addressed with a TLS scheme
        secure = str(endpoint).replace("http://", "https://").replace("grpc://", "grpcs://")
        provider = make(variant, secure, timeout_s=5, **({"transport": "grpc"} if variant == "google-grpc" else {}))
        with pytest.raises(ProviderError) as info:
            provider.send(images[:1])
    assert not isinstance(info.value, TransientProviderError), str(info.value)
    assert "TLS/SSL" in str(info.value)
