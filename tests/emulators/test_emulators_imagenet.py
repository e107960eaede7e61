"""The emulators backed by a real ImageNet classifier (``model="efficientnet-lite0"``).

Each cloud adapter, through its official SDK client, gets a cat label for scikit-image's
"chelsea" photo (a tabby cat) from its emulator, with the classifier's own softmax score;
the wire answer for fixed image bytes is deterministic; the score floor drops low labels and
an image with none left gets the provider's empty answer (the SDK's ``NO_LABEL`` vote); a bad
``model`` / ``min_score`` is refused with a clear error, also on the command line.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from robust_api import RobustAPI
from robust_api.commands.cli import main
from robust_api.emulators import emulate
from robust_api.emulators import _core
from robust_api.emulators._core import IMAGENET_MIN_SCORE, Classifier, provider_label
from robust_api.errors import InvalidParameterError, MissingDependencyError
from robust_api.providers.cloud import NO_LABEL

MODEL = "efficientnet-lite0"
CAT_CLASSES = range(281, 286)  # ImageNet-1k: tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat

#: variant → (emulator, protocol, RobustAPI provider name, adapter options)
VARIANTS = {
    "google-rest": ("google", "rest", "google", {}),
    "google-grpc": ("google", "grpc", "google", {}),
    "aws": ("aws", None, "aws", {"region_name": "us-east-1", "aws_access_key_id": "emulator",
                                 "aws_secret_access_key": "emulator"}),
    "azure-v3.2": ("azure", None, "azure", {"subscription_key": "emulator"}),
    "azure-v4": ("azure", None, "azure", {"subscription_key": "emulator", "api": "v4"}),
    "clarifai-grpc": ("clarifai", "grpc", "clarifai", {"pat": "emulator"}),
    "clarifai-json": ("clarifai", "json", "clarifai", {"pat": "emulator"}),
    "http": ("http", None, "http", {}),
}


@pytest.fixture(autouse=True)
def no_cloud_environment(monkeypatch, tmp_path):
    """No credential, endpoint or metadata probe from the machine reaches the adapters."""
    for name in ("GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "ROBUST_API_GOOGLE_ENDPOINT", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_REKOGNITION", "ROBUST_API_AWS_ENDPOINT",
                 "AZURE_COMPUTER_VISION_ENDPOINT", "CLARIFAI_API_BASE", "CLARIFAI_GRPC_BASE",
                 "ROBUST_API_CLARIFAI_ENDPOINT", "ROBUST_API_HTTP_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def lite0():
    """The emulators' own (cached) lite0, so the tests and the servers share one load."""
    pytest.importorskip("robust_api.models.imagenet")
    try:
        return _core._imagenet_classifier(MODEL)[0]
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def chelsea(lite0):
    """The photo (uint8 [300, 451, 3]), its PNG and JPEG bytes, and lite0's softmax on it."""
    import torch
    from PIL import Image

    data = pytest.importorskip("skimage.data")
    image = data.chelsea()
    encoded = {}
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, fmt)
        encoded[fmt] = buffer.getvalue()
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        probabilities = torch.softmax(lite0(x).double(), dim=1)[0].numpy()
    return {"array": image, "png": encoded["PNG"], "jpeg": encoded["JPEG"], "p": probabilities}


def _cat_labels(lite0, provider):
    return {provider_label(lite0.class_names[i], provider) for i in CAT_CLASSES}


def _post(url, body, headers):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_adapter_gets_the_classifier_s_cat_label_for_chelsea(variant, lite0, chelsea):
    name, protocol, provider, options = VARIANTS[variant]
    top = int(np.argmax(chelsea["p"]))
    assert top in CAT_CLASSES, f"lite0's top class on chelsea is {lite0.class_names[top]!r}"
    with emulate(name, protocol=protocol, model=MODEL, min_score=0.0) as endpoint:
        location = {"url": endpoint} if provider == "http" else {"endpoint": endpoint}
        api = RobustAPI(provider, log=False, seed=0, **location, **options)
        prediction = api.predict(chelsea["array"], N=1, noise_sd=0)
        assert endpoint.stats["images"] == 1
    assert prediction.label == provider_label(lite0.class_names[top], name)
    assert prediction.label in _cat_labels(lite0, name)
    # the score on the wire is the classifier's own softmax probability of that class
    labels = type(api.provider).labels(prediction.logs[0].raw)
    assert labels[0][0] == prediction.label
    assert labels[0][1] == pytest.approx(chelsea["p"][top], abs=1e-4)
    assert [score for _, score in labels] == sorted((score for _, score in labels), reverse=True)


def test_the_default_floor_leaves_google_and_azure_only_labels_scoring_half_or_more(lite0, chelsea):
    """With the providers' default floors (google, azure 0.5) every label left scores ≥ 0.5,
    and the label the SDK votes for is the classifier's top class or, when that scores below
    the floor, NO_LABEL (the empty answer)."""
    top = int(np.argmax(chelsea["p"]))
    for name, options in (("google", {}), ("azure", {"subscription_key": "emulator"})):
        assert IMAGENET_MIN_SCORE[name] == 0.5
        with emulate(name, model=MODEL) as endpoint:
            api = RobustAPI(name, endpoint=endpoint, log=False, seed=0, **options)
            prediction = api.predict(chelsea["array"], N=1, noise_sd=0)
        labels = type(api.provider).labels(prediction.logs[0].raw)
        assert all(score >= 0.5 for _, score in labels)
        expected = provider_label(lite0.class_names[top], name) if chelsea["p"][top] >= 0.5 else NO_LABEL
        assert prediction.label == expected


# --------------------------------------------------------------------------- determinism


def test_the_wire_answer_for_fixed_bytes_is_deterministic(lite0, chelsea):
    png64 = base64.b64encode(chelsea["png"]).decode()
    jpeg64 = base64.b64encode(chelsea["jpeg"]).decode()
    with emulate("google", model=MODEL, min_score=0.0, top_k=5) as endpoint:
        body = json.dumps({"requests": [{"image": {"content": png64}, "features": [{"type": 4, "maxResults": 5}]},
                                        {"image": {"content": jpeg64}, "features": [{"type": 4, "maxResults": 5}]}]})
        headers = {"Content-Type": "application/json"}
        first = _post(f"{endpoint}/v1/images:annotate", body.encode(), headers)
        second = _post(f"{endpoint}/v1/images:annotate", body.encode(), headers)
    assert first == second
    png_answer, jpeg_answer = json.loads(first)["responses"]
    assert len(png_answer["labelAnnotations"]) == 5
    for answer in (png_answer, jpeg_answer):  # a JPEG is decoded to RGB as well: still a cat
        assert answer["labelAnnotations"][0]["description"] in _cat_labels(lite0, "google")
    with emulate("aws", model=MODEL) as endpoint:
        headers = {"X-Amz-Target": "RekognitionService.DetectLabels", "Content-Type": "application/x-amz-json-1.1",
                   "Authorization": "AWS4-HMAC-SHA256 Credential=emulator/x"}
        body = json.dumps({"Image": {"Bytes": jpeg64}, "MaxLabels": 3, "MinConfidence": 0}).encode()
        first, second = (_post(endpoint, body, headers) for _ in range(2))
    assert first == second
    labels = json.loads(first)["Labels"]
    assert len(labels) == 3 and labels[0]["Name"] in _cat_labels(lite0, "aws")
    assert 0 < labels[0]["Confidence"] <= 100
    with emulate("http", model=MODEL) as endpoint:
        first, second = (_post(endpoint, chelsea["png"], {"Content-Type": "image/png"}) for _ in range(2))
    assert first == second
    assert json.loads(first)[0]["label"] in _cat_labels(lite0, "http")


# --------------------------------------------------------------------------- thresholds


def test_min_score_drops_low_labels_and_an_empty_answer_is_a_no_label_vote(lite0, chelsea):
    ranked = np.sort(chelsea["p"])[::-1]
    between = float(ranked[0] + ranked[1]) / 2  # keeps the top label only
    for floor, expected_count in ((0.0, 5), (between, 1), (1.0, 0)):
        with emulate("google", model=MODEL, min_score=floor, top_k=5) as endpoint:
            api = RobustAPI("google", endpoint=endpoint, log=False, seed=0)
            prediction = api.predict(chelsea["array"], N=1, noise_sd=0)
            request = {"requests": [{"image": {"content": base64.b64encode(chelsea["png"]).decode()},
                                     "features": [{"type": 4, "maxResults": 5}]}]}
            wire = json.loads(_post(f"{endpoint}/v1/images:annotate", json.dumps(request).encode(),
                                    {"Content-Type": "application/json"}))
        labels = type(api.provider).labels(prediction.logs[0].raw)
        assert len(labels) == expected_count
        assert all(score >= floor for _, score in labels)
        assert len(wire["responses"][0].get("labelAnnotations", [])) == expected_count
        if expected_count == 0:
            assert wire == {"responses": [{}]}  # Google leaves the empty list out
            assert prediction.label == NO_LABEL
        else:
            assert prediction.label in _cat_labels(lite0, "google")
    # the request's own threshold still applies on top (Rekognition MinConfidence, in percent)
    with emulate("aws", model=MODEL) as endpoint:
        headers = {"X-Amz-Target": "RekognitionService.DetectLabels", "Content-Type": "application/x-amz-json-1.1",
                   "Authorization": "AWS4-HMAC-SHA256 Credential=emulator/x"}
        body = {"Image": {"Bytes": base64.b64encode(chelsea["png"]).decode()}, "MinConfidence": between * 100}
        labels = json.loads(_post(endpoint, json.dumps(body).encode(), headers))["Labels"]
    assert len(labels) == 1 and labels[0]["Confidence"] >= between * 100


def test_labels_are_written_the_provider_s_way_and_duplicates_merge(lite0, chelsea):
    assert provider_label("German shepherd, German shepherd dog, alsatian", "google") == "German shepherd"
    assert provider_label("German shepherd, German shepherd dog, alsatian", "aws") == "German Shepherd"
    assert provider_label("German shepherd, German shepherd dog, alsatian", "azure") == "german shepherd"
    assert provider_label("German shepherd, German shepherd dog, alsatian", "clarifai") == "german shepherd"
    assert provider_label("German shepherd, German shepherd dog, alsatian", "http") == "German shepherd"
    assert provider_label("tabby, tabby cat", "google") == "Tabby"
    classifier = Classifier(model=MODEL, provider="azure")
    names = [provider_label(n, "azure") for n in lite0.class_names]
    assert len(classifier.label_names) == len(set(names)) == len(set(classifier.label_names))
    pairs = classifier.classify(chelsea["array"].astype(np.float32) / 255.0)
    assert len(pairs) == len(set(names))
    assert sum(score for _, score in pairs) == pytest.approx(1.0, abs=1e-9)
    by_name = dict(pairs)
    for label in set(names):  # a merged label scores the sum of its classes
        members = [i for i, n in enumerate(names) if n == label]
        assert by_name[label] == pytest.approx(float(chelsea["p"][members].sum()), abs=1e-5)


# --------------------------------------------------------------------------- bad options


def test_bad_model_options_are_refused_before_anything_starts():
    with pytest.raises(InvalidParameterError, match="efficientnet-lite0"):
        emulate("google", model="resnet-50").__enter__()
    with pytest.raises(InvalidParameterError, match="either classifier or model"):
        emulate("aws", model=MODEL, classifier=lambda images: [[("x", 1.0)]]).__enter__()
    with pytest.raises(InvalidParameterError, match="min_score"):
        emulate("azure", model=MODEL, min_score=1.5).__enter__()


def test_a_missing_weights_package_names_the_extra(monkeypatch):
    imagenet = pytest.importorskip("robust_api.models.imagenet")

    def missing(name, device=None):
        raise MissingDependencyError(f"{name} needs pip install 'robust-api[imagenet]'")

    monkeypatch.setattr(imagenet, "load_imagenet_classifier", missing)
    monkeypatch.setattr(_core, "_imagenet_models", {})
    with pytest.raises(MissingDependencyError, match=r"\[imagenet\]"):
        emulate("google", model="efficientnet-lite2").__enter__()


def test_the_cli_refuses_an_unknown_model(capsys):
    assert main(["emulate", "google", "--model", "resnet-50"]) == 2
    err = capsys.readouterr().err
    assert "resnet-50" in err and "efficientnet-lite2" in err
    assert main(["emulate", "aws", "--model", MODEL, "--min-score", "2"]) == 2
    assert "min_score" in capsys.readouterr().err


def test_the_cli_serves_the_model(lite0, chelsea):
    process = subprocess.Popen(
        [sys.executable, "-m", "robust_api", "emulate", "http", "--port", "0", "--model", MODEL, "--top-k", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        endpoint = process.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:"), process.stderr.read()
        answer = json.loads(_post(endpoint, chelsea["jpeg"], {"Content-Type": "image/jpeg"}))
        assert len(answer) == 3 and answer[0]["label"] in _cat_labels(lite0, "http")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_small_and_grayscale_images_are_labelled_not_refused(lite0):
    """A 28×28 grayscale PNG (below the model's 32-pixel minimum side) gets labels: it is
    decoded to RGB and upscaled, as a service labels small images too."""
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(28, 28), dtype=np.uint8), "L").save(buffer, "PNG")
    with emulate("http", model=MODEL, top_k=3) as endpoint:
        answer = json.loads(_post(endpoint, buffer.getvalue(), {"Content-Type": "image/png"}))
        assert endpoint.stats["images"] == 1 and endpoint.stats["rejected"] == 0
    assert len(answer) == 3
    assert all(item["label"] in lite0.class_names and 0 < item["score"] <= 1 for item in answer)
