"""The provider contract and the provider registry.

A provider turns a batch of images into one raw response per image (``send``: may do I/O)
and a raw response into the base classifier's label (``parse``: pure). The query log stores
the raw response, so a parsing bug can be fixed and a log re-parsed without paying again.

Names resolve through a registry of lazy import paths; third-party packages can add
providers through the ``robust_api.providers`` entry-point group (``name = "pkg.mod:Class"``)
or :func:`register_provider` at run time.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Optional, Union

import numpy as np

from ..errors import InvalidParameterError, MissingDependencyError, ProviderResponseError, UnknownProviderError
from ..images import DEFAULT_MAX_PIXELS

__all__ = [
    "Provider", "QueryFailure", "register_provider", "known_providers", "create_provider", "provider_factory",
    "ENTRY_POINT_GROUP", "check_label_fn", "apply_label_fn",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "robust_api.providers"

# name -> "module:attribute" (imported lazily) or a factory
_REGISTRY: dict[str, Union[str, Callable[..., "Provider"]]] = {
    "local": "robust_api.providers.local:LocalProvider",
    "simulated": "robust_api.providers.simulated:SimulatedProvider",
}
# name -> pip command, shown when the module behind a name fails to import
_INSTALL_HINTS: dict[str, str] = {}

for _name, _target in {
    "google": "robust_api.providers.google:GoogleVisionProvider",
    "aws": "robust_api.providers.aws:RekognitionProvider",
    "azure": "robust_api.providers.azure:AzureVisionProvider",
    "clarifai": "robust_api.providers.clarifai:ClarifaiProvider",
    "http": "robust_api.providers.http:HTTPProvider",
}.items():
    _REGISTRY[_name] = _target
    _INSTALL_HINTS[_name] = f"Install it with: pip install 'robust-api[{_name}]'"


@dataclass(frozen=True)
class QueryFailure:
    """A failure of one image inside an answered batch (``send`` returns it in that image's slot).

    Attributes:
        kind: "throttled", "server", "timeout", "connection", "malformed" (transient) or
            "rejected" (the provider refused this image; not retried).
        message: what the provider said (no secrets).
        retry_after: seconds the provider asked to wait, or None.
    """

    kind: str
    message: str
    retry_after: Optional[float] = None

    @property
    def transient(self) -> bool:
        return self.kind != "rejected"


class Provider(ABC):
    """One base classifier behind a uniform batch interface.

    Attributes:
        identity: stable identity written to the log and used to match resumable records,
            e.g. ``"local:fashion_mnist_cnn"``. Must not contain secrets.
        model_version: the model version fixed at construction (pinned by the user, or the
            local weights' digest), None otherwise. It never changes afterwards: the log reuses
            answers only between calls with the same value. Versions a service reports per
            answer stay in the stored raw responses.
        max_batch_size: the most images one ``send`` call may carry.
        cost_per_query_usd: price of one image query (0.0 for local models).
        default_concurrency: requests in flight when ``RobustAPI(concurrency=None)`` (1 for
            local models and callables, which may not be thread-safe).
        default_rate_limit: requests per second when ``RobustAPI(rate_limit=None)``; None
            means unlimited.
        max_input_pixels: the most pixels (height × width) an input image may have, checked
            (from a file's header) before the image is decoded; ``RobustAPI(max_pixels=)``
            overrides it. Default 50 megapixels.
        request_scratch_copies: memory one request in flight needs besides its images, in
            float32 copies of one image (e.g. encoding buffers); counted by the memory budget.

    Failures: ``send`` raises :class:`~robust_api.errors.TransientProviderError` for a
    failure worth retrying (the whole batch is retried), puts a :class:`QueryFailure` in an
    image's slot for a failure of that image only, and raises anything else for a failure
    that must stop the call (bad credentials, a bug).
    """

    identity: str = "provider"
    model_version: Optional[str] = None
    max_batch_size: int = 1
    cost_per_query_usd: float = 0.0
    default_concurrency: int = 1
    default_rate_limit: Optional[float] = None
    max_input_pixels: Optional[int] = DEFAULT_MAX_PIXELS
    request_scratch_copies: float = 0.0

    def check_image(self, image: np.ndarray) -> None:
        """Raise :class:`~robust_api.errors.InvalidImageError` if this provider cannot take the image.

        Args:
            image: float32 [H, W, C] in [0, 1], already within the pixel limit
                (``max_input_pixels`` or the user's ``max_pixels``). Called once per call,
                before any query or log write; must not send anything.
        """

    @abstractmethod
    def send(self, images: np.ndarray) -> Sequence[Any]:
        """Query the base classifier.

        Args:
            images: float32 array [B, H, W, C] in [0, 1], 1 ≤ B ≤ ``max_batch_size``.

        Returns:
            B raw responses (JSON-serializable plain data), in the order of the images; a
            :class:`QueryFailure` in the slot of an image the provider failed on.
        """

    @abstractmethod
    def parse(self, raw: Any) -> str:
        """The base classifier's label in one raw response (pure, no I/O)."""

    def redact(self, text: str) -> str:
        """``text`` with this provider's secrets masked (used on every error message it produces)."""
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r})"


def register_provider(name: str, target: Union[str, Callable[..., Provider]], install_hint: str = "") -> None:
    """Register a provider under ``name``.

    Args:
        name: the name users pass to ``RobustAPI(name)``.
        target: a ``"module:attribute"`` string (imported on first use) or a factory that
            takes keyword options and returns a :class:`Provider`.
        install_hint: the pip command that installs what the module needs.
    """
    _REGISTRY[name] = target
    if install_hint:
        _INSTALL_HINTS[name] = install_hint


def _entry_point_targets() -> dict[str, Any]:
    try:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # a broken third-party distribution must not break the SDK
        logger.warning("could not read entry points of group %s", ENTRY_POINT_GROUP, exc_info=True)
        return {}


def known_providers() -> list[str]:
    """Registered provider names (built-in and entry points), sorted."""
    return sorted(set(_REGISTRY) | set(_entry_point_targets()))


def _resolve(name: str) -> Callable[..., Provider]:
    target = _REGISTRY.get(name)
    if target is None:
        entry = _entry_point_targets().get(name)
        if entry is None:
            raise UnknownProviderError(
                f"unknown provider {name!r}; known providers: {', '.join(known_providers())}. "
                "You can also pass a Provider object or any callable that maps a batch of images "
                "(float32 [N, H, W, C] in [0, 1]) to N labels."
            )
        return entry.load()
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if (exc.name or "").startswith("robust_api") and not isinstance(exc, MissingDependencyError):
            raise  # our own import failed: a bug, not a missing dependency
        hint = _INSTALL_HINTS.get(name, "")
        raise MissingDependencyError(
            f"provider {name!r} needs a package that is not installed ({exc.name}). {hint}".strip()
        ) from exc
    return getattr(module, attribute)


def provider_factory(name: str) -> Callable[..., Provider]:
    """The class (or factory) registered under ``name``, imported on demand (its class
    attributes such as ``default_rate_limit`` can be read without building a provider)."""
    if not isinstance(name, str):
        raise UnknownProviderError(f"provider name must be a string, got {type(name).__name__}")
    return _resolve(name)


def create_provider(name: str, **options: Any) -> Provider:
    """Build the provider registered under ``name`` with keyword ``options``."""
    if not isinstance(name, str):
        raise UnknownProviderError(f"provider name must be a string, got {type(name).__name__}")
    return _resolve(name)(**options)


def check_label_fn(label_fn: Any, takes: str) -> Any:
    """``label_fn`` when it is None or callable, else InvalidParameterError.

    The one ``label_fn`` contract, for every provider that takes one: a pure function from
    one answer, in the form ``parse`` reads it (``takes``: a callable's raw response, a cloud
    provider's normalized ``[(name, score), ...]``), to a str label (see :func:`apply_label_fn`).
    """
    if label_fn is not None and not callable(label_fn):
        raise InvalidParameterError(f"label_fn must be a callable {takes} -> str")
    return label_fn


def apply_label_fn(label_fn: Callable[[Any], Any], answer: Any) -> str:
    """``label_fn(answer)``, which must be a str label; ProviderResponseError otherwise (the
    query is then recorded as failed, never as a vote)."""
    label = label_fn(answer)
    if not isinstance(label, str):
        raise ProviderResponseError(
            f"label_fn produced a label of type {type(label).__name__} ({label!r:.60}); labels must be str: "
            "make label_fn return the class name"
        )
    return label
