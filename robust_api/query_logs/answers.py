"""What ``logs[i]`` is: one query's answer in the shape the predecessor returned it, with the
record's fields as attributes. Pure: no I/O.

The predecessor (microsoft/denoised-smoothing ``vision_api``) returned, per query, the API's
answer in a per-provider shape, and its users read it directly:

* google: a mapping label description → score (in the API's order, the top label first);
* azure: a list of ``{"name": ..., "confidence": ...}``;
* aws: a list of ``{"Name": ..., "Confidence": ...}`` (Confidence in percent, 0–100);
* clarifai: ``{"outputs": [{"data": {"concepts": [{"name": ..., "value": ...}, ...]}}]}``.

``CallLog[i]`` gives an :class:`AnswerDict` / :class:`AnswerList` in that shape (a real ``dict``
or ``list``), whose attributes are the :class:`~robust_api.query_logs.records.QueryRecord`'s
(``.phase``, ``.label``, ``.raw``, ``.cost_usd``, ...; ``.record`` is the record itself). A
provider without a predecessor shape (local models, callables, HTTP) gives its raw answer as
stored: a dict or list as above, a str label as an :class:`AnswerText`; any other raw answer
(or none) gives the record itself. A failed query gives an empty answer, which the
predecessor read as the class "None" (a vote against the top class, as robust_api counts it).

Pickling an answer gives the plain builtin (``dict``/``list``/``str``): readable without
robust_api, and the very data the predecessor pickled.

The order of the entries puts the record's parsed label first, so the predecessor's "first
entry is the top class" reads the same vote as ``record.label``; the others follow by score.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Optional

__all__ = ["AnswerDict", "AnswerList", "AnswerText", "answer_of", "provider_family", "PREDECESSOR_SHAPES"]

#: Provider families that had a shape in the predecessor (``provider_family`` → shape name).
PREDECESSOR_SHAPES = ("google", "azure", "aws", "clarifai")

# family → (module, class) whose static ``labels(raw)`` normalises a stored raw answer
_NORMALISERS = {
    "google": ("robust_api.providers.google", "GoogleVisionProvider"),
    "azure": ("robust_api.providers.azure", "AzureVisionProvider"),
    "aws": ("robust_api.providers.aws", "RekognitionProvider"),
    "clarifai": ("robust_api.providers.clarifai", "ClarifaiProvider"),
}


class _Answer:
    """Mixin: the record's fields as attributes, pickled as the plain builtin."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        # only reached for names the builtin does not have: the record's fields
        if not name.startswith("_") and name != "record":
            try:
                return getattr(object.__getattribute__(self, "record"), name)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __reduce__(self):
        base = self._plain_type
        return (base, (base(self),))


class AnswerDict(_Answer, dict):
    """A query's answer as a dict (google: label → score; clarifai: ``{"outputs": ...}``), plus
    the record's fields as attributes (``.phase``, ``.label``, ``.record``, ...)."""

    __slots__ = ("record",)
    _plain_type = dict


class AnswerList(_Answer, list):
    """A query's answer as a list (azure, aws), plus the record's fields as attributes."""

    __slots__ = ("record",)
    _plain_type = list


class AnswerText(_Answer, str):
    """A query's answer that was a bare label string (callables), plus the record's fields."""

    __slots__ = ("record",)
    _plain_type = str


def provider_family(provider: str) -> str:
    """The provider family of a logged provider identity: ``"google:label_detection@host"`` →
    ``"google"``; imported predecessor calls (``"legacy:aws"``) → their API (``"aws"``)."""
    family, _, rest = str(provider).partition(":")
    if family == "legacy":
        family = rest.partition(":")[0]
    return family


@functools.lru_cache(maxsize=None)
def _normaliser(family: str) -> Callable[[Any], list]:
    module, name = _NORMALISERS[family]
    return getattr(importlib.import_module(module), name).labels


def _ranked(labels: list, top: Optional[str]) -> list:
    """``labels`` by score, highest first (stable), with ``top`` (the parsed vote) moved first."""
    ranked = sorted(labels, key=lambda item: -item[1])
    if top is not None:
        first = [item for item in ranked if item[0] == top][:1]
        ranked = first + [item for item in ranked if item is not (first[0] if first else None)]
    return ranked


def _shape(family: str, labels: list) -> Any:
    if family == "google":
        scores: dict = {}
        for name, score in labels:
            scores.setdefault(name, score)  # a repeated name keeps its first (highest) score
        return scores
    if family == "azure":
        return [{"name": name, "confidence": score} for name, score in labels]
    if family == "aws":
        return [{"Name": name, "Confidence": 100.0 * score} for name, score in labels]
    return {"outputs": [{"data": {"concepts": [{"name": name, "value": score} for name, score in labels]}}]}


def _from_labels(family: str, record: Any) -> Any:
    if record.raw is None or record.error is not None:
        return _empty(family)
    if provider_is_legacy_shape(record.raw, family):
        return record.raw
    try:
        labels = _normaliser(family)(record.raw)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return record.raw  # not this provider's stored shape: show it as stored
    return _shape(family, _ranked(labels, record.label))


def _empty(family: str) -> Any:
    return {} if family in ("google", "clarifai") else []


def provider_is_legacy_shape(raw: Any, family: str) -> bool:
    """True when ``raw`` already is the predecessor's shape (a call imported from its pickles)."""
    if family == "google":
        return isinstance(raw, dict) and "labelAnnotations" not in raw
    if family in ("azure", "aws"):
        return isinstance(raw, list)
    return isinstance(raw, dict) and "outputs" in raw


def _wrap(value: Any, record: Any) -> Any:
    if isinstance(value, dict):
        answer: Any = AnswerDict(value)
    elif isinstance(value, list):
        answer = AnswerList(value)
    elif isinstance(value, str):
        answer = AnswerText(value)
    else:
        return record
    answer.record = record
    return answer


def answer_of(record: Any, provider: str) -> Any:
    """``logs[i]`` for a record of a call made with ``provider`` (the header's identity): an
    :class:`AnswerDict` / :class:`AnswerList` / :class:`AnswerText` in the predecessor's shape
    (see the module docstring), or the record itself when its raw answer has no such shape."""
    family = provider_family(provider)
    if family in PREDECESSOR_SHAPES:
        return _wrap(_from_labels(family, record), record)
    if record.raw is None or record.error is not None:
        return record
    return _wrap(record.raw, record)
