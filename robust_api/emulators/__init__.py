"""Local emulators of the cloud vision APIs, for testing adapters through the official clients.

Each emulator is a server on a loopback port that speaks one provider's wire protocol, backed
by a local classifier (the bundled Fashion-MNIST CNN by default, or an ImageNet classifier with
``model="efficientnet-lite2"``), with fault injection::

    from robust_api.emulators import emulate

    with emulate("aws", faults={"throttle": 0.1}, seed=1) as endpoint:
        client = boto3.client("rekognition", endpoint_url=endpoint, ...)
        ...
        print(endpoint.stats.snapshot())

===========  =============================  ================================================
name         protocols (default first)      endpoint string
===========  =============================  ================================================
google       "rest", "grpc"                 ``http://127.0.0.1:PORT`` / ``grpc://127.0.0.1:PORT``
aws          "json" (Rekognition JSON 1.1)  ``http://127.0.0.1:PORT``
azure        "rest" (v3.2 and v4.0 routes)  ``http://127.0.0.1:PORT``
clarifai     "grpc", "json"                 ``grpc://127.0.0.1:PORT`` / ``http://127.0.0.1:PORT``
http         "rest"                         ``http://127.0.0.1:PORT/predict``
===========  =============================  ================================================

Credentials (``api_key=None`` accepts any non-empty credential where the service needs one;
``api_key="K"`` requires exactly K); a missing or wrong one gets the service's auth failure:

* google: nothing required by default; with K, header ``x-goog-api-key: K`` or ``?key=K``
  (gRPC: metadata ``x-goog-api-key``). Failure: HTTP 403 PERMISSION_DENIED / gRPC PERMISSION_DENIED.
* aws: an ``Authorization`` header; with K, ``Credential=K/`` in it (the access key id).
  Failure: HTTP 400 ``{"__type": "UnrecognizedClientException"}``.
* azure: ``Ocp-Apim-Subscription-Key``. Failure: HTTP 401 ``{"error": {"code": "401", ...}}``.
* clarifai: metadata / header ``authorization: Key <x>``. Failure: top-level status 11008
  CONN_KEY_INVALID (not an exception; the JSON gateway also sets HTTP 401).
* http: nothing by default; with K, ``Authorization: Bearer K``. Failure: HTTP 401.

Faults (``faults={kind: p}`` or ``fail_rate`` split evenly over the supported kinds):

==============  ==============================  ======================================================
kind            HTTP protocols                  gRPC protocols
==============  ==============================  ======================================================
throttle        google 429 RESOURCE_EXHAUSTED,  google RESOURCE_EXHAUSTED; clarifai status 11005
                aws 400 ThrottlingException,    CONN_THROTTLED (gRPC OK). Clarifai JSON: HTTP 429
                azure 429, http 429             with status 11005. ``Retry-After`` when retry_after_s
server_error    google 503, aws 500             google UNAVAILABLE; clarifai UNAVAILABLE (a
                InternalServerError, azure 500  ClarifaiChannel retries it: 5 requests arrive;
                InternalServerError, http 503   robust_api's adapter does not). Clarifai JSON:
                                                HTTP 500, status 98004
timeout         sleep ``hang_s``, then answer   same
malformed       200 with truncated JSON         bytes that do not deserialize (client: INTERNAL)
image_error     google: ``{"error": {"code": 14}}`` in that image's slot; clarifai: that output's
                status 21354 MODEL_BUSY_PLEASE_RETRY, top-level 10010 MIXED_STATUS
==============  ==============================  ======================================================

A request passes, in order: auth check, rate limit, the request-fault draw, the request limits
(image count), then per image the image-fault draw, the image limits and the classifier.
``stats.images_received`` counts the images of every request that reached the fault draw
(faulted ones included): what the service would bill, for checking a client's budget.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

from ..errors import MissingDependencyError
from ._core import (
    EMULATORS,
    FAULT_KINDS,
    PROTOCOLS,
    REQUEST_FAULT_KINDS,
    EmulatorConfig,
    EmulatorStats,
    Endpoint,
    Runtime,
    supported_faults,
)

__all__ = [
    "emulate",
    "start",
    "Endpoint",
    "EmulatorStats",
    "EMULATORS",
    "PROTOCOLS",
    "FAULT_KINDS",
    "REQUEST_FAULT_KINDS",
    "supported_faults",
]

logger = logging.getLogger("robust_api.emulators")

_MODULES = {"google": "google", "aws": "aws", "azure": "azure", "clarifai": "clarifai", "http": "generic"}
_PIP = {
    ("google", "rest"): "'robust-api[emulators]'",
    ("google", "grpc"): "'robust-api[emulators]'",
    ("clarifai", "grpc"): "'robust-api[emulators]'",
    ("clarifai", "json"): "'robust-api[emulators]'",
}


def start(name: str, *, classifier: Any = None, latency_ms: float = 0.0, fail_rate: float = 0.0,
          faults: Optional[Mapping[str, float]] = None, seed: Any = 0, host: str = "127.0.0.1", port: int = 0,
          protocol: Optional[str] = None, api_key: Optional[str] = None, rate_limit: Optional[float] = None,
          retry_after_s: Optional[float] = None, hang_s: float = 10.0, top_k: int = 10,
          model: Optional[str] = None, min_score: Optional[float] = None) -> Endpoint:
    """Start an emulator in background threads and return its :class:`Endpoint`.

    Takes the same arguments as :func:`emulate`. The server runs until ``endpoint.stop()``
    (or until the process exits: its threads are daemons).

    Raises:
        InvalidParameterError: a bad option (unknown name, protocol or fault kind, a host
            that is not loopback, rates out of range ...).
        MissingDependencyError: the emulator needs a package that is not installed (for
            ``model=``, the weights package of the ``[imagenet]`` extra).
        OSError: the port could not be bound.
    """
    config = EmulatorConfig.build(
        name, classifier=classifier, latency_ms=latency_ms, fail_rate=fail_rate, faults=faults, seed=seed,
        host=host, port=port, protocol=protocol, api_key=api_key, rate_limit=rate_limit,
        retry_after_s=retry_after_s, hang_s=hang_s, top_k=top_k, model=model, min_score=min_score,
    )
    try:
        module = importlib.import_module(f"{__name__}.{_MODULES[config.name]}")
        runtime = Runtime(config)
        bound_port, stopper = module.serve(config, runtime)
    except MissingDependencyError:
        raise  # already names what to install (e.g. the [imagenet] extra for model=)
    except ImportError as exc:
        if (exc.name or "").startswith("robust_api"):
            raise  # our own import failed: a bug, not a missing dependency
        hint = _PIP.get((config.name, config.protocol))
        raise MissingDependencyError(
            f"the {config.name} emulator ({config.protocol}) needs a package that is not installed "
            f"({exc.name})" + (f". Install it with: pip install {hint}" if hint else "")
        ) from exc
    netloc = f"[{config.host}]:{bound_port}" if ":" in config.host else f"{config.host}:{bound_port}"
    scheme = "grpc" if config.protocol == "grpc" else "http"
    url = f"{scheme}://{netloc}" + ("/predict" if config.name == "http" else "")
    endpoint = Endpoint(url, name=config.name, protocol=config.protocol, host=config.host, port=bound_port,
                        stats=runtime.stats, stopper=stopper, stopped=runtime.stopped)
    logger.info("%s emulator (%s) listening at %s", config.name, config.protocol, url)
    return endpoint


@contextmanager
def emulate(name: str, *, classifier: Any = None, latency_ms: float = 0.0, fail_rate: float = 0.0,
            faults: Optional[Mapping[str, float]] = None, seed: Any = 0, host: str = "127.0.0.1", port: int = 0,
            protocol: Optional[str] = None, api_key: Optional[str] = None, rate_limit: Optional[float] = None,
            retry_after_s: Optional[float] = None, hang_s: float = 10.0, top_k: int = 10,
            model: Optional[str] = None, min_score: Optional[float] = None) -> Iterator[Endpoint]:
    """Run an emulator for the duration of a ``with`` block.

    Args:
        name: "google", "aws", "azure", "clarifai" or "http" (see :data:`EMULATORS`).
        classifier: the backing classifier: None for the bundled Fashion-MNIST CNN, a
            :class:`~robust_api.providers.base.Provider` answering ``{"labels": [{"name",
            "score"}, ...]}``, or a callable ``images float32 [B, H, W, C] -> list of [(name,
            score), ...]``. Each image is classified on its own, after conversion to the
            classifier's ``input_shape`` (C, H, W) when it has one (box-filter resize).
        latency_ms: sleep this long before every answer.
        fail_rate: probability that a request gets a fault, split evenly over the kinds the
            emulator supports (for google and clarifai, "image_error" takes its share per image).
        faults: per-kind probabilities instead of ``fail_rate``, e.g. ``{"throttle": 0.05,
            "timeout": 0.01}``; kinds from :data:`FAULT_KINDS`, each in [0, 1], sum ≤ 1.
        seed: seed of the ``random.Random`` that draws faults (one draw per request, in the
            order requests arrive; then one per image for "image_error").
        host: 127.0.0.1, ::1 or localhost (localhost binds 127.0.0.1); nothing else.
        port: TCP port, 0 for a free one.
        protocol: "rest"/"grpc" for google, "grpc"/"json" for clarifai; None for the default.
        api_key: None accepts any non-empty credential (and none for google and http); a
            string requires exactly that credential (see the module documentation).
        rate_limit: requests per second accepted (token bucket, bursts of a tenth of a second); requests above it get the
            throttle answer and are counted in ``stats.rate_limited``.
        retry_after_s: when set, throttle answers carry ``Retry-After`` (HTTP) / trailing
            metadata ``retry-after`` (google gRPC).
        hang_s: how long the "timeout" fault sleeps before answering.
        top_k: the most labels per image (further capped by the request's own maximum).
        model: instead of ``classifier``, an ImageNet classifier by name:
            "efficientnet-lite0", "efficientnet-lite1" or "efficientnet-lite2" (needs
            ``pip install 'robust-api[imagenet]'``). It is loaded once per process, on the CPU,
            when the emulator starts; each image is decoded to RGB at its own size, and the
            answer holds the softmax scores of the best classes, named the provider's way
            (``emulators._core.provider_label``: Google "Tabby", AWS "Tiger Cat", Azure and
            Clarifai "tabby"). The same image bytes always get the same answer.
        min_score: leave out labels scoring below this (in [0, 1]), after ``top_k``; an image
            with no label left gets the service's empty answer. None: the provider's usual
            floor with ``model`` (google and azure 0.5, none for aws, clarifai and http, whose
            requests carry their own threshold: see ``emulators._core.IMAGENET_MIN_SCORE``),
            and no floor for other classifiers.

    Yields:
        The :class:`Endpoint`; the server is stopped when the block exits (also on
        KeyboardInterrupt, so ``with emulate(...) as e: e.wait()`` serves until Ctrl-C).
    """
    endpoint = start(
        name, classifier=classifier, latency_ms=latency_ms, fail_rate=fail_rate, faults=faults, seed=seed,
        host=host, port=port, protocol=protocol, api_key=api_key, rate_limit=rate_limit,
        retry_after_s=retry_after_s, hang_s=hang_s, top_k=top_k, model=model, min_score=min_score,
    )
    try:
        yield endpoint
    finally:
        endpoint.stop()
