"""The top-2 bound and every method's online/offline paths (fast, no Monte Carlo).

Covers the top-2 bound of ``robust_api.statistics``, and ``RobustAPI.certify`` /
``certify_batch`` with every method: an online certificate must equal the offline
re-certification of its own log. The sequential rule itself is tested in
``test_sequential_rule.py``; statistical soundness (thousands of seeded runs) lives in
``test_soundness_methods.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from robust_api import (
    ABSTAIN,
    InvalidInputError,
    InvalidParameterError,
    LogMismatchError,
    OfflineModeError,
    ProviderError,
    RobustAPI,
    open_log,
)
from robust_api.offline import certify_from_log
from robust_api.sequential import STOP_REASONS, SequentialRule
from robust_api.statistics import (
    TOP2_ALPHA_SPLIT,
    certify_from_counts,
    certify_top2_from_counts,
    clopper_pearson_lower,
    clopper_pearson_upper,
    max_certifiable_radius,
)

from doubles import Counting, FakeProvider, halfspace_label

SIGMA = 0.25
ALPHA = 0.001


def _cohen_n_min(radius: float, sigma: float = SIGMA, alpha: float = ALPHA) -> int:
    return math.ceil(math.log(alpha) / math.log(norm.cdf(radius / sigma)))


# -- the top-2 bound ---------------------------------------------------------------------------


def _spread_counts(n_a: int, n_b: int, rest: int, labels: int = 50) -> dict[str, int]:
    counts = {"A": n_a, "B": n_b}
    for i in range(rest):
        counts[f"other{i % labels}"] = counts.get(f"other{i % labels}", 0) + 1
    return counts


def test_top2_radius_formula():
    counts = _spread_counts(600, 200, 200)
    out = certify_top2_from_counts("A", "B", counts, 1000, SIGMA, ALPHA)
    split_a, split_b, split_rest = TOP2_ALPHA_SPLIT
    p_lower = clopper_pearson_lower(600, 1000, ALPHA * split_a)
    p_upper = min(
        max(clopper_pearson_upper(200, 1000, ALPHA * split_b), clopper_pearson_upper(200, 1000, ALPHA * split_rest)),
        1 - p_lower,
    )
    assert out.label == "A"
    assert out.p_lower == p_lower and out.p_upper == p_upper
    assert out.radius == pytest.approx(SIGMA / 2 * (norm.ppf(p_lower) - norm.ppf(p_upper)), rel=1e-12)


@pytest.mark.parametrize("n", [200, 1000, 5000])
def test_top2_beats_cohen_when_votes_are_split(n):
    counts = _spread_counts(6 * n // 10, 2 * n // 10, 2 * n // 10, labels=max(2, n // 10))
    top2 = certify_top2_from_counts("A", "B", counts, n, SIGMA, ALPHA)
    cohen = certify_from_counts("A", counts, n, SIGMA, ALPHA)
    assert top2.label == "A"
    assert top2.radius > cohen.radius


@pytest.mark.parametrize("n", [50, 100, 1000])
def test_top2_loses_to_cohen_with_unanimous_votes(n):
    for runner_up in ("B", None):
        top2 = certify_top2_from_counts("A", runner_up, {"A": n}, n, SIGMA, ALPHA)
        cohen = certify_from_counts("A", {"A": n}, n, SIGMA, ALPHA)
        assert 0 < top2.radius < cohen.radius
        # with every vote for A the top-2 bound is Cohen's at α·split[0]
        assert top2.radius == pytest.approx(max_certifiable_radius(n, SIGMA, ALPHA * TOP2_ALPHA_SPLIT[0]), rel=1e-9)


def test_top2_without_runner_up_bounds_everything_else_together():
    counts = {"A": 700, "x": 100, "y": 100, "z": 100}
    out = certify_top2_from_counts("A", None, counts, 1000, SIGMA, ALPHA)
    split_a, split_b, split_rest = TOP2_ALPHA_SPLIT
    assert out.p_lower == clopper_pearson_lower(700, 1000, ALPHA * split_a)
    assert out.p_upper == clopper_pearson_upper(300, 1000, ALPHA * (split_b + split_rest))
    assert out.label == "A" and out.radius > 0
    # no guess abstains; failed samples (n larger than the counts) count against A
    assert certify_top2_from_counts(None, None, counts, 1000, SIGMA, ALPHA).label is None
    with_errors = certify_top2_from_counts("A", None, {"A": 700}, 1000, SIGMA, ALPHA)
    assert with_errors.p_lower == out.p_lower and with_errors.p_upper == out.p_upper


@pytest.mark.parametrize(
    "split", [(0.5, 0.5, 0.0), (0.5, 0.25), (0.6, 0.3, 0.3), (1.0, -0.5, 0.5), (0.2, 0.2, 0.2, 0.4)]
)
def test_top2_rejects_bad_alpha_split(split):
    with pytest.raises(InvalidParameterError, match="alpha_split"):
        certify_top2_from_counts("A", "B", {"A": 10}, 10, SIGMA, ALPHA, alpha_split=split)


def test_top2_rejects_bad_counts():
    with pytest.raises(InvalidParameterError):
        certify_top2_from_counts("A", "A", {"A": 10}, 10, SIGMA, ALPHA)
    with pytest.raises(InvalidParameterError):
        certify_top2_from_counts("A", "B", {"A": 10, "B": 5}, 10, SIGMA, ALPHA)
    with pytest.raises(InvalidParameterError):
        certify_top2_from_counts("A", "B", {"A": 0}, 0, SIGMA, ALPHA)


# -- RobustAPI: online == offline for every method ---------------------------------------------


def ThreeWay():
    """A deterministic base classifier on one pixel, with three labels; counts what it is sent."""
    return Counting(labels_of=lambda batch: np.where(batch[:, 0, 0, 0] < 0.5, "A",
                                                     np.where(batch[:, 0, 0, 0] < 0.6, "B", "C")).tolist())


def _image(value: float = 0.2) -> np.ndarray:
    return np.full((8, 8, 3), value, dtype=np.float32)


CONFIGS = [
    dict(method="cohen"),
    dict(method="cohen", selection="clean"),
    dict(method="top2"),
    dict(method="top2", selection="clean"),
    dict(method="sequential"),
    dict(method="sequential", radius=0.1),
    dict(method="sequential", selection="noise"),
    dict(method="sequential", selection="noise", radius=0.1),
    dict(method="sequential", tolerance=0.01),
]


def _config_id(config):
    return "-".join(f"{k}={v}" for k, v in config.items())


def _same(a, b):
    assert a.label == b.label or (a.label is ABSTAIN and b.label is ABSTAIN)
    for field in ("radius", "p_lower", "p_upper", "n", "n0", "errors", "stop_reason", "counts", "selection_counts",
                  "guess", "method", "selection", "budget", "ceiling", "target_radius", "noise_sd", "alpha"):
        assert getattr(a, field) == getattr(b, field), field


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_online_certificate_equals_offline_recertification(config):
    provider = ThreeWay()
    kwargs = dict(config)
    expected_selection = kwargs.get("selection") or ("clean" if kwargs["method"] == "sequential" else "noise")
    if expected_selection == "noise":
        kwargs["N0"] = 10
    cert = RobustAPI(provider, log=False, seed=7).certify(_image(), noise_sd=SIGMA, N=300, alpha=ALPHA, **kwargs)
    assert cert.label == "A" and cert.radius > 0 and not cert.offline
    assert provider.images == cert.queries == cert.samples == cert.n0 + cert.n
    # the fields
    assert cert.method == config["method"] and cert.selection == expected_selection
    assert cert.n0 == (1 if expected_selection == "clean" else 10)
    assert cert.budget == 300 and cert.target_radius == config.get("radius")
    if config["method"] == "cohen":
        assert cert.n == 300 and cert.stop_reason is None and cert.p_upper is None
        assert cert.ceiling == max_certifiable_radius(300, SIGMA, ALPHA)
    elif config["method"] == "top2":
        assert cert.n == 300 and cert.stop_reason is None and cert.p_upper is not None
        assert cert.ceiling == max_certifiable_radius(300, SIGMA, ALPHA * TOP2_ALPHA_SPLIT[0])
        assert cert.radius == pytest.approx(SIGMA / 2 * (norm.ppf(cert.p_lower) - norm.ppf(cert.p_upper)), rel=1e-12)
    else:
        rule = SequentialRule(SIGMA, ALPHA, 300, radius=config.get("radius"), tolerance=config.get("tolerance"))
        assert cert.stop_reason in STOP_REASONS and cert.n in rule.looks()
        assert cert.ceiling == rule.ceiling
        votes = [r.error is None and r.label == cert.guess for r in cert.logs.phase_records("estimation")]
        assert len(votes) == cert.n  # the online run queried exactly up to its stopping look
        outcome = rule.replay(votes)
        assert (outcome.n, outcome.p_lower, outcome.radius, outcome.stop_reason) == (
            cert.n, cert.p_lower, cert.radius, cert.stop_reason)
        if config.get("radius"):
            assert cert.stop_reason == "certified" and cert.radius >= config["radius"]
            assert cert.n >= rule.min_samples()
        if config.get("radius"):
            assert cert.n < 300  # stopped early
    # offline, twice: with the logged method and naming it
    for offline in (
        RobustAPI("anything", online=False).certify(cert.logs),
        certify_from_log(cert.logs, alpha=ALPHA, method=config["method"]),
    ):
        assert offline.offline and offline.queries == 0
        _same(cert, offline)
        assert tuple(offline) == (cert.label, cert.radius)


def test_sequential_log_cannot_be_recertified_with_a_fixed_n_method():
    cert = RobustAPI(ThreeWay(), log=False, seed=1).certify(_image(), noise_sd=SIGMA, N=300, method="sequential")
    for method in ("cohen", "top2"):
        with pytest.raises(LogMismatchError, match="sequential"):
            certify_from_log(cert.logs, method=method)
        with pytest.raises(LogMismatchError):
            RobustAPI("x", online=False).certify(cert.logs, method=method)


def test_cohen_log_can_be_replayed_sequentially():
    cert = RobustAPI(ThreeWay(), log=False, seed=2).certify(_image(), noise_sd=SIGMA, N0=10, N=300)
    assert cert.method == "cohen"
    replayed = certify_from_log(cert.logs, method="sequential")
    assert replayed.method == "sequential" and replayed.selection == "noise" and replayed.budget == 300
    rule = SequentialRule(SIGMA, ALPHA, 300)
    votes = [r.error is None and r.label == cert.guess for r in cert.logs.phase_records("estimation")]
    outcome = rule.replay(votes)
    assert (replayed.n, replayed.p_lower, replayed.radius, replayed.stop_reason) == (
        outcome.n, outcome.p_lower, outcome.radius, outcome.stop_reason)
    assert replayed.guess == cert.guess and replayed.label == "A"
    # with a target, and a smaller budget than logged
    targeted = certify_from_log(cert.logs, method="sequential", radius=0.1, N=200)
    assert targeted.target_radius == 0.1 and targeted.budget == 200 and targeted.stop_reason == "certified"
    # radius/tolerance belong to the sequential method offline too
    with pytest.raises(InvalidParameterError):
        certify_from_log(cert.logs, method="cohen", radius=0.1)


def test_clean_selection_spends_exactly_one_selection_query():
    for method in ("cohen", "top2", "sequential"):
        provider = Counting()
        cert = RobustAPI(provider, log=False, seed=4).certify(
            _image(0.2), noise_sd=SIGMA, N=200, method=method, selection="clean")
        assert cert.n0 == 1 and cert.selection_counts == {"A": 1}
        assert [r.phase for r in cert.logs].count("clean") == 1
        assert not cert.logs.phase_records("selection")
        assert provider.images == 1 + cert.n == cert.queries


@pytest.mark.parametrize("method", ["cohen", "sequential"])
def test_clean_selection_sends_the_image_as_it_is(method):
    """The clean query is noise-free and not denoised; the estimation samples are noisy and denoised."""
    provider = Counting(keep=True)  # keeps a copy of every batch
    denoised = []

    def denoiser(images):
        denoised.append(len(images))
        return images

    image = _image(0.3)
    cert = RobustAPI(provider, denoiser=denoiser, log=False, seed=8).certify(
        image, noise_sd=SIGMA, N=100, method=method, selection="clean")
    first = provider.batches[0]
    assert first.shape == (1,) + image.shape and np.array_equal(first[0], image)
    assert cert.selection_counts == {"A": 1}
    assert sum(denoised) == cert.n  # only the estimation samples went through the denoiser
    noisy = np.concatenate(provider.batches[1:])
    assert len(noisy) == cert.n and noisy[:, 0, 0, 0].std() > 0.1


@pytest.mark.parametrize("method", ["cohen", "top2", "sequential", None])
def test_clean_selection_refuses_N0(method):
    provider = Counting()
    with pytest.raises(InvalidParameterError, match="N0"):
        RobustAPI(provider, log=False).certify(_image(), noise_sd=SIGMA, N0=5, N=100, method=method, selection="clean")
    assert provider.images == 0


def test_sequential_selects_with_noise_when_N0_is_given():
    provider = ThreeWay()
    cert = RobustAPI(provider, log=False, seed=3).certify(_image(), noise_sd=SIGMA, N0=5, N=100, radius=0.1)
    assert cert.method == "sequential" and cert.selection == "noise" and cert.n0 == 5
    assert provider.images == 5 + cert.n


@pytest.mark.parametrize("method,extra", [(None, dict(tolerance=0.01)), ("cohen", dict(radius=0.1)),
                                          ("cohen", dict(tolerance=0.01)), ("top2", dict(radius=0.1)),
                                          ("top2", dict(tolerance=0.01))])
def test_radius_and_tolerance_need_the_sequential_method(method, extra):
    provider = Counting()
    with pytest.raises(InvalidParameterError, match="sequential"):
        RobustAPI(provider, log=False).certify(_image(), noise_sd=SIGMA, N=100, method=method, **extra)
    assert provider.images == 0 and provider.calls == 0


@pytest.mark.parametrize("radius", [0.0, 0.1])
def test_a_target_radius_makes_sequential_the_default(radius):
    """With a target, the default method is the sequential rule (it never loses to Cohen's at the same N)."""
    cert = RobustAPI(ThreeWay(), log=False, seed=4).certify(_image(), noise_sd=SIGMA, N=300, radius=radius)
    assert cert.method == "sequential" and cert.selection == "clean" and cert.target_radius == radius
    assert cert.label == "A" and cert.radius >= radius and cert.stop_reason == "certified" and cert.n < 300
    plain = RobustAPI(ThreeWay(), log=False, seed=4).certify(_image(), noise_sd=SIGMA, N=300)
    assert plain.method == "cohen" and plain.n == 300


@pytest.mark.parametrize("radius,N", [(0.5, 300), (0.25, 39), (1.4, 1000), (3.0, 1000), (-0.1, 1000),
                                      (float("inf"), 100), (float("nan"), 100), (True, 100), ("0.1", 100)])
def test_infeasible_or_bad_target_is_refused_before_any_query(tmp_path, radius, N):
    provider = Counting()
    api = RobustAPI(provider, log=tmp_path / "log.sqlite3", seed=0)
    with pytest.raises(InvalidParameterError):
        api.certify(_image(), noise_sd=SIGMA, N=N, method="sequential", radius=radius)
    assert provider.images == 0 and provider.calls == 0
    with open_log(tmp_path / "log.sqlite3") as log:
        assert len(list(log)) == 0  # no call opened either


def test_infeasible_target_message_names_the_needed_budget():
    needed = SequentialRule(SIGMA, ALPHA, 300, radius=0.5).min_samples()
    with pytest.raises(InvalidParameterError, match=f"N={needed}"):
        RobustAPI(Counting(), log=False).certify(_image(), noise_sd=SIGMA, N=300, method="sequential", radius=0.5)


@pytest.mark.parametrize("kwargs", [dict(method="bayes"), dict(method="Cohen"), dict(selection="none"),
                                    dict(method="sequential", selection="clean-ish"), dict(method=1)])
def test_unknown_method_or_selection_raises_before_any_query(kwargs):
    provider = Counting()
    with pytest.raises(InvalidParameterError):
        RobustAPI(provider, log=False).certify(_image(), noise_sd=SIGMA, N=100, **kwargs)
    assert provider.images == 0


def NoLabel():
    """A provider whose answers carry no label (an empty API response)."""
    return FakeProvider(lambda image: None, identity="test:no-label", batch=64)


def test_clean_query_without_a_label_abstains_without_estimation_queries():
    provider = NoLabel()
    cert = RobustAPI(provider, log=False, seed=0).certify(_image(), noise_sd=SIGMA, N=300, method="sequential")
    assert cert.label is ABSTAIN and cert.stop_reason == "no_guess" and cert.guess is None
    assert cert.n == 0 and cert.radius == 0.0 and cert.counts == {}
    assert provider.images_sent == cert.queries == 1  # the clean query only
    assert not cert.logs.phase_records("estimation")
    offline = certify_from_log(cert.logs)
    assert offline.label is ABSTAIN and offline.stop_reason == "no_guess" and offline.n == 0


def test_failing_clean_query_is_logged_and_replays_as_no_guess(tmp_path):
    def broken(batch):
        raise RuntimeError("the API is down")

    path = tmp_path / "log.sqlite3"
    with pytest.raises(ProviderError, match="the API is down"):
        RobustAPI(broken, log=path, seed=0).certify(_image(), noise_sd=SIGMA, N=300, method="sequential")
    with open_log(path) as log:
        (call,) = list(log)
        assert call.status == "failed"
        assert [(r.phase, r.label) for r in call] == [("clean", None)] and call[0].error
        cert = RobustAPI("x", online=False).certify(call)
    assert cert.label is ABSTAIN and cert.stop_reason == "no_guess" and cert.n == 0 and cert.selection == "clean"


# -- certify_batch ------------------------------------------------------------------------------


BATCH_VALUES = [0.2, 0.45, 0.3, 0.9, 0.5]  # clear A, borderline A, A, clear B, coin flip


@pytest.mark.parametrize("total,extra", [(400, {}), (900, {}), (3000, {}), (900, dict(radius=0.1)),
                                         (900, dict(N=150)), (900, dict(selection="noise", N0=9))])
def test_certify_batch_respects_the_shared_budget(total, extra):
    provider = Counting()
    images = [_image(v) for v in BATCH_VALUES]
    certs = RobustAPI(provider, log=False, seed=5).certify_batch(images, noise_sd=SIGMA, total_queries=total, **extra)
    assert len(certs) == len(images)
    assert provider.images <= total
    assert sum(c.queries for c in certs) == provider.images
    cap = extra.get("N", math.ceil(2 * total / len(images)))
    for cert, value in zip(certs, BATCH_VALUES):
        assert cert.method == "sequential" and cert.stop_reason in STOP_REASONS
        assert cert.budget == cap and cert.n <= cap and cert.target_radius == extra.get("radius")
        assert cert.logs.params["total_queries"] == total
        if cert.label is not ABSTAIN:
            assert cert.label == halfspace_label(_image(value))
        # each certificate is the offline replay of its own log
        offline = RobustAPI("x", online=False).certify(cert.logs)
        _same(cert, offline)
    assert certs[0].label == "A" and certs[3].label == "B"
    if total == 400:  # the budget cannot finish every image: some are stopped by it
        assert any(c.stop_reason == "ended" for c in certs)


def test_certify_batch_refuses_too_small_a_budget_before_any_query():
    provider = Counting()
    images = [_image(v) for v in BATCH_VALUES]
    first = SequentialRule(SIGMA, ALPHA, 100).looks()[0]
    needed = len(images) * (1 + first)
    with pytest.raises(InvalidParameterError, match=f"total_queries >= {needed}"):
        RobustAPI(provider, log=False).certify_batch(images, noise_sd=SIGMA, total_queries=needed - 1, N=100)
    assert provider.images == 0
    RobustAPI(provider, log=False, seed=0).certify_batch(images, noise_sd=SIGMA, total_queries=needed, N=100)
    assert 0 < provider.images <= needed


def test_certify_batch_refuses_an_infeasible_target_before_any_query():
    provider = Counting()
    with pytest.raises(InvalidParameterError):
        RobustAPI(provider, log=False).certify_batch([_image(), _image(0.4)], noise_sd=SIGMA, total_queries=200, radius=0.5)
    assert provider.images == 0


@pytest.mark.parametrize("images", [_image(), "image.png", [], (), None, 3])
def test_certify_batch_needs_a_list_of_images(images):
    provider = Counting()
    with pytest.raises(InvalidParameterError, match="list"):
        RobustAPI(provider, log=False).certify_batch(images, noise_sd=SIGMA, total_queries=1000)
    assert provider.images == 0


def test_certify_batch_checks_every_image_before_any_query():
    provider = Counting()
    with pytest.raises(InvalidInputError):
        RobustAPI(provider, log=False).certify_batch([_image(), np.full((8, 8, 3), np.nan)], noise_sd=SIGMA,
                                                     total_queries=1000)
    assert provider.images == 0


def test_certify_batch_is_online_only():
    with pytest.raises(OfflineModeError):
        RobustAPI("x", online=False).certify_batch([_image()], noise_sd=SIGMA, total_queries=1000)
