"""AWS Rekognition emulator: ``DetectLabels`` over the JSON 1.1 protocol.

``POST /`` with ``X-Amz-Target: RekognitionService.DetectLabels`` and a body
``{"Image": {"Bytes": "<base64>"}, "MaxLabels": n, "MinConfidence": c}``; the answer is
``{"Labels": [{"Name", "Confidence" (0-100), "Instances": [], "Parents": [], ...}],
"LabelModelVersion": "3.0"}``. Errors are HTTP 400/500 with ``{"__type": ..., "message": ...}``,
which botocore turns into its modeled exceptions (``ThrottlingException`` ...).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any, Optional

from ._core import EmulatorConfig, ImageProblem, Runtime, counted_and_delayed, open_image, truncate_body
from ._http import Request, Response, json_response, request_id, serve_http

logger = logging.getLogger("robust_api.emulators")

MAX_IMAGE_BYTES = 5 * 1024 * 1024
MIN_SIDE, MAX_SIDE = 80, 10000
FORMATS = ("PNG", "JPEG")
DEFAULT_MAX_LABELS, DEFAULT_MIN_CONFIDENCE = 1000, 55.0
TARGET = "RekognitionService.DetectLabels"
CONTENT_TYPE = "application/x-amz-json-1.1"


def _error(status: int, code: str, message: str, headers: Optional[dict] = None) -> Response:
    response = json_response(status, {"__type": code, "message": message}, headers, CONTENT_TYPE)
    response.headers["x-amzn-RequestId"] = request_id()
    response.headers["x-amzn-ErrorType"] = f"{code}:"
    return response


def _credential_ok(runtime: Runtime, authorization: Optional[str]) -> bool:
    if not authorization or not authorization.strip():
        return False
    if runtime.config.api_key is None:
        return True
    return f"Credential={runtime.config.api_key}/" in authorization


def make_app(runtime: Runtime):
    """The request handler of the Rekognition emulator."""

    def _handle(request: Request) -> Optional[Response]:
        if request.method != "POST" or request.path != "/":
            return _error(404, "UnknownOperationException", f"No operation at {request.method} {request.path}")
        if not _credential_ok(runtime, request.header("Authorization")):
            runtime.stats.add_auth_failure()
            return _error(400, "UnrecognizedClientException", "The security token included in the request is invalid.")
        target = request.header("X-Amz-Target")
        if target != TARGET:
            return _error(400, "UnknownOperationException",
                          f"The emulator serves {TARGET} only, got X-Amz-Target={target!r}")
        if not runtime.admit():
            return _error(400, "ThrottlingException", "Rate exceeded", runtime.retry_after_headers())
        try:
            payload = json.loads(request.body.decode("utf-8"))
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            runtime.stats.add_rejected()
            return _error(400, "SerializationException", "Start of structure or map found where not expected.")
        fault = runtime.draw_request_fault()
        if fault == "throttle":
            return _error(400, "ThrottlingException", "Rate exceeded", runtime.retry_after_headers())
        if fault == "server_error":
            return _error(500, "InternalServerError", "Amazon Rekognition experienced a service issue. "
                                                      "Try your call again (emulated).")
        if fault == "malformed":
            body = json.dumps({"Labels": [{"Name": "x", "Confidence": 50.0}], "LabelModelVersion": "3.0"}).encode()
            return Response(200, truncate_body(body), CONTENT_TYPE, {"x-amzn-RequestId": request_id()})
        if fault == "timeout" and not runtime.hang():
            return None
        return _detect_labels(payload)

    def _detect_labels(payload: dict) -> Response:
        image = payload.get("Image")
        if not isinstance(image, dict) or not image:
            runtime.stats.add_rejected()
            return _error(400, "InvalidParameterException", "Request has invalid parameters: Image is required.")
        if "S3Object" in image and "Bytes" not in image:
            runtime.stats.add_rejected()
            return _error(400, "InvalidS3ObjectException",
                          "Unable to get object metadata from S3: the emulator has no S3 (send Image.Bytes).")
        try:
            data = base64.b64decode(image.get("Bytes") or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            runtime.stats.add_rejected()
            return _error(400, "SerializationException", "Image.Bytes is not valid base64.")
        try:
            max_labels = int(payload.get("MaxLabels", DEFAULT_MAX_LABELS))
            min_confidence = float(payload.get("MinConfidence", DEFAULT_MIN_CONFIDENCE))
        except (TypeError, ValueError):
            runtime.stats.add_rejected()
            return _error(400, "InvalidParameterException", "MaxLabels and MinConfidence must be numbers.")
        if max_labels < 0 or not 0.0 <= min_confidence <= 100.0:
            runtime.stats.add_rejected()
            return _error(400, "InvalidParameterException",
                          "MaxLabels must be >= 0 and MinConfidence in [0, 100].")
        if len(data) > MAX_IMAGE_BYTES:
            runtime.stats.add_rejected()
            return _error(400, "ImageTooLargeException",
                          f"Image size is too large: {len(data)} bytes, the limit is {MAX_IMAGE_BYTES}.")
        try:
            opened = open_image(data)
            if opened.format not in FORMATS:
                raise ImageProblem(opened.format)
        except ImageProblem:
            runtime.stats.add_rejected()
            return _error(400, "InvalidImageFormatException", "Request has invalid image format")
        if min(opened.width, opened.height) < MIN_SIDE or max(opened.width, opened.height) > MAX_SIDE:
            runtime.stats.add_rejected()
            return _error(400, "InvalidParameterException",
                          f"Request has invalid parameters: image is {opened.width}x{opened.height} px; "
                          f"each side must be between {MIN_SIDE} and {MAX_SIDE} px.")
        try:
            labels = runtime.classify(opened, max_labels if max_labels > 0 else None)
        except ImageProblem:
            runtime.stats.add_rejected()
            return _error(400, "InvalidImageFormatException", "Request has invalid image format")
        if max_labels == 0:
            labels = []
        answer: dict[str, Any] = {
            "Labels": [
                {"Name": name, "Confidence": score * 100.0, "Instances": [], "Parents": [], "Aliases": [],
                 "Categories": []}
                for name, score in labels if score * 100.0 >= min_confidence
            ],
            "LabelModelVersion": "3.0",
        }
        return json_response(200, answer, {"x-amzn-RequestId": request_id()}, CONTENT_TYPE)

    return counted_and_delayed(runtime, _handle)


def serve(config: EmulatorConfig, runtime: Runtime):
    """Start the Rekognition emulator; returns (port, stop function)."""
    return serve_http(config.host, config.port, make_app(runtime), "aws", runtime.stopped)
