"""The statistics core agrees exactly with the reference formulas (Cohen et al. 2019)."""

import math

import numpy as np
import pytest
from scipy.stats import beta, binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from robust_api.errors import InvalidParameterError
from robust_api.statistics import (
    certify_from_counts,
    clopper_pearson_lower,
    max_certifiable_radius,
    predict_from_counts,
    radius_from_p_lower,
    top_label,
)

ALPHAS = [0.1, 0.01, 0.001, 1e-6]
NS = [1, 2, 5, 20, 100, 1000, 10000]


def _grid():
    for n in NS:
        for n_a in sorted({0, 1, n // 3, n // 2, n // 2 + 1, (9 * n) // 10, n - 1, n}):
            if 0 <= n_a <= n:
                for alpha in ALPHAS:
                    yield n_a, n, alpha


@pytest.mark.parametrize("n_a,n,alpha", list(_grid()))
def test_lower_bound_equals_reference(n_a, n, alpha):
    ours = clopper_pearson_lower(n_a, n, alpha)
    reference = 0.0 if n_a == 0 else beta.ppf(alpha, n_a, n - n_a + 1)
    assert ours == reference
    # the predecessor's formula: statsmodels' two-sided interval at 2·alpha
    assert ours == pytest.approx(proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0], abs=1e-12)


@pytest.mark.parametrize("n_a,n,alpha", list(_grid()))
def test_certify_equals_reference(n_a, n, alpha):
    sigma = 0.25
    counts = {"cat": n_a, "dog": n - n_a}
    outcome = certify_from_counts("cat", counts, n, sigma, alpha)
    p_lower = 0.0 if n_a == 0 else beta.ppf(alpha, n_a, n - n_a + 1)
    assert outcome.p_lower == p_lower
    if p_lower > 0.5:
        assert outcome.label == "cat"
        assert outcome.radius == sigma * norm.ppf(p_lower)
    else:
        assert outcome.label is None and outcome.radius == 0.0


def test_failed_samples_count_against_the_guess():
    # 90 votes for the guess, 10 failed samples: n = 100, not 90
    with_errors = certify_from_counts("cat", {"cat": 90}, 100, 0.25, 0.001)
    assert with_errors.p_lower == beta.ppf(0.001, 90, 11)
    without = certify_from_counts("cat", {"cat": 90}, 90, 0.25, 0.001)
    assert with_errors.radius < without.radius


def test_counts_exceeding_n_are_rejected():
    with pytest.raises(InvalidParameterError):
        certify_from_counts("cat", {"cat": 60, "dog": 50}, 100, 0.25, 0.001)


@pytest.mark.parametrize("n1,n2,alpha", [(n1, n2, a) for n1 in (0, 1, 5, 30, 60, 100) for n2 in (0, 1, 10, 40) for a in (0.05, 0.001)])
def test_predict_equals_reference(n1, n2, alpha):
    counts = {"a": n1, "b": n2, "c": min(n2, 3)}
    outcome = predict_from_counts(counts, alpha)
    first, second = sorted(counts.values(), reverse=True)[:2]
    if first == 0:
        assert outcome.label is None
        return
    p_value = binomtest(first, first + second, 0.5).pvalue
    assert outcome.p_value == p_value
    expected = top_label(counts) if p_value <= alpha else None
    assert outcome.label == expected


def test_predict_errors_join_the_runner_up():
    assert predict_from_counts({"a": 20}, 0.001).label == "a"
    outcome = predict_from_counts({"a": 20}, 0.001, n_errors=10)
    assert outcome.p_value == binomtest(20, 30, 0.5).pvalue
    assert outcome.label is None


def test_top_label_tie_break_is_deterministic():
    assert top_label({"dog": 3, "cat": 3, "emu": 1}) == "cat"
    assert top_label({"cat": 3, "dog": 3}) == top_label({"dog": 3, "cat": 3})
    assert top_label({}) is None
    assert top_label({"a": 0}) is None


def test_ceiling_matches_table_in_statistics_doc():
    # ../shared/STATISTICS.md: sigma * Phi^-1(alpha^(1/n)), alpha = 0.001
    table = {(0.12, 100): 0.180, (0.25, 100): 0.375, (0.25, 1000): 0.616, (0.50, 20): 0.274, (0.50, 10000): 1.60}
    for (sigma, n), expected in table.items():
        assert max_certifiable_radius(n, sigma, 0.001) == pytest.approx(sigma * norm.ppf(0.001 ** (1 / n)), rel=1e-9)
        assert round(max_certifiable_radius(n, sigma, 0.001), 3 if expected < 1 else 2) == expected


def test_wrong_vote_costs_match_doc():
    # R/sigma at n = 100: 1.500 (100/100), 1.349 (99), 1.241 (98), 1.014 (95), 0.757 (90)
    for n_a, ratio in [(100, 1.500), (99, 1.349), (98, 1.241), (95, 1.014), (90, 0.757)]:
        outcome = certify_from_counts("a", {"a": n_a}, 100, 1.0, 0.001)
        assert round(outcome.radius, 3) == ratio


def test_bounds_are_float64_and_monotone():
    values = [clopper_pearson_lower(k, 500, 0.001) for k in range(501)]
    assert all(isinstance(v, float) for v in values)
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[0] == 0.0 and values[-1] < 1.0


@pytest.mark.parametrize("bad", [0, 1, -0.5, 1.5, math.nan, math.inf, "0.01", None, True])
def test_bad_alpha(bad):
    with pytest.raises(InvalidParameterError):
        clopper_pearson_lower(5, 10, bad)


def test_bad_counts():
    with pytest.raises(InvalidParameterError):
        clopper_pearson_lower(11, 10, 0.01)
    with pytest.raises(InvalidParameterError):
        clopper_pearson_lower(-1, 10, 0.01)
    with pytest.raises(InvalidParameterError):
        clopper_pearson_lower(1.5, 10, 0.01)
    with pytest.raises(InvalidParameterError):
        radius_from_p_lower(0.5, 0.25)
    assert clopper_pearson_lower(np.int64(5), np.int64(10), 0.01) == beta.ppf(0.01, 5, 6)
