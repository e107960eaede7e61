"""The one certification function: votes in, certificate numbers out (pure, no I/O).

Every path that turns votes into a certificate calls :func:`certify_from_votes`: online
certification (the engine fills the log, then :func:`robust_api.offline.certify_from_log`
reads the votes back and calls it), offline re-certification, the analysis of stored logs
(from vote counts computed in SQL, or from the records), imported legacy logs (re-certified
through the offline path) and the sequential method (its replay of the logged votes).
:func:`predict_from_votes` is its sibling for Cohen et al.'s PREDICT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

from .errors import InvalidParameterError, LogMismatchError
from .sequential import SequentialRule
from .statistics import (
    TOP2_ALPHA_SPLIT,
    certify_from_counts,
    certify_top2_from_counts,
    count_labels,
    max_certifiable_radius,
    predict_from_counts,
    ranked_labels,
    top_label,
)

__all__ = ["certify_from_votes", "predict_from_votes", "VoteCertificate", "VotePrediction", "count_labels", "METHODS"]

METHODS = ("cohen", "top2", "sequential")

#: Estimation votes: label → count (fixed-N methods), or labels in sample order with None for
#: a failed query (any method; the sequential one needs the order).
Estimation = Union[Mapping[str, int], Sequence[Optional[str]]]


@dataclass(frozen=True)
class VoteCertificate:
    """What :func:`certify_from_votes` certifies.

    Attributes:
        guess: ĉ, the top selection label (None: selection found no class).
        label: the certified label, or None for an abstention.
        radius, p_lower: certified L2 radius σ·Φ⁻¹(p_lower) and the lower bound (0.0 on abstention).
        p_upper: top2 only: the upper bound on every other class, else None.
        counts, errors: the estimation votes used (label → count) and failed samples among them.
        n: estimation samples used, failed ones included (sequential: up to the stopping look).
        budget: the most estimation samples the method could use.
        ceiling: the largest radius ``budget`` samples can certify with this method.
        stop_reason: sequential: why it stopped; any method: "no_guess" without a guess; else None.
        target_radius: sequential only: the rule's target, or None.
    """

    guess: Optional[str]
    label: Optional[str]
    radius: float
    p_lower: float
    p_upper: Optional[float]
    counts: dict
    errors: int
    n: int
    budget: Optional[int]
    ceiling: float
    stop_reason: Optional[str] = None
    target_radius: Optional[float] = None


def _as_counts(estimation: Estimation, n: Optional[int]) -> tuple[dict[str, int], int, int]:
    """(counts, failed samples, n) of estimation votes given as counts or as labels in order."""
    if isinstance(estimation, Mapping):
        counts = dict(estimation)
        answered = sum(counts.values())
        total = answered if n is None else int(n)
        if total < answered:
            raise InvalidParameterError(f"n={n} is less than the {answered} answered estimation votes")
        return counts, total - answered, total
    counts, errors = count_labels(estimation)
    total = len(estimation)
    if n is not None and int(n) != total:
        raise InvalidParameterError(f"n={n} but {total} estimation labels were given")
    return counts, errors, total


def certify_from_votes(
    selection_counts: Mapping[str, int],
    estimation: Estimation,
    noise_sd: float,
    alpha: float,
    *,
    method: str = "cohen",
    n: Optional[int] = None,
    rule: Optional[SequentialRule] = None,
    budget: Optional[int] = None,
    run_id: str = "?",
) -> VoteCertificate:
    """Certify from the votes of one call.

    Args:
        selection_counts: label → selection votes (noisy selection, or the one clean answer);
            ĉ is the top label (ties broken deterministically, see ``statistics.top_label``).
        estimation: votes of the estimation samples, fresh and independent of the selection:
            label → count, or labels in sample order (None = a failed query). Failed samples
            count against ĉ. ``method="sequential"`` needs labels in order.
        noise_sd: σ > 0 the samples were drawn with. alpha: α in (0, 1).
        method: "cohen" (one-sided Clopper–Pearson on p_A), "top2" (also bounds every other
            class; α split 1/2, 1/4, 1/4) or "sequential" (``rule`` replayed on the votes).
        n: with counts: the estimation samples, failed ones included (default: the sum of the
            counts). With labels: must equal their number if given.
        rule: sequential only: the :class:`~robust_api.sequential.SequentialRule` (budget, target).
        budget: fixed-N methods: the ``budget`` reported when selection found no class
            (default None); otherwise the budget is the n samples used.
        run_id: named in error messages.

    Returns:
        A :class:`VoteCertificate`. Guarantee: with probability ≥ 1 − α over the estimation
        noise, a non-None ``label`` is the smoothed classifier's prediction at every point
        within L2 ``radius`` of the image — for the fixed-N methods when the n samples were
        fixed in advance, for the sequential one whatever its stopping time.

    Raises:
        InvalidParameterError: an unknown method, sequential votes given as counts, or
            inconsistent ``n``. LogMismatchError: a fixed-N method with no estimation sample.
    """
    if method not in METHODS:
        raise InvalidParameterError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    guess = top_label(selection_counts)
    if method == "sequential":
        if rule is None or isinstance(estimation, Mapping):
            raise InvalidParameterError("method='sequential' needs rule= and the estimation labels in sample order")
        if guess is None:
            return VoteCertificate(guess, None, 0.0, 0.0, None, {}, 0, 0, rule.budget, rule.ceiling, "no_guess",
                                   rule.radius)
        labels = list(estimation)[: rule.budget]
        outcome = rule.replay([label is not None and label == guess for label in labels])
        counts, errors = count_labels(labels[: outcome.n])
        return VoteCertificate(
            guess, guess if outcome.certified else None, outcome.radius, outcome.p_lower, None, counts, errors,
            outcome.n, rule.budget, rule.ceiling, outcome.stop_reason, rule.radius,
        )
    if guess is None:
        return VoteCertificate(guess, None, 0.0, 0.0, None, {}, 0, 0, budget, 0.0, "no_guess")
    counts, errors, total = _as_counts(estimation, n)
    if total < 1:
        raise LogMismatchError(
            f"call {run_id} holds no estimation samples; certification needs at least one "
            "(the call was interrupted early?)"
        )
    ceiling = max_certifiable_radius(total, noise_sd, alpha if method == "cohen" else alpha * TOP2_ALPHA_SPLIT[0])
    if method == "top2":
        ranked = ranked_labels(selection_counts)
        runner_up = ranked[1] if len(ranked) > 1 else None
        top2 = certify_top2_from_counts(guess, runner_up, counts, total, noise_sd, alpha)
        return VoteCertificate(guess, top2.label, top2.radius, top2.p_lower, top2.p_upper, counts, errors, total,
                               total, ceiling)
    outcome = certify_from_counts(guess, counts, total, noise_sd, alpha)
    return VoteCertificate(guess, outcome.label, outcome.radius, outcome.p_lower, None, counts, errors, total, total,
                           ceiling)


@dataclass(frozen=True)
class VotePrediction:
    """What :func:`predict_from_votes` predicts: ``label`` (None: abstain), ``p_value``
    (None for clean votes), ``counts`` and ``errors`` of the ``n`` samples."""

    label: Optional[str]
    p_value: Optional[float]
    counts: dict
    errors: int
    n: int


def predict_from_votes(votes: Estimation, noise_sd: float, alpha: float, *, n: Optional[int] = None) -> VotePrediction:
    """Cohen et al.'s PREDICT from the votes of n noisy samples (label → count, or labels in
    order with None for failures, which count against the top label).

    With noise_sd > 0: the top label if a two-sided binomial test between the two most
    voted labels rejects a tie at level α, else None; guarantee: a returned label differs
    from the smoothed classifier's prediction with probability ≤ α. With noise_sd = 0 (clean
    queries): the most frequent answer, None on a tie, and no test.
    """
    counts, errors, total = _as_counts(votes, n)
    if noise_sd == 0:
        label = top_label(counts)
        ranked = sorted(counts.values(), reverse=True)
        tied = len(ranked) > 1 and ranked[0] == ranked[1]
        return VotePrediction(None if label is None or tied else label, None, counts, errors, total)
    outcome = predict_from_counts(counts, alpha, n_errors=errors)
    return VotePrediction(outcome.label, outcome.p_value, counts, errors, total)
