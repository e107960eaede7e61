"""Offline analysis: prediction and certification from a recorded call (no network, no SDK,
no denoiser, no GPU). The online path ends here too, on the log it has just written, so the
two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .errors import InvalidInputError, InvalidParameterError, LogMismatchError
from .certification import METHODS, certify_from_votes, predict_from_votes
from .query_logs.records import CallLog, QueryRecord, count_votes, votes_in_order
from .results import ABSTAIN, Certificate, Prediction
from . import confidence_sequence, sequential
from .sequential import DESIGN, SequentialRule
from .statistics import top_label
from .validation import check_alpha, check_noise_sd, check_sample_count

__all__ = [
    "predict_from_log", "certify_from_log", "as_call_log", "CertifySettings", "guess_from_records", "METHODS",
    "logged_rule",
]

#: Defaults of the predecessor's cloud experiment: N₀ = 20 selection and N = 100 estimation
#: samples at α = 0.001 (120 paid queries per image).
DEFAULT_N0 = 20
DEFAULT_N = 100
DEFAULT_ALPHA = 0.001


def as_call_log(logs: Any) -> CallLog:
    """Check that ``logs`` is a recorded call (``result.logs`` or an item of ``open_log(path)``)."""
    if isinstance(logs, CallLog):
        return logs
    hint = ""
    if isinstance(logs, (list, tuple)):
        hint = (
            " A plain list looks like the predecessor's answers: RobustAPI(api, online=False) with api one of "
            "'azure', 'google', 'aws', 'clarifai' reads them (certify(answers, noise_sd, N0, N, alpha), as the "
            "predecessor did); or import pred_hist_<i>.pkl files with robust_api.import_legacy(folder, api, "
            "noise_sd=...) (robust-api import-legacy), then certify the calls of the log it returns."
        )
    raise InvalidInputError(
        f"offline predict/certify needs a CallLog (result.logs, or an item of robust_api.open_log(path)), "
        f"got {type(logs).__name__}.{hint}"
    )


def _logged_alpha(logs: CallLog, alpha: Optional[float]) -> float:
    if alpha is None:
        alpha = (logs.header.params or {}).get("alpha", DEFAULT_ALPHA)
    return check_alpha(alpha)


def _check_noise_matches(logs: CallLog, noise_sd: Optional[float]) -> float:
    logged = float(logs.header.noise_sd)
    if noise_sd is not None and check_noise_sd(noise_sd, allow_zero=True) != logged:
        raise LogMismatchError(
            f"noise_sd={noise_sd!r} differs from the logged noise_sd={logged!r}: a certificate is only valid for "
            "the noise the samples were drawn with. Omit noise_sd or pass the logged value."
        )
    return logged


def _take(logs: CallLog, phase: str, requested: Optional[int], name: str) -> list[QueryRecord]:
    records = logs.phase_records(phase)
    if requested is None:
        return records
    requested = check_sample_count(requested, name)
    if requested > len(records):
        raise LogMismatchError(
            f"{name}={requested} but the log holds only {len(records)} {phase} samples for call "
            f"{logs.header.run_id}; pass {name} <= {len(records)} or query more online"
        )
    return records[:requested]


def predict_from_log(
    logs: Any,
    N: Optional[int] = None,
    noise_sd: Optional[float] = None,
    alpha: Optional[float] = None,
    *,
    queries: int = 0,
    offline: bool = True,
) -> Prediction:
    """Cohen et al.'s PREDICT on a recorded call.

    Args:
        logs: a :class:`CallLog`. A predict call uses its predict (or clean) samples; a
            certify call uses its estimation samples (fresh noise, valid for PREDICT).
        N: use the first N samples (default: all logged).
        noise_sd: must equal the logged σ if given (default: the logged one).
        alpha: α in (0, 1) (default: the logged α, else 0.001).
        queries, offline: what the result reports (set by the online path).

    Returns:
        A :class:`Prediction`; see its guarantee. With noise_sd = 0 it is the most frequent
        clean answer (ABSTAIN on a tie) and no test is made.
    """
    logs = as_call_log(logs)
    alpha = _logged_alpha(logs, alpha)
    noise_sd = _check_noise_matches(logs, noise_sd)
    if logs.header.kind == "certify":
        phase = "estimation"
    else:
        phase = "clean" if noise_sd == 0 else "predict"
    records = _take(logs, phase, N, "N")
    if not records:
        raise LogMismatchError(f"call {logs.header.run_id} has no {phase} samples to predict from")
    outcome = predict_from_votes(votes_in_order(records), noise_sd, alpha)
    return Prediction(
        label=ABSTAIN if outcome.label is None else outcome.label,
        counts=outcome.counts,
        p_value=outcome.p_value,
        alpha=alpha,
        noise_sd=noise_sd,
        n=outcome.n,
        errors=outcome.errors,
        queries=queries,
        logs=logs,
        offline=offline,
    )


SELECTIONS = ("noise", "clean")


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidParameterError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


@dataclass(frozen=True)
class CertifySettings:
    """The validated parameters of one certify call (what the log's header records).

    Attributes:
        method: "cohen", "top2" or "sequential". selection: "noise" or "clean".
        noise_sd, alpha: σ and α. N0: noisy selection samples (None with clean selection).
        N: estimation samples (sequential: the most it may use).
        radius, tolerance: the sequential rule's target and tolerance (None otherwise).
    """

    method: str
    selection: str
    noise_sd: float
    alpha: float
    N0: Optional[int]
    N: int
    radius: Optional[float] = None
    tolerance: Optional[float] = None

    @classmethod
    def online(cls, noise_sd, N0, N, alpha, method, selection, radius, tolerance) -> "CertifySettings":
        """Validate a certify request before any query; raises InvalidParameterError."""
        noise_sd = check_noise_sd(noise_sd, allow_zero=False)
        if method is None:  # a target radius asks for the sequential method, which never loses to Cohen's
            method = "sequential" if radius is not None else "cohen"
        method = _check_choice(method, "method", METHODS)
        default_selection = "clean" if method == "sequential" and N0 is None else "noise"
        selection = _check_choice(default_selection if selection is None else selection, "selection", SELECTIONS)
        if selection == "clean":
            if N0 is not None:
                raise InvalidParameterError("N0 is the number of noisy selection samples; omit it with selection='clean'")
        else:
            N0 = check_sample_count(DEFAULT_N0 if N0 is None else N0, "N0")
        N = check_sample_count(DEFAULT_N if N is None else N, "N")
        if method != "sequential" and (radius is not None or tolerance is not None):
            raise InvalidParameterError("radius= and tolerance= belong to method='sequential'")
        settings = cls(method, selection, noise_sd, check_alpha(alpha), N0, N, radius, tolerance)
        if method == "sequential":
            settings.rule().check_feasible()
        return settings

    @property
    def selection_queries(self) -> int:
        return 1 if self.selection == "clean" else int(self.N0)

    def rule(self) -> SequentialRule:
        return SequentialRule(self.noise_sd, self.alpha, self.N, radius=self.radius, tolerance=self.tolerance)

    def params(self) -> dict:
        params = {"method": self.method, "selection": self.selection, "N0": self.N0, "N": self.N, "alpha": self.alpha}
        if self.method == "sequential":
            params.update(self.rule().params())
        return params


def guess_from_records(records: list[QueryRecord]) -> Optional[str]:
    """ĉ from selection records: the top label (deterministic tie-break); None if none answered."""
    counts, _ = count_votes(records)
    return top_label(counts)


def _selection(logs: CallLog, N0: Optional[int]) -> tuple[str, list[QueryRecord]]:
    if logs.phase_records("clean") and not logs.phase_records("selection"):
        if N0 not in (None, 1):
            raise LogMismatchError(f"call {logs.header.run_id} selected its class with one clean query; omit N0")
        return "clean", _take(logs, "clean", None, "N0")[:1]
    return "noise", _take(logs, "selection", N0, "N0")


def certify_from_log(
    logs: Any,
    noise_sd: Optional[float] = None,
    N0: Optional[int] = None,
    N: Optional[int] = None,
    alpha: Optional[float] = None,
    *,
    method: Optional[str] = None,
    radius: Optional[float] = None,
    tolerance: Optional[float] = None,
    queries: int = 0,
    offline: bool = True,
) -> Certificate:
    """CERTIFY on a recorded certify call, with the logged method or another valid one.

    Args:
        logs: a :class:`CallLog` of a certify call.
        noise_sd: must equal the logged σ if given (default: the logged one).
        N0: use the first N0 selection samples (default: all logged; not with clean selection).
        N: fixed methods: use the first N estimation samples (default all). Sequential: the
            budget of the replayed rule (default: the logged one).
        alpha: α in (0, 1) (default: the logged α, else 0.001); may differ from the α used online.
        method: None (the logged method), "cohen", "top2" or "sequential". A fixed-N log may
            be replayed sequentially (in sample order); a sequential log can only be
            re-certified sequentially, because its sample count was chosen by looking at
            the votes (a fixed-N bound on it would be invalid).
        radius, tolerance: override the logged sequential target/tolerance.

    Returns:
        A :class:`Certificate`. Guarantee: with probability ≥ 1 − α over the estimation
        noise, a non-ABSTAIN label is the smoothed classifier's answer at every point within
        L2 ``radius``. Re-certifying the same log at several α (or targets) and keeping the
        best is multiple testing: fix them before looking.

    Raises:
        LogMismatchError: other noise_sd than logged, more samples than logged, a log of a
            predict call, or a fixed-N method on a sequential log.
    """
    logs = as_call_log(logs)
    alpha = _logged_alpha(logs, alpha)
    if logs.header.kind != "certify":
        raise LogMismatchError(
            f"call {logs.header.run_id} is a {logs.header.kind} call (no selection/estimation split); "
            "use predict(logs), or certify the image online"
        )
    sigma = check_noise_sd(_check_noise_matches(logs, noise_sd), allow_zero=False)
    params = logs.header.params or {}
    logged_method = params.get("method", "cohen")
    method = _check_choice(logged_method if method is None else method, "method", METHODS)
    if logged_method == "sequential" and method != "sequential":
        raise LogMismatchError(
            f"call {logs.header.run_id} stopped sequentially: its sample count depends on its votes, so a fixed-N "
            f"{method!r} bound on it would be invalid; re-certify it with method='sequential'"
        )
    if method != "sequential" and (radius is not None or tolerance is not None):
        raise InvalidParameterError("radius= and tolerance= belong to method='sequential'")
    selection_kind, selection = _selection(logs, N0)
    if not selection:
        raise LogMismatchError(f"call {logs.header.run_id} holds no selection sample (the call was interrupted early?)")
    selection_counts, _ = count_votes(selection)
    if method == "sequential":
        rule = logged_rule(logs, sigma, alpha, N, radius, tolerance)
        estimation = votes_in_order(logs.phase_records("estimation"))
        outcome = certify_from_votes(selection_counts, estimation, sigma, alpha, method=method, rule=rule,
                                     run_id=logs.header.run_id)
    elif top_label(selection_counts) is None:  # no class to certify: the estimation samples are not read
        outcome = certify_from_votes(selection_counts, [], sigma, alpha, method=method, budget=N)
    else:
        estimation = votes_in_order(_take(logs, "estimation", N, "N"))
        outcome = certify_from_votes(selection_counts, estimation, sigma, alpha, method=method,
                                     run_id=logs.header.run_id)
    return Certificate(
        label=ABSTAIN if outcome.label is None else outcome.label, radius=outcome.radius, p_lower=outcome.p_lower,
        p_upper=outcome.p_upper, counts=outcome.counts, n=outcome.n, errors=outcome.errors,
        stop_reason=outcome.stop_reason, target_radius=outcome.target_radius, budget=outcome.budget,
        ceiling=outcome.ceiling, selection_counts=selection_counts, guess=outcome.guess, noise_sd=sigma,
        alpha=alpha, n0=len(selection), queries=queries, method=method, logs=logs, offline=offline,
        selection=selection_kind,
    )


def logged_rule(logs: CallLog, noise_sd: float, alpha: float, N: Optional[int] = None,
                radius: Optional[float] = None, tolerance: Optional[float] = None):
    """The sequential rule of a logged certify call, as recorded (budget, target, tolerance,
    look spacing, prior), with ``N``, ``radius`` and ``tolerance`` overriding the logged ones
    when given. A fixed-N log replayed sequentially gets the defaults of
    :class:`~robust_api.sequential.SequentialRule`. A sequential log without a ``"design"``
    entry was written by the earlier confidence-sequence rule and replays with it
    (:class:`~robust_api.confidence_sequence.ConfidenceSequenceRule`), so its certificate is
    the one it had.

    Raises:
        LogMismatchError: the log names a design this version does not know.
        InvalidParameterError: a recorded or overriding parameter out of range.
    """
    params = logs.header.params or {}
    estimated = len(logs.phase_records("estimation"))
    budget = check_sample_count(N, "N") if N is not None else int(params.get("N") or estimated or 1)
    radius = radius if radius is not None else params.get("radius")
    tolerance = tolerance if tolerance is not None else params.get("tolerance")
    if params.get("method") != "sequential":
        return SequentialRule(noise_sd, alpha, budget, radius=radius, tolerance=tolerance)
    design = params.get("design")
    if design is None:
        legacy = confidence_sequence
        return legacy.ConfidenceSequenceRule(
            noise_sd, alpha, budget, radius=radius, tolerance=tolerance,
            growth=params.get("growth", legacy.DEFAULT_GROWTH),
            futility_alpha=params.get("futility_alpha", legacy.DEFAULT_FUTILITY_ALPHA),
            prior=params.get("prior", legacy.DEFAULT_PRIOR),
        )
    if design != DESIGN:
        raise LogMismatchError(
            f"call {logs.header.run_id} was certified with the sequential design {design!r}, which this version "
            f"of robust-api does not know (it knows {DESIGN!r}); upgrade robust-api to re-certify it"
        )
    return SequentialRule(
        noise_sd, alpha, budget, radius=radius, tolerance=tolerance,
        growth=params.get("growth", sequential.DEFAULT_GROWTH),
        futility_growth=params.get("futility_growth", sequential.DEFAULT_FUTILITY_GROWTH),
        prior=params.get("prior", sequential.DEFAULT_PRIOR),
        futility_alpha=params.get("futility_alpha", sequential.DEFAULT_FUTILITY_ALPHA),
    )
