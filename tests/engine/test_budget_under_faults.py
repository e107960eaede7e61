"""The budget cap holds on the wire under faults, for every cloud adapter and transport.

Each adapter talks through its official SDK client to its emulator, which fails half of the
requests with a server error (HTTP 5xx / gRPC UNAVAILABLE: billable, retried by the
dispatcher). The emulator counts, on its side, every image of every request it received
(``stats.images_received``), so an attempt an SDK made by itself — a retry the dispatcher
never saw — shows up there and not in the budget. With ``max_queries=K``:

- the emulator received at most K images;
- it received exactly what the budget counted (no hidden retry, no phantom count);
- the log's cost column carries exactly those attempts (cost / price), also when the call
  stops on the cap mid-batch.

Before the fix, Clarifai's gRPC channel (ClarifaiChannel's service-config retry policy)
resent each UNAVAILABLE batch up to 5 times: 52 images arrived under a cap of 24.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("google.cloud.vision")
pytest.importorskip("boto3")
pytest.importorskip("azure.cognitiveservices.vision.computervision")
pytest.importorskip("azure.ai.vision.imageanalysis")
pytest.importorskip("clarifai_grpc")
pytest.importorskip("requests")

from doubles import EMULATOR_VARIANTS, no_cloud_credentials  # noqa: E402
from robust_api import RobustAPI  # noqa: E402
from robust_api.dispatch import RetryPolicy  # noqa: E402
from robust_api.emulators import emulate  # noqa: E402
from robust_api.errors import BudgetExceededError, TransientProviderError  # noqa: E402
from robust_api.providers.aws import RekognitionProvider  # noqa: E402
from robust_api.providers.azure import AzureVisionProvider  # noqa: E402
from robust_api.providers.clarifai import ClarifaiProvider  # noqa: E402
from robust_api.providers.google import GoogleVisionProvider  # noqa: E402
from robust_api.providers.http import HTTPProvider  # noqa: E402

PRICE = 0.001  # USD per query, the same for every adapter so the log's cost counts attempts
CAP = 24  # max_queries
N = 16  # queries of the call: the cap leaves room for 8 retried queries
FAST_RETRY = RetryPolicy(max_attempts=6, initial_backoff_s=0.001, max_backoff_s=0.005)

VARIANTS = EMULATOR_VARIANTS

@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    no_cloud_credentials(monkeypatch, tmp_path)


def two_labels(batch):
    """The emulators' classifier: fixed scores, no model to load (fast)."""
    return [[("cat", 0.9), ("dog", 0.1)] for _ in batch]


def make(variant, endpoint, **options):
    """The adapter for ``variant`` pointed at ``endpoint``, at PRICE per query."""
    options.setdefault("cost_per_query_usd", PRICE)
    if variant.startswith("google"):
        return GoogleVisionProvider(endpoint=endpoint, api_key="google-key", **options)
    if variant == "aws":
        return RekognitionProvider(endpoint=endpoint, region_name="us-east-1", aws_access_key_id="AKID",
                                   aws_secret_access_key="aws-secret", resize="fit", **options)
    if variant.startswith("azure"):
        api, operation = ("v4", "tag") if variant == "azure-v4" else ("v3.2", variant.rsplit("-", 1)[1])
        return AzureVisionProvider(endpoint=endpoint, subscription_key="azure-key", api=api, operation=operation,
                                   resize="fit", **options)
    if variant.startswith("clarifai"):
        return ClarifaiProvider(endpoint=endpoint, pat="clarifai-pat", **options)
    if variant == "http-raw":
        return HTTPProvider(endpoint, **options)
    return HTTPProvider(endpoint, body="json", batch_size=4, **options)


def billed_in_log(api) -> float:
    """Attempts the log's cost column accounts for (every call of the api's memory log)."""
    return sum(record.cost_usd for call in api.log for record in call.records) / PRICE


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_cap_holds_on_the_wire_under_server_faults(variant):
    name, protocol = VARIANTS[variant]
    image = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    with emulate(name, protocol=protocol, classifier=two_labels, faults={"server_error": 0.5}, seed=3) as endpoint:
        provider = make(variant, endpoint)
        api = RobustAPI(provider, log=False, max_queries=CAP, batch_size=min(4, provider.max_batch_size),
                        concurrency=2, retry=FAST_RETRY, rate_limit=math.inf)
        try:
            prediction = api.predict(image, N=N, noise_sd=0.25)
        except BudgetExceededError:
            prediction = None  # retries used up the room: the call stops, nothing above the cap is sent
        finally:
            api.close()
        stats = endpoint.stats.snapshot()
    received = stats["images_received"]
    assert stats["faults"]["server_error"] > 0  # the faults happened, and were retried
    assert received > N or prediction is None
    assert received <= CAP, f"{variant}: {received} images reached the server under max_queries={CAP}"
    assert received == api.spent.queries, f"{variant}: the SDK sent {received - api.spent.queries} images by itself"
    assert billed_in_log(api) == pytest.approx(received)
    if prediction is not None:
        assert prediction.queries == N and len(prediction.logs) == N


def test_a_cap_reached_mid_batch_keeps_every_billed_attempt_in_the_log():
    """The dispatcher itself: a batch that fails on the cap after billed attempts records them
    (before the fix the unfinished samples' records said 0 and the log under-counted)."""
    with emulate("google", protocol="rest", classifier=two_labels, faults={"server_error": 1.0}) as endpoint:
        api = RobustAPI(make("google-rest", endpoint), log=False, max_queries=10, batch_size=4, concurrency=1,
                        retry=FAST_RETRY, rate_limit=math.inf)
        with pytest.raises(BudgetExceededError):
            api.predict(np.zeros((28, 28), np.float32), N=8, noise_sd=0.25)
        received = endpoint.stats["images_received"]
    # the first batch of 4 is sent twice (the call's hold of 8), its third attempt does not
    # fit under 10: 8 images on the wire, all failed, all billed, the call stops
    assert received == api.spent.queries == 8
    assert billed_in_log(api) == pytest.approx(8)
    (call,) = list(api.log)
    assert len(call.records) == 4 and all(record.error for record in call.records)
    assert [record.cost_usd for record in call.records] == pytest.approx([2 * PRICE] * 4)


@pytest.mark.parametrize("mode", ["legacy", "standard", "adaptive"])
def test_aws_retry_environment_variables_do_not_turn_botocore_retries_back_on(monkeypatch, mode):
    monkeypatch.setenv("AWS_RETRY_MODE", mode)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    images = np.zeros((1, 28, 28, 1), np.float32)
    for fault in ("server_error", "throttle"):
        with emulate("aws", classifier=two_labels, faults={fault: 1.0}) as endpoint:
            with pytest.raises(TransientProviderError):
                make("aws", endpoint).send(images)
            assert endpoint.stats["requests"] == 1, (mode, fault)


def test_an_aws_config_file_does_not_turn_botocore_retries_back_on(monkeypatch, tmp_path):
    config = tmp_path / "aws-config"
    config.write_text("[default]\nretry_mode = legacy\nmax_attempts = 7\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    with emulate("aws", classifier=two_labels, faults={"server_error": 1.0}) as endpoint:
        with pytest.raises(TransientProviderError):
            make("aws", endpoint).send(np.zeros((1, 28, 28, 1), np.float32))
        assert endpoint.stats["requests"] == 1


def test_google_grpc_channels_are_built_without_retries(monkeypatch):
    """The TLS transport's own channel (no emulator can terminate TLS here): the options it
    is created with turn gRPC retries off."""
    from google.api_core import grpc_helpers
    from google.auth.credentials import AnonymousCredentials

    seen = {}

    def fake_create_channel(target, **kwargs):
        seen["target"], seen["options"] = target, dict(kwargs.get("options") or ())
        return grpc_helpers.grpc.insecure_channel("127.0.0.1:9")

    monkeypatch.setattr(grpc_helpers, "create_channel", fake_create_channel)
    GoogleVisionProvider(endpoint="grpcs://vision.example.test:443", credentials=AnonymousCredentials())
    assert seen["options"].get("grpc.enable_retries") == 0


def test_clarifai_grpc_channels_carry_no_retry_policy(monkeypatch):
    import grpc

    seen = []
    real_secure, real_insecure = grpc.secure_channel, grpc.insecure_channel

    def secure(target, credentials, options=None, **kwargs):
        seen.append(dict(options or ()))
        return real_secure(target, credentials, options=options, **kwargs)

    def insecure(target, options=None, **kwargs):
        seen.append(dict(options or ()))
        return real_insecure(target, options=options, **kwargs)

    monkeypatch.setattr(grpc, "secure_channel", secure)
    monkeypatch.setattr(grpc, "insecure_channel", insecure)
    ClarifaiProvider(pat="pat-for-tests")  # the public endpoint, over TLS
    ClarifaiProvider(endpoint="grpcs://127.0.0.1:9", pat="pat-for-tests")
    ClarifaiProvider(endpoint="grpc://127.0.0.1:9", pat="pat-for-tests")
    assert len(seen) == 3
    for options in seen:
        assert options.get("grpc.enable_retries") == 0 and "grpc.service_config" not in options
