"""A non-editable install carries the shipped weights (they load by name from site-packages) and
the example images the tutorial reads."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _setuptools_is_recent() -> bool:
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    return int(setuptools.__version__.split(".")[0]) >= 68


@pytest.mark.slow
@pytest.mark.skipif(not _setuptools_is_recent(), reason="needs setuptools >= 68 to build without network")
def test_shipped_weights_load_by_name_after_a_non_editable_install(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    shipped = sorted(p.stem for p in (REPO / "robust_api" / "assets" / "denoisers").glob("*.safetensors"))
    probe = (
        "import json, robust_api, torch\n"
        "names = robust_api.denoisers.available()\n"
        "shapes = {}\n"
        "for name in names:\n"
        "    d = robust_api.load_denoiser(name, device='cpu')\n"
        "    if d.noise_sd is None:\n"
        "        d.set_noise_sd(0.25)\n"
        "    x = torch.rand(2, d.image_channels, 28, 28)\n"
        "    shapes[name] = list(d(x).shape)\n"
        "from robust_api.models.imagenet import imagenet_class_names\n"
        "from robust_api.datasets import example_images, example_labels\n"
        "classes = imagenet_class_names()\n"
        "examples = [str(p) for p in example_images()] + [str(example_labels())]\n"
        "print(json.dumps({'file': robust_api.__file__, 'names': names, 'shapes': shapes,\n"
        "                  'imagenet': [len(classes), classes[281]], 'examples': examples}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert Path(result["file"]).is_relative_to(target), "imported the source tree, not the installed copy"
    assert result["names"] == shipped
    assert result["imagenet"] == [1000, "tabby"], "the ImageNet class names (package data) are missing"
    # the tutorial's example images and their labels (package data)
    assert len(result["examples"]) == 31 and all(Path(p).is_relative_to(target) for p in result["examples"])
    for name, shape in result["shapes"].items():
        assert shape[0] == 2 and shape[2:] == [28, 28], name
