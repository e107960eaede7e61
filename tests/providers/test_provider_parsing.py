"""Pure parsing of each cloud adapter's stored raw responses (no network, no emulator).

The samples follow the response shapes documented by each provider (and recorded in
PROVIDERS.md): Google ``labelAnnotations``, Rekognition ``Labels`` with percentages,
Azure ``tags``, Clarifai ``data.concepts`` with float32 values, and model-server answers.
"""

import json
import math

import pytest

pytest.importorskip("google.cloud.vision")
pytest.importorskip("boto3")
pytest.importorskip("azure.cognitiveservices.vision.computervision")
pytest.importorskip("clarifai_grpc")
pytest.importorskip("requests")

from robust_api.errors import ProviderResponseError
from robust_api.providers.aws import RekognitionProvider
from robust_api.providers.azure import AzureVisionProvider
from robust_api.providers.clarifai import ClarifaiProvider
from robust_api.providers.cloud import NO_LABEL, top_label
from robust_api.providers.google import GoogleVisionProvider
from robust_api.providers.http import HTTPProvider, normalize_answer

# ----------------------------------------------------------------------------- samples

GOOGLE_SAMPLE = {
    "labelAnnotations": [
        {"mid": "/m/01yrx", "description": "Cat", "score": 0.9689216, "topicality": 0.9689216},
        {"mid": "/m/0307l", "description": "Felidae", "score": 0.92514265, "topicality": 0.92514265},
        {"mid": "/m/01lrl", "description": "Carnivore", "score": 0.90347874, "topicality": 0.90347874},
        {"mid": "/m/04rky", "description": "Mammal", "score": 0.8798316, "topicality": 0.8798316},
    ]
}

AWS_SAMPLE = {
    "Labels": [
        {
            "Name": "Mobile Phone",
            "Confidence": 99.9364013671875,
            "Instances": [
                {
                    "BoundingBox": {"Width": 0.2678, "Height": 0.8562, "Left": 0.3604, "Top": 0.0925},
                    "Confidence": 99.9364013671875,
                }
            ],
            "Parents": [{"Name": "Electronics"}, {"Name": "Phone"}],
            "Aliases": [{"Name": "Cell Phone"}],
            "Categories": [{"Name": "Technology and Computing"}],
        },
        {
            "Name": "Electronics",
            "Confidence": 99.9364013671875,  # same score as "Mobile Phone": the tie goes to "Electronics"
            "Instances": [],
            "Parents": [],
        },
        {"Name": "Phone", "Confidence": 97.5, "Instances": [], "Parents": [{"Name": "Electronics"}]},
    ],
    "LabelModelVersion": "3.0",
}

AZURE_V32_SAMPLE = {
    "tags": [
        {"name": "grass", "confidence": 0.9999967813491821},
        {"name": "dog", "confidence": 0.9939171075820923, "hint": "animal"},
        {"name": "mammal", "confidence": 0.9895234107971191},
        {"name": "outdoor", "confidence": 0.9837080240249634},
    ],
    "requestId": "4cd2c6e1-07a1-4ac3-90a8-0e1a0e0f4d27",
    "metadata": {"width": 64, "height": 64, "format": "Png"},
    "modelVersion": "2021-04-01",
}

# what the adapter stores for api="v4" (tagsResult.values normalized to the v3.2 shape)
AZURE_V4_STORED = {
    "tags": [{"name": "cat", "confidence": 0.9871}, {"name": "animal", "confidence": 0.9502}],
    "modelVersion": "2023-10-01",
}

CLARIFAI_SAMPLE = {
    "status": {"code": "SUCCESS", "description": "Ok"},
    "data": {
        "concepts": [
            {"id": "ai_mFqxrph2", "name": "cat", "value": 0.9800000190734863},  # float32 of 0.98
            {"id": "ai_8S2Vq3cR", "name": "pet", "value": 0.9735143780708313},
            {"id": "ai_SzsXMB1w", "name": "animal", "value": 0.9690834283828735},
        ]
    },
    "model": {"id": "general-image-recognition", "model_version": {"id": "aa7f35c01e0642fda5cf400f543e7c40"}},
}

HTTP_STORED = {
    "labels": [{"name": "Egyptian cat", "score": 0.8753}, {"name": "tabby", "score": 0.0712}],
    "response": [{"label": "Egyptian cat", "score": 0.8753}, {"label": "tabby", "score": 0.0712}],
}


# ----------------------------------------------------------------------------- providers (no I/O)


@pytest.fixture(scope="module")
def providers():
    """One instance of each adapter; constructing them sends nothing."""
    return {
        "google": GoogleVisionProvider(endpoint="http://127.0.0.1:9", api_key="key-1234"),
        "aws": RekognitionProvider(
            endpoint="http://127.0.0.1:9", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret-1234"
        ),
        "azure": AzureVisionProvider(endpoint="http://127.0.0.1:9", subscription_key="key-1234"),
        "clarifai": ClarifaiProvider(endpoint="grpc://127.0.0.1:9", pat="pat-1234"),
        "http": HTTPProvider("http://127.0.0.1:9/predict"),
    }


SAMPLES = {
    "google": (GOOGLE_SAMPLE, "Cat", 4),
    "aws": (AWS_SAMPLE, "Electronics", 3),
    "azure": (AZURE_V32_SAMPLE, "grass", 4),
    "clarifai": (CLARIFAI_SAMPLE, "cat", 3),
    "http": (HTTP_STORED, "Egyptian cat", 2),
}

EMPTY = {
    "google": [{"labelAnnotations": []}, {}],
    "aws": [{"Labels": [], "LabelModelVersion": "3.0"}, {}],
    "azure": [{"tags": [], "modelVersion": "2021-04-01"}, {"tags": None}, {}],
    "clarifai": [{"status": {"code": "SUCCESS"}, "data": {"concepts": []}}, {"status": {"code": "SUCCESS"}, "data": {}}, {}],
    "http": [{"labels": [], "response": {}}],
}

MALFORMED = {
    "google": [None, "Cat", [GOOGLE_SAMPLE], {"labelAnnotations": [{"score": 0.5}]},
               {"labelAnnotations": [{"description": "Cat", "score": 1.5}]},
               {"labelAnnotations": [{"description": "Cat", "score": "high"}]}, {"labelAnnotations": "Cat"}],
    "aws": [None, 3, {"Labels": [{"Confidence": 90.0}]}, {"Labels": [{"Name": "Cat", "Confidence": 150.0}]},
            {"Labels": [{"Name": "Cat", "Confidence": -3.0}]}, {"Labels": {"Name": "Cat"}}],
    "azure": [None, [], {"tags": [{"name": "cat"}]}, {"tags": [{"confidence": 0.5}]},
              {"tags": [{"name": "cat", "confidence": float("nan")}]}, {"tags": "cat"}],
    "clarifai": [None, {"data": {"concepts": [{"value": 0.9}]}}, {"data": {"concepts": "cat"}},
                 {"data": {"concepts": [{"name": "cat", "value": 2.0}]}}, {"data": []}],
    "http": [None, {}, {"labels": None}, {"labels": [{"name": "cat"}]}, {"labels": [{"name": "cat", "score": 7}]},
             {"response": "cat"}],
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_documented_sample_parses_to_normalized_labels(providers, name):
    provider = providers[name]
    raw, top, count = SAMPLES[name]
    labels = provider.labels(raw)
    assert len(labels) == count
    for label, score in labels:
        assert isinstance(label, str) and label
        assert isinstance(score, float) and 0.0 <= score <= 1.0
    assert provider.parse(raw) == top
    # what is stored is plain JSON and parses the same after a round trip
    assert provider.parse(json.loads(json.dumps(raw))) == top
    # parse is pure: same answer twice, raw unchanged
    before = json.dumps(raw, sort_keys=True)
    assert provider.parse(raw) == provider.parse(raw)
    assert json.dumps(raw, sort_keys=True) == before


def test_exact_normalized_values():
    assert GoogleVisionProvider.labels(GOOGLE_SAMPLE)[0] == ("Cat", pytest.approx(0.9689216))
    aws = dict(RekognitionProvider.labels(AWS_SAMPLE))
    assert aws["Mobile Phone"] == pytest.approx(0.999364013671875)
    assert aws["Phone"] == pytest.approx(0.975)
    # parents, instances and aliases are not labels of their own
    assert set(aws) == {"Mobile Phone", "Electronics", "Phone"}
    azure = AzureVisionProvider.labels(AZURE_V32_SAMPLE)
    assert azure[1] == ("dog", pytest.approx(0.9939171075820923))
    assert AzureVisionProvider.labels(AZURE_V4_STORED) == [("cat", 0.9871), ("animal", 0.9502)]
    clarifai = ClarifaiProvider.labels(CLARIFAI_SAMPLE)
    assert clarifai[0][0] == "cat" and math.isclose(clarifai[0][1], 0.98, rel_tol=1e-6)
    assert HTTPProvider.labels(HTTP_STORED) == [("Egyptian cat", 0.8753), ("tabby", 0.0712)]


def test_missing_confidence_counts_as_zero_and_float32_rounding_is_clipped():
    assert RekognitionProvider.labels({"Labels": [{"Name": "Cat"}]}) == [("Cat", 0.0)]
    assert GoogleVisionProvider.labels({"labelAnnotations": [{"description": "Cat", "score": 1.0000001}]}) == [
        ("Cat", 1.0)
    ]
    assert RekognitionProvider.labels({"Labels": [{"Name": "Cat", "Confidence": 100.0}]}) == [("Cat", 1.0)]
    # a Clarifai concept without a name is named by its id
    assert ClarifaiProvider.labels({"data": {"concepts": [{"id": "ai_x", "value": 0.5}]}}) == [("ai_x", 0.5)]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_ties_go_to_the_alphabetically_first_label(providers, name):
    tie = {
        "google": {"labelAnnotations": [
            {"mid": "/m/0bt9lr", "description": "Dog", "score": 0.9, "topicality": 0.9},
            {"mid": "/m/01yrx", "description": "Cat", "score": 0.9, "topicality": 0.9},
            {"mid": "/m/04rky", "description": "Mammal", "score": 0.5, "topicality": 0.5},
        ]},
        "aws": {"Labels": [{"Name": "Dog", "Confidence": 90.0, "Instances": [], "Parents": []},
                           {"Name": "Cat", "Confidence": 90.0, "Instances": [], "Parents": []}]},
        "azure": {"tags": [{"name": "dog", "confidence": 0.9}, {"name": "cat", "confidence": 0.9}]},
        "clarifai": {"data": {"concepts": [{"id": "b", "name": "dog", "value": 0.9}, {"id": "a", "name": "cat", "value": 0.9}]}},
        "http": {"labels": [{"name": "dog", "score": 0.9}, {"name": "cat", "score": 0.9}], "response": None},
    }[name]
    assert providers[name].parse(tie).lower() == "cat"
    # order of the list does not matter
    assert top_label(list(reversed(providers[name].labels(tie)))).lower() == "cat"


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_answers_are_no_label(providers, name):
    for raw in EMPTY[name]:
        assert providers[name].labels(raw) == []
        assert providers[name].parse(raw) == NO_LABEL


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_raw_raises_provider_response_error(providers, name):
    for raw in MALFORMED[name]:
        with pytest.raises(ProviderResponseError):
            providers[name].parse(raw)


def test_label_fn_chooses_from_normalized_labels():
    def second_best(labels):
        ranked = sorted(labels, key=lambda pair: (-pair[1], pair[0]))
        return ranked[1][0] if len(ranked) > 1 else "<none>"

    seen = []

    def record(labels):
        seen.append(labels)
        return "x"

    google = GoogleVisionProvider(endpoint="http://127.0.0.1:9", api_key="key-1234", label_fn=second_best)
    assert google.parse(GOOGLE_SAMPLE) == "Felidae"
    assert google.parse({"labelAnnotations": []}) == "<none>"
    aws = RekognitionProvider(
        endpoint="http://127.0.0.1:9", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret-1234",
        label_fn=record,
    )
    assert aws.parse(AWS_SAMPLE) == "x"
    assert seen[-1][0] == ("Mobile Phone", pytest.approx(0.999364013671875))  # scores already in [0, 1]
    threshold = ClarifaiProvider(
        endpoint="grpc://127.0.0.1:9", pat="pat-1234", label_fn=lambda labels: "pet" if dict(labels).get("pet", 0) > 0.5 else "other"
    )
    assert threshold.parse(CLARIFAI_SAMPLE) == "pet"
    bad = AzureVisionProvider(endpoint="http://127.0.0.1:9", subscription_key="key-1234", label_fn=lambda labels: 3)
    with pytest.raises(ProviderResponseError, match="label_fn"):
        bad.parse(AZURE_V32_SAMPLE)


# ----------------------------------------------------------------------------- model-server answers


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Sneaker", [("Sneaker", 1.0)]),  # a bare label
        (7, [("7", 1.0)]),  # a class index
        ({"tabby": 0.27, "tiger_cat": 0.13, "Egyptian_cat": 0.52}, [("tabby", 0.27), ("tiger_cat", 0.13), ("Egyptian_cat", 0.52)]),  # TorchServe
        ([{"label": "Egyptian cat", "score": 0.87}, {"label": "tabby", "score": 0.07}], [("Egyptian cat", 0.87), ("tabby", 0.07)]),  # Hugging Face
        ({"label": "Coat", "score": 0.6}, [("Coat", 0.6)]),
        ({"label": "Coat"}, [("Coat", 1.0)]),
        ([], []),
    ],
)
def test_model_server_answer_shapes(answer, expected):
    assert normalize_answer(answer) == expected


def test_model_server_custom_keys_and_bad_shapes():
    assert normalize_answer([{"class": "Bag", "prob": 0.4}], label_key="class", score_key="prob") == [("Bag", 0.4)]
    for bad in (None, 0.5, True, ["Bag"], [{"class": "Bag"}], {"Bag": "high"}, {"Bag": 3.0}):
        with pytest.raises((TypeError, KeyError, ValueError)):
            normalize_answer(bad)
    provider = HTTPProvider("http://127.0.0.1:9/predict")
    stored = provider._record({"Coat": 0.2, "Bag": 0.8})  # how send stores an answer
    assert stored["response"] == {"Coat": 0.2, "Bag": 0.8}
    assert provider.parse(json.loads(json.dumps(stored))) == "Bag"
    with pytest.raises(ProviderResponseError, match="label_key"):
        provider._record(["Bag", "Coat"])
