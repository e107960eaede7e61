"""Result objects of ``RobustAPI.predict`` / ``RobustAPI.certify`` and the ABSTAIN sentinel.

Both results have named fields and also unpack like the predecessor's tuples:
online ``label, counts, logs = predict(...)`` / ``label, radius, logs = certify(...)``;
offline (from logs) ``label, counts = predict(logs)`` / ``label, radius = certify(logs, ...)``.
"""

from __future__ import annotations

import html
import math
import numbers
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from .query_logs.records import CallLog, valid_cost

__all__ = ["ABSTAIN", "Abstain", "Label", "Prediction", "Certificate", "VoteCounts"]


class Abstain:
    """The type of :data:`ABSTAIN`: the smoothed classifier declines to answer.

    There is exactly one instance; test with ``label is ABSTAIN`` (or ``result.abstained``).
    For the predecessor's scripts it also compares equal to ``-1`` (its abstention value), so
    ``top_class == -1`` is true exactly when the call abstained. It is never equal to a string
    label (a class literally called "abstain" or "-1" stays distinct), to True/False, or to
    None. It prints as ``ABSTAIN``; exports (``to_dict``, ``to_pandas``, the CLI's JSON/CSV)
    write an abstention as label null with ``abstained`` true, and pickling it gives ``-1``.
    """

    __slots__ = ()
    _instance: Optional["Abstain"] = None

    def __new__(cls) -> "Abstain":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSTAIN"

    def __eq__(self, other: Any) -> bool:
        if other is self:
            return True
        if isinstance(other, (bool, np.bool_)) or not isinstance(other, (numbers.Real, np.number)):
            return NotImplemented
        return other == -1

    def __ne__(self, other: Any) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(-1)  # equal to -1, so the same hash

    def __reduce__(self):
        return (int, (-1,))  # plain data: the predecessor's abstention value

    def __copy__(self) -> "Abstain":
        return self

    def __deepcopy__(self, memo: dict) -> "Abstain":
        return self


#: Returned as the label when the smoothed classifier abstains.
ABSTAIN = Abstain()

Label = Union[str, Abstain]


class VoteCounts(defaultdict):
    """label → votes, as the predecessor's ``defaultdict(int)``: an unseen label reads as 0
    (``counts["cat"]`` is 0, not a KeyError), without being added to the counts. Pickled or
    exported it is a plain ``dict``."""

    def __init__(self, counts: Any = ()) -> None:
        super().__init__(int, counts)

    def __missing__(self, label: Any) -> int:
        return 0

    def __repr__(self) -> str:
        return repr(dict(self))

    def __reduce__(self):
        return (dict, (list(self.items()),))

    def __copy__(self) -> "VoteCounts":
        return VoteCounts(self)

    def __deepcopy__(self, memo: dict) -> "VoteCounts":
        return VoteCounts(self)


def _plain_label(label: Any) -> Optional[str]:
    return None if label is ABSTAIN else label


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def _call_cost_usd(logs: CallLog) -> Optional[float]:
    """What the logged call's queries cost (reused answers cost 0); None when a logged price is invalid."""
    total = 0.0
    for record in logs.records:
        if not valid_cost(record.cost_usd):
            return None
        total += float(record.cost_usd)
    return total


def _call_fields(logs: CallLog) -> dict[str, Any]:
    header = logs.header
    return {
        "image": header.image_name,
        "tag": header.tag,
        "image_digest": header.image_digest,
        "provider": header.provider,
        "model_version": header.model_version,
        "denoiser": header.denoiser_id,
        "seed": header.seed,
        "run_id": header.run_id,
        "cost_usd": _call_cost_usd(logs),
    }


_HTML_STYLE = "border-collapse:collapse;font-family:sans-serif;font-size:90%"


def _html_table(title: str, rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left;padding:2px 8px'>{html.escape(name)}</th>"
        f"<td style='padding:2px 8px'>{html.escape(str(value))}</td></tr>"
        for name, value in rows if value is not None
    )
    return f"<table style='{_HTML_STYLE}'><caption style='text-align:left'><b>{html.escape(title)}</b></caption>{cells}</table>"


def _top_counts(counts: dict, shown: int = 5) -> str:
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    text = ", ".join(f"{label}: {votes}" for label, votes in ranked[:shown])
    return text + (f", … ({len(ranked) - shown} more)" if len(ranked) > shown else "")


class _Unpackable:
    """Iteration/indexing over the predecessor's tuple fields (online: 3 items, offline: 2);
    plain-data pickling (see ``to_dict``); vote counts that read unseen labels as 0."""

    _online_fields: tuple[str, ...] = ()
    _count_fields: tuple[str, ...] = ("counts",)

    def __post_init__(self) -> None:
        for name in self._count_fields:
            value = getattr(self, name)
            if not isinstance(value, VoteCounts):
                object.__setattr__(self, name, VoteCounts(value))

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - defined by each result
        raise NotImplementedError

    def _flat(self, kind: str, own: dict[str, Any]) -> dict[str, Any]:
        """``to_dict``: the call's fields, the label, then ``own`` (the result's), then the common tail."""
        return {
            **_call_fields(self.logs),
            "kind": kind,
            "label": _plain_label(self.label),
            "abstained": self.label is ABSTAIN,
            "counts": dict(self.counts),
            **own,
            "errors": self.errors,
            "queries": self.queries,
            "noise_sd": self.noise_sd,
            "alpha": self.alpha,
            "offline": self.offline,
        }

    def _label_text(self) -> str:
        return "ABSTAIN" if self.label is ABSTAIN else str(self.label)

    def _html(self, title: str, own: list[tuple[str, Any]]) -> str:
        header = self.logs.header
        return _html_table(title, [
            ("image", header.image_name), ("label", self._label_text()), *own,
            ("failed queries", self.errors or None), ("paid queries", self.queries), ("noise_sd", self.noise_sd),
            ("alpha", self.alpha), ("provider", header.provider), ("denoiser", header.denoiser_id),
        ])

    def __reduce__(self):
        # plain data, readable without robust_api: the flat dict plus the predecessor's list of
        # answers under "logs" (copy/deepcopy keep the object: see __copy__)
        plain = self.to_dict()
        plain["logs"] = self.logs
        return (dict, (list(plain.items()),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo: dict):
        return self  # frozen; copying would copy the whole log

    def _fields(self) -> tuple[str, ...]:
        return self._online_fields if not self.offline else self._online_fields[:2]

    def __iter__(self):
        return iter(getattr(self, name) for name in self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    def __getitem__(self, index: int) -> Any:
        return tuple(self)[index]


@dataclass(frozen=True, eq=False)
class Prediction(_Unpackable):
    """The smoothed classifier's prediction (Cohen et al.'s PREDICT).

    Attributes:
        label: the predicted label (str) or :data:`ABSTAIN`. With noise_sd > 0: wrong
            (≠ g(x)) with probability ≤ alpha. With noise_sd = 0: the base classifier's
            label on the clean image (most frequent answer; ABSTAIN on a tie).
        counts: label → votes of the N samples (failed queries excluded, see ``errors``).
        p_value: the binomial test's p-value (None for noise_sd = 0).
        alpha: α used by the test.
        noise_sd: σ in [0, 1] pixel units.
        n: N, the number of samples (failed ones included).
        errors: samples whose query failed (counted against the top class).
        queries: paid queries this call actually sent (0 offline or when fully resumed).
        logs: the :class:`~robust_api.query_logs.CallLog` the result was computed from.
        offline: True when computed from logs passed in (unpacks as ``label, counts``).
    """

    label: Label
    counts: dict[str, int]
    p_value: Optional[float]
    alpha: float
    noise_sd: float
    n: int
    errors: int
    queries: int
    logs: CallLog = field(repr=False)
    offline: bool = False
    _online_fields = ("label", "counts", "logs")

    @property
    def abstained(self) -> bool:
        """True when the prediction abstained (``label`` is :data:`ABSTAIN`)."""
        return self.label is ABSTAIN

    def to_dict(self) -> dict[str, Any]:
        """The prediction as a flat dict of plain values (no copy of the log).

        Keys: image (the image's name: file name or ``name=``; None if unnamed), tag,
        image_digest, label (None when abstained), abstained, counts (plain dict), p_value,
        N, errors, queries (paid by this call), cost_usd (what the logged call's queries cost;
        None if a logged price is invalid), noise_sd, alpha, seed, denoiser, provider,
        model_version, run_id, kind ("predict"), offline.
        """
        return self._flat("predict", {"p_value": self.p_value, "N": self.n})

    def _repr_html_(self) -> str:
        """A small table for notebooks."""
        return self._html(f"Prediction: {self._label_text()}", [
            ("p-value", None if self.p_value is None else f"{self.p_value:.3g}"),
            ("votes", _top_counts(self.counts)), ("N", self.n),
        ])


@dataclass(frozen=True, eq=False)
class Certificate(_Unpackable):
    """A certified prediction (Cohen et al.'s CERTIFY).

    Guarantee: with probability ≥ 1 − alpha (over the estimation noise), if ``label`` is not
    ABSTAIN then the smoothed classifier g returns ``label`` at every x + e with
    ‖e‖₂ < ``radius`` (pixel units of [0, 1] images).

    Attributes:
        label: the certified label ĉ (str) or :data:`ABSTAIN`.
        radius: certified L2 radius σ·Φ⁻¹(p_lower), 0.0 on abstention.
        p_lower: p̲_A, a (1 − α) lower bound on P[f(x+δ) = ĉ]: one-sided Clopper–Pearson at α
            (cohen), at α/2 (top2); sequential: Φ(r/σ) for a radius r certified at an early look,
            or Cohen's bound after the last look.
        counts: label → votes of the n estimation samples.
        selection_counts: label → votes of the n₀ selection samples that chose ĉ.
        guess: ĉ as chosen by the selection step (even when the certificate abstains), or None.
        noise_sd, alpha: σ and α.
        n0, n: selection and estimation sample counts used (failed ones included).
        errors: failed estimation samples (counted as votes against ĉ).
        queries: paid queries this call actually sent (0 offline; answers reused from the
            log are free). ``samples`` is what the method used, paid or not.
        method: "cohen", "top2" or "sequential".
        logs: the CallLog the certificate was computed from.
        offline: True when computed from logs passed in (unpacks as ``label, radius``).
        selection: "noise" (n0 noisy samples chose ĉ) or "clean" (one clean query).
        stop_reason: sequential: why it stopped (see :data:`robust_api.sequential.STOP_REASONS`);
            fixed-N methods: "no_guess" when selection found no class (no estimation queries
            are then sent), else None.
        target_radius: sequential only: the target radius, or None.
        budget: the most estimation samples the method could use (N).
        ceiling: the largest radius ``budget`` samples can certify with this method (all
            votes for ĉ): no certificate from this call can exceed it.
        p_upper: top2 only: the upper bound on every other class's probability.
    """

    label: Label
    radius: float
    p_lower: float
    counts: dict[str, int]
    selection_counts: dict[str, int]
    guess: Optional[str]
    noise_sd: float
    alpha: float
    n0: int
    n: int
    errors: int
    queries: int
    method: str
    logs: CallLog = field(repr=False)
    offline: bool = False
    selection: str = "noise"
    stop_reason: Optional[str] = None
    target_radius: Optional[float] = None
    budget: Optional[int] = None
    ceiling: Optional[float] = None
    p_upper: Optional[float] = None
    _online_fields = ("label", "radius", "logs")
    _count_fields = ("counts", "selection_counts")

    @property
    def samples(self) -> int:
        """Queries the method used for this certificate: selection plus estimation samples."""
        return self.n0 + self.n

    @property
    def abstained(self) -> bool:
        """True when the certificate abstained (``label`` is :data:`ABSTAIN`, radius 0)."""
        return self.label is ABSTAIN

    def to_dict(self) -> dict[str, Any]:
        """The certificate as a flat dict of plain values (no copy of the log).

        Keys: image (the image's name: file name or ``name=``; None if unnamed), tag,
        image_digest, label (None when abstained), abstained, radius, p_lower, p_upper,
        counts and selection_counts (plain dicts), guess, method, selection, stop_reason,
        target_radius, budget, ceiling, N0, N, samples, errors, queries (paid by this call),
        cost_usd (what the logged call's queries cost; None if a logged price is invalid),
        noise_sd, alpha, seed, denoiser, provider, model_version, run_id, kind ("certify"),
        offline.
        """
        return self._flat("certify", {
            "radius": self.radius,
            "p_lower": self.p_lower,
            "p_upper": self.p_upper,
            "selection_counts": dict(self.selection_counts),
            "guess": self.guess,
            "method": self.method,
            "selection": self.selection,
            "stop_reason": self.stop_reason,
            "target_radius": self.target_radius,
            "budget": self.budget,
            "ceiling": _finite_or_none(self.ceiling),
            "N0": self.n0,
            "N": self.n,
            "samples": self.samples,
        })

    def _repr_html_(self) -> str:
        """A small table for notebooks."""
        return self._html(f"Certificate: {self._label_text()}, radius {self.radius:.4g}", [
            ("radius", f"{self.radius:.4f}"), ("p_lower", f"{self.p_lower:.4f}"), ("votes", _top_counts(self.counts)),
            ("method", self.method + (f" (target {self.target_radius:g})" if self.target_radius is not None else "")),
            ("stop", self.stop_reason), ("N0 + N", f"{self.n0} + {self.n}"),
        ])
