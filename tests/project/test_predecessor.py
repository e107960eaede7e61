"""The predecessor's users (microsoft/denoised-smoothing ``vision_api``) run their calls unchanged.

Its two scripts and its tutorial did, per image: one clean ``predict(img, N=1, noise_sd=0)``
on a RobustAPI without denoiser, one positional ``certify(img, noise_sd, N0, N, alpha)`` on a
RobustAPI with one, ``top_class == -1`` to detect abstention, ``pickle.dump({"ground_truth":
clean_log, "pred": noisy_logs})``; later, in another process, ``pickle.load`` and offline
``predict(clean_log)`` / ``certify(noisy_logs, noise_sd, N0, N, alpha)``; the tutorial read
``logs[0]`` as the API's answer and the counts as a ``defaultdict(int)``.

The scripts below make exactly those calls (written here, not copied), in subprocesses, with
the provider endpoints and credentials in environment variables as a user would set them,
against the local emulators of the four APIs. Setting ``ROBUST_API_PREDECESSOR_DIR`` to a
checkout of microsoft/denoised-smoothing also runs its published ``certify_api.py`` and
``certify_from_file.py`` unchanged (with shims for the SciPy functions removed since).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from doubles import CLOUD_ENV_VARS
from robust_api.optional import has_torch

pytestmark = pytest.mark.skipif(not has_torch(), reason="the emulators answer with the bundled CNN (needs torch)")

REPO = Path(__file__).resolve().parents[2]
IMAGES = sorted((REPO / "examples" / "images").glob("*.png"))[:3]

#: endpoint variable, then the credentials each API's user sets (test values, no real secret)
PROVIDERS = {
    "google": ("ROBUST_API_GOOGLE_ENDPOINT", {"GOOGLE_API_KEY": "AIzaSy-predecessor-test"}),
    "azure": ("AZURE_COMPUTER_VISION_ENDPOINT", {"AZURE_COMPUTER_VISION_SUBSCRIPTION_KEY": "azure-test-key"}),
    "aws": ("ROBUST_API_AWS_ENDPOINT", {"AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": "aws-test",
                                        "AWS_DEFAULT_REGION": "us-east-1"}),
    "clarifai": ("ROBUST_API_CLARIFAI_ENDPOINT", {"CLARIFAI_API_KEY": "clarifai-test-key"}),
}

# the predecessor's certify_api.py, as its users call the API (own wording)
ONLINE_SCRIPT = textwrap.dedent('''
    import glob, json, os, pickle, sys
    import numpy as np
    from PIL import Image
    from robust_api import RobustAPI, load_denoiser

    api_name, image_dir, save = sys.argv[1], sys.argv[2], sys.argv[3]
    noise_sd, N0, N, alpha = 0.25, 5, 30, 0.001
    denoiser = load_denoiser("fashion-mnist-dncnn-0.25")       # a torch.nn.Module, as before
    base = RobustAPI(api_name, online=True)
    robust = RobustAPI(api_name, denoiser=denoiser, online=True)
    rows = []
    for i, filename in enumerate(sorted(glob.glob(os.path.join(image_dir, "*.png")))):
        img = np.asarray(Image.open(filename)) / 255.           # H x W floats, as scipy's imread / 255.
        true_label, pred, clean_log = base.predict(img, N=1, noise_sd=0)
        top_class, radius, noisy_logs = robust.certify(img, noise_sd, N0, N, alpha)
        with open(os.path.join(save, "pred_hist_%d.pkl" % i), "wb") as f:
            pickle.dump({"ground_truth": clean_log, "pred": noisy_logs}, f)
        abstained = top_class == -1
        line = "{}\\t{}\\t{:.3f}\\t{}\\t{}".format(i, (not abstained) and top_class == true_label, radius,
                                                 true_label, top_class)
        rows.append({"abstained": abstained, "is_abstain": getattr(top_class, "__class__").__name__ == "Abstain",
                     "radius": radius, "label": None if abstained else top_class, "true": true_label,
                     "line": line, "answers": len(noisy_logs), "pred_unseen": pred["never-a-label"]})
    print(json.dumps(rows))
''')

# the predecessor's certify_from_file.py (own wording)
OFFLINE_SCRIPT = textwrap.dedent('''
    import json, os, pickle, sys
    from robust_api import RobustAPI

    api_name, save, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    offline = RobustAPI(api_name, online=False)
    rows = []
    for i in range(count):
        with open(os.path.join(save, "pred_hist_%d.pkl" % i), "rb") as f:
            query_log = pickle.load(f)
        true_label, pred = offline.predict(query_log["ground_truth"])
        top_class, radius = offline.certify(query_log["pred"], 0.25, 5, 30, 0.001)
        rows.append({"abstained": top_class == -1, "radius": radius,
                     "label": None if top_class == -1 else top_class, "true": true_label})
    print(json.dumps(rows))
''')

# reading the pickles where robust_api cannot be imported at all
PLAIN_SCRIPT = textwrap.dedent('''
    import json, os, pickle, sys
    sys.modules["robust_api"] = None     # any attempt to import it fails
    save, count = sys.argv[1], int(sys.argv[2])
    shapes = []
    for i in range(count):
        with open(os.path.join(save, "pred_hist_%d.pkl" % i), "rb") as f:
            data = pickle.load(f)
        shapes.append([type(data["ground_truth"]).__name__, type(data["pred"]).__name__, len(data["pred"]),
                       type(data["pred"][0]).__name__])
    print(json.dumps(shapes))
''')


def _top_of(api: str, answer) -> str:
    """The predecessor's top class of one answer (what its ``_get_top_class`` read)."""
    if not answer:
        return "None"
    if api == "google":
        return [*answer][0]
    if api == "clarifai":
        return answer["outputs"][0]["data"]["concepts"][0]["name"]
    if api == "aws":
        return answer[0]["Name"]
    return answer[0]["name"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    for path in IMAGES:  # 4x larger (112 x 112): every API's minimum size, as the predecessor's photos were
        with Image.open(path) as image:
            image.resize((112, 112), Image.NEAREST).save(folder / path.name)
    return folder


def _environment(tmp_path: Path, api: str, endpoint: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLOUD_ENV_VARS}
    variable, credentials = PROVIDERS[api]
    env.update(credentials)
    env[variable] = endpoint
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws-credentials")
    env["ROBUST_API_HOME"] = str(tmp_path / "home")  # the default log lands here, not in the user's data dir
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return env


def _run(script: str, args: list, env: dict, cwd: Path) -> list:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("api", sorted(PROVIDERS))
def test_predecessor_scripts_run_unchanged_against_the_emulators(tmp_path, image_dir, api):
    from robust_api.emulators import start

    save = tmp_path / "logs"
    save.mkdir()
    endpoint = start(api)
    try:
        env = _environment(tmp_path, api, str(endpoint))
        online = _run(ONLINE_SCRIPT, [api, image_dir, save], env, tmp_path)
    finally:
        endpoint.stop()
    assert len(online) == len(IMAGES)
    for row in online:
        assert row["answers"] == 5 + 30 and row["pred_unseen"] == 0
        assert row["abstained"] == row["is_abstain"]  # top_class == -1 exactly when it abstained
        assert row["abstained"] == (row["radius"] == 0.0)
    assert any(not row["abstained"] for row in online)
    # the default log went to the user's data directory, never to ./query_logs of the working folder
    assert not (tmp_path / "query_logs").exists()

    plain = _run(PLAIN_SCRIPT, [save, len(IMAGES)], env, tmp_path)
    expected_item = "dict" if api in ("google", "clarifai") else "list"
    assert plain == [["list", "list", 35, expected_item]] * len(IMAGES)

    offline = _run(OFFLINE_SCRIPT, [api, save, len(IMAGES)], {**env, **{v: "" for v in CLOUD_ENV_VARS}}, tmp_path)
    for was, now in zip(online, offline):  # the same certificates, recomputed from the pickles
        assert now["abstained"] == was["abstained"] and now["label"] == was["label"]
        assert now["radius"] == pytest.approx(was["radius"], abs=1e-12) and now["true"] == was["true"]

    # the pickles are what `robust-api import-legacy` reads, as the predecessor's own
    from robust_api import RobustAPI, import_legacy

    log = import_legacy(save, api, noise_sd=0.25, N0=5)
    certify_calls = [call for call in log if call.kind == "certify"]
    assert len(certify_calls) == len(IMAGES)
    recertified = sorted(RobustAPI(api, online=False).certify(call).radius for call in certify_calls)
    assert recertified == pytest.approx(sorted(row["radius"] for row in online), abs=1e-12)


@pytest.mark.parametrize("api", sorted(PROVIDERS))
def test_logs_read_as_the_providers_answers(monkeypatch, tmp_path, image_dir, api):
    """The tutorial's cells: ``logs[i]`` is the API's answer in the predecessor's shape, its
    first entry is the vote, and the record's fields stay attributes."""
    from doubles import no_cloud_credentials
    from robust_api import RobustAPI
    from robust_api.emulators import start

    no_cloud_credentials(monkeypatch, tmp_path)
    variable, credentials = PROVIDERS[api]
    endpoint = start(api)
    try:
        for key, value in credentials.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv(variable, str(endpoint))
        robust = RobustAPI(api, online=True, log=tmp_path / "log.sqlite3", seed=0)
        label, counts, logs = robust.predict(str(image_dir / IMAGES[0].name), N=8, noise_sd=0.12)
    finally:
        endpoint.stop()
    assert len(logs) == 8
    for answer in logs:
        assert _top_of(api, answer) == answer.label and answer.phase == "predict"
        assert answer.record.raw is not None and isinstance(answer, (dict, list))
    majority = max(counts.items(), key=lambda item: item[1])[0]
    assert label == majority or label == -1  # PREDICT abstains when the vote is not clear at alpha
    assert counts["not-a-label"] == 0 and "not-a-label" not in counts  # defaultdict(int), nothing inserted
    restored = pickle.loads(pickle.dumps(logs))
    assert type(restored) is list and restored == list(logs)
    assert all(type(answer) in (dict, list) for answer in restored)
    assert [_top_of(api, answer) for answer in restored] == [answer.label for answer in logs]


def _predecessor_dir():
    folder = os.environ.get("ROBUST_API_PREDECESSOR_DIR")
    if not folder:
        pytest.skip("set ROBUST_API_PREDECESSOR_DIR to a checkout of microsoft/denoised-smoothing to run its scripts")
    folder = Path(folder)
    if not (folder / "vision_api" / "certify_api.py").is_file():
        pytest.fail(f"{folder} is not a checkout of microsoft/denoised-smoothing (no vision_api/certify_api.py)")
    return folder


# what the published scripts import but recent SciPy removed: scipy.ndimage.imread, scipy.misc.imsave,
# scipy.stats.binom_test (their own robust_api module is replaced by ours, which is the point)
SHIMS = textwrap.dedent('''
    import numpy as np, scipy, scipy.ndimage, scipy.stats
    from PIL import Image
    import scipy.misc

    def imread(path, *args, **kwargs):
        return np.asarray(Image.open(path).convert("RGB"))

    scipy.ndimage.imread = imread
    scipy.misc.imsave = lambda path, img: Image.fromarray((np.clip(img, 0, 1) * 255).astype("uint8")).save(path)
    if not hasattr(scipy.stats, "binom_test"):
        scipy.stats.binom_test = lambda *a, **k: scipy.stats.binomtest(*a, **k).pvalue
''')


@pytest.mark.parametrize("api", sorted(PROVIDERS))
def test_published_predecessor_scripts(tmp_path, image_dir, api):
    folder = _predecessor_dir()
    pytest.importorskip("statsmodels")
    work = tmp_path / "vision_api"
    shutil.copytree(folder / "vision_api", work, ignore=shutil.ignore_patterns("robust_api.py", "images"))
    shutil.copytree(image_dir, work / "images")
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "sitecustomize.py").write_text(SHIMS)
    # its ../code/architectures.py needs torchvision (no CPU build here); only --denoiser_checkpoint uses it
    (shims / "architectures.py").write_text(
        "def get_architecture(*args, **kwargs):\n    raise RuntimeError('no torchvision in this test')\n"
    )
    from robust_api.emulators import start

    endpoint = start(api)
    try:
        env = _environment(tmp_path, api, str(endpoint))
        env["PYTHONPATH"] = os.pathsep.join([str(shims), str(folder / "code"), env["PYTHONPATH"]])
        online = subprocess.run([sys.executable, "certify_api.py", "--api", api, "--N0", "5", "--N", "30",
                                 "--save", str(tmp_path / "out")], cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
    finally:
        endpoint.stop()
    assert online.returncode == 0, online.stderr[-3000:]
    offline = subprocess.run([sys.executable, "certify_from_file.py", "--api", api, "--N0", "5", "--N", "30",
                              "--log_dir", str(tmp_path / "out"), "--save", str(tmp_path / "offline")], cwd=work,
                             env=env, capture_output=True, text=True, timeout=600)
    # it loops over 100 files; ours are fewer: it stops at the first missing one
    assert "FileNotFoundError" in offline.stderr and f"pred_hist_{len(IMAGES)}.pkl" in offline.stderr
    online_rows = (tmp_path / "out" / "log.txt").read_text().splitlines()
    offline_rows = (tmp_path / "offline" / "log.txt").read_text().splitlines()[1:]
    assert len(online_rows) == len(offline_rows) == len(IMAGES)
    assert [row.split("\t")[1:] for row in online_rows] == [row.split("\t")[1:] for row in offline_rows]
    assert any(row.split("\t")[4] != "ABSTAIN" for row in online_rows)  # something was certified
