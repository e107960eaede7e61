"""The provider emulators, exercised on the wire with the official SDK clients.

Each emulator must make the real client behave as against the real service: the bundled
classifier's labels on real Fashion-MNIST images, each fault kind raising the client's usual
exception (or status), the provider's own input-limit and auth errors, loopback-only binding,
statistics, and a prompt stop() while a request hangs.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import numpy as np
import pytest

from doubles import bundled_classifier
from robust_api.errors import InvalidParameterError
from robust_api.emulators import EMULATORS, Endpoint, emulate, start

HANG_S = 1.0  # the "timeout" fault's sleep
CLIENT_TIMEOUT = 0.3  # well below HANG_S: used where the "timeout" fault is expected
TIMEOUT = 10.0  # everywhere else


# --------------------------------------------------------------------------- fixtures


def _png(array: np.ndarray, scale: int = 1, mode: str = "L", fmt: str = "PNG") -> bytes:
    from PIL import Image

    image = Image.fromarray(array)
    if scale != 1:
        image = image.resize((array.shape[1] * scale, array.shape[0] * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fm():
    """Three Fashion-MNIST test images: raw arrays, PNGs (28 px and ×4 = 112 px), and the
    bundled classifier's reference answer for each (batch of one)."""
    datasets = pytest.importorskip("robust_api.datasets")
    try:
        images, labels = datasets.load_fashion_mnist("test")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    provider = bundled_classifier()
    arrays = [images[i] for i in range(3)]
    reference = [provider.send((a.astype(np.float32) / 255.0)[None, :, :, None])[0]["labels"] for a in arrays]
    return {
        "arrays": arrays,
        "labels": [int(v) for v in labels[:3]],
        "png": [_png(a) for a in arrays],
        "big": [_png(a, 4) for a in arrays],
        "ref": reference,  # [{"name", "score"}, ...] top 5, best first
        "classes": provider.class_names,
    }


def _assert_matches(pairs, reference, k=3):
    """(name, score) pairs equal the reference's best k (names exactly, scores to 1e-5)."""
    assert [n for n, _ in pairs[:k]] == [r["name"] for r in reference[:k]]
    for (_, score), ref in zip(pairs[:k], reference[:k]):
        assert score == pytest.approx(ref["score"], abs=1e-5)


# --------------------------------------------------------------------------- google


def _google_client(endpoint, api_key=None):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import vision

    if endpoint.protocol == "grpc":
        import grpc
        from google.cloud.vision_v1.services.image_annotator.transports import ImageAnnotatorGrpcTransport

        channel = grpc.insecure_channel(endpoint.url.split("://", 1)[1])
        return vision.ImageAnnotatorClient(transport=ImageAnnotatorGrpcTransport(channel=channel))
    if api_key is not None:
        return vision.ImageAnnotatorClient(transport="rest",
                                           client_options=ClientOptions(api_endpoint=endpoint, api_key=api_key))
    return vision.ImageAnnotatorClient(credentials=AnonymousCredentials(), transport="rest",
                                       client_options=ClientOptions(api_endpoint=endpoint))


def _google_requests(images, max_results=5):
    from google.cloud import vision

    feature = vision.Feature(type_=vision.Feature.Type.LABEL_DETECTION, max_results=max_results)
    return [vision.AnnotateImageRequest(image=vision.Image(content=b), features=[feature]) for b in images]


def _annotate(client, images, max_results=5, timeout=TIMEOUT, **kwargs):
    return client.batch_annotate_images(requests=_google_requests(images, max_results), retry=None,
                                        timeout=timeout, **kwargs)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_google_labels_match_the_bundled_classifier(fm, protocol):
    with emulate("google", protocol=protocol) as endpoint:
        assert endpoint.startswith("grpc://" if protocol == "grpc" else "http://")
        response = _annotate(_google_client(endpoint), fm["png"], max_results=3)
        assert len(response.responses) == 3
        for one, reference in zip(response.responses, fm["ref"]):
            assert one.error.code == 0
            assert len(one.label_annotations) == 3
            _assert_matches([(a.description, a.score) for a in one.label_annotations], reference)
        assert [r.label_annotations[0].description for r in response.responses] == \
            [fm["classes"][i] for i in fm["labels"]]
        # max_results 0 means top_k (all 10 classes of the bundled model)
        full = _annotate(_google_client(endpoint), fm["png"][:1], max_results=0)
        assert len(full.responses[0].label_annotations) == 10
        assert endpoint.stats.snapshot()["images"] == 4 and endpoint.stats.requests == 2


def test_google_answer_does_not_depend_on_batching(fm):
    with emulate("google") as endpoint:
        client = _google_client(endpoint)
        alone = _annotate(client, fm["png"][1:2], max_results=10).responses[0]
        batched = _annotate(client, fm["png"], max_results=10).responses[1]
        assert [(a.description, a.score) for a in alone.label_annotations] == \
            [(a.description, a.score) for a in batched.label_annotations]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("kind", ["throttle", "server_error", "malformed", "timeout"])
def test_google_request_faults_raise_the_clients_exceptions(fm, protocol, kind):
    import requests
    from google.api_core import exceptions as gexc
    from google.protobuf import json_format

    expected = {
        ("rest", "throttle"): gexc.TooManyRequests, ("grpc", "throttle"): gexc.ResourceExhausted,
        ("rest", "server_error"): gexc.ServiceUnavailable, ("grpc", "server_error"): gexc.ServiceUnavailable,
        ("rest", "malformed"): json_format.ParseError, ("grpc", "malformed"): gexc.InternalServerError,
        ("rest", "timeout"): requests.exceptions.ReadTimeout, ("grpc", "timeout"): gexc.DeadlineExceeded,
    }[protocol, kind]
    with emulate("google", protocol=protocol, faults={kind: 1.0}, hang_s=HANG_S) as endpoint:
        with pytest.raises(expected):
            timeout = CLIENT_TIMEOUT if kind == "timeout" else TIMEOUT
            _annotate(_google_client(endpoint), fm["png"][:2], timeout=timeout)
        assert endpoint.stats.faults == {kind: 1}
        assert endpoint.stats.images == 0


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_google_image_error_is_per_image_inside_a_successful_answer(fm, protocol):
    with emulate("google", protocol=protocol, faults={"image_error": 0.5}, seed=3) as endpoint:
        response = _annotate(_google_client(endpoint), fm["png"] * 4)
        codes = [r.error.code for r in response.responses]
        assert set(codes) == {0, 14} and len(codes) == 12
        for r in response.responses:
            if r.error.code == 14:
                assert not r.label_annotations and "UNAVAILABLE" in r.error.message
            else:
                assert r.label_annotations
        assert endpoint.stats.faults["image_error"] == codes.count(14)
        assert endpoint.stats.images == codes.count(0)


def test_google_limits(fm):
    from google.api_core import exceptions as gexc

    with emulate("google") as endpoint:
        client = _google_client(endpoint)
        with pytest.raises(gexc.BadRequest, match="16"):
            _annotate(client, fm["png"] * 6)  # 18 images
        response = _annotate(client, [fm["png"][0], b"not an image", fm["png"][1]])
        assert [r.error.code for r in response.responses] == [0, 3, 0]
    with emulate("google", protocol="grpc") as endpoint:
        client = _google_client(endpoint)
        with pytest.raises(gexc.InvalidArgument):
            _annotate(client, fm["png"] * 6)
        too_big = fm["png"][0] + b"\0" * (20 * 1024 * 1024)
        response = _annotate(client, [too_big, fm["png"][2]])
        assert [r.error.code for r in response.responses] == [3, 0]
        assert endpoint.stats.rejected == 2


def test_google_api_key(fm):
    from google.api_core import exceptions as gexc

    with emulate("google", api_key="K1") as endpoint:
        with pytest.raises(gexc.Forbidden):
            _annotate(_google_client(endpoint), fm["png"][:1])  # anonymous
        with pytest.raises(gexc.Forbidden):
            _annotate(_google_client(endpoint, api_key="wrong"), fm["png"][:1])
        assert _annotate(_google_client(endpoint, api_key="K1"), fm["png"][:1]).responses[0].label_annotations
        assert endpoint.stats.auth_failures == 2
    with emulate("google", protocol="grpc", api_key="K1") as endpoint:
        client = _google_client(endpoint)
        with pytest.raises(gexc.PermissionDenied):
            _annotate(client, fm["png"][:1])
        ok = _annotate(client, fm["png"][:1], metadata=[("x-goog-api-key", "K1")])
        assert ok.responses[0].label_annotations


# --------------------------------------------------------------------------- aws


def _rekognition(endpoint, key="testing", read_timeout=TIMEOUT, **config):
    import boto3
    import botocore.config

    options = {"retries": {"mode": "standard", "total_max_attempts": 1}, "read_timeout": read_timeout,
               "connect_timeout": 2}
    options.update(config)
    return boto3.client("rekognition", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key="secret", config=botocore.config.Config(**options))


def test_aws_labels_as_percentages(fm):
    with emulate("aws") as endpoint:
        client = _rekognition(endpoint)
        answer = client.detect_labels(Image={"Bytes": fm["big"][0]}, MaxLabels=3, MinConfidence=0)
        assert answer["LabelModelVersion"] == "3.0" and len(answer["Labels"]) == 3
        _assert_matches([(l["Name"], l["Confidence"] / 100.0) for l in answer["Labels"]], fm["ref"][0])
        assert answer["Labels"][0]["Confidence"] > 50 and answer["Labels"][0]["Instances"] == []
        strict = client.detect_labels(Image={"Bytes": fm["big"][1]}, MinConfidence=50)
        assert [l["Name"] for l in strict["Labels"]] == [fm["ref"][1][0]["name"]]
        default = client.detect_labels(Image={"Bytes": fm["big"][2]})  # MinConfidence defaults to 55
        assert all(l["Confidence"] >= 55 for l in default["Labels"]) and default["Labels"]
        assert endpoint.stats.images == 3


@pytest.mark.parametrize("kind", ["throttle", "server_error", "malformed", "timeout"])
def test_aws_faults(fm, kind):
    import botocore.exceptions

    with emulate("aws", faults={kind: 1.0}, hang_s=HANG_S, retry_after_s=2) as endpoint:
        client = _rekognition(endpoint, read_timeout=CLIENT_TIMEOUT if kind == "timeout" else TIMEOUT)
        if kind == "malformed":
            # botocore swallows an unparsable JSON body: the answer simply has no "Labels"
            answer = client.detect_labels(Image={"Bytes": fm["big"][0]})
            assert "Labels" not in answer
        elif kind == "timeout":
            with pytest.raises(botocore.exceptions.ReadTimeoutError):
                client.detect_labels(Image={"Bytes": fm["big"][0]})
        else:
            error = client.exceptions.ThrottlingException if kind == "throttle" else \
                client.exceptions.InternalServerError
            with pytest.raises(error) as info:
                client.detect_labels(Image={"Bytes": fm["big"][0]})
            status = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
            assert status == (400 if kind == "throttle" else 500)
            if kind == "throttle":
                assert info.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "2"
        assert endpoint.stats.faults == {kind: 1}


def test_aws_retries_throttling_like_the_real_service(fm):
    with emulate("aws", faults={"throttle": 1.0}) as endpoint:
        client = _rekognition(endpoint, retries={"mode": "standard", "total_max_attempts": 2})
        with pytest.raises(client.exceptions.ThrottlingException):
            client.detect_labels(Image={"Bytes": fm["big"][0]})
        assert endpoint.stats.requests == 2 and endpoint.stats.faults["throttle"] == 2


def test_aws_limits(fm):
    with emulate("aws") as endpoint:
        client = _rekognition(endpoint)
        with pytest.raises(client.exceptions.InvalidParameterException):
            client.detect_labels(Image={"Bytes": fm["png"][0]})  # 28 px < 80 px
        with pytest.raises(client.exceptions.InvalidImageFormatException):
            client.detect_labels(Image={"Bytes": _png(fm["arrays"][0], 4, fmt="GIF")})
        with pytest.raises(client.exceptions.InvalidImageFormatException):
            client.detect_labels(Image={"Bytes": b"definitely not an image"})
        too_big = fm["big"][0] + b"\0" * (5 * 1024 * 1024)
        with pytest.raises(client.exceptions.ImageTooLargeException):
            client.detect_labels(Image={"Bytes": too_big})
        assert endpoint.stats.rejected == 4 and endpoint.stats.images == 0


def test_aws_credentials(fm):
    import requests
    from botocore import UNSIGNED

    with emulate("aws", api_key="AKIDEMULATOR") as endpoint:
        for client in (_rekognition(endpoint, key="AKIDOTHER"), _rekognition(endpoint, signature_version=UNSIGNED)):
            with pytest.raises(client.exceptions.ClientError) as info:
                client.detect_labels(Image={"Bytes": fm["big"][0]})
            assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
        assert _rekognition(endpoint, key="AKIDEMULATOR").detect_labels(Image={"Bytes": fm["big"][0]})["Labels"]
        assert endpoint.stats.auth_failures == 2
    with emulate("aws") as endpoint:  # any key, but a signature is required
        body = {"Image": {"Bytes": base64.b64encode(fm["big"][0]).decode()}}
        headers = {"X-Amz-Target": "RekognitionService.DetectLabels", "Content-Type": "application/x-amz-json-1.1"}
        answer = requests.post(endpoint, json=body, headers=headers, timeout=5)
        assert answer.status_code == 400 and answer.json()["__type"] == "UnrecognizedClientException"


# --------------------------------------------------------------------------- azure


def _cv_client(endpoint, key="KEY"):
    from azure.cognitiveservices.vision.computervision import ComputerVisionClient
    from msrest.authentication import CognitiveServicesCredentials

    return ComputerVisionClient(endpoint, CognitiveServicesCredentials(key))


def _ia_client(endpoint, key="KEY"):
    from azure.ai.vision.imageanalysis import ImageAnalysisClient
    from azure.core.credentials import AzureKeyCredential

    return ImageAnalysisClient(endpoint=endpoint, credential=AzureKeyCredential(key), retry_total=0)


def test_azure_legacy_client_tags_over_a_chunked_keep_alive_connection(fm):
    from azure.cognitiveservices.vision.computervision.models import VisualFeatureTypes

    with emulate("azure") as endpoint:
        client = _cv_client(endpoint)
        for i in range(3):  # one client, one pooled connection, chunked bodies
            tags = client.tag_image_in_stream(io.BytesIO(fm["big"][i]), timeout=5).tags
            _assert_matches([(t.name, t.confidence) for t in tags], fm["ref"][i])
        analysis = client.analyze_image_in_stream(io.BytesIO(fm["big"][0]), visual_features=[VisualFeatureTypes.tags],
                                                  timeout=5)
        assert analysis.tags[0].name == fm["ref"][0][0]["name"]
        assert analysis.metadata.width == 112 and analysis.metadata.format == "Png"
        assert endpoint.stats.images == 4


def test_azure_v4_client_tags(fm):
    from azure.ai.vision.imageanalysis.models import VisualFeatures

    with emulate("azure", top_k=4) as endpoint:
        result = _ia_client(endpoint).analyze(image_data=fm["big"][1], visual_features=[VisualFeatures.TAGS])
        assert len(result.tags.list) == 4
        _assert_matches([(t.name, t.confidence) for t in result.tags.list], fm["ref"][1])
        assert result.model_version == "2023-10-01"


@pytest.mark.parametrize("kind", ["throttle", "server_error", "malformed", "timeout"])
def test_azure_faults(fm, kind):
    import msrest.exceptions
    from azure.ai.vision.imageanalysis.models import VisualFeatures
    from azure.cognitiveservices.vision.computervision.models import ComputerVisionErrorResponseException
    from azure.core import exceptions as aexc

    with emulate("azure", faults={kind: 1.0}, hang_s=HANG_S, retry_after_s=1) as endpoint:
        timeout = CLIENT_TIMEOUT if kind == "timeout" else TIMEOUT
        legacy = {"throttle": ComputerVisionErrorResponseException,
                  "server_error": ComputerVisionErrorResponseException,
                  "malformed": msrest.exceptions.DeserializationError,
                  "timeout": msrest.exceptions.ClientRequestError}[kind]
        with pytest.raises(legacy) as info:
            _cv_client(endpoint).tag_image_in_stream(io.BytesIO(fm["big"][0]), timeout=timeout)
        if kind == "throttle":
            assert info.value.response.status_code == 429 and info.value.response.headers["Retry-After"] == "1"
        if kind == "server_error":
            assert info.value.response.status_code == 500
            assert info.value.error.error.code == "InternalServerError"
        new = {"throttle": aexc.HttpResponseError, "server_error": aexc.HttpResponseError,
               "malformed": aexc.DecodeError, "timeout": aexc.ServiceResponseTimeoutError}[kind]
        with pytest.raises(new) as info:
            _ia_client(endpoint).analyze(image_data=fm["big"][0], visual_features=[VisualFeatures.TAGS],
                                         read_timeout=timeout)
        if kind in ("throttle", "server_error"):
            assert info.value.status_code == (429 if kind == "throttle" else 500)
        assert endpoint.stats.faults == {kind: 2}


def test_azure_limits_and_auth(fm):
    from azure.ai.vision.imageanalysis.models import VisualFeatures
    from azure.cognitiveservices.vision.computervision.models import ComputerVisionErrorResponseException
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    def inner(data):
        with pytest.raises(ComputerVisionErrorResponseException) as info:
            _cv_client(endpoint, key="AZKEY").tag_image_in_stream(io.BytesIO(data), timeout=5)
        assert info.value.response.status_code == 400 and info.value.error.error.code == "InvalidRequest"
        return info.value.error.error.innererror.code

    with emulate("azure", api_key="AZKEY") as endpoint:
        assert inner(_png(fm["arrays"][0], 1)) == "InvalidImageDimension"  # 28 px < 50 px
        assert inner(_png(fm["arrays"][0], 4, fmt="WEBP")) == "InvalidImageFormat"
        assert inner(b"garbage") == "InvalidImageFormat"
        assert inner(fm["big"][0] + b"\0" * (4 * 1024 * 1024)) == "InvalidImageSize"
        with pytest.raises(HttpResponseError) as info:  # v4 has its own limits: 50 px minimum too
            _ia_client(endpoint, "AZKEY").analyze(image_data=fm["png"][0], visual_features=[VisualFeatures.TAGS])
        assert info.value.status_code == 400
        with pytest.raises(ComputerVisionErrorResponseException) as info:
            _cv_client(endpoint, key="wrong").tag_image_in_stream(io.BytesIO(fm["big"][0]), timeout=5)
        assert info.value.response.status_code == 401 and info.value.error.error.code == "401"
        with pytest.raises(ClientAuthenticationError):
            _ia_client(endpoint, "wrong").analyze(image_data=fm["big"][0], visual_features=[VisualFeatures.TAGS])
        assert _cv_client(endpoint, key="AZKEY").tag_image_in_stream(io.BytesIO(fm["big"][0]), timeout=5).tags
        assert endpoint.stats.auth_failures == 2 and endpoint.stats.rejected == 5


# --------------------------------------------------------------------------- clarifai


def _clarifai_request(images, max_concepts=0, min_value=0.0, version_id=""):
    from clarifai_grpc.grpc.api import resources_pb2, service_pb2

    output_config = resources_pb2.OutputConfig(max_concepts=max_concepts, min_value=min_value)
    return service_pb2.PostModelOutputsRequest(
        user_app_id=resources_pb2.UserAppIDSet(user_id="clarifai", app_id="main"),
        model_id="general-image-recognition", version_id=version_id,
        inputs=[resources_pb2.Input(data=resources_pb2.Data(image=resources_pb2.Image(base64=b))) for b in images],
        model=resources_pb2.Model(model_version=resources_pb2.ModelVersion(
            output_info=resources_pb2.OutputInfo(output_config=output_config))),
    )


def _clarifai_stub(endpoint):
    from clarifai_grpc.channel.clarifai_channel import ClarifaiChannel
    from clarifai_grpc.grpc.api import service_pb2_grpc

    if endpoint.protocol == "json":
        return service_pb2_grpc.V2Stub(ClarifaiChannel.get_json_channel(base_url=endpoint))
    return service_pb2_grpc.V2Stub(ClarifaiChannel.get_insecure_grpc_channel(base="127.0.0.1", port=endpoint.port))


def _predict(endpoint, request, key="PAT", timeout=TIMEOUT):
    kwargs = {} if endpoint.protocol == "json" else {"timeout": timeout}  # the JSON channel has no timeout=
    return _clarifai_stub(endpoint).PostModelOutputs(request, metadata=(("authorization", "Key " + key),), **kwargs)


@pytest.mark.parametrize("protocol", ["grpc", "json"])
def test_clarifai_concepts(fm, protocol):
    from clarifai_grpc.grpc.api.status import status_code_pb2 as codes

    with emulate("clarifai", protocol=protocol) as endpoint:
        response = _predict(endpoint, _clarifai_request(fm["png"], max_concepts=3))
        assert response.status.code == codes.SUCCESS and len(response.outputs) == 3
        for output, reference in zip(response.outputs, fm["ref"]):
            assert output.status.code == codes.SUCCESS
            assert output.model.id == "general-image-recognition" and output.model.model_version.id
            assert len(output.data.concepts) == 3
            _assert_matches([(c.name, c.value) for c in output.data.concepts], reference)
        versioned = _predict(endpoint, _clarifai_request(fm["png"][:1], min_value=0.5, version_id="v123"))
        assert [c.name for c in versioned.outputs[0].data.concepts] == [fm["ref"][0][0]["name"]]
        assert versioned.outputs[0].model.model_version.id == "v123"


@pytest.mark.parametrize("protocol", ["grpc", "json"])
def test_clarifai_service_failures_are_statuses_not_exceptions(fm, protocol):
    from clarifai_grpc.grpc.api.status import status_code_pb2 as codes

    with emulate("clarifai", protocol=protocol, faults={"throttle": 1.0}) as endpoint:
        assert _predict(endpoint, _clarifai_request(fm["png"][:1])).status.code == codes.CONN_THROTTLED
    with emulate("clarifai", protocol=protocol, faults={"image_error": 1.0}) as endpoint:
        response = _predict(endpoint, _clarifai_request(fm["png"][:2]))
        assert response.status.code == codes.MIXED_STATUS
        assert [o.status.code for o in response.outputs] == [codes.MODEL_BUSY_PLEASE_RETRY] * 2
    with emulate("clarifai", protocol=protocol, api_key="PAT1") as endpoint:
        assert _predict(endpoint, _clarifai_request(fm["png"][:1]), key="nope").status.code == codes.CONN_KEY_INVALID
        assert _predict(endpoint, _clarifai_request(fm["png"][:1]), key="PAT1").status.code == codes.SUCCESS
        too_many = _predict(endpoint, _clarifai_request(fm["png"][:1] * 129), key="PAT1")
        assert too_many.status.code == codes.INPUT_OVER_LIMIT and not too_many.outputs
        mixed = _predict(endpoint, _clarifai_request([fm["png"][0], b"junk"]), key="PAT1")
        assert mixed.status.code == codes.MIXED_STATUS
        assert [o.status.code for o in mixed.outputs] == [codes.SUCCESS, codes.MP_IMAGE_DECODE_ERROR]
        assert endpoint.stats.auth_failures == 1


def test_clarifai_grpc_transport_faults(fm):
    import grpc
    from clarifai_grpc.grpc.api.status import status_code_pb2 as codes

    with emulate("clarifai", protocol="grpc") as endpoint:  # missing metadata: a status, not an exception
        response = _clarifai_stub(endpoint).PostModelOutputs(_clarifai_request(fm["png"][:1]), timeout=5)
        assert response.status.code == codes.CONN_KEY_INVALID
        big = _predict(endpoint, _clarifai_request([fm["png"][0] + b"\0" * (20 * 1024 * 1024)]), timeout=10)
        assert big.status.code == codes.MIXED_STATUS and big.outputs[0].status.code == codes.INPUT_OVER_LIMIT
    for kind, code in (("server_error", grpc.StatusCode.UNAVAILABLE), ("malformed", grpc.StatusCode.INTERNAL),
                       ("timeout", grpc.StatusCode.DEADLINE_EXCEEDED)):
        with emulate("clarifai", faults={kind: 1.0}, hang_s=HANG_S) as endpoint:
            with pytest.raises(grpc.RpcError) as info:
                timeout = CLIENT_TIMEOUT if kind == "timeout" else TIMEOUT
                _predict(endpoint, _clarifai_request(fm["png"][:1]), timeout=timeout)
            assert info.value.code() == code
            # ClarifaiChannel retries UNAVAILABLE: 5 attempts reach the server
            assert endpoint.stats.requests == (5 if kind == "server_error" else 1)


def test_clarifai_json_transport_faults(fm):
    import requests
    from clarifai_grpc.channel.errors import ApiError
    from clarifai_grpc.grpc.api.status import status_code_pb2 as codes

    with emulate("clarifai", protocol="json", faults={"server_error": 1.0}) as endpoint:
        response = _predict(endpoint, _clarifai_request(fm["png"][:1]))
        assert 98000 <= response.status.code < 99000
    with emulate("clarifai", protocol="json", faults={"malformed": 1.0}) as endpoint:
        with pytest.raises(ApiError):
            _predict(endpoint, _clarifai_request(fm["png"][:1]))
    with emulate("clarifai", protocol="json", faults={"throttle": 1.0}, retry_after_s=3) as endpoint:
        url = endpoint + "/v2/users/u/apps/a/models/m/outputs"
        raw = requests.post(url, json={"inputs": []}, headers={"Authorization": "Key x"}, timeout=5)
        assert raw.status_code == 429 and raw.headers["Retry-After"] == "3"
        assert raw.json()["status"]["code"] == codes.CONN_THROTTLED
    with emulate("clarifai", protocol="json", faults={"timeout": 1.0}, hang_s=0.5) as endpoint:
        began = time.monotonic()  # the JSON channel cannot time out: the answer comes after the hang
        assert _predict(endpoint, _clarifai_request(fm["png"][:1])).status.code == codes.SUCCESS
        assert time.monotonic() - began >= 0.5


# --------------------------------------------------------------------------- http


def test_http_raw_image_and_kserve_instances(fm):
    import requests

    with emulate("http", top_k=3) as endpoint:
        assert endpoint.endswith("/predict")
        single = requests.post(endpoint, data=fm["png"][0], headers={"Content-Type": "image/png"}, timeout=5)
        assert single.status_code == 200
        _assert_matches([(p["label"], p["score"]) for p in single.json()], fm["ref"][0])
        assert len(single.json()) == 3
        instances = [{"b64": base64.b64encode(b).decode()} for b in fm["big"]]
        batch = requests.post(endpoint, json={"instances": instances}, timeout=5).json()["predictions"]
        assert len(batch) == 3
        for predictions, reference in zip(batch, fm["ref"]):  # ×4 upscaled, box-resized back: same answer
            _assert_matches([(p["label"], p["score"]) for p in predictions], reference)
        bad = requests.post(endpoint, data=b"junk", headers={"Content-Type": "image/png"}, timeout=5)
        assert bad.status_code == 400 and "error" in bad.json()
        assert requests.post(endpoint + "x", data=b"", timeout=5).status_code == 404
        assert endpoint.stats.images == 4


@pytest.mark.parametrize("kind", ["throttle", "server_error", "malformed", "timeout"])
def test_http_faults(fm, kind):
    import requests

    with emulate("http", faults={kind: 1.0}, hang_s=HANG_S, retry_after_s=1.5) as endpoint:
        call = lambda: requests.post(endpoint, data=fm["png"][0], headers={"Content-Type": "image/png"},  # noqa: E731
                                     timeout=CLIENT_TIMEOUT if kind == "timeout" else TIMEOUT)
        if kind == "timeout":
            with pytest.raises(requests.exceptions.ReadTimeout):
                call()
        elif kind == "malformed":
            answer = call()
            assert answer.status_code == 200
            with pytest.raises(ValueError):
                answer.json()
        else:
            answer = call()
            assert answer.status_code == (429 if kind == "throttle" else 503)
            assert ("Retry-After" in answer.headers) == (kind == "throttle")
            if kind == "throttle":
                assert answer.headers["Retry-After"] == "1.5"


def test_http_bearer_token(fm):
    import requests

    with emulate("http", api_key="TOKEN") as endpoint:
        headers = {"Content-Type": "image/png"}
        assert requests.post(endpoint, data=fm["png"][0], headers=headers, timeout=5).status_code == 401
        headers["Authorization"] = "Bearer TOKEN"
        assert requests.post(endpoint, data=fm["png"][0], headers=headers, timeout=5).status_code == 200
        assert endpoint.stats.auth_failures == 1


# --------------------------------------------------------------------------- common behaviour


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_only_loopback_hosts_are_accepted(host):
    with pytest.raises(InvalidParameterError, match="loopback"):
        start("http", host=host)


def test_loopback_hosts_bind(fm):
    import requests

    with emulate("http", host="localhost") as endpoint:
        assert endpoint.host == "127.0.0.1"
        assert requests.post(endpoint, data=fm["png"][0], headers={"Content-Type": "image/png"}, timeout=5).ok
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    with emulate("http", host="::1") as endpoint:
        assert endpoint.startswith("http://[::1]:")
        assert requests.post(endpoint, data=fm["png"][0], headers={"Content-Type": "image/png"}, timeout=5).ok


@pytest.mark.parametrize("options", [
    {"faults": {"meltdown": 0.1}},
    {"faults": {"throttle": 0.7, "timeout": 0.5}},
    {"faults": {"throttle": -0.1}},
    {"fail_rate": 1.5},
    {"fail_rate": 0.1, "faults": {"throttle": 0.1}},
    {"protocol": "grpc"},
    {"faults": {"image_error": 0.1}},  # per-image faults: google and clarifai only
    {"rate_limit": 0},
    {"latency_ms": -1},
    {"top_k": 0},
    {"port": 70000},
    {"api_key": ""},
])
def test_bad_options_are_refused(options):
    with pytest.raises(InvalidParameterError):
        start("aws", **options)


def test_unknown_emulator_is_refused():
    with pytest.raises(InvalidParameterError, match="google"):
        start("watson")
    assert EMULATORS == ("google", "aws", "azure", "clarifai", "http")


def test_endpoint_is_a_printable_url_and_stops_idempotently(fm):
    import requests

    endpoint = start("azure")
    try:
        assert isinstance(endpoint, Endpoint) and isinstance(endpoint, str)
        assert endpoint == endpoint.url == f"http://127.0.0.1:{endpoint.port}" and str(endpoint) == endpoint.url
        assert (endpoint.name, endpoint.protocol) == ("azure", "rest")
        assert "azure" in repr(endpoint) and "running" in repr(endpoint)
        assert not endpoint.wait(0.01)
    finally:
        endpoint.stop()
    endpoint.stop()
    assert endpoint.stopped and endpoint.wait(0) and "stopped" in repr(endpoint)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(endpoint.url + "/vision/v3.2/tag", data=b"x", timeout=2)


def test_stats_and_deterministic_faults(fm):
    import requests

    def outcomes(seed):
        with emulate("http", fail_rate=0.6, seed=seed, hang_s=0.4) as endpoint:
            statuses = []
            for _ in range(30):
                try:
                    answer = requests.post(endpoint, data=fm["png"][0], headers={"Content-Type": "image/png"},
                                           timeout=0.2)
                    try:
                        answer.json()
                        statuses.append(answer.status_code)
                    except ValueError:
                        statuses.append("malformed")
                except requests.exceptions.ReadTimeout:
                    statuses.append("timeout")
            time.sleep(0.5)  # let the last hung request finish (it is classified after the hang)
            return statuses, endpoint.stats.snapshot()

    first, stats = outcomes(7)
    again, _ = outcomes(7)
    assert first == again
    assert stats["requests"] == 30
    assert sum(stats["faults"].values()) == sum(1 for s in first if s != 200)
    assert stats["faults"]["throttle"] == first.count(429)
    assert stats["faults"]["server_error"] == first.count(503)
    assert stats["faults"]["malformed"] == first.count("malformed")
    assert stats["faults"]["timeout"] == first.count("timeout")
    assert set(stats["faults"]) == {"throttle", "server_error", "malformed", "timeout"}  # split over 4 kinds
    assert stats["images"] == first.count(200) + first.count("timeout")  # a hung request still classifies
    assert outcomes(8)[0] != first


def test_images_received_counts_every_image_of_every_attempt(fm):
    """``images_received`` counts what a service would bill: each image of each request that
    reached the fault draw, faulted requests included; auth failures and malformed bodies not."""
    import requests

    png = base64.b64encode(fm["png"][0]).decode()
    body = {"requests": [{"image": {"content": png}, "features": [{"type": 4, "maxResults": 3}]}] * 3}
    with emulate("google", protocol="rest", faults={"server_error": 1.0}, api_key="K") as endpoint:
        url = endpoint + "/v1/images:annotate"
        for _ in range(2):
            assert requests.post(url, json=body, headers={"x-goog-api-key": "K"}, timeout=5).status_code == 503
        assert requests.post(url, json=body, headers={"x-goog-api-key": "wrong"}, timeout=5).status_code == 403
        assert requests.post(url, data=b"{", headers={"x-goog-api-key": "K"}, timeout=5).status_code == 400
        stats = endpoint.stats.snapshot()
    assert (stats["requests"], stats["images_received"], stats["images"]) == (4, 6, 0)
    instances = {"instances": [{"b64": png}] * 5}
    with emulate("http", faults={"server_error": 0.5}, seed=2) as endpoint:
        statuses = [requests.post(endpoint, json=instances, timeout=5).status_code for _ in range(4)]
        stats = endpoint.stats.snapshot()
    assert 503 in statuses and 200 in statuses
    assert stats["images_received"] == 20 and stats["images"] == 5 * statuses.count(200)
    endpoint.stats.reset()
    assert endpoint.stats.images_received == 0


def test_rate_limit_throttles_and_counts(fm):
    import requests

    post = lambda session, endpoint: session.post(  # noqa: E731
        endpoint, data=fm["png"][0], headers={"Content-Type": "image/png"}, timeout=5)
    # a token bucket of 2 refilled one token per 5 s: unless 5 requests take over 5 s on a
    # loaded machine (then one more gets through), all but the first 2 are throttled
    with emulate("http", rate_limit=0.2, retry_after_s=1) as endpoint:
        session = requests.Session()
        statuses = [post(session, endpoint) for _ in range(7)]
        codes = [s.status_code for s in statuses]
        assert codes[:2] == [200, 200] and codes.count(429) >= 4 and set(codes) == {200, 429}
        assert all(s.headers["Retry-After"] == "1" for s in statuses if s.status_code == 429)
        assert endpoint.stats.rate_limited == codes.count(429) and endpoint.stats.faults == {}
    # refill: after 1/rate seconds (however long the requests took) a token is back
    with emulate("http", rate_limit=4) as endpoint:
        session = requests.Session()
        for _ in range(4):
            post(session, endpoint)
        time.sleep(0.3)
        assert post(session, endpoint).ok


def test_latency_is_added_to_every_answer(fm):
    import requests

    with emulate("http", latency_ms=150) as endpoint:
        began = time.monotonic()
        assert requests.post(endpoint, data=fm["png"][0], headers={"Content-Type": "image/png"}, timeout=5).ok
        assert time.monotonic() - began >= 0.15


@pytest.mark.parametrize("name,protocol", [("http", None), ("google", "grpc"), ("azure", None)])
def test_stop_returns_promptly_while_a_request_hangs(fm, name, protocol):
    import requests

    endpoint = start(name, protocol=protocol, faults={"timeout": 1.0}, hang_s=30)
    errors = []

    def call():
        try:
            if name == "google":
                _google_client(endpoint).batch_annotate_images(requests=_google_requests(fm["png"][:1]),
                                                               retry=None, timeout=20)
            else:
                url = endpoint if name == "http" else endpoint + "/vision/v3.2/tag"
                requests.post(url, data=fm["big"][0], headers={"Content-Type": "image/png",
                                                               "Ocp-Apim-Subscription-Key": "k"}, timeout=20)
        except Exception as exc:  # the hung request fails once the server is gone
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while endpoint.stats.requests < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert endpoint.stats.faults == {"timeout": 1}
    began = time.monotonic()
    endpoint.stop()
    assert time.monotonic() - began < 1.5
    thread.join(5)
    assert not thread.is_alive() and errors


def test_custom_classifiers_get_images_converted_to_their_input_shape(fm):
    seen = []

    class Fixed:
        input_shape = (1, 28, 28)

        def __call__(self, batch):
            seen.append(batch.shape)
            return [[("b", 0.25), ("a", 0.75)] for _ in batch]

    rgb = _png(fm["arrays"][0], 4, mode="RGB")
    with emulate("google", classifier=Fixed()) as endpoint:
        response = _annotate(_google_client(endpoint), [rgb, fm["png"][1]])
        assert [(a.description, a.score) for a in response.responses[0].label_annotations] == [("a", 0.75), ("b", 0.25)]
    assert seen == [(1, 28, 28, 1), (1, 28, 28, 1)]  # one image per call, RGB 112 px -> L 28 px

    import robust_api

    provider = robust_api.CallableProvider(lambda batch: [{"labels": [{"name": "cat", "score": float(batch.mean())}]}
                                                          for _ in batch])
    with emulate("http", classifier=provider) as endpoint:
        import requests

        answer = requests.post(endpoint, data=fm["png"][0], headers={"Content-Type": "image/png"}, timeout=5).json()
        assert answer == [{"label": "cat", "score": pytest.approx(fm["arrays"][0].mean() / 255.0, abs=1e-5)}]
