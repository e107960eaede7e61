"""The example scripts run end to end (each as a subprocess, as a user runs it) and the sample
logs in query_logs/ re-certify offline.

Every script runs offline: the cloud example talks to the local emulators (cloud credentials
are removed from the child's environment so that the emulator is always chosen).
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import robust_api
from doubles import CLOUD_ENV_VARS
from robust_api import ABSTAIN, RobustAPI

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
IMAGES = EXAMPLES / "images"
LOGS = ROOT / "query_logs"
LOCAL_LOG = LOGS / "fashion_mnist_local_seed0.jsonl"
GOOGLE_LOG = LOGS / "google_emulator_dncnn_0.25_seed0.jsonl"
SEQUENTIAL_LOG = LOGS / "google_emulator_dncnn_0.25_sequential_seed0.jsonl"
SAMPLE_LOGS = (LOCAL_LOG, GOOGLE_LOG, SEQUENTIAL_LOG)
MY_EXAMPLES = ("certify_folder.py", "reanalyze_logs.py", "train_denoiser.py", "local_pytorch_model.py",
               "record_sample_log.py")
TORCH_EXAMPLES = ("train_denoiser.py", "local_pytorch_model.py")  # they import torch

def run_example(script: str, *args: str, timeout: float = 180, expect: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in CLOUD_ENV_VARS}
    # one torch thread: on a small shared machine, two threads that fight another busy process
    # for the cores run several times slower than one (the results are the same)
    env.update(AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               # no credentials files either (gcloud's application-default login, ~/.aws/credentials)
               CLOUDSDK_CONFIG=str(ROOT / "no-such-dir"), AWS_SHARED_CREDENTIALS_FILE=str(ROOT / "no-such-file"),
               AWS_CONFIG_FILE=str(ROOT / "no-such-file"))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    assert result.returncode == expect, (
        f"{script} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
    return result


def true_class_names() -> dict[str, str]:
    with open(IMAGES / "LABELS.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if "class_name" in rows[0]:
        return {row["file"]: row["class_name"] for row in rows}
    from robust_api.datasets import FASHION_MNIST_CLASSES

    return {row["file"]: FASHION_MNIST_CLASSES[int(row["label"])] for row in rows}


def table_rows(text: str, first_column: str) -> list[list[str]]:
    """The rows of a printed table whose first cell starts with ``first_column`` (cells are
    separated by two or more spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.startswith(first_column)]


# --------------------------------------------------------------------------------- all examples


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_module_docstring(script):
    tree = ast.parse((EXAMPLES / script).read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring and docstring.strip(), f"{script} has no module docstring"
    if script in MY_EXAMPLES:
        assert "python examples/" + script in docstring, "the docstring says how to run it"
        mains = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"]
        assert mains and [a.arg for a in mains[0].args.args] == ["argv"], f"{script} needs main(argv=None)"
        assert any(isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names) for node in tree.body)


@pytest.mark.parametrize("script", [pytest.param(script, marks=pytest.mark.torch) if script in TORCH_EXAMPLES else script
                                    for script in MY_EXAMPLES])
def test_every_example_answers_help(script):
    result = run_example(script, "--help", timeout=60)
    assert result.stdout.startswith("usage:")


# -------------------------------------------------------------------------------- certify_folder


@pytest.mark.torch
def test_certify_folder_certifies_all_30_images_through_the_google_emulator(tmp_path):
    log = tmp_path / "log.sqlite3"
    out = run_example("certify_folder.py", "--log", str(log), timeout=300).stdout
    assert "no google credentials in the environment: using the local google emulator at http://127.0.0.1:" in out
    rows = table_rows(out, "fmnist_test_")
    truth = true_class_names()
    assert len(rows) == 30 == len(truth)
    assert sorted(row[0] for row in rows) == sorted(truth)
    for image, true, clean, label, radius, p_lower, queries, errors in rows:
        assert true == truth[image]
        assert queries == "120" and errors == "0"
        assert float(radius) >= 0 and 0 <= float(p_lower) <= 1
        assert (label == "ABSTAIN") == (float(radius) == 0.0)
    # the clean label is the emulator's answer on the clean image: nearly always the true class
    assert sum(row[2] == row[1] for row in rows) >= 25
    assert re.search(r"^certified \d+/30 .*; correct \d+/30, \d+ of them with radius >= 0.25; \d+/30 agree", out, re.M)
    # 30 × (20 + 100) certify queries + 30 clean queries, at Google's list price of $1.50 / 1000
    assert "spent: 3630 queries, $5.4450 at list price (emulator: nothing billed)" in out

    # the log holds every call; re-certified offline it gives the printed rows
    calls = list(robust_api.open_log(log))
    predicts = [c for c in calls if c.kind == "predict"]
    certifies = [c for c in calls if c.kind == "certify"]
    assert len(predicts) == 30 and len(certifies) == 30
    images_by_digest = {c.image_digest: row for c, row in zip(predicts, sorted(rows))}  # clean calls run in name order
    offline = RobustAPI("google", online=False)
    for call in certifies:
        cert = offline.certify(call)
        row = images_by_digest[call.image_digest]
        assert (str(cert.label) if cert.label is not ABSTAIN else "ABSTAIN") == row[3]
        assert f"{cert.radius:.3f}" == row[4]
        assert call.header.denoiser_id == "denoiser:fashion-mnist-dncnn-0.25"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.torch
def test_certify_folder_with_aws_resizes_and_a_rerun_reuses_the_log(tmp_path):
    log = tmp_path / "aws.sqlite3"
    args = ("--provider", "aws", "--limit", "2", "--N0", "5", "--N", "20", "--log", str(log),
            "--emulator-port", str(_free_port()), "--rate-limit", "inf")
    first = run_example("certify_folder.py", *args, timeout=120).stdout
    assert "using the local aws emulator" in first and "aws:" in first
    rows = table_rows(first, "fmnist_test_")
    assert len(rows) == 2
    assert "spent: 52 queries, $0.0520 at list price" in first  # 2 × (5 + 20) + 2 clean, $1.00 / 1000
    # 28×28 images are below Rekognition's 80 px minimum: resize="fit" scaled them up, nothing failed
    assert all(row[-1] == "0" for row in rows)
    # the same emulator endpoint, seed and log: every answer is reused, nothing is sent
    second = run_example("certify_folder.py", *args, timeout=120).stdout
    assert table_rows(second, "fmnist_test_") == [row[:6] + ["0", "0"] for row in rows]
    assert "spent: 0 queries, $0.0000 at list price" in second


@pytest.mark.torch
def test_certify_folder_refuses_a_run_over_the_cost_cap_before_any_query(tmp_path):
    result = run_example("certify_folder.py", "--limit", "3", "--max-cost", "0.1", "--log", "memory", expect=2)
    assert "BudgetExceededError" in result.stderr and "max_cost_usd=0.1" in result.stderr
    assert not table_rows(result.stdout, "fmnist_test_") and "spent:" not in result.stdout


# -------------------------------------------------------------------------------- train_denoiser


@pytest.mark.torch
def test_train_denoiser_improves_psnr_saves_loads_and_certifies(tmp_path):
    out_file = tmp_path / "dncnn.safetensors"
    out = run_example("train_denoiser.py", "--out", str(out_file), "--threads", "1", timeout=180).stdout
    match = re.search(r"PSNR before: ([\d.]+) dB \(noisy\), after: ([\d.]+) dB \(denoised\)", out)
    assert match, out
    before, after = float(match.group(1)), float(match.group(2))
    assert after > before + 3.0, (before, after)
    reloaded = re.search(r"loaded back: .* PSNR ([\d.]+) dB", out)
    assert reloaded and float(reloaded.group(1)) == after  # the file holds exactly the trained weights

    denoiser = robust_api.load_denoiser(out_file, device="cpu")
    assert denoiser.arch == "dncnn" and denoiser.config() == {"image_channels": 1, "depth": 5, "channels": 16}
    assert denoiser.noise_sd == pytest.approx(0.25)
    assert re.search(r"certify fmnist_test_\d+_\w+\.png with trained denoiser: label=\S", out)
    # what the script printed is what the saved denoiser gives (same seed, same noisy copies)
    printed = re.search(r"with trained denoiser: label=(.+?) radius=([\d.]+)", out)
    image = re.search(r"certify (fmnist_test_\S+\.png) with trained denoiser", out).group(1)
    cert = RobustAPI("local", denoiser=str(out_file), seed=0, log=False, device="cpu").certify(
        IMAGES / image, noise_sd=0.25, N0=20, N=100)
    assert (str(cert.label), f"{cert.radius:.3f}") == (printed.group(1), printed.group(2))


# ------------------------------------------------------------------------------ local_pytorch_model


@pytest.mark.torch
@pytest.mark.parametrize("with_log_file", [False, True])
def test_local_pytorch_model_offline_recertification_equals_online(tmp_path, with_log_file):
    args = ("--log", str(tmp_path / "mine.sqlite3")) if with_log_file else ()
    out = run_example("local_pytorch_model.py", *args, timeout=120).stdout
    assert "model: local:MyClassifier (229610 parameters)" in out
    online = re.search(r"^certify: label=(.+?) radius=([\d.]+) p_lower=([\d.]+) queries=(\d+)", out, re.M)
    offline = re.search(r"^offline: label=(.+?) radius=([\d.]+) queries=(\d+) \(from (\d+) logged records\); "
                        r"identical to online: (\w+)", out, re.M)
    callable_form = re.search(r"^callable: label=(.+?) radius=([\d.]+) .*same as the nn.Module: (\w+)", out, re.M)
    assert online and offline and callable_form, out
    assert offline.group(1, 2) == online.group(1, 2) and offline.group(5) == "True"
    assert online.group(4) == "120" and offline.group(3) == "0" and offline.group(4) == "120"
    assert callable_form.group(1, 2) == online.group(1, 2) and callable_form.group(3) == "True"
    # the README's numbers for this image at σ = 0.12 with the bundled weights
    assert online.group(1) == "Trouser" and online.group(2) == "0.148961"
    counts = ast.literal_eval(re.search(r"^cert\.counts=(\{.*?\})", out, re.M).group(1))
    assert sum(counts.values()) == 100 and max(counts, key=counts.get) == "Trouser"
    if with_log_file:
        [call] = [c for c in robust_api.open_log(tmp_path / "mine.sqlite3") if c.kind == "certify"]
        assert call.provider == "local:MyClassifier"
        assert f"{RobustAPI('local', online=False).certify(call).radius:.6f}" == online.group(2)


# ---------------------------------------------------------------------------- record_sample_log


def _same_answers(new_calls, committed_calls) -> None:
    assert len(new_calls) <= len(committed_calls)
    for new, old in zip(new_calls, committed_calls):
        assert (new.kind, new.image_digest, new.noise_sd, new.seed) == (old.kind, old.image_digest, old.noise_sd, old.seed)
        # what matters: the same answer for every (phase, sample index); the order batches were
        # committed in depends on which finished first (the stores read back in one order anyway)
        assert sorted((r.phase, r.sample_index, r.label) for r in new) == sorted(
            (r.phase, r.sample_index, r.label) for r in old)


@pytest.mark.torch
def test_record_sample_log_reproduces_the_committed_logs(tmp_path):
    out = run_example("record_sample_log.py", "--images", "2", "--out-dir", str(tmp_path), timeout=240).stdout
    assert "Google emulator at http://127.0.0.1:" in out
    for name, calls_per_image in ((LOCAL_LOG.name, 3), (GOOGLE_LOG.name, 2), (SEQUENTIAL_LOG.name, 1)):
        assert re.search(rf"wrote {2 * calls_per_image} calls \(\d+ queries, [\d.]+ MB\) to .*{re.escape(name)}", out)
        new = list(robust_api.open_log(tmp_path / name))
        committed = list(robust_api.open_log(LOGS / name))
        assert len(new) == 2 * calls_per_image
        _same_answers(new, committed[: len(new)])
    # both Google logs of one run name the same emulator
    providers = {c.provider for name in (GOOGLE_LOG.name, SEQUENTIAL_LOG.name) for c in robust_api.open_log(tmp_path / name)}
    assert len(providers) == 1 and providers.pop().startswith("google:label_detection@127.0.0.1:")


# ---------------------------------------------------------------------------------- sample logs


def _recompute_cohen(call, alpha: float):
    """Cohen et al.'s CERTIFY from the records, independently of the library (scipy only)."""
    from collections import Counter

    from scipy.stats import beta, norm

    selection = Counter(r.label for r in call if r.phase == "selection" and r.error is None)
    estimation = [r for r in call if r.phase == "estimation"]
    ranked = selection.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None  # a tie: the library's tie-break is not re-derived here
    guess = ranked[0][0]
    n = len(estimation)
    n_a = sum(r.label == guess and r.error is None for r in estimation)
    p_lower = beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0
    if p_lower <= 0.5:
        return ABSTAIN, 0.0
    return guess, call.noise_sd * norm.ppf(p_lower)


@pytest.mark.parametrize("path, calls, certifies, predicts", [
    (LOCAL_LOG, 30, 20, 10), (GOOGLE_LOG, 20, 10, 10), (SEQUENTIAL_LOG, 10, 10, 0),
])
def test_sample_logs_open_and_recertify_offline(path, calls, certifies, predicts):
    log = list(robust_api.open_log(path))
    assert len(log) == calls
    assert sum(c.kind == "certify" for c in log) == certifies and sum(c.kind == "predict" for c in log) == predicts
    offline = RobustAPI("local", online=False)
    for call in log:
        assert call.seed == 0 and call.status == "complete"
        if call.kind == "predict":
            assert call.noise_sd == 0 and len(call) == 1 and call[0].phase == "clean" and call[0].error is None
            assert offline.predict(call).label == call[0].label
            continue
        cert = offline.certify(call)
        assert cert.queries == 0 and cert.alpha == 0.001
        assert cert.label is ABSTAIN or isinstance(cert.label, str)
        assert math.isfinite(cert.radius) and cert.radius >= 0 and (cert.radius > 0) == (cert.label is not ABSTAIN)
        assert cert.radius <= cert.ceiling + 1e-12
        assert tuple(offline.certify(call)) == tuple(cert)  # deterministic
        if call.params.get("method", "cohen") == "sequential":
            assert cert.method == "sequential" and cert.stop_reason in ("certified", "futile", "settled", "budget")
            assert cert.samples == len(call) <= 401
            [clean] = [r for r in call if r.phase == "clean"]
            assert cert.label is ABSTAIN or cert.label == clean.label  # the clean selection is the guess
            if cert.stop_reason == "certified":
                assert cert.radius >= 0.25
        else:
            assert (cert.n0, cert.n, cert.samples) == (20, 100, 120) == (20, 100, len(call))
            expected = _recompute_cohen(call, 0.001)
            if expected is not None:
                assert cert.label == expected[0] and cert.radius == pytest.approx(expected[1], abs=1e-9)
            # another α and fewer samples, offline (what the log is for)
            smaller = offline.certify(call, N=50, alpha=0.01)
            assert smaller.n == 50 and math.isfinite(smaller.radius)


def test_google_sample_logs_are_small_and_come_from_the_emulator_with_the_denoiser():
    for path in (GOOGLE_LOG, SEQUENTIAL_LOG):
        assert path.stat().st_size < 1_000_000
        for call in robust_api.open_log(path):
            assert call.provider.startswith("google:label_detection@127.0.0.1:")
            if call.kind == "certify":
                assert call.noise_sd == 0.25 and call.denoiser_id == "denoiser:fashion-mnist-dncnn-0.25"
            assert all(r.cost_usd == pytest.approx(0.0015) for r in call)
    sequential = [c for c in robust_api.open_log(SEQUENTIAL_LOG)]
    assert all(c.params["radius"] == 0.25 and c.params["N"] == 400 for c in sequential)
    # the same 10 images in both Google logs and the local log
    digests = [{c.image_digest for c in robust_api.open_log(p)} for p in SAMPLE_LOGS]
    assert len(digests[0]) == 10 and digests[0] == digests[1] == digests[2]


# -------------------------------------------------------------------------------- reanalyze_logs


def _expected_accuracy(path: Path, radii) -> dict:
    """Certified accuracy per (noise_sd, method) of one sample log against LABELS.csv,
    computed here from the offline certificates (the images are the first 10, in order)."""
    truth = true_class_names()
    names = sorted(truth)[:10]
    calls = list(robust_api.open_log(path))
    per_image = len(calls) // 10
    offline = RobustAPI("local", online=False)
    out: dict = {}
    for index, call in enumerate(calls):
        if call.kind != "certify":
            continue
        cert = offline.certify(call)
        correct = cert.label is not ABSTAIN and cert.label == truth[names[index // per_image]]
        out.setdefault((call.noise_sd, cert.method), []).append((correct, cert.radius))
    return {key: {r: sum(c and radius >= r for c, radius in rows) / len(rows) for r in radii}
            for key, rows in out.items()}


def test_reanalyze_logs_prints_the_papers_table_for_the_sample_logs(tmp_path):
    plot = tmp_path / "accuracy.png"
    sources = [str(p) for p in SAMPLE_LOGS]
    out = run_example("reanalyze_logs.py", *sources, "--labels", "examples/images/LABELS.csv", "--plot", str(plot),
                      timeout=120).stdout
    assert "40 certified images from 3 log(s)" in out
    header = next(line for line in out.splitlines() if line.startswith("provider"))
    for column in ("denoiser", "noise_sd", "method", "r=0", "r=0.25", "r=0.5", "r=0.75", "r=1", "ACR"):
        assert column in header
    google = table_rows(out, "google:label_detection@127.0.0.1:")
    local = table_rows(out, "local:fashion_mnist_cnn")
    assert len(google) == 2 and len(local) == 2
    assert {row[3] for row in google} == {"cohen", "sequential"} and {row[2] for row in local} == {"0.12", "0.25"}
    assert all(row[1] == "denoiser:fashion-mnist-dncnn-0.25" for row in google)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the JSON output: each group's accuracies are those of the offline certificates
    radii = (0.0, 0.1, 0.25)
    data = json.loads(run_example("reanalyze_logs.py", *sources, "--labels", "examples/images/LABELS.csv",
                                  "--radii", "0,0.1,0.25", "--format", "json").stdout)
    groups = {(g["key"]["provider"].split(":")[0], g["key"]["noise_sd"], g["key"]["method"]): g for g in data["groups"]}
    assert len(groups) == 4 and all(g["images"] == 10 for g in groups.values())
    expected = {("local",) + key: value for key, value in _expected_accuracy(LOCAL_LOG, radii).items()}
    expected.update({("google",) + key: value for key, value in _expected_accuracy(GOOGLE_LOG, radii).items()})
    expected.update({("google",) + key: value for key, value in _expected_accuracy(SEQUENTIAL_LOG, radii).items()})
    assert set(groups) == set(expected)
    for key, accuracies in expected.items():
        reported = {float(r): v for r, v in groups[key]["certified_accuracy"].items()}
        assert reported == pytest.approx(accuracies), key


def test_reanalyze_logs_reads_a_folder_and_writes_csv(tmp_path):
    for path in SAMPLE_LOGS:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "notes.txt.bak").write_text("not a log")  # other files in the folder are ignored
    text = run_example("reanalyze_logs.py", str(tmp_path), "--format", "csv", "--by", "provider,noise_sd").stdout
    rows = list(csv.DictReader(text.splitlines()))
    # google σ=0.25 (both logs: the same emulator), local σ=0.12, local σ=0.25
    assert len(rows) == 3
    assert sorted((row["provider"].split(":")[0], float(row["noise_sd"]), int(row["images"])) for row in rows) == [
        ("google", 0.25, 20), ("local", 0.12, 10), ("local", 0.25, 10)]
    missing = run_example("reanalyze_logs.py", str(tmp_path / "nothing.jsonl"), expect=2)
    assert "no query log at" in missing.stderr
