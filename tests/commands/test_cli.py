"""The ``robust-api`` command line, run in-process with a registered test provider."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import robust_api
from doubles import Counting
from robust_api.commands.cli import main
from robust_api.providers import base as provider_base

PROVIDER = "test-halfspace"
CERT_HEADERS = ["image", "label", "radius", "p_lower", "N0", "N", "stop", "queries"]
RECERT_HEADERS = ["run", "label", "radius", "p_lower", "N0", "N", "stop", "queries", "status"]


def Halfspace():
    """Labels a (noisy) image by its mean brightness; counts what it is sent."""
    return Counting(lambda x: "dark" if float(x.mean()) < 0.5 else "light")


@pytest.fixture
def provider(monkeypatch):
    made = []

    def factory(**options):
        assert set(options) <= {"batch_size", "device", "model", "class_names"}
        fn = Halfspace()
        made.append(fn)
        return robust_api.CallableProvider(fn, name=PROVIDER, batch_size=options.get("batch_size") or 64)

    robust_api.register_provider(PROVIDER, factory)
    yield made
    provider_base._REGISTRY.pop(PROVIDER, None)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default ./query_logs/ must not land in the repository
    return tmp_path


@pytest.fixture
def images(workdir):
    from PIL import Image

    paths = []
    dark = np.full((28, 28), 40, np.uint8)
    light = np.full((28, 28), 215, np.uint8)
    half = np.zeros((28, 28), np.uint8)
    half[:, 14:] = 255  # mean 0.5: the vote is a coin flip, the certificate abstains
    for name, pixels in [("dark.png", dark), ("light.png", light), ("half.png", half)]:
        path = workdir / name
        Image.fromarray(pixels, mode="L").save(path)
        paths.append(str(path))
    return paths


def parse_table(text: str, required: list[str]) -> list[dict[str, str]]:
    """Rows of the table printed by the CLI, as dicts keyed by header (column bounds from the dashes line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == required[:1] and "---" in lines[i + 1])
    dashes = lines[start + 1]
    assert set(dashes.replace(" ", "")) == {"-"}
    bounds, position = [], 0
    for run in dashes.split("  "):
        bounds.append((position, position + len(run)))
        position += len(run) + 2
    cut = lambda line: [line[a:b if i + 1 < len(bounds) else None].strip() for i, (a, b) in enumerate(bounds)]  # noqa: E731
    headers = cut(lines[start])
    for name in required:
        assert name in headers, f"column {name!r} missing from {headers}"
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = cut(line)
        assert all(cells[:-1]), line
        rows.append(dict(zip(headers, cells)))
    return rows


def run_certify(images, log, *extra):
    return main(
        ["certify", *images, "--provider", PROVIDER, "--noise-sd", "0.25", "--N0", "10", "--N", "60",
         "--seed", "3", "--log", str(log), *extra]
    )


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, phrases",
    [
        (["--help"], ["certify", "predict", "recertify", "export", "--verbose"]),
        (["certify", "--help"], ["--noise-sd", "--N0", "--N", "--alpha", "--provider", "--log", "--seed", "--format",
                                 "--batch-size", "--no-clean"]),
        (["predict", "--help"], ["--noise-sd", "--N", "--alpha", "--provider", "--log"]),
        (["recertify", "--help"], ["log_path", "--alpha", "--N0", "--N", "--run-id", "--format"]),
        (["export", "--help"], ["log_path", "out", ".jsonl", ".parquet"]),
    ],
)
def test_help(argv, phrases, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: robust-api")
    for phrase in phrases:
        assert phrase in out, phrase


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main([])
    assert excinfo.value.code == 2
    assert "usage:" in capsys.readouterr().err


# -- certify ---------------------------------------------------------------------------------


def test_certify_table(images, workdir, provider, capsys):
    log = workdir / "log.sqlite3"
    assert run_certify(images, log) == 0
    captured = capsys.readouterr()
    rows = parse_table(captured.out, CERT_HEADERS + ["clean label", "agrees"])
    assert [r["image"] for r in rows] == ["dark.png", "light.png", "half.png"]
    by_name = {r["image"]: r for r in rows}
    assert by_name["dark.png"]["label"] == "dark" and by_name["light.png"]["label"] == "light"
    assert by_name["half.png"]["label"] == "ABSTAIN" and float(by_name["half.png"]["radius"]) == 0.0
    for name in ("dark.png", "light.png"):
        # all 60 votes agree: p_lower = 0.001 ** (1/60) = 0.8913, radius = 0.25 * Phi^-1(0.8913) = 0.3083
        assert (by_name[name]["p_lower"], by_name[name]["radius"]) == ("0.8913", "0.3083")
        assert by_name[name]["clean label"] == by_name[name]["label"] and by_name[name]["agrees"] == "yes"
    assert by_name["half.png"]["agrees"] == "no"
    for r in rows:
        assert (r["N0"], r["N"]) == ("10", "60")
        assert int(r["queries"]) >= 70  # see test_certify_table_queries_match_json_and_summary
        assert re.fullmatch(r"\d+\.\d{4}", r["radius"]) and re.fullmatch(r"\d\.\d{4}", r["p_lower"])
    summary = [line for line in captured.out.splitlines() if "certified" in line]
    assert len(summary) == 1
    assert re.match(r"2/3 certified \(not abstaining\)", summary[0]), summary[0]
    assert "noise_sd=0.25, alpha=0.001; 213 queries in " in summary[0]
    assert sum(p.images for p in provider) == 213
    assert captured.err == f"robust-api: query log: {log}\n"  # where the log is, on stderr
    # everything went to the log given
    calls = list(robust_api.open_log(log))
    assert [c.header.kind for c in calls] == ["certify", "predict"] * 3
    assert not (workdir / "query_logs").exists()


def test_certify_table_no_clean(images, workdir, provider, capsys):
    assert run_certify(images, workdir / "log.sqlite3", "--no-clean") == 0
    out = capsys.readouterr().out
    rows = parse_table(out, CERT_HEADERS)
    assert list(rows[0]) == CERT_HEADERS  # no clean columns
    assert [r["queries"] for r in rows] == ["70"] * 3
    assert "2/3 certified" in out and "210 queries" in out
    assert sum(p.images for p in provider) == 210


def test_certify_table_queries_match_json_and_summary(images, workdir, provider, capsys):
    assert run_certify(images, workdir / "table.sqlite3") == 0
    out = capsys.readouterr().out
    rows = parse_table(out, CERT_HEADERS)
    total = int(re.search(r"; (\d+) queries in ", out).group(1))
    assert total == sum(p.images for p in provider) == 213
    assert sum(int(r["queries"]) for r in rows) == total
    assert run_certify(images, workdir / "json.sqlite3", "--format", "json") == 0
    items = json.loads(capsys.readouterr().out)
    assert [str(i["queries"]) for i in items] == [r["queries"] for r in rows]


@pytest.mark.parametrize("clean", [True, False])
def test_certify_json(clean, images, workdir, provider, capsys):
    assert run_certify(images, workdir / "log.sqlite3", "--format", "json", *([] if clean else ["--no-clean"])) == 0
    items = json.loads(capsys.readouterr().out)
    assert [i["image"] for i in items] == ["dark.png", "light.png", "half.png"]
    fields = {"image", "label", "abstained", "radius", "p_lower", "counts", "noise_sd", "alpha", "N0", "N", "errors",
              "queries", "run_id"}
    for item in items:
        assert fields <= set(item)
        assert item["noise_sd"] == 0.25 and item["alpha"] == 0.001
        assert (item["N0"], item["N"], item["queries"], item["errors"]) == (10, 60, 71 if clean else 70, 0)
        assert sum(item["counts"].values()) == 60
        assert ("clean_label" in item) == clean
    assert items[0]["label"] == "dark" and items[0]["abstained"] is False and items[0]["radius"] > 0
    assert items[2]["label"] is None and items[2]["abstained"] is True and items[2]["radius"] == 0.0
    if clean:
        assert [i["agrees"] for i in items] == [True, True, False]
    run_ids = [c.header.run_id for c in robust_api.open_log(workdir / "log.sqlite3") if c.header.kind == "certify"]
    assert [i["run_id"] for i in items] == run_ids


def test_certify_rerun_with_same_seed_is_free(images, workdir, provider, capsys):
    log = workdir / "log.sqlite3"
    assert run_certify(images, log) == 0
    first = parse_table(capsys.readouterr().out, CERT_HEADERS)
    assert run_certify(images, log) == 0
    second = parse_table(capsys.readouterr().out, CERT_HEADERS)
    assert [r["queries"] for r in second] == ["0", "0", "0"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "queries"} for r in rows]  # noqa: E731
    assert strip(first) == strip(second)
    assert provider[1].images == 0


def test_predict_output(images, workdir, provider, capsys):
    rc = main(["predict", images[0], "--provider", PROVIDER, "--noise-sd", "0.25", "--N", "40", "--seed", "1",
               "--log", str(workdir / "log.sqlite3")])
    assert rc == 0
    rows = parse_table(capsys.readouterr().out, ["image", "label", "p_value", "top votes", "queries"])
    assert len(rows) == 1
    row = rows[0]
    assert (row["image"], row["label"], row["top votes"], row["queries"]) == ("dark.png", "dark", "dark:40", "40")
    assert float(row["p_value"]) < 1e-6


# -- recertify / export ----------------------------------------------------------------------


@pytest.fixture
def certified_log(images, workdir, provider, capsys):
    log = workdir / "log.sqlite3"
    assert run_certify(images, log) == 0
    # a predict call in the same log is skipped by recertify
    assert main(["predict", images[0], "--provider", PROVIDER, "--noise-sd", "0.25", "--N", "5",
                 "--log", str(log)]) == 0
    capsys.readouterr()
    return log


def recertify(capsys, *argv):
    assert main(["recertify", *map(str, argv)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_recertify_larger_alpha(certified_log, capsys):
    calls = [c for c in robust_api.open_log(certified_log) if c.header.kind == "certify"]
    logged = parse_table(recertify(capsys, certified_log), RECERT_HEADERS)
    out = recertify(capsys, certified_log, "--alpha", "0.01")
    looser = parse_table(out, RECERT_HEADERS)
    assert "3 certify calls re-certified offline, 0 skipped (no queries sent)" in out
    assert [r["run"] for r in looser] == [c.header.run_id[:12] for c in calls] == [r["run"] for r in logged]
    for strict, loose in zip(logged, looser):
        assert float(loose["radius"]) >= float(strict["radius"])
        assert float(loose["p_lower"]) >= float(strict["p_lower"])
        assert loose["queries"] == "0" and loose["status"] == "complete"
        assert (loose["N0"], loose["N"]) == ("10", "60")
    assert float(looser[0]["radius"]) > float(logged[0]["radius"])  # strictly better where it certifies
    # the logged alpha (0.001) is what the online run used
    with_001 = parse_table(recertify(capsys, certified_log, "--alpha", "0.001"), RECERT_HEADERS)
    assert with_001 == logged


def test_recertify_options(certified_log, capsys):
    calls = [c for c in robust_api.open_log(certified_log) if c.header.kind == "certify"]
    out = recertify(capsys, certified_log, "--N", "20", "--N0", "5", "--run-id", calls[1].header.run_id)
    rows = parse_table(out, RECERT_HEADERS)
    assert [r["run"] for r in rows] == [calls[1].header.run_id[:12]]
    assert (rows[0]["N0"], rows[0]["N"]) == ("5", "20")
    items = json.loads(recertify(capsys, certified_log, "--format", "json"))
    assert [i["run_id"] for i in items] == [c.header.run_id for c in calls]
    assert all(i["status"] == "complete" and i["queries"] == 0 for i in items)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_then_recertify_gives_the_same_rows(fmt, certified_log, workdir, capsys):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out_path = workdir / f"out.{fmt}"
    n_calls = len(robust_api.open_log(certified_log))
    assert n_calls == 7  # 3 x (clean predict + certify) + 1 predict
    assert main(["export", str(certified_log), str(out_path)]) == 0
    assert capsys.readouterr().out.strip() == f"exported {n_calls} calls to {out_path}"
    if fmt == "jsonl":
        assert json.loads(out_path.read_text().splitlines()[0])["format_version"] == 1
    for extra in ([], ["--alpha", "0.01"]):
        direct = parse_table(recertify(capsys, certified_log, *extra), RECERT_HEADERS)
        exported = parse_table(recertify(capsys, out_path, *extra), RECERT_HEADERS)
        assert exported == direct and len(direct) == 3


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "jsonl_garbage", "missing"])
def test_recertify_on_a_non_log(kind, workdir, capsys):
    if kind == "text":
        path = workdir / "notes.sqlite3"
        path.write_text("hello\n")
        phrase = "not a robust_api query log"
    elif kind == "jsonl_garbage":
        path = workdir / "notes.jsonl"
        path.write_text("hello\n")
        phrase = "not a robust_api JSONL query log"
    else:
        path = workdir / "missing.sqlite3"
        phrase = "no query log"
    before = path.read_bytes() if path.exists() else None
    assert main(["recertify", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("robust-api: error: ")
    assert phrase in captured.err
    assert "Traceback" not in captured.err
    if before is not None:
        assert path.read_bytes() == before


def test_export_of_a_non_log(workdir, capsys):
    path = workdir / "notes.txt"
    path.write_text("hello\n")
    assert main(["export", str(path), str(workdir / "out.jsonl")]) == 2
    captured = capsys.readouterr()
    assert "not a robust_api query log" in captured.err and "Traceback" not in captured.err
    assert not (workdir / "out.jsonl").exists()


def test_certify_missing_image(workdir, provider, capsys):
    missing = workdir / "nope.png"
    assert run_certify([str(missing)], workdir / "log.sqlite3") == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("robust-api: error: ")
    assert "not found" in captured.err and "nope.png" in captured.err
    assert "Traceback" not in captured.err
    assert sum(p.images for p in provider) == 0


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--noise-sd", "0"], "noise_sd must be > 0"),
        (["--noise-sd", "nan"], "noise_sd must be a finite number"),
        (["--noise-sd", "30"], "divide by 255"),
        (["--seed", "-1"], "seed must be an integer"),
    ],
)
def test_certify_bad_values_cost_nothing(extra, phrase, images, workdir, provider, capsys):
    argv = ["certify", images[0], "--provider", PROVIDER, "--log", str(workdir / "log.sqlite3"), "--noise-sd", "0.25"]
    assert main(argv + extra) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("robust-api: error: ") and captured.out == ""
    assert phrase in captured.err and "Traceback" not in captured.err
    assert sum(p.images for p in provider) == 0


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--N", "0"], "must be >= 1"),
        (["--N0", "-5"], "must be >= 1"),
        (["--N", "1.5"], "invalid _positive_int value"),
        (["--alpha", "0"], "must be in (0, 1)"),
        (["--alpha", "1.5"], "must be in (0, 1)"),
        (["--batch-size", "0"], "must be >= 1"),
    ],
)
def test_certify_argparse_errors(extra, phrase, images, workdir, provider, capsys):
    argv = ["certify", images[0], "--provider", PROVIDER, "--noise-sd", "0.25", "--log", str(workdir / "log.sqlite3")]
    with pytest.raises(SystemExit) as excinfo:
        main(argv + extra)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "usage: robust-api certify" in err and phrase in err
    assert not (workdir / "log.sqlite3").exists()
    assert provider == []  # no provider was even built


def test_certify_requires_noise_sd(images, workdir, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["certify", images[0]])
    assert excinfo.value.code == 2
    assert "--noise-sd" in capsys.readouterr().err


def test_unknown_provider(images, workdir, capsys):
    assert main(["certify", images[0], "--provider", "nope", "--noise-sd", "0.25"]) == 2
    err = capsys.readouterr().err
    assert "unknown provider 'nope'" in err and "local" in err
    assert not (workdir / "query_logs").exists()


def test_recertify_survives_an_incomplete_call(images, workdir, provider, capsys):
    log = workdir / "log.sqlite3"
    assert run_certify(images[:1], log) == 0

    def broken(batch):
        raise ConnectionError("down")

    with pytest.raises(robust_api.ProviderError):
        robust_api.RobustAPI(broken, log=log, seed=0).certify(images[1], noise_sd=0.25, N0=5, N=5)
    capsys.readouterr()
    good = next(iter(robust_api.open_log(log))).header.run_id
    rc = main(["recertify", str(log)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert good[:12] in captured.out
