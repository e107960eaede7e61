"""Result objects of ``RobustAPI.predict`` / ``RobustAPI.certify`` and the ABSTAIN sentinel.

Both results have named fields and also unpack like the predecessor's tuples:
online ``label, counts, logs = predict(...)`` / ``label, radius, logs = certify(...)``;
offline (from logs) ``label, counts = predict(logs)`` / ``label, radius = certify(logs, ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .query_logs.records import CallLog

__all__ = ["ABSTAIN", "Abstain", "Label", "Prediction", "Certificate"]


class Abstain:
    """The type of :data:`ABSTAIN`: the smoothed classifier declines to answer.

    There is exactly one instance; compare with ``label is ABSTAIN``. It is never equal to
    a string label (so a class literally called "abstain" stays distinct) and never -1.
    """

    _instance: Optional["Abstain"] = None

    def __new__(cls) -> "Abstain":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSTAIN"

    def __copy__(self) -> "Abstain":
        return self

    def __deepcopy__(self, memo: dict) -> "Abstain":
        return self


#: Returned as the label when the smoothed classifier abstains.
ABSTAIN = Abstain()

Label = Union[str, Abstain]


class _Unpackable:
    """Iteration/indexing over the predecessor's tuple fields (online: 3 items, offline: 2)."""

    _online_fields: tuple[str, ...] = ()

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
        return self.label is ABSTAIN


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

    @property
    def samples(self) -> int:
        """Queries the method used for this certificate: selection plus estimation samples."""
        return self.n0 + self.n

    @property
    def abstained(self) -> bool:
        return self.label is ABSTAIN
