"""A generic self-hosted model server (the "http" emulator) at ``POST /predict``.

* ``Content-Type: image/*``: the body is one raw image; the answer is a Hugging Face style
  list ``[{"label": .., "score": ..}, ...]``, best first.
* ``Content-Type: application/json`` with ``{"instances": [{"b64": "<base64 image>"}, ...]}``:
  the answer is KServe v1 style ``{"predictions": [[{"label", "score"}, ...], ...]}``, one list
  per instance, in order.

Errors are ``{"error": "<message>"}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any, Optional

from ._core import EmulatorConfig, ImageProblem, Runtime, counted_and_delayed, open_image, truncate_body
from ._http import Request, Response, json_response, serve_http

logger = logging.getLogger("robust_api.emulators")

PATH = "/predict"


def _error(status: int, message: str, headers: Optional[dict] = None) -> Response:
    return json_response(status, {"error": message}, headers)


def _instance_bytes(instance: Any) -> bytes:
    if isinstance(instance, dict):
        value = instance.get("b64")
        if value is None and isinstance(instance.get("image_bytes"), dict):
            value = instance["image_bytes"].get("b64")  # TensorFlow Serving style
    else:
        value = instance
    if not isinstance(value, str):
        raise ValueError('each instance must be {"b64": "<base64 image>"}')
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an instance's b64 is not valid base64") from None


def make_app(runtime: Runtime):
    """The request handler of the generic model server."""

    def _handle(request: Request) -> Optional[Response]:
        if request.path.rstrip("/") != PATH:
            return _error(404, f"not found: {request.path}; the model is served at POST {PATH}")
        if request.method != "POST":
            return _error(405, f"method {request.method} not allowed; use POST")
        if runtime.config.api_key is not None:
            if request.header("Authorization") != f"Bearer {runtime.config.api_key}":
                runtime.stats.add_auth_failure()
                return _error(401, "unauthorized: missing or wrong bearer token",
                              {"WWW-Authenticate": 'Bearer realm="robust-api-emulator"'})
        if not runtime.admit():
            return _error(429, "rate limit exceeded", runtime.retry_after_headers())
        content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type.startswith("image/"):
            single, blobs = True, [request.body]
        elif content_type == "application/json":
            single = False
            try:
                payload = json.loads(request.body.decode("utf-8"))
                instances = payload["instances"]
                if not isinstance(instances, list):
                    raise ValueError('"instances" must be a list')
                blobs = [_instance_bytes(instance) for instance in instances]
            except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
                runtime.stats.add_rejected()
                return _error(400, f'bad request body (expected {{"instances": [{{"b64": ...}}]}}): {exc}')
        else:
            runtime.stats.add_rejected()
            return _error(415, f"unsupported Content-Type {content_type!r}; send image/* or application/json")
        fault = runtime.draw_request_fault(len(blobs))
        if fault == "throttle":
            return _error(429, "too many requests (emulated)", runtime.retry_after_headers())
        if fault == "server_error":
            return _error(503, "model server unavailable (emulated)")
        if fault == "malformed":
            return Response(200, truncate_body(b'[{"label":"x","score":0.5}]'))
        if fault == "timeout" and not runtime.hang():
            return None
        predictions = []
        for index, blob in enumerate(blobs):
            try:
                labels = runtime.classify(open_image(blob))
            except ImageProblem as exc:
                runtime.stats.add_rejected()
                where = "the image" if single else f"instance {index}"
                return _error(400, f"cannot decode {where}: {exc}")
            predictions.append([{"label": name, "score": score} for name, score in labels])
        if single:
            return json_response(200, predictions[0])
        return json_response(200, {"predictions": predictions})

    return counted_and_delayed(runtime, _handle)


def serve(config: EmulatorConfig, runtime: Runtime):
    """Start the generic model server; returns (port, stop function)."""
    return serve_http(config.host, config.port, make_app(runtime), "http", runtime.stopped)
