"""Offline analysis: prediction and certification from a recorded call (no network, no SDK,
no denoiser, no GPU). The online path ends here too, on the log it has just written, so the
two cannot disagree.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from .errors import InvalidInputError, LogMismatchError
from .query_logs.records import CallLog, QueryRecord
from .results import ABSTAIN, Certificate, Prediction
from .statistics import certify_from_counts, predict_from_counts, top_label
from .validation import check_alpha, check_noise_sd, check_sample_count

__all__ = ["predict_from_log", "certify_from_log", "as_call_log"]


def as_call_log(logs: Any) -> CallLog:
    """Check that ``logs`` is a recorded call (``result.logs`` or an item of ``open_log(path)``)."""
    if isinstance(logs, CallLog):
        return logs
    hint = ""
    if isinstance(logs, (list, tuple)):
        hint = (
            " A plain list looks like the predecessor's pickled responses: those carry no seed, phase or "
            "noise level, so they cannot be re-certified soundly as they are."
        )
    raise InvalidInputError(
        f"offline predict/certify needs a CallLog (result.logs, or an item of robust_api.open_log(path)), "
        f"got {type(logs).__name__}.{hint}"
    )


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


def _votes(records: list[QueryRecord]) -> tuple[dict[str, int], int]:
    counts = Counter(r.label for r in records if r.error is None and r.label is not None)
    errors = sum(1 for r in records if r.error is not None or r.label is None)
    return dict(counts.most_common()), errors


def predict_from_log(
    logs: Any,
    N: Optional[int] = None,
    noise_sd: Optional[float] = None,
    alpha: float = 0.001,
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
        alpha: α in (0, 1).
        queries, offline: what the result reports (set by the online path).

    Returns:
        A :class:`Prediction`; see its guarantee. With noise_sd = 0 it is the most frequent
        clean answer (ABSTAIN on a tie) and no test is made.
    """
    logs = as_call_log(logs)
    alpha = check_alpha(alpha)
    noise_sd = _check_noise_matches(logs, noise_sd)
    if logs.header.kind == "certify":
        phase = "estimation"
    else:
        phase = "clean" if noise_sd == 0 else "predict"
    records = _take(logs, phase, N, "N")
    if not records:
        raise LogMismatchError(f"call {logs.header.run_id} has no {phase} samples to predict from")
    counts, errors = _votes(records)
    if noise_sd == 0:
        label = top_label(counts)
        ranked = sorted(counts.values(), reverse=True)
        tied = len(ranked) > 1 and ranked[0] == ranked[1]
        label_out = ABSTAIN if label is None or tied else label
        p_value = None
    else:
        outcome = predict_from_counts(counts, alpha, n_errors=errors)
        label_out = ABSTAIN if outcome.label is None else outcome.label
        p_value = outcome.p_value
    return Prediction(
        label=label_out,
        counts=counts,
        p_value=p_value,
        alpha=alpha,
        noise_sd=noise_sd,
        n=len(records),
        errors=errors,
        queries=queries,
        logs=logs,
        offline=offline,
    )


def certify_from_log(
    logs: Any,
    noise_sd: Optional[float] = None,
    N0: Optional[int] = None,
    N: Optional[int] = None,
    alpha: float = 0.001,
    *,
    queries: int = 0,
    offline: bool = True,
) -> Certificate:
    """Cohen et al.'s CERTIFY on a recorded certify call.

    Args:
        logs: a :class:`CallLog` of a certify call.
        noise_sd: must equal the logged σ if given (default: the logged one).
        N0: use the first N0 selection samples (default: all logged).
        N: use the first N estimation samples (default: all logged). Selection and
            estimation samples are never re-split: they are distinct phases with
            independent noise.
        alpha: α in (0, 1); may differ from the α used online.

    Returns:
        A :class:`Certificate`. Guarantee: with probability ≥ 1 − α over the estimation
        noise, a non-ABSTAIN label is the smoothed classifier's answer at every point within
        L2 ``radius``. Re-certifying the same log at several α and keeping the best is
        multiple testing: fix α before looking.

    Raises:
        LogMismatchError: other noise_sd than logged, more samples than logged, or a log of
            a predict call.
    """
    logs = as_call_log(logs)
    alpha = check_alpha(alpha)
    if logs.header.kind != "certify":
        raise LogMismatchError(
            f"call {logs.header.run_id} is a {logs.header.kind} call (no selection/estimation split); "
            "use predict(logs), or certify the image online"
        )
    sigma = check_noise_sd(_check_noise_matches(logs, noise_sd), allow_zero=False)
    selection = _take(logs, "selection", N0, "N0")
    estimation = _take(logs, "estimation", N, "N")
    if not selection or not estimation:
        raise LogMismatchError(
            f"call {logs.header.run_id} holds {len(selection)} selection and {len(estimation)} estimation samples; "
            "certification needs at least one of each (the call was interrupted early?)"
        )
    selection_counts, _ = _votes(selection)
    guess = top_label(selection_counts)
    counts, errors = _votes(estimation)
    outcome = certify_from_counts(guess, counts, len(estimation), sigma, alpha)
    return Certificate(
        label=ABSTAIN if outcome.label is None else outcome.label,
        radius=outcome.radius,
        p_lower=outcome.p_lower,
        counts=counts,
        selection_counts=selection_counts,
        guess=guess,
        noise_sd=sigma,
        alpha=alpha,
        n0=len(selection),
        n=len(estimation),
        errors=errors,
        queries=queries,
        method="cohen",
        logs=logs,
        offline=offline,
    )
