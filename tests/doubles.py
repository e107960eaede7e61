"""Test doubles shared by the test modules (import as ``from doubles import ...``)."""

import json
import random
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from robust_api.errors import CredentialsError, TransientProviderError
from robust_api.optional import has_torch
from robust_api.providers.base import Provider, QueryFailure

#: PyTorch (and safetensors) installed: the ``[torch]`` extra. Without it, tests that need it skip.
HAS_TORCH = has_torch()
TORCH_SKIP_REASON = "needs PyTorch: pip install 'robust-api[torch]'"


def skip_without_torch() -> None:
    """Skip the calling test or fixture when PyTorch is not installed."""
    if not HAS_TORCH:
        pytest.skip(TORCH_SKIP_REASON)


def halfspace_scores(images: np.ndarray) -> list:
    """A torch-free classifier for the emulators (``classifier=``): every image gets the
    classes "A" and "B", "A" first with score 0.9 iff pixel (0, 0, 0) < 0.5."""
    return [[("A", 0.9), ("B", 0.1)] if halfspace_label(x) == "A" else [("B", 0.9), ("A", 0.1)] for x in images]


def bundled_classifier():
    """The bundled Fashion-MNIST CNN as a LocalProvider on the CPU (skips without PyTorch): the
    reference answers of the emulators, which serve it."""
    skip_without_torch()
    from robust_api.providers.local import LocalProvider

    return LocalProvider(device="cpu")


#: Every variable through which a test (or a child process) could find real cloud credentials
#: or endpoints on the machine.
CLOUD_ENV_VARS = (
    "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "ROBUST_API_GOOGLE_ENDPOINT",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_REKOGNITION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN", "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "ROBUST_API_AWS_ENDPOINT",
    "AZURE_COMPUTER_VISION_ENDPOINT", "AZURE_COMPUTER_VISION_SUBSCRIPTION_KEY",
    "CLARIFAI_PAT", "CLARIFAI_API_KEY", "CLARIFAI_API_BASE", "CLARIFAI_GRPC_BASE", "ROBUST_API_CLARIFAI_ENDPOINT",
    "ROBUST_API_HTTP_URL",
)


#: Every cloud adapter variant the emulators serve: variant → (emulator name, protocol).
EMULATOR_VARIANTS = {
    "google-rest": ("google", "rest"),
    "google-grpc": ("google", "grpc"),
    "aws": ("aws", None),
    "azure-tag": ("azure", None),
    "azure-analyze": ("azure", None),
    "azure-v4": ("azure", None),
    "clarifai-grpc": ("clarifai", "grpc"),
    "clarifai-json": ("clarifai", "json"),
    "http-raw": ("http", None),
    "http-json": ("http", None),
}


def no_cloud_credentials(monkeypatch, folder) -> None:
    """Hide every cloud credential and endpoint of the machine from this test (variables, the
    AWS and gcloud configuration files, which point into the empty ``folder``), and keep the
    SDKs from probing a metadata server."""
    for name in CLOUD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(folder / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-aws-credentials"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(folder / "no-gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    try:
        import google.auth.compute_engine._metadata as gce_metadata
    except ImportError:
        return
    monkeypatch.setattr(gce_metadata, "_NO_GCE_CHECK", True)  # the variable above, as read at import


def halfspace_label(x: np.ndarray) -> str:
    """The half-space base classifier on one pixel: "A" iff pixel (0, 0, 0) < 0.5."""
    return "A" if float(x[0, 0, 0]) < 0.5 else "B"


class Counting:
    """The test double of a callable provider: labels a batch and counts what it was asked.

    Args:
        label_of: the base classifier on one image float32 [H, W, C] (default: the half-space one).
        labels_of: instead, one on a whole batch [B, H, W, C] → B labels (vectorized, for the
            soundness tests' millions of queries).
        keep: keep a copy of every batch in ``batches``.

    Attributes:
        calls, images: counts. low, high: the smallest and largest pixel value sent.
    """

    def __init__(self, label_of=None, labels_of=None, keep=False):
        self.label_of = label_of or halfspace_label
        self.labels_of = labels_of
        self.keep = keep
        self.batches = []
        self.calls = 0
        self.images = 0
        self.low, self.high = np.inf, -np.inf

    def __call__(self, batch):
        assert batch.dtype == np.float32 and batch.ndim == 4
        self.calls += 1
        self.images += len(batch)
        self.low = min(self.low, float(batch.min()))
        self.high = max(self.high, float(batch.max()))
        if self.keep:
            self.batches.append(np.array(batch))
        if self.labels_of is not None:
            return self.labels_of(batch)
        return [self.label_of(x) for x in batch]


class FakeProvider(Provider):
    """The test double of a provider (``send`` + pure ``parse``), for every test that needs one.

    Each image is answered ``{"label": label_of(image)}`` (None: an answer without a label; a
    QueryFailure: that failure), unless a fault is injected. It counts and measures what it was sent.

    Args:
        label_of: the base classifier, float32 [H, W, C] → label (default: the half-space one).
        identity, price, batch, concurrency: ``identity``, ``cost_per_query_usd``,
            ``max_batch_size`` and ``default_concurrency``. allow_high_cost: as on a Provider.
        fail_rate: probability that a request raises a TransientProviderError of one of ``kinds``.
        image_fail_rate: probability that one image of an answered request is a transient
            QueryFailure. seed: of those draws.
        latency_s: sleep per request. fatal_after: requests answered before every later one
            raises CredentialsError naming ``secret`` (which ``redact`` hides).
        keep: keep a copy of every request's images in ``batches``.

    Attributes:
        requests, images_sent, images_answered: counts. in_flight, max_in_flight: requests at
        once. low, high: the smallest and largest pixel value sent.
    """

    def __init__(self, label_of=None, *, identity="test:fake", price=0.0, batch=64, concurrency=1,
                 allow_high_cost=False, fail_rate=0.0, image_fail_rate=0.0,
                 kinds=("throttled", "server", "timeout", "malformed"), latency_s=0.0, seed=0, fatal_after=None,
                 secret="sk-very-secret", keep=False):
        self.label_of = label_of or halfspace_label
        self.identity = identity
        self.cost_per_query_usd = price
        self.max_batch_size = batch
        self.default_concurrency = concurrency
        self.allow_high_cost = allow_high_cost
        self.fail_rate, self.image_fail_rate, self.kinds = fail_rate, image_fail_rate, kinds
        self.latency_s, self.fatal_after, self.secret = latency_s, fatal_after, secret
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = self.images_sent = self.images_answered = 0
        self.in_flight = self.max_in_flight = 0
        self.low, self.high = np.inf, -np.inf
        self.keep, self.batches = keep, []

    def _draw(self) -> float:
        with self.lock:
            return self.rng.random()

    def send(self, images):
        with self.lock:
            self.requests += 1
            self.images_sent += len(images)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.low = min(self.low, float(images.min()))
            self.high = max(self.high, float(images.max()))
            if self.keep:
                self.batches.append(np.array(images))
            request_number = self.requests
        try:
            if self.latency_s:
                time.sleep(self.latency_s)
            if self.fatal_after is not None and request_number > self.fatal_after:
                raise CredentialsError(f"key {self.secret} was refused")
            if self._draw() < self.fail_rate:
                kind = self.kinds[int(self._draw() * len(self.kinds))]
                raise TransientProviderError(kind, f"injected {kind}", retry_after=None)
            answers = []
            for image in images:
                if self._draw() < self.image_fail_rate:
                    answers.append(QueryFailure("server", "injected per-image failure"))
                else:
                    answer = self.label_of(image)  # a QueryFailure stands for a refused image
                    answers.append(answer if isinstance(answer, QueryFailure) else {"label": answer})
            with self.lock:
                self.images_answered += sum(not isinstance(a, QueryFailure) for a in answers)
            return answers
        finally:
            with self.lock:
                self.in_flight -= 1

    def parse(self, raw):
        return raw["label"]

    def redact(self, text):
        return text.replace(self.secret, "***")


@contextmanager
def tiny_http_server(answer):
    """An HTTP server on 127.0.0.1 for any route and method (GET, POST, PUT).

    ``answer(method, path, headers) -> (status, body)``: a dict or list body is sent as JSON,
    a str as text/plain. The request body is read (Content-Length or chunked) and dropped.
    Yields the base URL ``http://127.0.0.1:PORT``.
    """

    class Handler(BaseHTTPRequestHandler):
        def _reply(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    self.rfile.read(size + 2)
                    if size == 0:
                        break
            status, body = answer(self.command, self.path, self.headers)
            text = isinstance(body, str)
            data = (body if text else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = do_PUT = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
