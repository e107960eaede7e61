"""Budget planning (``robust_api.plan``), the price table and the CLI's plan / sequential certify.

The planner's numbers are checked against the closed forms of /work/shared/STATISTICS.md
(n_min = ⌈ln α / ln Φ(r/σ)⌉, ceiling σ·Φ⁻¹(α^{1/n})) and against the statistics functions
that make the certificates, so a plan never promises what a certificate cannot deliver.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from scipy.stats import norm

from robust_api import BudgetPlan, InvalidParameterError, plan
from robust_api.commands.cli import main
from robust_api.planning import MethodPlan
from robust_api.pricing import LIST_PRICE_PER_1000_USD, price_per_query, price_table
from robust_api.sequential import STOP_REASONS, SequentialRule
from robust_api.statistics import (
    TOP2_ALPHA_SPLIT,
    certify_from_counts,
    certify_top2_from_counts,
    max_certifiable_radius,
)

ALPHA = 0.001
REPO = Path(__file__).resolve().parents[2]
IMAGES = sorted((REPO / "examples" / "images").glob("*.png"))

#: STATISTICS.md, "Minimum estimation queries to certify radius r (all votes correct)", α = 0.001.
N_MIN = {
    (0.12, 0.1): 31, (0.12, 0.25): 368, (0.12, 0.5): 446_977,
    (0.25, 0.1): 17, (0.25, 0.25): 40, (0.25, 0.5): 301,
    (0.5, 0.1): 13, (0.5, 0.25): 19, (0.5, 0.5): 40,
}
#: STATISTICS.md, "Ceiling with all n votes correct", α = 0.001 (three decimals).
CEILING = {
    0.12: {20: .066, 50: .136, 100: .180, 200: .219, 500: .265, 1000: .296, 10000: .384},
    0.25: {20: .137, 50: .283, 100: .375, 200: .456, 500: .551, 1000: .616, 10000: .800},
    0.5: {20: .274, 50: .565, 100: .750, 200: .913, 500: 1.10, 1000: 1.23, 10000: 1.60},
}


def _n_min(sigma, radius, alpha=ALPHA):
    return math.ceil(math.log(alpha) / math.log(norm.cdf(radius / sigma)))


def _radius(method, sigma, k, n, alpha=ALPHA):
    """The radius each method certifies with k of n votes for the class (the certificates' own functions)."""
    if method == "top2":
        return certify_top2_from_counts("A", None, {"A": k}, n, sigma, alpha).radius
    # cohen, and sequential: with cap n it certifies whenever Cohen's test with n samples does
    return certify_from_counts("A", {"A": k}, n, sigma, alpha).radius


# -- queries needed -----------------------------------------------------------------------------


@pytest.mark.parametrize("sigma,radius", sorted(N_MIN))
def test_cohen_estimation_queries_match_the_closed_form(sigma, radius):
    result = plan(sigma, radius, ALPHA)
    cohen = result.method("cohen")
    assert cohen.estimation_queries == _n_min(sigma, radius) == N_MIN[(sigma, radius)]
    assert cohen.selection == "noise" and cohen.selection_queries == 20
    assert cohen.total_queries == 20 + cohen.estimation_queries
    n = cohen.estimation_queries
    assert _radius("cohen", sigma, n, n) >= radius > _radius("cohen", sigma, n - 1, n - 1)


@pytest.mark.parametrize("sigma,radius", sorted(N_MIN))
def test_other_methods_need_at_least_as_many_queries(sigma, radius):
    result = plan(sigma, radius, ALPHA)
    cohen, top2, seq = (result.method(m) for m in ("cohen", "top2", "sequential"))
    # unanimous top-2 is Cohen at α·split[0]
    assert top2.estimation_queries == _n_min(sigma, radius, ALPHA * TOP2_ALPHA_SPLIT[0]) > cohen.estimation_queries
    # the sequential rule's cap plans like Cohen's test: with cap N it certifies whenever Cohen's with N does
    assert seq.estimation_queries == cohen.estimation_queries
    assert seq.estimation_queries == SequentialRule(sigma, ALPHA, 10**7, radius=radius).min_samples()
    assert seq.selection == "clean" and seq.selection_queries == 1
    assert seq.total_queries == 1 + seq.estimation_queries
    for item in (top2, seq):
        n = item.estimation_queries
        assert _radius(item.method, sigma, n, n) >= radius > _radius(item.method, sigma, n - 1, n - 1)
    # a sequential rule with exactly that cap certifies unanimous votes, one less cannot
    n = seq.estimation_queries
    assert SequentialRule(sigma, ALPHA, n, radius=radius).replay([True] * n).radius >= radius
    SequentialRule(sigma, ALPHA, n, radius=radius).check_feasible()
    with pytest.raises(InvalidParameterError, match=f"at least N={n}"):
        SequentialRule(sigma, ALPHA, n - 1, radius=radius).check_feasible()


@pytest.mark.parametrize("sigma", sorted(CEILING))
def test_ceilings_match_the_table_and_the_statistics(sigma):
    for N, expected in CEILING[sigma].items():
        result = plan(sigma, alpha=ALPHA, N=N)
        assert result.N == N and result.radius is None
        cohen, top2, seq = (result.method(m) for m in ("cohen", "top2", "sequential"))
        assert cohen.ceiling == max_certifiable_radius(N, sigma, ALPHA)
        assert cohen.ceiling == pytest.approx(expected, abs=0.006 if expected >= 1 else 6e-4)
        assert top2.ceiling == pytest.approx(max_certifiable_radius(N, sigma, ALPHA * TOP2_ALPHA_SPLIT[0]), rel=1e-9)
        assert seq.ceiling == cohen.ceiling == SequentialRule(sigma, ALPHA, N, radius=0.0).ceiling
        assert SequentialRule(sigma, ALPHA, N).ceiling <= cohen.ceiling and top2.ceiling < cohen.ceiling
        assert all(item.estimation_queries is None and item.total_queries is None for item in result.methods)


def test_plan_without_radius_or_budget():
    result = plan(0.25)
    assert isinstance(result, BudgetPlan) and result.radius is None and result.N is None and result.vote_rate == 1.0
    assert [item.method for item in result.methods] == ["cohen", "top2", "sequential"]
    for item in result.methods:
        assert isinstance(item, MethodPlan)
        assert item.estimation_queries is None and item.ceiling is None and item.cost_per_image_usd == {}
    with pytest.raises(KeyError):
        plan(0.25, method="cohen").method("top2")


@pytest.mark.parametrize("sigma,radius", [(0.25, 0.25), (0.25, 0.1), (0.5, 0.5), (0.12, 0.1)])
@pytest.mark.parametrize("rate", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("method", ["cohen", "top2", "sequential"])
def test_a_lower_vote_rate_needs_more_queries_and_the_plan_reaches_the_radius(sigma, radius, rate, method):
    unanimous = plan(sigma, radius, method=method).method(method)
    item = plan(sigma, radius, method=method, vote_rate=rate).method(method)
    n = item.estimation_queries
    assert n is not None and n > unanimous.estimation_queries
    assert item.total_queries == item.selection_queries + n
    # n queries at this vote rate certify the radius; no smaller n does
    assert _radius(method, sigma, math.floor(rate * n + 1e-9), n) >= radius
    assert all(_radius(method, sigma, math.floor(rate * m + 1e-9), m) < radius for m in range(max(1, n - 30), n))


def test_vote_rate_plan_is_the_fewest_queries():
    sigma, radius, rate = 0.25, 0.25, 0.95
    n = plan(sigma, radius, method="cohen", vote_rate=rate).method("cohen").estimation_queries
    fewest = next(m for m in range(1, n + 1) if _radius("cohen", sigma, math.floor(rate * m + 1e-9), m) >= radius)
    assert n == fewest


def test_a_radius_beyond_the_vote_rate_is_unreachable():
    # Φ(0.5 / 0.25) = 0.977 > 0.95: no number of queries at a 95% vote rate certifies it
    result = plan(0.25, 0.5, vote_rate=0.95)
    for item in result.methods:
        assert item.estimation_queries is None and item.total_queries is None and item.cost_per_image_usd == {}


def test_selection_choice_changes_the_selection_queries():
    assert plan(0.25, 0.25, method="cohen", selection="clean").method("cohen").selection_queries == 1
    assert plan(0.25, 0.25, method="sequential", selection="noise", N0=7).method("sequential").selection_queries == 7
    assert plan(0.25, 0.25, N0=50).method("cohen").total_queries == 50 + 40


# -- costs --------------------------------------------------------------------------------------


def test_costs_are_total_queries_times_the_list_price():
    result = plan(0.25, 0.5)
    prices = price_table()
    priced = {name for name, price in prices.items() if price > 0}
    assert priced == {"google", "aws", "azure", "clarifai"}
    for item in result.methods:
        assert set(item.cost_per_image_usd) == priced
        for name, cost in item.cost_per_image_usd.items():
            assert cost == pytest.approx(item.total_queries * prices[name], rel=1e-12)
            assert prices[name] == LIST_PRICE_PER_1000_USD[name] / 1000
    assert result.method("cohen").cost_per_image_usd["google"] == pytest.approx(321 * 0.0015)


def test_costs_without_a_radius_use_the_budget():
    result = plan(0.25, N=100, provider="aws")
    assert result.method("cohen").cost_per_image_usd == {"aws": pytest.approx(120 * 0.001)}
    assert result.method("sequential").cost_per_image_usd == {"aws": pytest.approx(101 * 0.001)}


def test_provider_filter():
    result = plan(0.25, 0.25, provider="google")
    assert all(set(item.cost_per_image_usd) == {"google"} for item in result.methods)
    local = plan(0.25, 0.25, provider="local")  # a zero price is shown when asked for
    assert all(item.cost_per_image_usd == {"local": 0.0} for item in local.methods)


@pytest.mark.parametrize("provider", ["gogle", "openai", "", "Google"])
def test_unknown_provider_raises(provider):
    with pytest.raises(InvalidParameterError, match="no price"):
        plan(0.25, 0.25, provider=provider)
    with pytest.raises(InvalidParameterError, match="no price"):
        price_per_query(provider)


def test_price_overrides():
    result = plan(0.25, 0.25, prices={"google": 0.002, "mycloud": 0.01})
    cohen = result.method("cohen")
    assert cohen.cost_per_image_usd["google"] == pytest.approx(60 * 0.002)
    assert cohen.cost_per_image_usd["mycloud"] == pytest.approx(60 * 0.01)
    only = plan(0.25, 0.25, provider="mycloud", prices={"mycloud": 0.01})
    assert only.method("sequential").cost_per_image_usd == {"mycloud": pytest.approx((1 + 40) * 0.01)}
    # an override to 0 drops the provider from the default columns
    assert "aws" not in plan(0.25, 0.25, prices={"aws": 0}).method("cohen").cost_per_image_usd
    assert price_per_query("google", {"google": 0.5}) == 0.5
    assert price_table({"x": 1})["x"] == 1.0 and price_table()["google"] == 0.0015


@pytest.mark.parametrize("price", [-0.001, float("inf"), float("nan"), True, "0.1", None])
def test_bad_prices_raise(price):
    with pytest.raises(InvalidParameterError, match="price"):
        price_table({"google": price})
    with pytest.raises(InvalidParameterError, match="price"):
        plan(0.25, 0.25, prices={"google": price})


# -- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vote_rate", [0.5, 0.3, 0.0, 1.01, -1, True, "0.9", float("nan"), None])
def test_bad_vote_rate(vote_rate):
    with pytest.raises(InvalidParameterError, match="vote_rate"):
        plan(0.25, 0.25, vote_rate=vote_rate)


@pytest.mark.parametrize("radius", [0, 0.0, -0.1, float("inf"), float("nan"), True, "0.5"])
def test_bad_radius(radius):
    with pytest.raises(InvalidParameterError, match="radius"):
        plan(0.25, radius)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(noise_sd=0.0),
        dict(noise_sd=-0.25),
        dict(alpha=0.0),
        dict(alpha=1.5),
        dict(N=0),
        dict(N=2.5),
        dict(N0=0),
        dict(method="bayes"),
        dict(selection="both"),
    ],
)
def test_bad_plan_parameters(kwargs):
    params = dict(noise_sd=0.25, radius=0.25)
    params.update(kwargs)
    with pytest.raises(InvalidParameterError):
        plan(**params)


# -- the command line ---------------------------------------------------------------------------


def test_cli_plan_prints_the_numbers(capsys):
    assert main(["plan", "--noise-sd", "0.25", "--radius", "0.5", "--N", "1000"]) == 0
    out = capsys.readouterr().out
    expected = plan(0.25, 0.5, N=1000)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split() and line.split()[0] in
            ("cohen", "top2", "sequential")}
    assert set(rows) == {"cohen", "top2", "sequential"}
    for item in expected.methods:
        row = rows[item.method]
        assert row[1] == item.selection
        assert row[2:5] == [str(item.selection_queries), str(item.estimation_queries), str(item.total_queries)]
        assert row[5] == f"{item.ceiling:.4f}"
        assert f"{item.cost_per_image_usd['google']:.4f}" in row
    assert rows["cohen"][2:5] == ["20", "301", "321"] and rows["cohen"][5] == "0.6158"
    assert "max radius (N=1000)" in out and "$/image google" in out and "radius 0.5" in out


def test_cli_plan_json_matches_plan(capsys):
    argv = ["plan", "--noise-sd", "0.25", "--radius", "0.25", "--alpha", "0.01", "--N", "500", "--N0", "10",
            "--vote-rate", "0.95", "--provider", "aws", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = plan(0.25, 0.25, 0.01, provider="aws", N=500, N0=10, vote_rate=0.95)
    assert printed == json.loads(json.dumps(dataclasses.asdict(expected)))
    assert [m["method"] for m in printed["methods"]] == ["cohen", "top2", "sequential"]
    assert main(["plan", "--noise-sd", "0.25", "--radius", "0.25", "--method", "top2", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert [m["method"] for m in one["methods"]] == ["top2"]
    assert one["methods"][0]["estimation_queries"] == plan(0.25, 0.25, method="top2").methods[0].estimation_queries


@pytest.mark.parametrize("argv", [["--vote-rate", "0.4"], ["--radius", "-1"], ["--provider", "nosuch"]])
def test_cli_plan_bad_input_exits_2(argv, capsys):
    assert main(["plan", "--noise-sd", "0.25"] + argv) == 2
    captured = capsys.readouterr()
    assert "robust-api: error:" in captured.err and captured.out == ""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository
    return tmp_path


@pytest.mark.torch
def test_cli_certify_sequential_with_the_local_model(workdir, capsys):
    boot, shirt = (REPO / "examples" / "images" / name for name in
                   ("fmnist_test_00000_ankle-boot.png", "fmnist_test_00004_shirt.png"))
    log = workdir / "log.sqlite3"
    argv = ["certify", str(boot), str(shirt), "--noise-sd", "0.25", "--method", "sequential", "--radius",
            "0.25", "--N", "200", "--log", str(log), "--seed", "0", "--no-clean", "--json"]
    assert main(argv) == 0
    items = json.loads(capsys.readouterr().out)
    assert len(items) == 2
    rule = SequentialRule(0.25, 0.001, 200, radius=0.25)
    for item in items:
        assert item["method"] == "sequential" and item["selection"] == "clean"
        assert item["stop_reason"] in STOP_REASONS and item["target_radius"] == 0.25
        assert item["budget"] == 200 and item["ceiling"] == rule.ceiling and item["N0"] == 1
        assert item["N"] in rule.looks() or item["stop_reason"] == "no_guess"
        assert item["queries"] == 1 + item["N"]
        assert item["abstained"] == (item["label"] is None)
        if item["stop_reason"] == "certified":
            assert item["radius"] >= 0.25 and item["label"] is not None
        if item["stop_reason"] == "futile":
            assert item["radius"] < 0.25 and item["N"] < 200
    # without a denoiser the bundled model is unsure of the boot (stops early) and sure of the shirt
    assert items[0]["stop_reason"] == "futile" and items[0]["N"] == rule.looks()[0]
    assert items[1]["stop_reason"] == "certified" and items[1]["label"] == "Shirt"
    # the log re-certifies to the same answers offline
    assert main(["recertify", str(log), "--json"]) == 0
    again = {item["run_id"]: item for item in json.loads(capsys.readouterr().out)}
    for item in items:
        replayed = again[item["run_id"]]
        for key in ("label", "radius", "p_lower", "N", "stop_reason", "method", "selection", "budget"):
            assert replayed[key] == item[key], key


@pytest.mark.torch
def test_cli_certify_table_shows_the_stop_reason(workdir, capsys):
    argv = ["certify", str(IMAGES[0]), "--noise-sd", "0.25", "--method", "sequential", "--N", "100", "--log",
            str(workdir / "log.sqlite3"), "--seed", "1", "--no-clean"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stop" in out.splitlines()[0]
    assert any(reason in out for reason in STOP_REASONS)


@pytest.mark.parametrize(
    "extra,phrase",
    [
        (["--method", "sequential", "--radius", "0.5", "--N", "200"], "N=301"),
        (["--radius", "0.5", "--N", "200"], "N=301"),
        (["--method", "cohen", "--radius", "0.1"], "sequential"),
        (["--method", "sequential", "--selection", "clean", "--N0", "5"], "N0"),
    ],
)
def test_cli_certify_refuses_bad_requests_before_any_query(extra, phrase, workdir, capsys):
    log = workdir / "log.sqlite3"
    argv = ["certify", str(IMAGES[0]), "--noise-sd", "0.25", "--log", str(log), "--seed", "0", "--no-clean"] + extra
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "robust-api: error:" in captured.err and phrase in captured.err
    assert captured.out == ""
