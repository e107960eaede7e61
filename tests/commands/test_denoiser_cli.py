"""``robust-api train-denoiser``, ``eval-denoiser``, ``denoisers`` and ``certify --denoiser``, in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import robust_api
from robust_api.commands.cli import main
from robust_api.datasets import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_ENV_VAR

REPO = Path(__file__).resolve().parents[2]
HAVE_FASHION_MNIST = Path(os.environ.get(FASHION_MNIST_ENV_VAR) or DEFAULT_FASHION_MNIST_DIR).is_dir()


@pytest.fixture
def trained(tmp_path, capsys):
    """A tiny 1-channel DnCNN trained by the CLI on a folder of 3 gray images."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        yy, xx = np.mgrid[:20, :24]
        image = 127 + 100 * np.sin(xx / (3 + i)) * np.cos(yy / 4) + rng.normal(0, 5, (20, 24))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "tiny.safetensors"
    status = main(["train-denoiser", "--dataset", str(folder), "--image-channels", "1", "--noise-sd", "0.25",
                   "--depth", "3", "--channels", "4", "--epochs", "2", "--patch-size", "8",
                   "--patches-per-epoch", "32", "--batch-size", "16", "--no-progress", "--out", str(out)])
    assert status == 0
    return SimpleNamespace(path=out, stdout=capsys.readouterr().out)


def test_train_denoiser_writes_a_loadable_self_describing_file(trained):
    assert "epoch 2:" in trained.stdout and "saved" in trained.stdout
    with safe_open(str(trained.path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "robust_api.denoiser/1" and json.loads(meta["noise_sd"]) == 0.25
    assert meta["objective"] == "mse" and meta["recipe"].startswith("robust-api train-denoiser")
    assert float(meta["val_psnr_db"]) > 0
    module = robust_api.load_denoiser(trained.path, device="cpu")
    assert module.image_channels == 1 and module.config()["depth"] == 3


def test_train_denoiser_refuses_stability_without_a_surrogate(tmp_path, capsys):
    status = main(["train-denoiser", "--noise-sd", "0.25", "--objective", "stability", "--epochs", "1",
                   "--dataset", str(tmp_path), "--out", str(tmp_path / "x.safetensors")])
    assert status == 2 and "robust-api: error:" in capsys.readouterr().err


def test_denoisers_command_lists_every_shipped_name(capsys):
    assert main(["denoisers"]) == 0
    out = capsys.readouterr().out
    for name in robust_api.denoisers.available():
        assert name in out


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="needs the dataset-fashion-mnist package")
def test_eval_denoiser_prints_psnr_accuracy_and_certified_accuracy(trained, capsys):
    capsys.readouterr()
    status = main(["eval-denoiser", "--denoiser", str(trained.path), "--noise-sd", "0.25", "--num-images", "4",
                   "--budget", "2/5", "--alpha", "0.1"])
    assert status == 0
    out = capsys.readouterr().out
    assert "Fashion-MNIST test images: 4" in out and "PSNR" in out and "Certified accuracy" in out
    rows = [line for line in out.splitlines() if line.startswith("0.25") and "2/5" in line]
    # none and the trained denoiser, each against the true label and the clean prediction
    assert len(rows) == 4, out


def test_certify_with_a_denoiser_file(trained, tmp_path, capsys):
    image = REPO / "examples" / "images" / "fmnist_test_00002_trouser.png"
    status = main(["certify", str(image), "--denoiser", str(trained.path), "--noise-sd", "0.25", "--N0", "5",
                   "--N", "20", "--seed", "0", "--log", str(tmp_path / "log"), "--format", "json", "--no-clean"])
    assert status == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["N"] == 20 and rows[0]["queries"] == 25
    log = robust_api.open_log(tmp_path / "log")
    header = log.load_call(rows[0]["run_id"]).header
    assert header.denoiser_digest and header.denoiser_id.startswith("module:")
