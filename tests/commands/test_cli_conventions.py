"""The command line's conventions (issue 18; docs/cli.md): ``--version``, global options before
or after the command, the exit-status table, quiet on a closed stdout, one ``--format`` for
every command that prints results (jsonl streamed), ``--log none`` and the ambiguous words,
the default log in the user's data directory, the same option names everywhere, and one
progress bar per run with retries summarised at INFO level.

Most tests run ``main([...])`` in-process with registered test providers (torch-free and
fast); the closed-stdout tests run the command in a child process, as a shell pipe does.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import robust_api
import robust_api.commands.cli as cli
from doubles import Counting, FakeProvider, halfspace_scores, no_cloud_credentials
from robust_api.commands.cli import EXIT_CODES, EXIT_STATUSES, build_parser, exit_status, main
from robust_api.dispatch import RetryPolicy, RunProgress
from robust_api.errors import (
    BudgetExceededError, CredentialsError, DenoiserError, ImageTooLargeError, InvalidImageError, InvalidInputError,
    InvalidParameterError, LogAccessError, MissingDependencyError, NotAQueryLogError, ProviderError,
    ProviderResponseError, TransientProviderError, UnknownProviderError,
)
from robust_api.paths import data_dir
from robust_api.providers import base as provider_base

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_IMAGES = sorted((REPO / "examples" / "images").glob("*.png"))
SAMPLE_LOG = REPO / "query_logs" / "fashion_mnist_local_seed0.jsonl"
SUBCOMMANDS = ["certify", "predict", "recertify", "export", "merge-logs", "import-legacy", "analyze", "plan", "emulate",
               "denoisers", "train-denoiser", "eval-denoiser"]


def _brightness(x: np.ndarray) -> str:
    return "dark" if float(x.mean()) < 0.5 else "light"


def _fails_on_half(x: np.ndarray) -> str:
    """The half-dark image (mean 0.5) makes this classifier fail: one image of a run fails."""
    if abs(float(x.mean()) - 0.5) < 0.1:
        raise RuntimeError("the model crashed on this image")
    return _brightness(x)


@pytest.fixture
def register(monkeypatch):
    """register(name, make_provider): a provider name for the command line, for this test."""

    def add(name, make):
        monkeypatch.setitem(provider_base._REGISTRY, name, lambda **options: make())
        return name

    return add


@pytest.fixture
def brightness(register):
    """A registered provider labelling images dark/light; its Counting double is ``.fn``."""
    fn = Counting(_brightness)
    name = register("test-brightness", lambda: robust_api.CallableProvider(fn, name="test-brightness"))
    return type("Registered", (), {"name": name, "fn": fn})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def images(workdir):
    from PIL import Image

    paths = []
    half = np.zeros((28, 28), np.uint8)
    half[:, 14:] = 255
    for name, pixels in [("dark.png", np.full((28, 28), 40, np.uint8)), ("light.png", np.full((28, 28), 215, np.uint8)),
                         ("half.png", half)]:
        Image.fromarray(pixels, mode="L").save(workdir / name)
        paths.append(str(workdir / name))
    return paths


def certify(images, provider, *extra, log="log.sqlite3"):
    return main(["certify", *images, "--provider", provider, "--noise-sd", "0.25", "--N0", "5", "--N", "20",
                 "--seed", "1", "--no-clean", "--log", str(log), *extra])


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- 1. --version --------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--version"], ["certify", "--version"], ["plan", "--version"],
                                  ["train-denoiser", "--version"], ["eval-denoiser", "--version"]])
def test_version_prints_the_package_version(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"robust-api {robust_api.__version__}\n"


def test_version_of_the_console_entry_point():
    done = subprocess.run([sys.executable, "-m", "robust_api", "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"robust-api {robust_api.__version__}\n", "")


# -- 2. global options before or after the command -------------------------------------------


def _subcommands() -> dict:
    return build_parser([])._subparsers._group_actions[0].choices


def test_every_subcommand_takes_the_global_options():
    commands = _subcommands()
    assert sorted(commands) == sorted(SUBCOMMANDS)
    for name, sub in commands.items():
        options = {option for action in sub._actions for option in action.option_strings}
        assert {"-v", "--verbose", "-q", "--quiet", "--version"} <= options, name
        assert "exit status:" in sub.format_help(), name


@pytest.mark.parametrize("argv, verbose, quiet", [
    (["plan", "--noise-sd", "0.25"], 0, False),
    (["-v", "plan", "--noise-sd", "0.25"], 1, False),
    (["plan", "--noise-sd", "0.25", "-v"], 1, False),
    (["-v", "plan", "-v", "--noise-sd", "0.25"], 2, False),
    (["plan", "--noise-sd", "0.25", "-vv"], 2, False),
    (["-q", "plan", "--noise-sd", "0.25"], 0, True),
    (["plan", "--noise-sd", "0.25", "--quiet"], 0, True),
])
def test_global_options_before_or_after_the_command(argv, verbose, quiet, monkeypatch):
    seen = {}

    def handler(args):
        seen.update(verbose=args.verbose, quiet=args.quiet, level=logging.getLogger("robust_api").level)
        return 0

    monkeypatch.setattr(cli, "_cmd_plan", handler)
    assert main(argv) == 0
    expected_level = logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][verbose]
    assert seen == {"verbose": verbose, "quiet": quiet, "level": expected_level}


def _before_or_after(where: str, option: str, argv: list) -> list:
    return [option, *argv] if where == "before" else [*argv, option]


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command_gives_per_image_lines(where, images, brightness, capsys):
    argv = ["certify", *images[:2], "--provider", brightness.name, "--noise-sd", "0.25", "--N0", "5", "--N", "20",
            "--no-clean", "--log", "none"]
    assert main(_before_or_after(where, "-v", argv)) == 0
    err = capsys.readouterr().err
    assert "dark.png: dark, radius " in err and "light.png: light, radius " in err, err


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_before_or_after_the_command_leaves_only_the_results(where, images, brightness, capsys):
    argv = ["certify", *images[:1], "--provider", brightness.name, "--noise-sd", "0.25", "--N0", "5", "--N", "20",
            "--no-clean", "--log", "none", "--progress", "detail"]
    assert main(_before_or_after(where, "-q", argv)) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "dark.png" in captured.out


# -- 3. exit statuses -------------------------------------------------------------------------


@pytest.mark.parametrize("error, status", [
    (BudgetExceededError("cap"), 4),
    (CredentialsError("refused"), 3),
    (ProviderError("down"), 3),
    (ProviderResponseError("two answers"), 3),
    (TransientProviderError("throttled", "slow down"), 3),
    (InvalidParameterError("N"), 2),
    (InvalidImageError("not an image"), 2),
    (ImageTooLargeError("too big"), 2),
    (InvalidInputError("bad"), 2),
    (UnknownProviderError("nope"), 2),
    (DenoiserError("unknown denoiser"), 2),
    (MissingDependencyError("pip install"), 2),
    (NotAQueryLogError("not a log"), 2),
    (LogAccessError("permission denied"), 2),
    (FileNotFoundError("missing.png"), 2),
    (MemoryError(), 2),
    (TypeError("a bug"), 1),
])
def test_the_exit_status_table(error, status):
    assert exit_status(error) == status


def test_the_exit_status_table_is_documented_in_the_help_and_docs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    docs = (REPO / "docs" / "cli.md").read_text()
    for status in EXIT_STATUSES:
        assert f"  {status} " in help_text, status
        assert f"| {status} |" in docs, status
    assert {status for _, status in EXIT_CODES} <= set(EXIT_STATUSES)
    assert "cli.md" in (REPO / "docs" / "index.md").read_text()


def test_success_is_0_and_a_usage_error_is_2(images, brightness, capsys):
    assert certify(images[:1], brightness.name) == 0
    with pytest.raises(SystemExit) as exited:
        certify(images[:1], brightness.name, "--N", "zero")
    assert exited.value.code == 2
    assert certify(images[:1], brightness.name, "--alpha", "0.5", "--radius", "5") == 2  # unreachable target
    assert certify(["missing.png"], brightness.name) == 2
    capsys.readouterr()


@pytest.mark.parametrize("fmt", ["table", "json", "jsonl", "csv"])
def test_one_failed_image_keeps_the_run_going_and_exits_1(fmt, images, register, capsys):
    fn = Counting(_fails_on_half)
    name = register("test-flaky", lambda: robust_api.CallableProvider(fn, name="test-flaky"))
    status = certify([images[0], images[2], images[1]], name, "--format", fmt)
    captured = capsys.readouterr()
    assert status == 1
    assert "robust-api: error: half.png: " in captured.err and "crashed" in captured.err
    if fmt == "table":
        lines = captured.out.splitlines()
        assert [line.split()[:2] for line in lines[2:5]] == [["dark.png", "dark"], ["half.png", "ERROR"],
                                                              ["light.png", "light"]]
        assert "2/3 certified" in captured.out and "1 failed" in captured.out
        return
    if fmt == "json":
        rows = json.loads(captured.out)
    elif fmt == "jsonl":
        rows = json_lines(captured.out)
    else:
        rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [row["image"] for row in rows] == ["dark.png", "half.png", "light.png"]
    assert "crashed" in rows[1]["error"] and rows[1]["error_type"] == "ProviderError"
    assert not rows[0].get("error") and not rows[2].get("error")


def test_every_image_failing_exits_with_the_errors_status(images, register, capsys):
    def broken(batch):
        raise RuntimeError("the model is down")

    name = register("test-broken", lambda: robust_api.CallableProvider(broken, name="test-broken"))
    assert certify(images[:2], name, "--format", "jsonl") == 3  # a provider error on every image
    rows = json_lines(capsys.readouterr().out)
    assert [row["error_type"] for row in rows] == ["ProviderError", "ProviderError"]


def test_refused_credentials_stop_the_run_with_3(images, register, capsys):
    fake = FakeProvider(_brightness, identity="test:refusing", fatal_after=0)
    name = register("test-refusing", lambda: fake)
    status = certify(images, name, "--format", "json")
    captured = capsys.readouterr()
    assert status == 3
    assert fake.requests == 1, "the run went on after the credentials were refused"
    assert json.loads(captured.out) == []  # nothing certified (printed even though the run stopped)
    assert captured.err.splitlines()[-1].startswith("robust-api: error: ") and "was refused" in captured.err


def test_missing_credentials_when_the_provider_is_built_exit_3(images, register, capsys):
    def refuse():
        raise CredentialsError("test: no key; set TEST_KEY")

    name = register("test-no-key", refuse)
    assert certify(images[:1], name) == 3
    assert capsys.readouterr().err.strip() == "robust-api: error: test: no key; set TEST_KEY"


def test_credentials_refused_by_an_emulator_exit_3(images, workdir, capsys, monkeypatch):
    pytest.importorskip("google.cloud.vision")
    from robust_api.emulators import emulate

    no_cloud_credentials(monkeypatch, workdir)
    monkeypatch.setenv("GOOGLE_API_KEY", "wrong-key")
    with emulate("google", classifier=halfspace_scores, api_key="right-key") as endpoint:
        status = main(["certify", *images[:2], "--provider", "google", "--endpoint", str(endpoint), "--noise-sd",
                       "0.25", "--N0", "2", "--N", "3", "--no-clean", "--log", "none", "--attempts", "1"])
    captured = capsys.readouterr()
    assert status == 3, captured.err
    assert "robust-api: error: " in captured.err and "wrong-key" not in captured.err


def test_the_budget_cap_stops_the_run_with_4_and_prints_what_was_done(images, brightness, capsys):
    # 25 queries per image (5 + 20): two images fit under 60, the third does not
    status = certify(images, brightness.name, "--max-queries", "60", "--format", "json")
    captured = capsys.readouterr()
    assert status == 4
    rows = json.loads(captured.out)
    assert [row["image"] for row in rows] == ["dark.png", "light.png"]
    assert "max_queries=60" in captured.err.splitlines()[-1]
    assert brightness.fn.images == 50


def test_a_certificate_whose_clean_query_crosses_the_cap_is_still_printed(images, brightness, capsys):
    status = main(["certify", images[0], "--provider", brightness.name, "--noise-sd", "0.25", "--N0", "5", "--N",
                   "20", "--log", "none", "--max-queries", "25", "--format", "jsonl"])
    assert status == 4
    [row] = json_lines(capsys.readouterr().out)
    assert row["label"] == "dark" and row["radius"] > 0 and row["error_type"] == "BudgetExceededError"


def test_ctrl_c_prints_the_rows_done_and_exits_130(images, register, capsys):
    def interrupted(x):
        if float(x.mean()) > 0.5:
            raise KeyboardInterrupt  # Ctrl-C while the second image runs
        return _brightness(x)

    name = register("test-interrupted", lambda: robust_api.CallableProvider(Counting(interrupted), name="t-int"))
    assert certify(images, name, "--format", "json") == 130
    captured = capsys.readouterr()
    assert [row["image"] for row in json.loads(captured.out)] == ["dark.png"]
    assert captured.err.splitlines()[-1] == "robust-api: interrupted; completed queries are in the log"


def test_the_budget_cap_before_any_query_exits_4(images, brightness, capsys):
    assert certify(images[:1], brightness.name, "--max-queries", "10") == 4
    assert brightness.fn.images == 0
    capsys.readouterr()


# -- 4. quiet on a closed stdout (EPIPE) -------------------------------------------------------


_REGISTER_AND_RUN = textwrap.dedent("""
    import sys, time
    import robust_api
    from robust_api.commands.cli import main

    def slow(batch):
        time.sleep(0.05)
        return ["dark" if float(x.mean()) < 0.5 else "light" for x in batch]

    robust_api.register_provider("test-slow", lambda **options: robust_api.CallableProvider(slow, name="test-slow"))
    sys.exit(main(sys.argv[1:]))
""")


def _run_with_closed_stdout(argv: list, read_first_line: bool) -> subprocess.CompletedProcess:
    """Run ``argv`` in a child whose stdout is a pipe this process closes: at once (before the
    child writes), or once it has read the first line (``| head -1``)."""
    read_end, write_end = os.pipe()
    child = subprocess.Popen(argv, stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    if read_first_line:
        with os.fdopen(read_end, "rb") as reader:
            first = reader.readline()
        assert first.strip(), "the child printed nothing"
    else:
        os.close(read_end)
    _, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, child.returncode, None, err)


def _assert_quiet_epipe(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert done.returncode == 141, (done.returncode, done.stderr)


@pytest.mark.parametrize("read_first_line", [False, True])
def test_certify_into_a_closed_pipe_is_quiet(read_first_line, images):
    argv = [sys.executable, "-c", _REGISTER_AND_RUN, "certify", *(images * 4), "--provider", "test-slow",
            "--noise-sd", "0.25", "--N0", "2", "--N", "3", "--log", "none", "--format", "jsonl"]
    _assert_quiet_epipe(_run_with_closed_stdout(argv, read_first_line))


@pytest.mark.parametrize("fmt", ["table", "jsonl"])
def test_analyze_into_a_closed_pipe_is_quiet(fmt):
    argv = [sys.executable, "-m", "robust_api", "analyze", str(SAMPLE_LOG), "--format", fmt]
    _assert_quiet_epipe(_run_with_closed_stdout(argv, read_first_line=False))


@pytest.mark.skipif(shutil.which("head") is None or shutil.which("bash") is None, reason="needs bash and head")
def test_analyze_piped_into_head(workdir):
    command = f"'{sys.executable}' -m robust_api analyze '{SAMPLE_LOG}' --format jsonl --rows | head -1"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.torch
@pytest.mark.skipif(shutil.which("head") is None or shutil.which("bash") is None, reason="needs bash and head")
def test_the_local_provider_on_the_example_images_piped_into_head(workdir):
    names = " ".join(f"'{path}'" for path in EXAMPLE_IMAGES)
    command = (f"set -o pipefail; '{sys.executable}' -m robust_api certify {names} --provider local --noise-sd 0.25 "
               "--N0 2 --N 4 --no-clean --log none --format jsonl | head -1")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert len(done.stdout.splitlines()) == 1 and json.loads(done.stdout)["image"] == EXAMPLE_IMAGES[0].name
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)  # 141 when the child wrote after head exited (pipefail)


# -- 5. one --format everywhere ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["certify", "predict", "recertify", "plan", "analyze", "denoisers"])
def test_every_result_command_has_format_and_a_hidden_json_alias(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out
    formats = "{table,json,jsonl,csv,latex}" if command == "analyze" else "{table,json,jsonl,csv}"
    assert f"--format {formats}" in help_text
    assert "--json" not in help_text  # still accepted, but hidden


def test_the_formats_hold_the_same_rows(images, brightness, capsys):
    outputs = {}
    for fmt in ("json", "jsonl", "csv"):
        assert certify(images, brightness.name, "--format", fmt, log=f"{fmt}.sqlite3") == 0
        outputs[fmt] = capsys.readouterr().out
    as_json = json.loads(outputs["json"])
    without_run_id = lambda rows: [{k: v for k, v in row.items() if k != "run_id"} for row in rows]  # noqa: E731
    assert without_run_id(json_lines(outputs["jsonl"])) == without_run_id(as_json)  # the same seed, another log
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert [row["image"] for row in rows] == [item["image"] for item in as_json] == ["dark.png", "light.png", "half.png"]
    for row, item in zip(rows, as_json):
        assert json.loads(row["counts"]) == item["counts"]  # counts: a JSON string column
        assert row["abstained"] == ("true" if item["abstained"] else "false")
        assert row["label"] == (item["label"] or "")
        assert float(row["radius"]) == item["radius"]
    required = {"image", "label", "abstained", "radius", "p_lower", "counts", "queries", "cost_usd", "method",
                "noise_sd", "alpha", "seed", "denoiser", "provider", "model_version", "N0", "N", "selection",
                "stop_reason", "target_radius", "budget", "ceiling", "errors", "run_id"}
    for item in as_json:
        assert required <= set(item), required - set(item)


def test_jsonl_streams_one_line_per_image_as_it_is_done(images, register, capsys):
    printed_before_second_image = []

    def spy(x):
        if float(x.mean()) > 0.5 and not printed_before_second_image:  # the light image's first query
            printed_before_second_image.append(capsys.readouterr().out)
        return _brightness(x)

    name = register("test-spy", lambda: robust_api.CallableProvider(Counting(spy), name="test-spy"))
    assert certify(images[:2], name, "--format", "jsonl") == 0
    first = json_lines(printed_before_second_image[0])
    assert [row["image"] for row in first] == ["dark.png"]  # printed before light.png started
    assert [row["image"] for row in json_lines(capsys.readouterr().out)] == ["light.png"]


def test_predict_formats(images, brightness, capsys):
    argv = ["predict", *images[:2], "--provider", brightness.name, "--noise-sd", "0.25", "--N", "20", "--log", "none"]
    assert main(argv + ["--format", "jsonl"]) == 0
    rows = json_lines(capsys.readouterr().out)
    assert [(row["image"], row["label"], row["N"]) for row in rows] == [("dark.png", "dark", 20), ("light.png", "light", 20)]
    assert {"p_value", "counts", "queries", "cost_usd", "noise_sd", "alpha", "seed", "provider", "run_id"} <= set(rows[0])
    assert main(argv + ["--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [json.loads(row["counts"]) for row in table] == [{"dark": 20}, {"light": 20}]


def test_the_deprecated_json_flag_still_works(images, brightness, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="robust_api"):
        assert certify(images[:1], brightness.name, "--json") == 0
    assert [item["image"] for item in json.loads(capsys.readouterr().out)] == ["dark.png"]
    assert "--json is deprecated; use --format json" in caplog.text


def test_recertify_plan_and_analyze_formats(images, brightness, workdir, capsys):
    assert certify(images, brightness.name) == 0
    capsys.readouterr()
    assert main(["recertify", "log.sqlite3", "--format", "jsonl", "--alpha", "0.01"]) == 0
    rows = json_lines(capsys.readouterr().out)
    assert [row["image"] for row in rows] == ["dark.png", "light.png", "half.png"]
    assert all(row["status"] == "complete" and row["alpha"] == 0.01 and row["queries"] == 0 for row in rows)
    assert main(["recertify", "log.sqlite3", "--format", "csv"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 3

    assert main(["plan", "--noise-sd", "0.25", "--radius", "0.25", "--format", "jsonl"]) == 0
    plans = json_lines(capsys.readouterr().out)
    assert [row["method"] for row in plans] == ["cohen", "top2", "sequential"]
    assert all(row["noise_sd"] == 0.25 and row["radius"] == 0.25 for row in plans)
    assert main(["plan", "--noise-sd", "0.25", "--radius", "0.25", "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["method"] for row in table] == ["cohen", "top2", "sequential"]
    assert isinstance(json.loads(table[0]["cost_per_image_usd"]), dict)

    assert main(["analyze", "log.sqlite3", "--format", "jsonl"]) == 0
    groups = json_lines(capsys.readouterr().out)
    assert len(groups) == 1 and groups[0]["images"] == 3
    assert main(["analyze", "log.sqlite3", "--format", "jsonl", "--rows"]) == 0
    assert len(json_lines(capsys.readouterr().out)) == 3


@pytest.mark.torch
def test_denoisers_formats(capsys):
    assert main(["denoisers", "--format", "json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in items] == robust_api.denoisers.available()
    assert all("noise_sd" in item["metadata"] for item in items)


# -- 6. --log none, and the ambiguous words --------------------------------------------------


@pytest.mark.parametrize("word", ["none", "off", "NONE"])
def test_log_none_keeps_no_log(word, images, brightness, workdir, robust_api_home, capsys):
    assert certify(images[:1], brightness.name, log=word) == 0
    assert capsys.readouterr().err == "robust-api: query log: none (kept in memory only: --log none)\n"
    assert sorted(p.name for p in workdir.iterdir()) == ["dark.png", "half.png", "light.png"]
    assert list(robust_api_home.iterdir()) == []


@pytest.mark.parametrize("word", ["false", "no", "0", "False", "true", "yes", "1"])
def test_log_refuses_ambiguous_words(word, images, brightness, workdir, robust_api_home, capsys):
    with pytest.raises(SystemExit) as exited:
        certify(images[:1], brightness.name, log=word)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err and "--log none" in err
    assert not (workdir / word).exists() and list(robust_api_home.iterdir()) == []
    assert brightness.fn.images == 0


def test_a_folder_named_like_a_word_is_still_reachable(images, brightness, workdir, capsys):
    assert certify(images[:1], brightness.name, log="./false/") == 0
    assert (workdir / "false" / "queries.sqlite3").is_file()
    capsys.readouterr()


# -- 7. the default log lives in the user's data directory ------------------------------------


def test_the_default_log_is_in_the_data_directory(images, brightness, workdir, robust_api_home, capsys):
    assert main(["certify", *images[:1], "--provider", brightness.name, "--noise-sd", "0.25", "--N0", "5", "--N",
                 "20", "--no-clean"]) == 0
    expected = robust_api_home / "query_logs" / "queries.sqlite3"
    assert expected.is_file() and not (workdir / "query_logs").exists()
    assert capsys.readouterr().err == f"robust-api: query log: {expected}\n"
    api = robust_api.RobustAPI(Counting(), seed=0)  # the Python API's default is the same file
    assert Path(api.log.path) == expected


@pytest.mark.parametrize("environ, platform, expected", [
    ({"ROBUST_API_HOME": "/data/ra", "XDG_DATA_HOME": "/xdg"}, "linux", "/data/ra"),
    ({"ROBUST_API_HOME": "~/ra"}, "linux", "~/ra"),
    ({"XDG_DATA_HOME": "/xdg"}, "linux", "/xdg/robust-api"),
    ({"XDG_DATA_HOME": "relative/xdg"}, "linux", "~/.local/share/robust-api"),  # the spec: ignore a relative one
    ({"ROBUST_API_HOME": " "}, "linux", "~/.local/share/robust-api"),
    ({}, "linux", "~/.local/share/robust-api"),
    ({}, "freebsd13", "~/.local/share/robust-api"),
    ({"XDG_DATA_HOME": "/xdg"}, "darwin", "~/Library/Application Support/robust-api"),
    ({"LOCALAPPDATA": "C:/Users/me/AppData/Local"}, "win32", "C:/Users/me/AppData/Local/robust-api"),
    ({}, "win32", "~/AppData/Local/robust-api"),
])
def test_data_dir(environ, platform, expected):
    assert data_dir(environ, platform) == Path(os.path.expanduser(expected))


def test_tests_never_use_the_real_data_directory(robust_api_home):
    assert data_dir() == robust_api_home
    assert Path(os.environ["ROBUST_API_HOME"]) == robust_api_home


# -- 8. the same names everywhere -------------------------------------------------------------


def _options(sub) -> list:
    return [option for action in sub._actions for option in action.option_strings]


def test_the_same_option_names_in_every_command():
    commands = _subcommands()
    canonical = {"--noise-sd", "--N0", "--N", "--alpha"}
    for name, sub in commands.items():
        for option in _options(sub):
            spelled = option.lower().replace("_", "-")
            if spelled in {"--noise-sd", "--sigma", "--n0", "--n", "--alpha"}:
                assert option in canonical, f"{name}: {option}"
    certify_options, predict_options = set(_options(commands["certify"])), set(_options(commands["predict"]))
    assert predict_options <= certify_options  # predict takes no option certify lacks, with the same names
    assert certify_options - predict_options == {"--N0", "--method", "--selection", "--radius", "--tolerance",
                                                 "--no-clean", "--html", "--ray", "--workers"}
    for command in ("certify", "predict"):
        positionals = [action.dest for action in commands[command]._actions if not action.option_strings]
        assert positionals == ["images"]
        help_text = commands[command].format_help()
        order = [help_text.index(f"\n  {option} ") for option in ("--noise-sd", "--N", "--alpha")]
        assert order == sorted(order), "the Python API's order: noise_sd, (N0,) N, alpha"


# -- 9. progress: one bar per run, retries at INFO ------------------------------------------


def test_run_progress_shows_at_once_and_counts_images_queries_and_dollars():
    stream = io.StringIO()
    progress = RunProgress(3, description="certify", show=True, stream=stream)
    assert "0/3" in stream.getvalue() and "0 queries, $0.0000" in stream.getvalue()  # before any query

    class Dispatcher:
        stats = None
        listeners = []

        def add_listener(self, fn):
            self.listeners.append(fn)

        def remove_listener(self, fn):
            self.listeners.remove(fn)

    dispatcher = Dispatcher()
    record = type("Record", (), {"cost_usd": 0.0015})
    with progress:
        progress.watch(dispatcher)
        dispatcher.listeners[0]([record] * 10)
        progress.image_done("a.png: done")
    assert dispatcher.listeners == []
    text = stream.getvalue()
    assert "1/3" in text and "10 queries, $0.0150" in text
    assert "a.png: done" not in text  # per-image lines only with detail


def test_run_progress_is_off_when_stderr_is_not_a_terminal():
    stream = io.StringIO()  # isatty() is False
    with RunProgress(2, stream=stream) as progress:
        progress.image_done("x")
    assert stream.getvalue() == "" and progress.bar is None


def test_certify_many_draws_one_bar_for_the_run(capsys):
    api = robust_api.RobustAPI(Counting(), log=False, seed=0, progress=True, batch_size=4)
    image = np.zeros((4, 4), np.uint8)
    certs = api.certify_many([image, image + 200, image + 30], noise_sd=0.25, N0=4, N=40, parallel=1)
    assert len(certs) == 3
    err = capsys.readouterr().err
    assert "certify_many" in err and "3/3" in err and "132 queries" in err
    assert "selection" not in err and "estimation" not in err  # no bar per phase


def test_the_cli_bar_is_on_with_progress_bar_and_off_by_default(images, brightness, capsys):
    assert certify(images, brightness.name, "--progress", "bar", log="none") == 0
    err = capsys.readouterr().err
    assert "certify" in err and "3/3" in err and "75 queries" in err
    for off in ([], ["--no-progress"], ["--progress", "none"]):  # capsys' stderr is not a terminal
        assert certify(images, brightness.name, *off, log="none") == 0
        assert "3/3" not in capsys.readouterr().err


def test_progress_detail_prints_a_line_per_image(images, brightness, capsys):
    assert certify(images, brightness.name, "--progress", "detail", log="none") == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err[:3]] == ["dark.png", "light.png", "half.png"]


def test_retries_and_throttling_are_summarised_at_info(images, register, capsys, caplog):
    fake = FakeProvider(_brightness, identity="test:throttled", fail_rate=0.4, kinds=("throttled",), seed=3, batch=4)
    api = robust_api.RobustAPI(fake, log=False, seed=0,
                               retry=RetryPolicy(max_attempts=50, initial_backoff_s=0, max_backoff_s=0))
    image = np.zeros((4, 4), np.uint8)
    with caplog.at_level(logging.INFO, logger="robust_api"):
        api.certify_many([image, image + 200], noise_sd=0.25, N0=4, N=40, parallel=1)
    calls = [r.getMessage() for r in caplog.records if r.name == "robust_api.engine.calls"]
    assert len(calls) == 2 and all("retries" in line and "throttled response" in line for line in calls), calls
    run = [r.getMessage() for r in caplog.records if r.name == "robust_api.dispatch.progress"]
    assert len(run) == 1 and "2 of 2 images done" in run[0], run
    retries, throttled, failed = api.dispatcher.stats.snapshot()
    assert throttled > 0 and retries >= throttled and failed == 0
    assert f"{retries} retries, {throttled} throttled responses" in run[0]


def test_the_cli_logs_the_retry_summary_with_v(images, register, capsys, caplog, monkeypatch):
    fake = FakeProvider(_brightness, identity="test:throttled-cli", fail_rate=0.4, kinds=("throttled",), seed=5,
                        batch=4)
    name = register("test-throttled", lambda: fake)
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, failures, retry_after, rng: 0.0)  # no waiting
    with caplog.at_level(logging.DEBUG):
        assert certify(images[:2], name, "--attempts", "50", log="none") == 0
        assert not [r for r in caplog.records if "throttled response" in r.getMessage()]  # not without -v
        assert certify(images[:2], name, "--attempts", "50", "-v", log="none") == 0
    summaries = [r for r in caplog.records if "throttled response" in r.getMessage()]
    assert summaries and all(r.levelno == logging.INFO for r in summaries)
    assert fake.requests > 2 * 8  # some requests were throttled and sent again
    capsys.readouterr()


def test_the_run_progress_is_thread_safe():
    stream = io.StringIO()
    progress = RunProgress(400, show=True, stream=stream)
    record = type("Record", (), {"cost_usd": 0.001})

    def work():
        for _ in range(100):
            progress.settled([record])
            progress.image_done()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    progress.close()
    assert (progress.images, progress.queries) == (400, 400) and abs(progress.cost_usd - 0.4) < 1e-9


# -- the HTML report of a run ------------------------------------------------------------------------


def test_certify_writes_an_html_report_of_the_run(images, brightness, workdir, capsys):
    page = workdir / "run.html"
    status = main(["certify", *images[:2], "--provider", brightness.name, "--noise-sd", "0.25", "--N0", "5",
                   "--N", "20", "--seed", "1", "--log", "none", "--html", str(page)])
    assert status == 0
    text = page.read_text()
    assert "dark.png" in text and "light.png" in text and text.count("data:image/png;base64,") >= 2
    assert "report written to" in capsys.readouterr().err
    calls = brightness.fn.calls
    assert main(["certify", *images[:1], "--provider", brightness.name, "--noise-sd", "0.25",
                 "--html", str(workdir / "run.txt")]) == 2
    assert brightness.fn.calls == calls  # refused before any query
