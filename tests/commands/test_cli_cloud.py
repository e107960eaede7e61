"""The command line with a cloud provider: ``robust-api emulate`` in its own process, then
``robust-api certify --provider google --endpoint ...`` through the official SDK."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.vision")

from doubles import skip_without_torch  # noqa: E402
from robust_api.commands.cli import main  # noqa: E402

IMAGE = str(Path(__file__).resolve().parents[2] / "examples" / "images" / "fmnist_test_00002_trouser.png")


@pytest.fixture
def emulator():
    skip_without_torch()  # the emulator serves the bundled classifier
    process = subprocess.Popen(
        [sys.executable, "-m", "robust_api", "emulate", "google", "--port", "0", "--latency-ms", "5",
         "--fault", "throttle=0.1", "--fault", "server_error=0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        endpoint = process.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:"), process.stderr.read()
        yield endpoint, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_emulate_prints_the_endpoint_and_certify_uses_it(emulator, tmp_path, capsys):
    endpoint, process = emulator
    status = main([
        "certify", IMAGE, "--provider", "google", "--endpoint", endpoint, "--noise-sd", "0.25", "--N0", "10",
        "--denoiser", "fashion-mnist-dncnn-0.25",
        "--N", "40", "--seed", "0", "--log", str(tmp_path / "log.sqlite3"), "--format", "json", "--no-progress",
        "--attempts", "12",
    ])
    assert status == 0
    [item] = json.loads(capsys.readouterr().out)
    assert item["N0"] == 10 and item["N"] == 40 and item["errors"] == 0
    assert item["label"] == item["clean_label"] == "Trouser"
    # SIGTERM stops the emulator cleanly, as Ctrl-C does in a terminal (SIGINT is not used here:
    # a test run started as a background job ignores it, and so would the child)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0


def test_certify_refuses_a_call_over_the_cap(emulator, tmp_path, capsys):
    endpoint, _ = emulator
    status = main([
        "certify", IMAGE, "--provider", "google", "--endpoint", endpoint, "--noise-sd", "0.25", "--N0", "20",
        "--N", "100", "--max-queries", "50", "--log", str(tmp_path / "log.sqlite3"),
    ])
    assert status == 4  # the budget cap: exit status 4
    err = capsys.readouterr().err
    assert "max_queries=50" in err and "120 queries" in err


def test_missing_credentials_are_a_clear_cli_error(tmp_path, capsys, monkeypatch):
    pytest.importorskip("boto3")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    status = main(["certify", IMAGE, "--provider", "aws", "--noise-sd", "0.25", "--log", str(tmp_path / "l.sqlite3")])
    assert status == 3  # credentials: exit status 3
    assert "AWS_ACCESS_KEY_ID" in capsys.readouterr().err


def test_emulate_rejects_a_non_loopback_host(capsys):
    status = main(["emulate", "google", "--host", "0.0.0.0"])
    assert status == 2
    err = capsys.readouterr().err
    assert "0.0.0.0" in err and "127.0.0.1" in err


def test_remote_options_with_the_local_provider_are_a_clear_error(tmp_path, capsys):
    status = main(["certify", IMAGE, "--provider", "local", "--timeout", "5", "--noise-sd", "0.25",
                   "--log", str(tmp_path / "l.sqlite3")])
    assert status == 2
    assert "--timeout only apply to remote providers" in capsys.readouterr().err


def test_emulate_key_env_must_be_set(capsys, monkeypatch):
    monkeypatch.delenv("ROBUST_API_TEST_UNSET_KEY", raising=False)
    assert main(["emulate", "aws", "--key-env", "ROBUST_API_TEST_UNSET_KEY"]) == 2
    assert "ROBUST_API_TEST_UNSET_KEY" in capsys.readouterr().err
