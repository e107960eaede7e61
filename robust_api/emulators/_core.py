"""Shared machinery of the emulators: configuration checks, statistics, fault drawing,
the rate limiter, image decoding and the backing classifier.

Nothing here speaks a wire protocol; the protocol modules (``google``, ``aws``, ``azure``,
``clarifai``, ``generic``) build on it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import InvalidParameterError
from ..optional import require_torch

__all__ = [
    "EMULATORS",
    "PROTOCOLS",
    "FAULT_KINDS",
    "REQUEST_FAULT_KINDS",
    "EmulatorStats",
    "Endpoint",
    "EmulatorConfig",
    "Runtime",
    "ImageProblem",
    "open_image",
    "format_retry_after",
    "label_id",
    "IMAGENET_MIN_SCORE",
    "provider_label",
    "truncate_body",
]

logger = logging.getLogger("robust_api.emulators")

#: Names of the emulated services.
EMULATORS: tuple[str, ...] = ("google", "aws", "azure", "clarifai", "http")

#: Protocols each emulator speaks; the first one is the default.
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "google": ("rest", "grpc"),
    "aws": ("json",),
    "azure": ("rest",),
    "clarifai": ("grpc", "json"),
    "http": ("rest",),
}

#: Fault kinds drawn once per request.
REQUEST_FAULT_KINDS: tuple[str, ...] = ("throttle", "server_error", "timeout", "malformed")
#: Every fault kind; "image_error" is drawn once per image (google and clarifai only).
FAULT_KINDS: tuple[str, ...] = REQUEST_FAULT_KINDS + ("image_error",)
_IMAGE_FAULT_EMULATORS = ("google", "clarifai")

#: The score floor (in [0, 1]) each emulator applies by default when an ImageNet model backs it
#: (``model=``): labels scoring below it are left out of the answer, so a photo the model is
#: unsure of gets an empty answer, as from the real service. A request's own threshold
#: (Rekognition ``MinConfidence``, Clarifai ``min_value``) applies on top.
#:
#: * google: LABEL_DETECTION takes no threshold. Google's own Cloud Vision labeler client
#:   (Firebase ML, ``FIRVisionCloudImageLabelerOptions``) documents a default confidence
#:   threshold of 0.5 and at most 20 labels [R: firebase.google.com reference]; 0.5 here.
#: * aws: no floor of its own: the request's ``MinConfidence`` decides (55 when the request
#:   omits it: the botocore service model, /work/shared/PROVIDERS.md §2). robust_api's adapter
#:   sends ``min_confidence`` (default 0), so the vote sees the model's real top label.
#: * azure: v3.2 ``/tag`` and v4 ``tags`` take no threshold and no documented floor was found;
#:   0.5, as Google (an assumption: the published examples show tags from ≈0.99 down to ≈0.7).
#: * clarifai: the request's ``output_config.min_value`` decides (0 = none), and
#:   ``max_concepts`` caps the count (docs.clarifai.com, "Prediction parameters").
#: * http: a self-hosted model server: no floor.
IMAGENET_MIN_SCORE: dict[str, float] = {"google": 0.5, "aws": 0.0, "azure": 0.5, "clarifai": 0.0, "http": 0.0}


def provider_label(class_name: str, provider: str) -> str:
    """The label string ``provider`` would give the ImageNet class ``class_name``.

    The first lemma of the class name (``"tabby, tabby cat"`` → ``"tabby"``), written the
    provider's way: Google capitalises the first letter (``"Tabby"``, ``"German shepherd"``),
    Rekognition capitalises every word (``"German Shepherd"``), Azure and Clarifai write lower
    case (``"german shepherd"``), and the generic ``http`` server keeps the lemma as it is.
    """
    lemma = class_name.split(",")[0].strip() or class_name.strip()
    if provider == "google":
        return lemma[:1].upper() + lemma[1:]
    if provider == "aws":
        return " ".join(word[:1].upper() + word[1:] for word in lemma.split(" "))
    if provider in ("azure", "clarifai"):
        return lemma.lower()
    return lemma

_LOOPBACK = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1", "[::1]": "::1"}


def supported_faults(name: str) -> tuple[str, ...]:
    """The fault kinds the emulator ``name`` can inject."""
    return FAULT_KINDS if name in _IMAGE_FAULT_EMULATORS else REQUEST_FAULT_KINDS


# --------------------------------------------------------------------------- statistics


class EmulatorStats:
    """Thread-safe counters of one running emulator.

    Attributes (each read under the lock):
        requests: requests received on a served route (every attempt of a client retry
            counts; auth failures, rate-limited and faulted requests included).
        images: images run through the classifier.
        images_received: images carried by the requests that passed the auth check, the
            emulated rate limit and parsing — every attempt of a client retry counts again,
            faulted attempts included. This is what a real service would bill (less the
            throttled ones): tests compare it with the client's budget.
        faults: :class:`collections.Counter` of injected faults by kind ("throttle",
            "server_error", "timeout", "malformed" per request; "image_error" per image).
        rate_limited: requests refused by the emulated ``rate_limit``.
        auth_failures: requests refused for a missing or wrong credential.
        rejected: requests (or images) refused by the provider's input limits
            (too many images, too large, undecodable, bad dimensions, bad request body).

    ``stats.snapshot()`` returns all of them as a plain dict, and ``stats["requests"]``
    reads one key of a fresh snapshot.
    """

    _KEYS = ("requests", "images", "images_received", "faults", "rate_limited", "auth_failures", "rejected")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._images = 0
        self._images_received = 0
        self._faults: Counter = Counter()
        self._rate_limited = 0
        self._auth_failures = 0
        self._rejected = 0

    # recording (used by the servers)
    def add_request(self) -> None:
        """Count one received request."""
        with self._lock:
            self._requests += 1

    def add_images(self, n: int = 1) -> None:
        """Count ``n`` classified images."""
        with self._lock:
            self._images += n

    def add_images_received(self, n: int) -> None:
        """Count ``n`` images carried by one request that reached the fault draw."""
        with self._lock:
            self._images_received += n

    def add_fault(self, kind: str, n: int = 1) -> None:
        """Count ``n`` injected faults of ``kind``."""
        with self._lock:
            self._faults[kind] += n

    def add_rate_limited(self) -> None:
        """Count one request refused by the emulated rate limit."""
        with self._lock:
            self._rate_limited += 1

    def add_auth_failure(self) -> None:
        """Count one request refused for its credential."""
        with self._lock:
            self._auth_failures += 1

    def add_rejected(self, n: int = 1) -> None:
        """Count ``n`` requests or images refused by the input limits."""
        with self._lock:
            self._rejected += n

    # reading
    @property
    def requests(self) -> int:
        """Requests received."""
        with self._lock:
            return self._requests

    @property
    def images(self) -> int:
        """Images classified."""
        with self._lock:
            return self._images

    @property
    def images_received(self) -> int:
        """Images carried by requests that reached the fault draw (see the class docstring)."""
        with self._lock:
            return self._images_received

    @property
    def faults(self) -> Counter:
        """Injected faults by kind (a copy)."""
        with self._lock:
            return Counter(self._faults)

    @property
    def rate_limited(self) -> int:
        """Requests refused by the emulated rate limit."""
        with self._lock:
            return self._rate_limited

    @property
    def auth_failures(self) -> int:
        """Requests refused for their credential."""
        with self._lock:
            return self._auth_failures

    @property
    def rejected(self) -> int:
        """Requests or images refused by the input limits."""
        with self._lock:
            return self._rejected

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter: ``{"requests": int, "images": int,
        "images_received": int, "faults": Counter, "rate_limited": int, "auth_failures": int,
        "rejected": int}``."""
        with self._lock:
            return {
                "requests": self._requests,
                "images": self._images,
                "images_received": self._images_received,
                "faults": Counter(self._faults),
                "rate_limited": self._rate_limited,
                "auth_failures": self._auth_failures,
                "rejected": self._rejected,
            }

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._requests = self._images = self._images_received = 0
            self._rate_limited = self._auth_failures = self._rejected = 0
            self._faults = Counter()

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return self.snapshot()[key]

    def keys(self) -> tuple[str, ...]:
        """The snapshot's keys."""
        return self._KEYS

    def __repr__(self) -> str:
        s = self.snapshot()
        s["faults"] = dict(s["faults"])
        return f"EmulatorStats({s})"


# --------------------------------------------------------------------------- endpoint


class Endpoint(str):
    """The address of a running emulator: a ``str`` equal to the URL an SDK adapter takes.

    Attributes:
        url: the same string (``http://127.0.0.1:PORT``, ``grpc://127.0.0.1:PORT`` or, for
            "http", ``http://127.0.0.1:PORT/predict``).
        name: the emulator ("google", "aws", "azure", "clarifai", "http").
        protocol: the protocol it speaks ("rest", "grpc", "json").
        host: the loopback address it is bound to; port: its TCP port.
        stats: the :class:`EmulatorStats` of this emulator.

    ``stop()`` shuts the server down (idempotent, returns promptly even while a request
    hangs); ``wait()`` blocks until it is stopped. An Endpoint is also a context manager
    that stops the server on exit.
    """

    url: str
    name: str
    protocol: str
    host: str
    port: int
    stats: EmulatorStats

    def __new__(cls, url: str, *, name: str, protocol: str, host: str, port: int, stats: EmulatorStats,
                stopper: Callable[[], None], stopped: threading.Event):
        self = super().__new__(cls, url)
        self.url = url
        self.name = name
        self.protocol = protocol
        self.host = host
        self.port = port
        self.stats = stats
        self._stopper = stopper
        self._stopped = stopped
        self._stop_lock = threading.Lock()
        return self

    def stop(self) -> None:
        """Stop the server and free its port. Safe to call more than once."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()  # wakes handlers sleeping in a hang or a latency
            try:
                self._stopper()
            finally:
                logger.info("%s emulator (%s) at %s stopped", self.name, self.protocol, self.url)

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the emulator is stopped (or ``timeout`` seconds pass).

        Returns:
            True if the emulator is stopped.
        """
        return self._stopped.wait(timeout)

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running"
        return f"Endpoint({self.url!r}, name={self.name!r}, protocol={self.protocol!r}, {state})"

    def __reduce__(self):  # a plain URL string when pickled / deep-copied
        return (str, (self.url,))


# --------------------------------------------------------------------------- configuration


def _number(value: Any, what: str, low: float = 0.0, high: float = math.inf, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise InvalidParameterError(f"{what} must be a finite number, got {value!r}")
    value = float(value)
    if not low <= value <= high:
        raise InvalidParameterError(f"{what} must be in [{low:g}, {high:g}], got {value:g}")
    return value


@dataclass
class EmulatorConfig:
    """Checked options of one emulator (see :func:`robust_api.emulators.emulate`)."""

    name: str
    protocol: str
    host: str
    port: int
    api_key: Optional[str] = field(repr=False)
    latency_s: float
    request_rates: tuple[tuple[str, float], ...]
    image_rate: float
    seed: Any
    rate_limit: Optional[float]
    retry_after_s: Optional[float]
    hang_s: float
    top_k: int
    classifier: Any = field(repr=False, default=None)
    model: Optional[str] = None
    min_score: float = 0.0

    @classmethod
    def build(cls, name: Any, *, classifier: Any = None, latency_ms: float = 0.0, fail_rate: float = 0.0,
              faults: Optional[Mapping[str, float]] = None, seed: Any = 0, host: str = "127.0.0.1",
              port: int = 0, protocol: Optional[str] = None, api_key: Optional[str] = None,
              rate_limit: Optional[float] = None, retry_after_s: Optional[float] = None,
              hang_s: float = 10.0, top_k: int = 10, model: Optional[str] = None,
              min_score: Optional[float] = None) -> "EmulatorConfig":
        """Check every option; raise :class:`~robust_api.errors.InvalidParameterError` on a bad one.

        ``min_score=None`` resolves to the provider's usual floor (:data:`IMAGENET_MIN_SCORE`)
        when ``model`` names an ImageNet classifier, else to 0 (no floor)."""
        if not isinstance(name, str) or name not in EMULATORS:
            raise InvalidParameterError(f"unknown emulator {name!r}; one of {', '.join(EMULATORS)}")
        protocols = PROTOCOLS[name]
        if protocol is None:
            protocol = protocols[0]
        if protocol not in protocols:
            raise InvalidParameterError(
                f"the {name} emulator speaks {' or '.join(map(repr, protocols))}, not {protocol!r}"
            )
        if not isinstance(host, str) or host.strip().lower() not in _LOOPBACK:
            raise InvalidParameterError(
                f"emulators bind to loopback only (127.0.0.1, ::1 or localhost), got host={host!r}"
            )
        bind_host = _LOOPBACK[host.strip().lower()]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidParameterError(f"port must be an integer in [0, 65535] (0 = any free port), got {port!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key or any(c.isspace() for c in api_key)):
            raise InvalidParameterError("api_key must be None or a non-empty string without whitespace")
        latency_s = _number(latency_ms, "latency_ms") / 1000.0
        hang = _number(hang_s, "hang_s")
        retry_after = _number(retry_after_s, "retry_after_s", allow_none=True)
        limit = _number(rate_limit, "rate_limit", allow_none=True)
        if limit is not None and limit <= 0:
            raise InvalidParameterError(f"rate_limit must be > 0 requests per second (or None), got {rate_limit!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidParameterError(f"top_k must be a positive integer, got {top_k!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, str, bytes))):
            raise InvalidParameterError(f"seed must be an int, a str or None, got {type(seed).__name__}")
        if model is not None:
            from ..models import IMAGENET_MODELS

            if not isinstance(model, str) or model not in IMAGENET_MODELS:
                raise InvalidParameterError(
                    f"unknown emulator model {model!r}; one of {', '.join(IMAGENET_MODELS)} "
                    "(or no model for the bundled Fashion-MNIST classifier)"
                )
            if classifier is not None:
                raise InvalidParameterError("give either classifier or model, not both")
        floor = _number(min_score, "min_score", 0.0, 1.0, allow_none=True)
        if floor is None:
            floor = IMAGENET_MIN_SCORE[name] if model is not None else 0.0

        kinds = supported_faults(name)
        rate = _number(fail_rate, "fail_rate", 0.0, 1.0)
        if faults is not None:
            if rate:
                raise InvalidParameterError("give either fail_rate or faults, not both")
            if not isinstance(faults, Mapping):
                raise InvalidParameterError(f"faults must be a dict kind -> probability, got {type(faults).__name__}")
            rates: dict[str, float] = {}
            for kind, p in faults.items():
                if kind not in FAULT_KINDS:
                    raise InvalidParameterError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
                if kind not in kinds:
                    raise InvalidParameterError(
                        f"the {name} emulator cannot inject {kind!r} faults (only {', '.join(kinds)})"
                    )
                rates[kind] = _number(p, f"faults[{kind!r}]", 0.0, 1.0)
            if sum(rates.values()) > 1.0 + 1e-9:
                raise InvalidParameterError(f"fault rates must sum to at most 1, got {sum(rates.values()):g}")
        else:
            rates = {kind: rate / len(kinds) for kind in kinds}
        request_rates = tuple((k, rates[k]) for k in REQUEST_FAULT_KINDS if rates.get(k, 0.0) > 0)
        return cls(
            name=name, protocol=protocol, host=bind_host, port=port, api_key=api_key, latency_s=latency_s,
            request_rates=request_rates, image_rate=rates.get("image_error", 0.0), seed=seed, rate_limit=limit,
            retry_after_s=retry_after, hang_s=hang, top_k=top_k, classifier=classifier, model=model,
            min_score=floor,
        )


def format_retry_after(seconds: float) -> str:
    """The Retry-After header value for ``seconds`` (an integer when whole, else a decimal)."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def label_id(name: str) -> str:
    """A stable identifier for a class name (used as Google ``mid`` / Clarifai concept id)."""
    return "emu_" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]


def truncate_body(body: bytes) -> bytes:
    """Cut a JSON body so that no parser accepts it (the "malformed" fault)."""
    return body[: max(1, len(body) // 2)].rstrip(b"}]") or b"{"


# --------------------------------------------------------------------------- images


class ImageProblem(Exception):
    """An image the emulator could not decode."""


@dataclass
class OpenedImage:
    """A decoded image header: the PIL image (not yet loaded), its format and size."""

    pil: Any
    format: str
    width: int
    height: int
    nbytes: int


def open_image(data: bytes) -> OpenedImage:
    """Identify an encoded image (reads the header only).

    Raises:
        ImageProblem: the bytes are not an image PIL can open.
    """
    from PIL import Image

    if not data:
        raise ImageProblem("empty image")
    try:
        pil = Image.open(io.BytesIO(data))
        fmt = (pil.format or "").upper()
        width, height = pil.size
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:  # noqa: B014
        raise ImageProblem(f"cannot decode image: {exc}") from None
    if fmt == "MPO":  # a multi-picture JPEG
        fmt = "JPEG"
    return OpenedImage(pil, fmt, width, height, len(data))


# --------------------------------------------------------------------------- classifier

_default_lock = threading.Lock()
_default_provider: Any = None


def _default_classifier() -> Any:
    global _default_provider
    with _default_lock:
        if _default_provider is None:
            from ..providers.local import LocalProvider

            _default_provider = LocalProvider(device="cpu")
            logger.debug("loaded the bundled classifier %s", _default_provider.identity)
        return _default_provider


_imagenet_lock = threading.Lock()
_imagenet_models: dict[str, tuple[Any, threading.Lock]] = {}


def _imagenet_classifier(name: str) -> tuple[Any, threading.Lock]:
    """The ImageNet classifier ``name`` on the CPU in eval mode, loaded once per process and
    shared by every emulator that names it, with the lock its forward passes run under.

    Raises:
        MissingDependencyError: the weights package is missing (the message names the
            ``[imagenet]`` extra).
    """
    with _imagenet_lock:
        entry = _imagenet_models.get(name)
        if entry is None:
            require_torch(f"the emulator model {name!r}")
            from ..models.imagenet import load_imagenet_classifier

            model = load_imagenet_classifier(name, device="cpu")
            model.eval()
            entry = _imagenet_models[name] = (model, threading.Lock())
            logger.debug("loaded the ImageNet classifier %s for the emulators", name)
        return entry


class Classifier:
    """The emulator's backing classifier: one image in, every class with its score out.

    Args:
        classifier: None (the bundled Fashion-MNIST CNN), a
            :class:`~robust_api.providers.base.Provider` whose raw answers are
            ``{"labels": [{"name", "score"}, ...]}``, or a callable
            ``images float32 [B, H, W, C] -> list of [(name, score), ...]``.
        model: instead of ``classifier``, the name of an ImageNet classifier
            (``robust_api.models.imagenet.IMAGENET_MODELS``). The image is decoded to RGB at its
            own size (a shorter side under the model's minimum, 32 px, is upscaled to it) and
            given to the model, which crops and resizes it to its input size; the scores
            are the softmax of its logits, and the class names are written the way
            ``provider`` writes labels (:func:`provider_label`; classes whose labels coincide,
            such as the dog "Cardigan" and the sweater "cardigan" in lower case, are merged and
            their probabilities added).
        provider: the emulated service ("google", "aws", ...): how ``model``'s labels are written.

    Images are classified one at a time, under a lock, so that the answer never depends on
    batching and classifiers that are not thread-safe are safe. The ImageNet models run in
    eval mode without gradients on the CPU: the same image bytes always get the same answer.
    """

    def __init__(self, classifier: Any = None, model: Optional[str] = None, provider: str = "http"):
        from ..providers.base import Provider

        self._lock = threading.Lock()
        if model is not None:
            from ..models.imagenet import MIN_INPUT_SIDE

            self.kind = "imagenet"
            self.target, self._lock = _imagenet_classifier(model)
            self.input_shape = None
            self.min_side = MIN_INPUT_SIDE
            labels = [provider_label(str(name), provider) for name in self.target.class_names]
            self.label_names = list(dict.fromkeys(labels))  # first-seen order, each label once
            position = {label: i for i, label in enumerate(self.label_names)}
            self.label_of_class = np.array([position[label] for label in labels], dtype=np.int64)
            return
        if classifier is None:
            classifier = _default_classifier()
        if isinstance(classifier, Provider):
            self.kind = "provider"
        elif callable(classifier):
            self.kind = "callable"
        else:
            raise InvalidParameterError(
                "classifier must be None, a robust_api Provider or a callable images -> [(name, score), ...], "
                f"got {type(classifier).__name__}"
            )
        from ..providers.local import LocalProvider

        if isinstance(classifier, LocalProvider):
            self.kind = "local"
        shape = getattr(classifier, "input_shape", None)
        if shape is not None:
            try:
                shape = tuple(int(v) for v in shape)
            except (TypeError, ValueError):
                shape = ()
            if len(shape) != 3 or min(shape) < 1 or shape[0] not in (1, 3, 4):
                raise InvalidParameterError(
                    "classifier.input_shape must be (C, H, W) with C in 1, 3, 4, "
                    f"got {getattr(classifier, 'input_shape')!r}"
                )
        self.input_shape: Optional[tuple[int, int, int]] = shape
        self.target = classifier

    def prepare(self, image: OpenedImage) -> np.ndarray:
        """Decode ``image`` to float32 [H, W, C] in [0, 1], converted and box-resized to the
        classifier's ``input_shape`` when it has one.

        Raises:
            ImageProblem: the image data is truncated or corrupt.
        """
        from PIL import Image

        pil = image.pil
        try:
            pil.seek(0)
            pil.load()
            if self.input_shape is not None:
                channels, height, width = self.input_shape
                mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
            elif self.kind == "imagenet":  # RGB at the image's own size (alpha dropped, gray replicated)
                height = width = None
                mode = "RGB"
            else:
                height = width = None
                mode = "L" if pil.getbands() in (("L",), ("1",), ("I",), ("F",), ("L", "A"), ("P",)) and \
                    (pil.mode != "P" or _palette_is_gray(pil)) else "RGB"
            if pil.mode in ("I", "I;16", "I;16B", "I;16L", "F") and mode != "F":
                arr = np.asarray(pil, dtype=np.float32)
                scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
                pil = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8), "L")
            pil = pil.convert(mode)
            if height is not None and pil.size != (width, height):
                pil = pil.resize((width, height), Image.Resampling.BOX)
            if self.kind == "imagenet" and min(pil.size) < self.min_side:
                # the model refuses sides below MIN_INPUT_SIDE; a service labels small images
                # too, so upscale them (bilinear, aspect ratio kept) to that shorter side
                scale = self.min_side / min(pil.size)
                pil = pil.resize((max(self.min_side, round(pil.size[0] * scale)),
                                  max(self.min_side, round(pil.size[1] * scale))), Image.Resampling.BILINEAR)
            array = np.asarray(pil, dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # noqa: B014
            raise ImageProblem(f"cannot decode image: {exc}") from None
        if array.ndim == 2:
            array = array[:, :, None]
        return np.ascontiguousarray(array)

    def classify(self, image: np.ndarray) -> list[tuple[str, float]]:
        """Every (name, score) the classifier gives one image [H, W, C], best first."""
        batch = image[None]
        with self._lock:
            if self.kind == "imagenet":
                pairs = self._imagenet(batch)
            elif self.kind == "local":
                pairs = self._local(batch)
            elif self.kind == "provider":
                pairs = self._provider(batch)
            else:
                pairs = self._callable(batch)
        indexed = sorted(enumerate(pairs), key=lambda item: (-item[1][1], item[0]))
        return [pair for _, pair in indexed]

    def _local(self, batch: np.ndarray) -> list[tuple[str, float]]:
        import torch

        from ..torch_utils import nhwc_to_tensor

        provider = self.target
        with torch.inference_mode():
            logits = provider.model(nhwc_to_tensor(batch, provider.device))
            probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().tolist()
        names = provider.class_names or [str(i) for i in range(len(probabilities))]
        return [(str(n), float(p)) for n, p in zip(names, probabilities)]

    def _imagenet(self, batch: np.ndarray) -> list[tuple[str, float]]:
        import torch

        from ..torch_utils import nhwc_to_tensor

        with torch.inference_mode():
            logits = self.target(nhwc_to_tensor(batch, "cpu"))
            probabilities = torch.softmax(logits.double(), dim=1)[0].numpy()
        merged = np.zeros(len(self.label_names), dtype=np.float64)
        np.add.at(merged, self.label_of_class, probabilities)
        return [(name, float(p)) for name, p in zip(self.label_names, merged)]

    def _provider(self, batch: np.ndarray) -> list[tuple[str, float]]:
        answers = list(self.target.send(batch))
        if len(answers) != 1:
            raise RuntimeError(f"{self.target!r} returned {len(answers)} answers for one image")
        return _pairs(answers[0], repr(self.target))

    def _callable(self, batch: np.ndarray) -> list[tuple[str, float]]:
        answers = self.target(batch)
        if isinstance(answers, np.ndarray):
            answers = answers.tolist()
        answers = list(answers)
        if len(answers) != 1:
            raise RuntimeError(f"classifier returned {len(answers)} answers for one image")
        return _pairs(answers[0], "classifier")


def _palette_is_gray(pil: Any) -> bool:
    try:
        palette = pil.getpalette() or []
    except Exception:  # pragma: no cover - exotic palettes
        return False
    triples = [palette[i:i + 3] for i in range(0, len(palette), 3)]
    return all(t[0] == t[1] == t[2] for t in triples if len(t) == 3)


def _pairs(answer: Any, who: str) -> list[tuple[str, float]]:
    """(name, score) pairs from a raw ``{"labels": [...]}`` answer or a list of pairs / dicts."""
    if isinstance(answer, Mapping):
        if "labels" not in answer:
            raise RuntimeError(f"{who} answered {answer!r:.80}, not {{'labels': [...]}}")
        answer = answer["labels"]
    if isinstance(answer, (str, bytes)) or not isinstance(answer, Sequence):
        raise RuntimeError(f"{who} answered {answer!r:.80}; expected a list of (name, score)")
    pairs = []
    for item in answer:
        if isinstance(item, Mapping):
            name = item.get("name", item.get("label"))
            score = item.get("score", item.get("confidence"))
        else:
            name, score = item
        pairs.append((str(name), float(score)))
    return pairs


# --------------------------------------------------------------------------- rate limiter


class RateLimiter:
    """Token bucket: ``rate`` requests per second on average, with bursts of
    ``max(2, ceil(rate / 10))`` (a tenth of a second's worth) — the way API gateways usually
    enforce a per-second quota, so evenly spaced clients are not throttled by scheduling jitter."""

    def __init__(self, rate: float):
        self.rate = float(rate)
        self.capacity = float(max(2, math.ceil(rate / 10.0)))
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Take a token if one is there now; False when the request is over the limit."""
        now = time.monotonic()
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


# --------------------------------------------------------------------------- runtime


def counted_and_delayed(runtime: "Runtime", handle):
    """The request handler of an HTTP emulator: count the request, let ``handle`` answer it,
    then wait the configured latency (None: the emulator stopped meanwhile, drop the answer)."""

    def app(request):
        runtime.stats.add_request()
        response = handle(request)
        if response is not None and not runtime.delay():
            return None
        return response

    return app


class Runtime:
    """State shared by the request handlers of one emulator: config, stats, fault RNG,
    rate limiter, classifier and the stop event."""

    def __init__(self, config: EmulatorConfig):
        self.config = config
        self.stats = EmulatorStats()
        self.stopped = threading.Event()
        self.classifier = Classifier(config.classifier, config.model, config.name)
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._limiter = RateLimiter(config.rate_limit) if config.rate_limit is not None else None

    # ---- credentials
    def key_ok(self, presented: Optional[str]) -> bool:
        """Whether the credential ``presented`` is accepted: any non-empty one when
        ``api_key`` is None, else exactly ``api_key``."""
        if not presented:
            return False
        return self.config.api_key is None or presented == self.config.api_key

    # ---- rate limit and faults
    def admit(self) -> bool:
        """False (and counted) when the emulated rate limit refuses this request."""
        if self._limiter is None or self._limiter.allow():
            return True
        self.stats.add_rate_limited()
        return False

    def draw_request_fault(self, images: int = 1) -> Optional[str]:
        """The fault kind this request gets (counted in stats), or None.

        Args:
            images: how many images the request carries (counted in ``images_received``).
        """
        self.stats.add_images_received(images)
        if not self.config.request_rates:
            return None
        with self._rng_lock:
            u = self._rng.random()
        total = 0.0
        for kind, p in self.config.request_rates:
            total += p
            if u < total:
                self.stats.add_fault(kind)
                return kind
        return None

    def draw_image_faults(self, n: int) -> list[bool]:
        """For each of ``n`` images, whether it gets an "image_error" (counted in stats)."""
        if self.config.image_rate <= 0 or n <= 0:
            return [False] * n
        with self._rng_lock:
            draws = [self._rng.random() < self.config.image_rate for _ in range(n)]
        hits = sum(draws)
        if hits:
            self.stats.add_fault("image_error", hits)
        return draws

    # ---- sleeping
    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the emulator stops first; False if it stopped."""
        if seconds <= 0:
            return not self.stopped.is_set()
        return not self.stopped.wait(seconds)

    def hang(self) -> bool:
        """The "timeout" fault: sleep ``hang_s``; False if the emulator stopped meanwhile."""
        return self.sleep(self.config.hang_s)

    def delay(self) -> bool:
        """The configured latency, slept before every answer; False if stopped meanwhile."""
        return self.sleep(self.config.latency_s)

    # ---- classification
    def classify(self, image: OpenedImage, limit: Optional[int] = None) -> list[tuple[str, float]]:
        """Decode, convert and classify one image; the best ``min(top_k, limit)`` classes
        whose score is at least ``min_score`` (possibly none), best first.

        Raises:
            ImageProblem: the image data is corrupt.
        """
        array = self.classifier.prepare(image)
        pairs = self.classifier.classify(array)
        self.stats.add_images(1)
        k = self.config.top_k if not limit or limit <= 0 else min(self.config.top_k, int(limit))
        floor = self.config.min_score
        return [(name, score) for name, score in pairs[:k] if floor <= 0 or score >= floor]

    def retry_after_headers(self) -> dict[str, str]:
        """``{"Retry-After": ...}`` when ``retry_after_s`` is set, else ``{}``."""
        if self.config.retry_after_s is None:
            return {}
        return {"Retry-After": format_retry_after(self.config.retry_after_s)}
