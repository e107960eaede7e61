"""certify_from_votes / predict_from_votes: the one function every certificate comes from."""

import math

import numpy as np
import pytest

from robust_api import RobustAPI
from robust_api.certification import certify_from_votes, count_labels, predict_from_votes
from robust_api.errors import InvalidParameterError, LogMismatchError
from robust_api.offline import certify_from_log, logged_rule
from robust_api.query_logs.records import count_votes, votes_in_order
from robust_api.sequential import SequentialRule
from robust_api.statistics import clopper_pearson_lower


def test_counts_and_labels_in_order_give_the_same_certificate():
    labels = ["A"] * 90 + ["B"] * 7 + [None] * 3
    counts, errors = count_labels(labels)
    assert counts == {"A": 90, "B": 7} and errors == 3 and list(counts) == ["A", "B"]
    for method in ("cohen", "top2"):
        from_labels = certify_from_votes({"A": 18, "B": 2}, labels, 0.25, 0.001, method=method)
        from_counts = certify_from_votes({"A": 18, "B": 2}, counts, 0.25, 0.001, method=method, n=100)
        assert from_labels == from_counts
        assert from_labels.n == 100 and from_labels.errors == 3 and from_labels.guess == "A"
    cohen = certify_from_votes({"A": 18, "B": 2}, counts, 0.25, 0.001, n=100)
    # failed samples count against the guess: the bound is on 90 of 100, not 90 of 97
    assert cohen.p_lower == pytest.approx(clopper_pearson_lower(90, 100, 0.001))
    assert cohen.radius == pytest.approx(0.25 * _ndtri(cohen.p_lower))


def _ndtri(p):
    from scipy.special import ndtri

    return float(ndtri(p))


def test_no_guess_abstains_without_reading_the_estimation():
    out = certify_from_votes({}, [], 0.25, 0.001, budget=50)
    assert out.label is None and out.stop_reason == "no_guess" and out.n == 0 and out.budget == 50
    rule = SequentialRule(0.25, 0.001, 200)
    seq = certify_from_votes({}, ["A"] * 10, 0.25, 0.001, method="sequential", rule=rule)
    assert seq.label is None and seq.stop_reason == "no_guess" and seq.ceiling == rule.ceiling


def test_bad_requests_are_refused():
    with pytest.raises(InvalidParameterError, match="method"):
        certify_from_votes({"A": 1}, {"A": 5}, 0.25, 0.001, method="bonferroni")
    with pytest.raises(InvalidParameterError, match="sample order"):
        certify_from_votes({"A": 1}, {"A": 5}, 0.25, 0.001, method="sequential", rule=SequentialRule(0.25, 0.001, 10))
    with pytest.raises(InvalidParameterError, match="less than"):
        certify_from_votes({"A": 1}, {"A": 5}, 0.25, 0.001, n=4)
    with pytest.raises(LogMismatchError, match="no estimation samples"):
        certify_from_votes({"A": 1}, [], 0.25, 0.001)


def test_every_path_gives_what_certify_from_votes_gives(tmp_path):
    """Online results, offline re-certification and the function on the logged votes agree."""
    image = np.full((4, 4, 1), 0.45, np.float32)

    def noisy_halfspace(batch):
        return ["A" if x[0, 0, 0] < 0.5 else "B" for x in batch]

    api = RobustAPI(noisy_halfspace, log=tmp_path / "log.sqlite3", seed=3)
    for method in ("cohen", "top2", "sequential"):
        cert = api.certify(image, noise_sd=0.25, N0=10, N=400, method=method, selection="noise")
        logs = cert.logs
        selection, _ = count_votes(logs.phase_records("selection"))
        estimation = votes_in_order(logs.phase_records("estimation"))
        rule = logged_rule(logs, 0.25, 0.001) if method == "sequential" else None
        direct = certify_from_votes(selection, estimation, 0.25, 0.001, method=method, rule=rule)
        offline = certify_from_log(logs)
        for result in (cert, offline):
            assert (result.radius, result.p_lower, result.n, result.counts) == \
                (direct.radius, direct.p_lower, direct.n, direct.counts)
            assert (result.label == direct.label) or (direct.label is None and result.abstained)


@pytest.mark.parametrize("method", ["cohen", "top2"])
def test_soundness_at_the_boundary(method):
    """Votes drawn with p_A just at the level the bound must not exceed: the fraction of
    certificates whose p_lower overshoots the true p_A stays below α (plus sampling slack)."""
    rng = np.random.default_rng(0)
    alpha, n, p_true, trials = 0.05, 60, 0.8, 4000
    overshoots = 0
    for _ in range(trials):
        votes = rng.multinomial(n, [p_true, 0.15, 0.05])
        counts = {label: int(v) for label, v in zip("ABC", votes) if v}
        out = certify_from_votes({"A": 10}, counts, 0.25, alpha, method=method, n=n)
        overshoots += out.label == "A" and out.p_lower > p_true
    slack = 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert overshoots / trials <= alpha + slack


def test_predict_from_votes_tests_the_top_two():
    clear = predict_from_votes({"A": 80, "B": 20}, 0.25, 0.001)
    assert clear.label == "A" and clear.p_value < 0.001 and clear.n == 100
    close = predict_from_votes(["A"] * 52 + ["B"] * 48, 0.25, 0.001)
    assert close.label is None and close.errors == 0
    tie = predict_from_votes({"A": 1, "B": 1}, 0.0, 0.001)
    assert tie.label is None and tie.p_value is None
    assert predict_from_votes(["B", None, "B"], 0.0, 0.001).label == "B"
