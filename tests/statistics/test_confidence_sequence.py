"""The first sequential rule (a confidence sequence), kept to replay the logs it wrote.

``robust_api.confidence_sequence`` holds the anytime-valid beta-mixture confidence sequence and
:class:`ConfidenceSequenceRule`; :func:`robust_api.offline.logged_rule` replays sequential logs
without a ``"design"`` entry with it. These tests pin its numbers so that such logs keep
their certificates. The current rule is tested in ``test_sequential_rule.py``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from robust_api import confidence_sequence
from robust_api.confidence_sequence import (
    DEFAULT_PRIOR,
    ConfidenceSequenceRule as SequentialRule,
    _log_mixture,
    cs_lower_bound,
    cs_upper_bound,
    first_certifying_n,
)
from robust_api import RobustAPI, open_log
from robust_api.errors import InvalidParameterError, LogMismatchError
from robust_api.offline import logged_rule
from robust_api.query_logs.records import CallLog
from robust_api.sequential import DESIGN, STOP_REASONS, look_points
from robust_api.sequential import SequentialRule as CalibratedRule
from robust_api.statistics import clopper_pearson_lower, clopper_pearson_upper, max_certifiable_radius

SIGMA = 0.25
ALPHA = 0.001
ALPHAS = [0.1, 0.01, 0.001, 1e-6]


def _cohen_n_min(radius: float, sigma: float = SIGMA, alpha: float = ALPHA) -> int:
    return math.ceil(math.log(alpha) / math.log(norm.cdf(radius / sigma)))


def _counts_grid(ns=(1, 2, 5, 10, 20, 50, 100, 300, 1000, 5000)):
    for n in ns:
        for k in sorted({0, 1, 2, n // 4, n // 2, n // 2 + 1, (3 * n) // 4, (9 * n) // 10, n - 1, n}):
            if 0 <= k <= n:
                yield k, n


# -- the confidence sequence -------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_cs_lower_bound_is_at_most_clopper_pearson(alpha):
    for k, n in _counts_grid():
        bound = cs_lower_bound(k, n, alpha)
        assert 0.0 <= bound < 1.0
        assert bound <= clopper_pearson_lower(k, n, alpha), (k, n, alpha)


@pytest.mark.parametrize("n", [1, 7, 100, 5000])
@pytest.mark.parametrize("alpha", [0.5, 0.001])
def test_cs_lower_bound_is_zero_without_successes(n, alpha):
    assert cs_lower_bound(0, n, alpha) == 0.0


@pytest.mark.parametrize("n", [1, 10, 60, 200])
@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_cs_lower_bound_is_monotone_in_successes(n, alpha):
    bounds = [cs_lower_bound(k, n, alpha) for k in range(n + 1)]
    assert all(later >= earlier for earlier, later in zip(bounds, bounds[1:])), bounds
    assert bounds[-1] > bounds[n // 2]  # and not constant


@pytest.mark.parametrize("alpha", [0.05, 0.001, 1e-6])
def test_unanimous_cs_lower_bound_grows_with_n(alpha):
    bounds = [cs_lower_bound(n, n, alpha) for n in range(1, 400)]
    assert all(later >= earlier for earlier, later in zip(bounds, bounds[1:]))
    assert bounds[-1] > bounds[0]
    # it is strictly below the fixed-n (Clopper–Pearson) unanimous bound α^{1/n}, but not by much at large n
    for n in (50, 300, 399):
        assert cs_lower_bound(n, n, alpha) < alpha ** (1.0 / n)
    assert cs_lower_bound(2000, 2000, 0.001) > 0.99 * 0.001 ** (1 / 2000)


def test_cs_lower_bound_is_the_crossing_of_the_mixture():
    """L_n = inf{p : M_n(p) < 1/α}: M_n ≥ 1/α just below the bound and < 1/α just above it."""
    a, b = DEFAULT_PRIOR
    checked = 0
    for k, n in _counts_grid():
        for alpha in ALPHAS:
            bound = cs_lower_bound(k, n, alpha)
            threshold = math.log(1.0 / alpha)
            if k > 0 and bound == 0.0:
                # no crossing above the floor: the mixture is below 1/α everywhere it is evaluated
                assert _log_mixture(1e-12, k, n - k, a, b) < threshold
                continue
            if bound < 1e-4:  # tiny bounds are found to an absolute (not relative) tolerance
                continue
            below = _log_mixture(bound * (1 - 1e-7), k, n - k, a, b)
            above = _log_mixture(bound * (1 + 1e-7), k, n - k, a, b)
            assert below >= threshold > above, (k, n, alpha, bound, below - threshold, above - threshold)
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("prior", [DEFAULT_PRIOR, (1.0, 1.0)])
def test_log_mixture_decreases_up_to_the_empirical_rate(prior):
    """The bisection relies on log M_n(p) decreasing on (0, k/n]: then the crossing is unique."""
    a, b = prior
    for k, n in _counts_grid(ns=(1, 3, 10, 40, 100, 1000, 5000)):
        if k == 0:
            continue
        top = min(k / n, 1 - 1e-9)
        grid = np.concatenate([np.geomspace(1e-9, top * 1e-3, 40), np.linspace(top * 1e-3, top, 300)])
        values = np.array([_log_mixture(float(p), k, n - k, a, b) for p in grid])
        increases = np.diff(values)
        slack = 1e-9 * np.maximum(1.0, np.abs(values[1:]))
        assert (increases <= slack).all(), (k, n, grid[1:][increases > slack][:3])


@pytest.mark.parametrize("k,n", [(0, 1), (0, 10), (3, 10), (50, 100), (99, 100), (100, 100), (700, 1000)])
@pytest.mark.parametrize("alpha", [0.01, 0.001])
def test_cs_upper_bound_mirrors_the_lower_bound(k, n, alpha):
    upper = cs_upper_bound(k, n, alpha)
    assert upper == 1.0 - cs_lower_bound(n - k, n, alpha)
    assert k / n <= upper <= 1.0
    assert upper >= clopper_pearson_upper(k, n, alpha)  # looser than the fixed-n bound
    assert cs_lower_bound(k, n, alpha) <= k / n <= upper


@pytest.mark.parametrize(
    "args",
    [
        (-1, 5, 0.01),
        (6, 5, 0.01),
        (0, 0, 0.01),
        (3, -2, 0.01),
        (3, 5, 0.0),
        (3, 5, 1.0),
        (3, 5, -0.1),
        (3, 5, float("nan")),
    ],
)
@pytest.mark.parametrize("fn", [cs_lower_bound, cs_upper_bound])
def test_cs_bounds_reject_invalid_inputs(fn, args):
    with pytest.raises(InvalidParameterError):
        fn(*args)


@pytest.mark.parametrize("successes", [2.7, True, "3", float("nan")])
def test_cs_bounds_reject_non_integer_counts(successes):
    with pytest.raises(InvalidParameterError):
        cs_lower_bound(successes, 5, 0.01)


@pytest.mark.parametrize("prior", [(0, 1), (1, -1), (1,), "ab", None, (float("inf"), 1)])
def test_cs_bounds_reject_invalid_priors(prior):
    with pytest.raises(InvalidParameterError, match="prior"):
        cs_lower_bound(3, 5, 0.01, prior=prior)
    with pytest.raises(InvalidParameterError, match="prior"):
        SequentialRule(SIGMA, ALPHA, 100, prior=prior)


# -- first_certifying_n ------------------------------------------------------------------------


@pytest.mark.parametrize("p_target", [0.5 + 1e-9, 0.6, 0.75, 0.841344746, 0.9, 0.97])
@pytest.mark.parametrize("alpha", [0.01, 0.001])
def test_first_certifying_n_equals_a_brute_force_scan(p_target, alpha):
    n = 1
    while cs_lower_bound(n, n, alpha) < p_target:
        n += 1
    assert first_certifying_n(p_target, alpha) == n
    assert cs_lower_bound(n, n, alpha) >= p_target
    if n > 1:
        assert cs_lower_bound(n - 1, n - 1, alpha) < p_target


def test_first_certifying_n_with_another_prior_and_limit():
    prior = (1.0, 1.0)
    n = 1
    while cs_lower_bound(n, n, 0.01, prior=prior) < 0.9:
        n += 1
    assert first_certifying_n(0.9, 0.01, prior=prior) == n
    assert first_certifying_n(0.9, 0.01, prior=prior, limit=n - 1) is None
    assert first_certifying_n(0.9, 0.01, prior=prior, limit=n) == n


@pytest.mark.parametrize("p_target", [0.0, 1.0, -0.2, 1.5])
def test_first_certifying_n_rejects_bad_targets(p_target):
    with pytest.raises(InvalidParameterError):
        first_certifying_n(p_target, ALPHA)


@pytest.mark.parametrize("radius", [0.25, 0.5])
def test_sequential_minimum_is_close_to_the_cohen_minimum(radius):
    """STATISTICS.md: n_min = 40 / 301 at σ = 0.25, α = 0.001; the confidence sequence needs ≤ 5% more."""
    cohen = _cohen_n_min(radius)
    assert cohen == {0.25: 40, 0.5: 301}[radius]
    fewest = first_certifying_n(float(norm.cdf(radius / SIGMA)), ALPHA)
    rule = SequentialRule(SIGMA, ALPHA, 10**6, radius=radius)
    assert cohen <= fewest <= rule.min_samples() <= 1.05 * cohen
    assert rule.radius_at(rule.min_samples(), rule.min_samples()) >= radius
    assert rule.radius_at(rule.min_samples() - 1, rule.min_samples() - 1) < radius


# -- look points and the rule ------------------------------------------------------------------


@pytest.mark.parametrize("first,budget,growth", [(1, 10, 1.1), (5, 100, 1.1), (11, 1000, 1.1), (7, 500, 1.5), (3, 40, 2.0)])
def test_look_points(first, budget, growth):
    points = look_points(first, budget, growth)
    assert points[0] == first and points[-1] == budget
    assert all(b > a for a, b in zip(points, points[1:]))
    for a, b in zip(points[:-2], points[1:-1]):  # every look but the budget follows the growth rule
        assert b == max(a + 1, math.ceil(a * growth))
    if len(points) > 1:  # the budget comes no later than the next growth step would
        assert points[-1] <= max(points[-2] + 1, math.ceil(points[-2] * growth))
    assert look_points(first, budget, growth) == points  # deterministic


def test_look_points_edge_cases():
    assert look_points(200, 100) == [100]
    assert look_points(100, 100) == [100]
    assert look_points(0, 3) == [1, 2, 3]
    for growth in (1.0, 0.5, -2):
        with pytest.raises(InvalidParameterError):
            look_points(1, 10, growth)


@pytest.mark.parametrize("radius,budget", [(0.25, 1000), (0.5, 400), (0.1, 50)])
def test_looks_include_the_target_minimum_and_unanimous_votes_certify_exactly_there(radius, budget):
    rule = SequentialRule(SIGMA, ALPHA, budget, radius=radius)
    needed = rule.min_samples()
    looks = rule.looks()
    assert needed in looks and looks[-1] == budget
    assert all(b > a for a, b in zip(looks, looks[1:]))
    assert looks[0] == first_certifying_n(0.5 + 1e-9, ALPHA)  # nothing can be certified before
    outcome = rule.replay([True] * budget)
    assert outcome.stop_reason == "certified" and outcome.certified
    assert outcome.n == needed == outcome.successes
    assert outcome.radius >= radius
    assert outcome.looks == looks.index(needed) + 1


def test_untargeted_looks_and_ceiling():
    rule = SequentialRule(SIGMA, ALPHA, 1000)
    assert rule.min_samples() is None and rule.target_p is None
    assert rule.looks() == look_points(first_certifying_n(0.5 + 1e-9, ALPHA), 1000)
    assert rule.ceiling == pytest.approx(SIGMA * norm.ppf(cs_lower_bound(1000, 1000, ALPHA)), rel=1e-12)
    assert rule.ceiling < max_certifiable_radius(1000, SIGMA, ALPHA)
    assert rule.tolerance == pytest.approx(0.1 * SIGMA)


def test_all_wrong_votes_stop_at_the_first_look():
    targeted = SequentialRule(SIGMA, ALPHA, 1000, radius=0.25)
    outcome = targeted.replay([False] * 1000)
    assert outcome.stop_reason == "futile" and not outcome.certified
    assert outcome.n == targeted.looks()[0] and outcome.looks == 1 and outcome.radius == 0.0
    untargeted = SequentialRule(SIGMA, ALPHA, 1000)
    outcome = untargeted.replay([False] * 1000)
    assert outcome.stop_reason == "settled" and outcome.n == untargeted.looks()[0] and outcome.radius == 0.0


def test_data_shorter_than_the_rule_needs_ends():
    rule = SequentialRule(SIGMA, ALPHA, 1000, radius=0.25)
    needed = rule.min_samples()
    outcome = rule.replay([True] * (needed - 1))
    assert outcome.stop_reason == "ended"
    assert outcome.n == max(look for look in rule.looks() if look <= needed - 1)
    assert outcome.radius < 0.25
    nothing = rule.replay([True] * (rule.looks()[0] - 1))
    assert nothing.stop_reason == "ended" and nothing.n == 0 and nothing.looks == 0 and not nothing.certified
    assert rule.replay([]).stop_reason == "ended"


def _rate_votes(rate: float, n: int) -> list[bool]:
    """A deterministic vote sequence with ⌊rate·i⌋ votes for ĉ among the first i."""
    return [math.floor((i + 1) * rate) - math.floor(i * rate) == 1 for i in range(n)]


def test_reaching_the_budget_stops_with_budget():
    rule = SequentialRule(SIGMA, ALPHA, 200, tolerance=0.0)
    outcome = rule.replay(_rate_votes(0.9, 500))  # more samples than the budget: the rest are ignored
    assert outcome.stop_reason == "budget" and outcome.n == 200 and outcome.successes == 180
    assert outcome.looks == len(rule.looks())
    assert outcome.certified and 0 < outcome.radius <= rule.ceiling


def test_a_target_out_of_reach_at_the_observed_rate_is_futile_before_the_budget():
    rule = SequentialRule(SIGMA, ALPHA, 200, radius=0.25)
    outcome = rule.replay(_rate_votes(0.8, 200))  # p̂ = 0.8 < Φ(1) = 0.84
    assert outcome.stop_reason == "futile" and outcome.n < 200 and outcome.radius < 0.25


def test_p_lower_is_a_running_maximum():
    rule = SequentialRule(SIGMA, ALPHA, 1000)
    votes = [True] * 60 + [False] * 940
    outcome = rule.replay(votes)
    prefix = np.concatenate([[0], np.cumsum(votes)])
    made = rule.looks()[: outcome.looks]
    assert outcome.p_lower == max(rule.lower_bound(int(prefix[n]), n) for n in made)
    assert outcome.p_lower > rule.lower_bound(outcome.successes, outcome.n)  # the bound fell, the max did not
    assert outcome.radius == pytest.approx(SIGMA * norm.ppf(outcome.p_lower), rel=1e-12)
    # step by step: never decreasing, whatever the votes do
    running = 0.0
    for n in made:
        new, _ = rule.step(int(prefix[n]), n, running)
        assert new >= running
        running = new
    assert running == outcome.p_lower
    assert rule.step(0, 100, 0.9)[0] == 0.9


def test_check_feasible_names_the_needed_budget():
    rule = SequentialRule(SIGMA, ALPHA, 300, radius=0.5)
    needed = rule.min_samples()
    assert needed > 300
    with pytest.raises(InvalidParameterError, match=f"N={needed}"):
        rule.check_feasible()
    SequentialRule(SIGMA, ALPHA, needed, radius=0.5).check_feasible()  # exactly enough
    SequentialRule(SIGMA, ALPHA, 300).check_feasible()  # no target: always feasible
    with pytest.raises(InvalidParameterError, match="impractical"):
        SequentialRule(SIGMA, ALPHA, 300, radius=1.4).check_feasible()  # needs > 10^8


def test_check_feasible_for_a_radius_far_beyond_any_budget():
    """Φ(r/σ) rounds to 1.0 in float64 for r/σ ≳ 8.3: still an InvalidParameterError."""
    with pytest.raises(InvalidParameterError):
        SequentialRule(SIGMA, ALPHA, 300, radius=3.0).check_feasible()


def test_check_feasible_message_for_a_radius_far_beyond_any_budget():
    with pytest.raises(InvalidParameterError, match="radius=3"):
        SequentialRule(SIGMA, ALPHA, 300, radius=3.0).check_feasible()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(noise_sd=0.0),
        dict(alpha=1.0),
        dict(budget=0),
        dict(radius=0.0),
        dict(radius=-1.0),
        dict(radius=True),
        dict(radius=float("inf")),
        dict(tolerance=-0.1),
        dict(growth=1.0),
        dict(futility_alpha=0.0),
    ],
)
def test_sequential_rule_rejects_bad_parameters(kwargs):
    params = dict(noise_sd=SIGMA, alpha=ALPHA, budget=100)
    params.update(kwargs)
    with pytest.raises(InvalidParameterError):
        SequentialRule(**params)


def test_stop_reasons_are_documented():
    assert set(STOP_REASONS) == {"certified", "futile", "settled", "budget", "ended", "no_guess"}
    assert confidence_sequence.DEFAULT_GROWTH > 1


# -- replaying the logs this rule wrote ----------------------------------------------------------

LEGACY_LOG = (Path(__file__).resolve().parents[2] / "query_logs" / "legacy"
              / "google_emulator_dncnn_0.25_sequential_confidence_sequence_seed0.jsonl")
CURRENT_LOG = LEGACY_LOG.parents[1] / "google_emulator_dncnn_0.25_sequential_seed0.jsonl"


def test_a_log_of_the_first_rule_replays_with_it_and_keeps_its_certificates():
    offline = RobustAPI("google", online=False)
    certificates = []
    for call in open_log(LEGACY_LOG):
        assert "design" not in call.params and call.params["prior"] == [1.0, 0.1]
        assert isinstance(logged_rule(call, 0.25, 0.001), SequentialRule)  # the confidence-sequence rule
        certificates.append(offline.certify(call))
    # what the README of query_logs/ reports for this file: 8 certified at r >= 0.25, 2 futile
    assert [c.stop_reason for c in certificates].count("certified") == 8
    assert [c.stop_reason for c in certificates].count("futile") == 2
    assert sum(c.n + 1 for c in certificates) == 902
    assert all(c.radius >= 0.25 for c in certificates if c.stop_reason == "certified")


def test_a_log_of_the_current_rule_replays_with_it():
    for call in open_log(CURRENT_LOG):
        assert call.params["design"] == DESIGN
        assert isinstance(logged_rule(call, 0.25, 0.001), CalibratedRule)


def test_a_log_naming_an_unknown_design_is_refused():
    call = next(iter(open_log(CURRENT_LOG)))
    forged = dataclasses.replace(call.header, params={**call.params, "design": "from-the-future"})
    with pytest.raises(LogMismatchError, match="from-the-future"):
        logged_rule(CallLog(forged, call.records), 0.25, 0.001)


@pytest.mark.parametrize("edit", [dict(prior=5), dict(prior="ab"), dict(growth=1.0), dict(futility_growth="x"),
                                  dict(tolerance=-1), dict(radius="far")])
def test_a_log_with_bad_rule_parameters_is_refused_with_a_typed_error(edit):
    call = next(iter(open_log(CURRENT_LOG)))
    edited = CallLog(dataclasses.replace(call.header, params={**call.params, **edit}), call.records)
    with pytest.raises(InvalidParameterError):
        RobustAPI("google", online=False).certify(edited)
