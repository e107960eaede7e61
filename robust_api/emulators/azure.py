"""Azure AI Vision emulator: Computer Vision v3.2 (``/vision/v3.2/tag``, ``/vision/v3.2/analyze``)
and Image Analysis 4.0 (``/computervision/imageanalysis:analyze``).

The body is the raw image (``application/octet-stream``); the legacy msrest client sends it
``Transfer-Encoding: chunked``, which the emulator's HTTP server decodes. The key goes in
``Ocp-Apim-Subscription-Key``. Errors are ``{"error": {"code", "message", "innererror"}}``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from ._core import EmulatorConfig, ImageProblem, Runtime, counted_and_delayed, open_image, truncate_body
from ._http import Request, Response, json_response, request_id, serve_http

logger = logging.getLogger("robust_api.emulators")

V3_PATHS = {"/vision/v3.2/tag": "tag", "/vision/v3.2/analyze": "analyze"}
V4_PATH = "/computervision/imageanalysis:analyze"
V3_MODEL_VERSION, V4_MODEL_VERSION = "2021-04-01", "2023-10-01"
# (max bytes, min side, max side, formats) per API version
LIMITS = {
    "v3": (4 * 1024 * 1024, 50, 10000, ("JPEG", "PNG", "GIF", "BMP")),
    "v4": (20 * 1024 * 1024, 50, 16000, ("JPEG", "PNG", "GIF", "BMP", "WEBP", "ICO", "TIFF")),
}
AUTH_MESSAGE = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                "valid key for an active subscription and use a correct regional API endpoint for your resource.")


def _headers(extra: Optional[dict] = None) -> dict:
    headers = {"apim-request-id": request_id(), "x-ms-region": "emulator"}
    headers.update(extra or {})
    return headers


def _error(status: int, code: str, message: str, inner: Optional[str] = None,
           headers: Optional[dict] = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = {"code": inner, "message": message}
    return json_response(status, {"error": error}, _headers(headers), "application/json; charset=utf-8")


def make_app(runtime: Runtime):
    """The request handler of the Azure emulator."""

    def _handle(request: Request) -> Optional[Response]:
        if request.path in V3_PATHS:
            version, operation = "v3", V3_PATHS[request.path]
        elif request.path == V4_PATH:
            version, operation = "v4", "analyze"
        else:
            return _error(404, "404", "Resource not found")
        if request.method != "POST":
            return _error(405, "405", f"Method {request.method} is not allowed.")
        if not runtime.key_ok(request.header("Ocp-Apim-Subscription-Key")):
            runtime.stats.add_auth_failure()
            return _error(401, "401", AUTH_MESSAGE)
        if not runtime.admit():
            return _error(429, "429", "Rate limit is exceeded. Try again later.",
                          headers=runtime.retry_after_headers())
        fault = runtime.draw_request_fault()
        if fault == "throttle":
            return _error(429, "429", "Rate limit is exceeded. Try again later (emulated).",
                          headers=runtime.retry_after_headers())
        if fault == "server_error":
            return _error(500, "InternalServerError", "An internal server error occurred (emulated).")
        if fault == "malformed":
            body = json.dumps({"tags": [{"name": "x", "confidence": 0.5}], "requestId": "x"}).encode()
            return Response(200, truncate_body(body), "application/json; charset=utf-8", _headers())
        if fault == "timeout" and not runtime.hang():
            return None
        return _analyze(request, version, operation)

    def _analyze(request: Request, version: str, operation: str) -> Response:
        max_bytes, min_side, max_side, formats = LIMITS[version]
        content_type = (request.header("Content-Type") or "").lower()
        if content_type.startswith("application/json"):
            runtime.stats.add_rejected()
            return _error(400, "InvalidRequest", "Image URLs cannot be fetched by the emulator; send the image "
                                                 "bytes as application/octet-stream.", "InvalidImageUrl")
        data = request.body
        if len(data) > max_bytes:
            runtime.stats.add_rejected()
            return _error(400, "InvalidRequest", f"Image size is too large: {len(data)} bytes, the limit is "
                                                 f"{max_bytes}.", "InvalidImageSize")
        try:
            opened = open_image(data)
            if opened.format not in formats:
                raise ImageProblem(opened.format)
        except ImageProblem:
            runtime.stats.add_rejected()
            return _error(400, "InvalidRequest", "Input data is not a valid image.", "InvalidImageFormat")
        if min(opened.width, opened.height) < min_side or max(opened.width, opened.height) > max_side:
            runtime.stats.add_rejected()
            return _error(400, "InvalidRequest",
                          f"The input image dimensions are out of range: {opened.width}x{opened.height}; each side "
                          f"must be between {min_side} and {max_side} pixels.", "InvalidImageDimension")
        if version == "v3":
            features = ",".join(request.query.get("visualFeatures", [])).lower().split(",")
            wants_tags = operation == "tag" or "tags" in [f.strip() for f in features]
        else:
            features = ",".join(request.query.get("features", [])).lower().split(",")
            wants_tags = "tags" in [f.strip() for f in features]
        try:
            tags = runtime.classify(opened) if wants_tags else None
        except ImageProblem:
            runtime.stats.add_rejected()
            return _error(400, "InvalidRequest", "Input data is not a valid image.", "InvalidImageFormat")
        if version == "v3":
            answer: dict[str, Any] = {}
            if tags is not None:
                answer["tags"] = [{"name": name, "confidence": score} for name, score in tags]
            answer.update({
                "requestId": request_id(),
                "metadata": {"width": opened.width, "height": opened.height, "format": opened.format.capitalize()},
                "modelVersion": V3_MODEL_VERSION,
            })
        else:
            answer = {"modelVersion": V4_MODEL_VERSION,
                      "metadata": {"width": opened.width, "height": opened.height}}
            if tags is not None:
                answer["tagsResult"] = {"values": [{"name": name, "confidence": score} for name, score in tags]}
        return json_response(200, answer, _headers(), "application/json; charset=utf-8")

    return counted_and_delayed(runtime, _handle)


def serve(config: EmulatorConfig, runtime: Runtime):
    """Start the Azure emulator; returns (port, stop function)."""
    return serve_http(config.host, config.port, make_app(runtime), "azure", runtime.stopped)
