"""Building the provider of a RobustAPI from its arguments, and checking what the engine reads from it."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Optional

from ..errors import InvalidParameterError
from ..providers.base import Provider, create_provider, provider_factory
from ..providers.callable import CallableProvider
from ..validation import MAX_CONCURRENCY, check_count, check_rate_limit

__all__ = ["make_provider", "check_class_names"]


def check_class_names(class_names: Any) -> None:
    if class_names is None:
        return
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence) or not class_names \
            or not all(isinstance(name, str) and name for name in class_names):
        raise InvalidParameterError(
            "class_names must be a non-empty list of label strings (one per model output, e.g. "
            f"[str(i) for i in range(10)]), got {class_names!r:.100}"
        )


def _accepted_options(factory: Any) -> Optional[set]:
    """The keyword options a provider factory takes (following ``**kwargs`` up a class's
    ``__init__`` chain), or None when it takes any (a function with ``**kwargs``)."""
    if isinstance(factory, type):
        functions = [vars(cls)["__init__"] for cls in factory.__mro__ if cls is not object and "__init__" in vars(cls)]
    else:
        functions = [factory]
    names: set = set()
    for function in functions:
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in parameters
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self")
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None  # every __init__ passes **kwargs on: anything may be taken


def _refuse_options(what: str, names: Sequence[str], hint: str) -> None:
    if names:
        raise InvalidParameterError(
            f"{what} does not take {', '.join(f'{name}=' for name in names)}; {hint}"
        )


def _checked_provider(provider: Provider) -> Provider:
    """The provider, once the settings RobustAPI reads from it are in range (a third-party
    Provider with max_batch_size=0 would otherwise fail, or hang, in the middle of a call)."""
    name = f"{type(provider).__name__}"
    check_count(provider.max_batch_size, f"{name}.max_batch_size", 2**31)
    check_count(provider.default_concurrency, f"{name}.default_concurrency", MAX_CONCURRENCY)
    if provider.default_rate_limit is not None:
        try:
            check_rate_limit(provider.default_rate_limit)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"{name}.default_rate_limit: {exc}") from None
    return provider


def make_provider(provider, model, class_names, label_fn, batch_size, device, options) -> Provider:
    """The Provider for ``RobustAPI(provider, ...)``: a Provider object as it is, a registered
    name built with its options, or a callable wrapped in a CallableProvider. An option the
    provider does not take is refused by name (never silently dropped); so are settings out of
    range (InvalidParameterError)."""
    if isinstance(provider, Provider):
        given = {"model": model, "class_names": class_names, "label_fn": label_fn, **options}
        _refuse_options(f"a Provider object ({type(provider).__name__})", sorted(k for k, v in given.items() if v is not None),
                        "configure the Provider object itself")
        return _checked_provider(provider)
    if isinstance(provider, str):
        # device and batch_size are this object's own settings too (the denoiser's device, the
        # request size); only the local model also takes them
        extra = {"model": model, "class_names": class_names, "label_fn": label_fn}
        if provider == "local":
            extra.update(device=device, batch_size=batch_size)
        elif provider == "http":  # a JSON model server batches as many images as it is told
            extra.update(batch_size=batch_size)
        options = {**{k: v for k, v in extra.items() if v is not None}, **options}
        accepted = _accepted_options(provider_factory(provider))
        if accepted is not None:
            _refuse_options(f"provider {provider!r}", sorted(set(options) - accepted),
                            f"it takes {', '.join(sorted(accepted)) or 'no options'}")
        return _checked_provider(create_provider(provider, **options))
    if callable(provider):
        _refuse_options("a callable provider", [k for k, v in (("model", model), ("class_names", class_names))
                                                if v is not None],
                        "the callable itself is the classifier and names its labels")
        accepted = _accepted_options(CallableProvider)
        _refuse_options("a callable provider", sorted(set(options) - accepted - {"fn", "label_fn", "batch_size"}),
                        f"it takes {', '.join(sorted(accepted - {'fn'}))}")
        return _checked_provider(CallableProvider(provider, label_fn=label_fn, batch_size=batch_size or 256, **options))
    raise InvalidParameterError(
        f"provider must be a registered name, a Provider or a callable, got {type(provider).__name__}"
    )
