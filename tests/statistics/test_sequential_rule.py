"""The sequential rule (robust_api.sequential): exact type-I error, never worse than Cohen, stops.

Checks the dynamic programme against brute-force enumeration of every vote sequence and
against simulation, that the calibrated error is ≤ α and spends what Cohen's discrete test
leaves, that the rule certifies every vote sequence Cohen's test certifies (on a grid of p_A,
pointwise and in exact probability), and the stop reasons. Soundness through RobustAPI on a
classifier with a known radius lives in ``test_soundness_methods.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from robust_api.errors import InvalidParameterError
from robust_api.sequential import (
    DESIGN,
    MAX_GRID_RADII,
    STOP_REASONS,
    SequentialRule,
    calibrated_test,
    final_threshold,
    look_points,
    rejection_dp,
)
from robust_api.statistics import certify_from_counts, clopper_pearson_lower, max_certifiable_radius

SIGMA = 0.25
ALPHA = 0.001


def _cohen_radius(successes: int, n: int, alpha: float = ALPHA, sigma: float = SIGMA) -> float:
    return certify_from_counts("A", {"A": successes}, n, sigma, alpha).radius


def _cohen_certifies(successes: int, n: int, radius: float, alpha: float = ALPHA) -> bool:
    outcome = certify_from_counts("A", {"A": successes}, n, SIGMA, alpha)
    return outcome.label is not None and outcome.radius >= radius


# -- Cohen's threshold ---------------------------------------------------------------------------


@pytest.mark.parametrize("N", [1, 10, 40, 100, 1000])
@pytest.mark.parametrize("radius", [0.0, 0.1, 0.25, 0.5])
def test_final_threshold_is_the_fewest_votes_cohen_certifies(N, radius):
    c = final_threshold(N, SIGMA, ALPHA, radius)
    certifying = [k for k in range(N + 1) if _cohen_certifies(k, N, radius)]
    if not certifying:
        assert c is None
    else:
        assert c == certifying[0] and certifying == list(range(c, N + 1))


# -- the dynamic programme -----------------------------------------------------------------------


def _enumerate(looks, allowed, p):
    """P[first rejection at each look] and P[stop without rejection at each look] by listing every sequence."""
    N = looks[-1]
    later_max = [max(allowed[j + 1:], default=-1) for j in range(len(looks))]
    reject, stop = np.zeros(len(looks)), np.zeros(len(looks))
    for votes in itertools.product((0, 1), repeat=N):
        weight = p ** sum(votes) * (1 - p) ** (N - sum(votes))
        for j, n in enumerate(looks):
            failures = n - sum(votes[:n])
            if failures <= allowed[j]:
                reject[j] += weight
                break
            if failures > later_max[j]:
                stop[j] += weight
                break
    return reject, stop


@pytest.mark.parametrize("looks,allowed", [
    ((3, 6, 9, 12), (0, 1, 1, 3)),
    ((2, 5, 12), (-1, 0, 4)),
    ((1, 4, 7, 8, 12), (-1, 0, -1, 1, 2)),
    ((12,), (5,)),
    ((4, 12), (2, 1)),  # an early look more lenient than the last
])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 0.9, 1.0])
def test_rejection_dp_equals_enumeration_of_every_vote_sequence(looks, allowed, p):
    reject, stop = rejection_dp(looks, allowed, p)
    expected_reject, expected_stop = _enumerate(looks, allowed, p)
    np.testing.assert_allclose(reject, expected_reject, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stop, expected_stop, rtol=1e-12, atol=1e-15)
    assert reject.sum() + stop.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("N,radius", [(200, 0.25), (1000, 0.25), (1000, 0.0), (2000, 0.5)])
def test_rejection_dp_matches_a_simulation_of_the_tests_decisions(N, radius):
    """200,000 simulated vote sequences at p = p₀, decided look by look as the rule does."""
    test = calibrated_test(SIGMA, ALPHA, N, radius)
    rng = np.random.default_rng(17)
    runs = 200_000
    failures = np.zeros(runs, dtype=np.int64)
    running = np.ones(runs, dtype=bool)
    rejected = np.zeros(runs, dtype=bool)
    previous = 0
    for j, n in enumerate(test.looks):
        failures[running] += rng.binomial(n - previous, 1 - test.p0, size=int(running.sum()))
        previous = n
        now = running & (failures <= test.allowed[j])
        rejected |= now
        running &= ~now & (failures <= test.later_max(j))
    exact = test.type_one_error
    assert exact == pytest.approx(rejection_dp(test.looks, test.allowed, test.p0)[0].sum(), rel=1e-12)
    # 5 standard errors of a binomial proportion (exact ≈ α: a Poisson count)
    assert abs(rejected.mean() - exact) <= 5 * math.sqrt(exact / runs)


# -- calibration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.001, 1e-6])
@pytest.mark.parametrize("N,radius", [(100, 0.0), (100, 0.25), (1000, 0.25), (1000, 0.5), (5000, 0.25)])
def test_calibrated_error_is_at_most_alpha_and_spends_cohens_slack(alpha, N, radius):
    test = calibrated_test(SIGMA, alpha, N, radius)
    if test is None:
        assert final_threshold(N, SIGMA, alpha, radius) is None
        return
    cohen_error = float(binom.sf(test.final - 1, N, test.p0))  # P_{p₀}[S_N ≥ c] ≤ α
    assert cohen_error <= alpha * (1 + 1e-9)
    assert test.allowed[-1] == N - test.final
    assert cohen_error * (1 - 1e-9) <= test.type_one_error <= alpha
    if test.level > 0:
        assert test.type_one_error > cohen_error  # the early looks spend some of the slack
        # and no more than there was: loosening any early boundary by one failure errs above α
        for j, a in enumerate(test.allowed[:-1]):
            if a >= 0:
                looser = list(test.allowed)
                looser[j] = a + 1
                assert rejection_dp(test.looks, looser, test.p0)[0].sum() > test.type_one_error
                break


def test_error_is_largest_at_the_target_probability():
    test = calibrated_test(SIGMA, ALPHA, 1000, 0.25)
    below = [test.operating_characteristics(p)[0] for p in np.linspace(0.5, test.p0, 12)]
    assert all(a <= b + 1e-15 for a, b in zip(below, below[1:]))
    assert below[-1] == pytest.approx(test.type_one_error, rel=1e-9) and below[-1] <= ALPHA


def test_looks_are_deterministic_and_end_at_the_cap():
    rule = SequentialRule(SIGMA, ALPHA, 1000, radius=0.25)
    looks = rule.looks()
    assert looks == SequentialRule(SIGMA, ALPHA, 1000, radius=0.25).looks()
    assert looks[-1] == 1000 and all(b > a for a, b in zip(looks, looks[1:]))
    test = rule.tests()[0]
    # the first look that can certify is where unanimous votes do, within the growth of the looks
    first = next(n for n, a in zip(test.looks, test.allowed) if a >= 0)
    assert rule.replay([True] * 1000).n == first
    n_min = math.ceil(math.log(ALPHA) / math.log(norm.cdf(0.25 / SIGMA)))
    assert n_min <= first <= 1.5 * n_min


@pytest.mark.parametrize("first,budget,growth", [(1, 10, 1.1), (5, 100, 1.1), (7, 500, 1.5), (3, 40, 2.0)])
def test_look_points(first, budget, growth):
    points = look_points(first, budget, growth)
    assert points[0] == first and points[-1] == budget
    for a, b in zip(points[:-2], points[1:-1]):
        assert b == max(a + 1, math.ceil(a * growth))
    assert look_points(200, 100) == [100] and look_points(0, 3) == [1, 2, 3]
    with pytest.raises(InvalidParameterError):
        look_points(1, 10, 1.0)


# -- never worse than Cohen ----------------------------------------------------------------------


@pytest.mark.parametrize("N,radius", [(100, 0.0), (100, 0.25), (1000, 0.25), (1000, 0.5), (300, 0.1)])
def test_never_loses_to_cohen_in_exact_probability(N, radius):
    test = calibrated_test(SIGMA, ALPHA, N, radius)
    for p in (0.5, 0.6, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0):
        certify, samples = test.operating_characteristics(p)
        cohen = float(binom.sf(test.final - 1, N, p))
        assert certify >= cohen - 1e-12, p
        assert samples <= N + 1e-9


@pytest.mark.parametrize("p_a", [0.6, 0.8, 0.85, 0.9, 0.95, 0.99, 0.999, 1.0])
@pytest.mark.parametrize("N,radius", [(1000, 0.25), (200, 0.0), (1000, 0.5)])
def test_certifies_every_vote_sequence_cohen_certifies(p_a, N, radius):
    rule = SequentialRule(SIGMA, ALPHA, N, radius=radius)
    rng = np.random.default_rng(int(p_a * 1000) + N)
    for _ in range(40):
        votes = rng.random(N) < p_a
        outcome = rule.replay(votes)
        if _cohen_certifies(int(votes.sum()), N, radius):
            assert outcome.certified and outcome.radius >= radius and outcome.stop_reason == "certified"
        if outcome.stop_reason == "futile":  # only when even a unanimous remainder could not certify
            assert not _cohen_certifies(outcome.successes + N - outcome.n, N, radius)
        assert outcome.stop_reason in STOP_REASONS and outcome.n <= N


def test_certificate_at_the_cap_is_cohens_own_bound():
    rule = SequentialRule(SIGMA, ALPHA, 1000, radius=0.25)
    votes = [True] * 880 + [False] * 120  # too many failures for an early look, enough for Cohen's
    votes = [bool(v) for v in np.random.default_rng(0).permutation(votes)]
    outcome = rule.replay(votes)
    assert outcome.n == 1000 and outcome.stop_reason == "certified"
    assert outcome.p_lower == clopper_pearson_lower(880, 1000, ALPHA)
    assert outcome.radius == _cohen_radius(880, 1000) >= 0.25


def test_early_certificate_is_the_target_itself():
    rule = SequentialRule(SIGMA, ALPHA, 1000, radius=0.25)
    outcome = rule.replay([True] * 1000)
    assert outcome.stop_reason == "certified" and outcome.n < 100
    assert outcome.radius == 0.25 and outcome.p_lower == pytest.approx(norm.cdf(1.0), rel=1e-15)


def test_a_target_of_zero_certifies_the_label():
    rule = SequentialRule(SIGMA, ALPHA, 200, radius=0.0)
    outcome = rule.replay([True] * 200)
    assert outcome.certified and outcome.radius == 0.0 and outcome.p_lower == 0.5 and outcome.n < 20


# -- stops ---------------------------------------------------------------------------------------


def test_all_wrong_votes_are_futile_as_soon_as_no_look_can_certify():
    rule = SequentialRule(SIGMA, ALPHA, 1000, radius=0.25)
    outcome = rule.replay([False] * 1000)
    c = final_threshold(1000, SIGMA, ALPHA, 0.25)
    assert outcome.stop_reason == "futile" and not outcome.certified and outcome.radius == 0.0
    assert outcome.n == min(n for n in rule.looks() if n > 1000 - c)


def test_data_shorter_than_the_rule_needs_ends_without_a_certificate():
    rule = SequentialRule(SIGMA, ALPHA, 1000, radius=0.25)
    first = rule.replay([True] * 1000).n
    outcome = rule.replay([True] * (first - 1))
    assert outcome.stop_reason == "ended" and not outcome.certified and outcome.radius == 0.0
    assert rule.replay([]).stop_reason == "ended"
    # an early rejection before the data ran out still stands
    assert rule.replay([True] * first).certified


def test_budget_reached_without_the_target_abstains():
    rule = SequentialRule(SIGMA, ALPHA, 1000, radius=0.25)
    votes = [i % 7 != 0 for i in range(1000)]  # 857 of 1000: Cohen cannot certify 0.25 either
    assert not _cohen_certifies(sum(votes), 1000, 0.25)
    outcome = rule.replay(votes)
    assert not outcome.certified and outcome.stop_reason in ("budget", "futile")


# -- without a target ----------------------------------------------------------------------------


def test_untargeted_rule_certifies_a_grid_radius_up_to_cohens():
    rule = SequentialRule(SIGMA, ALPHA, 300)
    assert rule.tolerance == pytest.approx(0.1 * SIGMA)
    grid = rule.grid
    assert grid[0] == 0.0 and all(b - a == pytest.approx(rule.tolerance) for a, b in zip(grid, grid[1:]))
    assert grid[-1] <= max_certifiable_radius(300, SIGMA, ALPHA) < grid[-1] + rule.tolerance
    assert rule.ceiling == grid[-1]
    tests = rule.tests()
    assert len({t.looks for t in tests}) == 1  # one schedule for all
    assert all(t.type_one_error <= ALPHA for t in tests)
    rng = np.random.default_rng(5)
    for p_a in (0.7, 0.9, 0.97, 1.0):
        votes = rng.random(300) < p_a
        outcome = rule.replay(votes)
        assert outcome.stop_reason in ("settled", "budget")
        if outcome.certified:
            assert outcome.radius in grid
        if outcome.n == 300:  # run to the cap: within one grid step of Cohen's radius, never above it
            cohen = _cohen_radius(int(votes.sum()), 300)
            assert outcome.radius <= cohen < outcome.radius + rule.tolerance + 1e-12 or not outcome.certified


def test_untargeted_rule_refuses_a_tolerance_that_needs_too_many_tests():
    with pytest.raises(InvalidParameterError, match="tolerance"):
        SequentialRule(SIGMA, ALPHA, 1000, tolerance=0.001).check_feasible()
    top = max_certifiable_radius(1000, SIGMA, ALPHA)
    fine = SequentialRule(SIGMA, ALPHA, 1000, tolerance=top / (MAX_GRID_RADII - 0.5))
    fine.check_feasible()
    assert len(fine.grid) == MAX_GRID_RADII


# -- parameters ----------------------------------------------------------------------------------


def test_params_name_the_design_and_replay_the_rule():
    rule = SequentialRule(SIGMA, ALPHA, 500, radius=0.25)
    params = rule.params()
    assert params["design"] == DESIGN and params["radius"] == 0.25
    again = SequentialRule(SIGMA, ALPHA, 500, radius=params["radius"], tolerance=params["tolerance"],
                           growth=params["growth"], futility_growth=params["futility_growth"],
                           prior=tuple(params["prior"]), futility_alpha=params["futility_alpha"])
    assert again == rule and again.looks() == rule.looks()


def test_check_feasible_names_cohens_minimum():
    with pytest.raises(InvalidParameterError, match="N=301"):
        SequentialRule(SIGMA, ALPHA, 300, radius=0.5).check_feasible()
    SequentialRule(SIGMA, ALPHA, 301, radius=0.5).check_feasible()
    with pytest.raises(InvalidParameterError, match="impractical"):
        SequentialRule(SIGMA, ALPHA, 300, radius=3.0).check_feasible()


@pytest.mark.parametrize("kwargs", [
    dict(noise_sd=0.0), dict(alpha=1.0), dict(budget=0), dict(radius=-1.0), dict(radius=True),
    dict(radius=float("inf")), dict(radius="0.25"), dict(tolerance=0.0), dict(tolerance=-0.1), dict(growth=1.0),
    dict(growth=1.001), dict(growth=float("nan")), dict(futility_growth=0.9), dict(futility_growth=True), dict(prior=(0.0, 1.0)), dict(prior="ab"), dict(futility_alpha=0.0),
])
def test_sequential_rule_rejects_bad_parameters(kwargs):
    params = dict(noise_sd=SIGMA, alpha=ALPHA, budget=100)
    params.update(kwargs)
    with pytest.raises(InvalidParameterError):
        SequentialRule(**params)


def test_step_refuses_a_count_that_is_not_a_look():
    rule = SequentialRule(SIGMA, ALPHA, 100, radius=0.25)
    with pytest.raises(InvalidParameterError, match="looks"):
        rule.step(rule.start(), 3, rule.looks()[0] + 1 if rule.looks()[0] + 1 not in rule.looks() else 101)
    with pytest.raises(InvalidParameterError):
        rule.step(rule.start(), rule.looks()[0] + 1, rule.looks()[0])
