"""Google Cloud Vision emulator: ``images:annotate`` over REST and ``BatchAnnotateImages`` over gRPC.

REST (``http://HOST:PORT``): ``POST /v1/images:annotate`` with the JSON body the
google-cloud-vision REST transport sends (enums as ints, 4 = LABEL_DETECTION).
gRPC (``grpc://HOST:PORT``): ``/google.cloud.vision.v1.ImageAnnotator/BatchAnnotateImages``.

Errors are what the real service returns: whole-request errors as HTTP status + JSON
``{"error": {"code", "message", "status"}}`` (gRPC: a status code), per-image errors as
``{"error": {"code", "message"}}`` in that image's slot of a 200 answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

from ._core import EmulatorConfig, ImageProblem, Runtime, counted_and_delayed, format_retry_after, label_id, open_image, truncate_body
from ._http import Request, Response, json_response, serve_http

logger = logging.getLogger("robust_api.emulators")

MAX_IMAGES = 16
MAX_IMAGE_BYTES = 20 * 1024 * 1024
LABEL_DETECTION = 4
ANNOTATE_PATHS = ("/v1/images:annotate", "/v1p1beta1/images:annotate")
_GRPC_SERVICE = "google.cloud.vision.v1.ImageAnnotator"

# google.rpc.Code values
OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, PERMISSION_DENIED = 0, 3, 8, 13, 14, 7


@dataclass
class _Item:
    """One image of a request: content bytes (or None) and the LABEL_DETECTION limit."""

    content: Optional[bytes]
    wants_labels: bool
    max_results: int
    problem: Optional[str] = None  # a request-format problem of this image


@dataclass
class _Outcome:
    """What to answer: a request-level error/fault, or per-image results."""

    kind: str  # "ok", "auth", "throttle", "server_error", "malformed", "invalid", "dropped"
    message: str = ""
    results: Optional[list] = None  # per image: ("labels", [(name, score)]) | ("empty",) | ("error", code, msg)


def _annotate(runtime: Runtime, items: list[_Item]) -> _Outcome:
    """The shared request pipeline after authentication and parsing."""
    fault = runtime.draw_request_fault(len(items))
    if fault == "throttle":
        return _Outcome("throttle", "Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' "
                                    "of service 'vision.googleapis.com' (emulated).")
    if fault == "server_error":
        return _Outcome("server_error", "The service is currently unavailable (emulated).")
    if fault == "malformed":
        return _Outcome("malformed", "malformed")
    if fault == "timeout" and not runtime.hang():
        return _Outcome("dropped")
    if not items:
        runtime.stats.add_rejected()
        return _Outcome("invalid", "No image annotation requests were given.")
    if len(items) > MAX_IMAGES:
        runtime.stats.add_rejected()
        return _Outcome("invalid", f"At most {MAX_IMAGES} images can be annotated per request, got {len(items)}.")
    image_faults = runtime.draw_image_faults(len(items))
    results: list = []
    for item, image_fault in zip(items, image_faults):
        if image_fault:
            results.append(("error", UNAVAILABLE, "UNAVAILABLE: the image could not be processed now; "
                                                  "try again (emulated transient failure)."))
            continue
        if item.problem:
            runtime.stats.add_rejected()
            results.append(("error", INVALID_ARGUMENT, item.problem))
            continue
        if item.content is None:
            runtime.stats.add_rejected()
            results.append(("error", INVALID_ARGUMENT, "No image content: the emulator reads image.content only "
                                                       "(it cannot fetch image URIs)."))
            continue
        if len(item.content) > MAX_IMAGE_BYTES:
            runtime.stats.add_rejected()
            results.append(("error", INVALID_ARGUMENT,
                            f"Image size ({len(item.content)} bytes) exceeds the limit of {MAX_IMAGE_BYTES} bytes."))
            continue
        try:
            image = open_image(item.content)
            labels = runtime.classify(image, item.max_results) if item.wants_labels else None
        except ImageProblem:
            runtime.stats.add_rejected()
            results.append(("error", INVALID_ARGUMENT, "Bad image data."))
            continue
        results.append(("labels", labels) if labels is not None else ("empty",))
    return _Outcome("ok", results=results)


def _check_key(runtime: Runtime, presented: Optional[str]) -> bool:
    if runtime.config.api_key is None:
        return True  # anonymous access allowed, as with AnonymousCredentials
    return presented == runtime.config.api_key


# --------------------------------------------------------------------------- REST


_HTTP_STATUS = {"throttle": (429, "RESOURCE_EXHAUSTED"), "server_error": (503, "UNAVAILABLE"),
                "invalid": (400, "INVALID_ARGUMENT"), "auth": (403, "PERMISSION_DENIED"),
                "not_found": (404, "NOT_FOUND"), "method": (405, "METHOD_NOT_ALLOWED")}


def _rest_error(kind: str, message: str, runtime: Runtime) -> Response:
    status, name = _HTTP_STATUS[kind]
    headers = runtime.retry_after_headers() if kind == "throttle" else {}
    return json_response(status, {"error": {"code": status, "message": message, "status": name}}, headers,
                         "application/json; charset=UTF-8")


def _feature_type(value: Any) -> Any:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _parse_rest(body: bytes) -> list[_Item]:
    payload = json.loads(body.decode("utf-8"))
    if not isinstance(payload, dict) or not isinstance(payload.get("requests", []), list):
        raise ValueError("the body must be {'requests': [...]}")
    items = []
    for entry in payload.get("requests", []):
        if not isinstance(entry, dict):
            raise ValueError("each request must be an object")
        image = entry.get("image") or {}
        content, problem = None, None
        if image.get("content"):
            try:
                content = base64.b64decode(image["content"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                problem = "Invalid base64 in image.content."
        wants, max_results = False, 0
        for feature in entry.get("features") or []:
            if _feature_type(feature.get("type")) in (LABEL_DETECTION, "LABEL_DETECTION"):
                wants = True
                try:
                    max_results = int(feature.get("maxResults", feature.get("max_results", 0)) or 0)
                except (TypeError, ValueError):
                    raise ValueError("maxResults must be an integer") from None
        if not entry.get("features"):
            problem = problem or "No feature was requested for this image."
        items.append(_Item(content, wants, max_results, problem))
    return items


def _rest_results(results: list) -> list[dict]:
    out = []
    for result in results:
        if result[0] == "labels" and result[1]:
            out.append({"labelAnnotations": [
                {"mid": "/m/" + label_id(name), "description": name, "score": score, "topicality": score}
                for name, score in result[1]
            ]})
        elif result[0] == "labels":  # no label: proto3 JSON leaves the empty list out, as Google does
            out.append({})
        elif result[0] == "error":
            out.append({"error": {"code": result[1], "message": result[2]}})
        else:
            out.append({})
    return out


def make_rest_app(runtime: Runtime):
    """The request handler of the REST emulator."""

    def _rest(request: Request) -> Optional[Response]:
        if request.path not in ANNOTATE_PATHS:
            return _rest_error("not_found", f"The requested URL {request.path} was not found on this server.", runtime)
        if request.method != "POST":
            return _rest_error("method", f"Method {request.method} is not allowed here.", runtime)
        key = request.header("x-goog-api-key") or request.param("key")
        if not _check_key(runtime, key):
            runtime.stats.add_auth_failure()
            message = ("The request is missing a valid API key." if not key
                       else "API key not valid. Please pass a valid API key.")
            return _rest_error("auth", message, runtime)
        if not runtime.admit():
            return _rest_error("throttle", "Quota exceeded for quota metric 'Requests' (emulated rate limit).", runtime)
        try:
            items = _parse_rest(request.body)
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            runtime.stats.add_rejected()
            return _rest_error("invalid", f"Invalid JSON payload received. {exc}", runtime)
        outcome = _annotate(runtime, items)
        if outcome.kind == "dropped":
            return None
        if outcome.kind == "malformed":
            body = json.dumps({"responses": [{"labelAnnotations": [{"description": "x", "score": 0.5}]}]}).encode()
            return Response(200, truncate_body(body), "application/json; charset=UTF-8")
        if outcome.kind != "ok":
            return _rest_error(outcome.kind, outcome.message, runtime)
        return json_response(200, {"responses": _rest_results(outcome.results)}, None,
                             "application/json; charset=UTF-8")

    return counted_and_delayed(runtime, _rest)


# --------------------------------------------------------------------------- gRPC

_MALFORMED = b"\x0a\xff\xff\xff\xff\x0f\x01"  # field 1, length far past the end: cannot deserialize


def make_grpc_handler(runtime: Runtime):
    """A generic gRPC handler serving ``BatchAnnotateImages``."""
    import grpc
    from google.cloud.vision_v1.types import image_annotator as types
    from google.rpc import status_pb2

    codes = {"throttle": grpc.StatusCode.RESOURCE_EXHAUSTED, "server_error": grpc.StatusCode.UNAVAILABLE,
             "invalid": grpc.StatusCode.INVALID_ARGUMENT, "auth": grpc.StatusCode.PERMISSION_DENIED}

    def serialize(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response  # the "malformed" fault
        return types.BatchAnnotateImagesResponse.serialize(response)

    def handle(request: Any, context: Any) -> Any:
        runtime.stats.add_request()
        result = _grpc(request, context)
        if not runtime.delay():
            context.abort(grpc.StatusCode.UNAVAILABLE, "emulator stopped")
        if isinstance(result, tuple):
            kind, message = result
            if kind == "throttle" and runtime.config.retry_after_s is not None:
                context.set_trailing_metadata((("retry-after", format_retry_after(runtime.config.retry_after_s)),))
            context.abort(codes[kind], message)
        return result

    def _grpc(request: Any, context: Any) -> Any:
        metadata = dict(context.invocation_metadata())
        key = metadata.get("x-goog-api-key")
        if not _check_key(runtime, key):
            runtime.stats.add_auth_failure()
            return ("auth", "The request is missing a valid API key." if not key
                    else "API key not valid. Please pass a valid API key.")
        if not runtime.admit():
            return ("throttle", "Quota exceeded for quota metric 'Requests' (emulated rate limit).")
        items = []
        for entry in request.requests:
            content = bytes(entry.image.content) if entry.image.content else None
            wants, max_results = False, 0
            for feature in entry.features:
                if int(feature.type_) == LABEL_DETECTION:
                    wants, max_results = True, int(feature.max_results)
            problem = None if len(entry.features) else "No feature was requested for this image."
            items.append(_Item(content, wants, max_results, problem))
        outcome = _annotate(runtime, items)
        if outcome.kind == "dropped":
            context.abort(grpc.StatusCode.UNAVAILABLE, "emulator stopped")
        if outcome.kind == "malformed":
            return _MALFORMED
        if outcome.kind != "ok":
            return (outcome.kind, outcome.message)
        responses = []
        for result in outcome.results:
            if result[0] == "labels":
                responses.append(types.AnnotateImageResponse(label_annotations=[
                    types.EntityAnnotation(mid="/m/" + label_id(name), description=name, score=score,
                                           topicality=score)
                    for name, score in result[1]
                ]))
            elif result[0] == "error":
                responses.append(types.AnnotateImageResponse(error=status_pb2.Status(code=result[1],
                                                                                     message=result[2])))
            else:
                responses.append(types.AnnotateImageResponse())
        return types.BatchAnnotateImagesResponse(responses=responses)

    return grpc.method_handlers_generic_handler(_GRPC_SERVICE, {
        "BatchAnnotateImages": grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=types.BatchAnnotateImagesRequest.deserialize,
            response_serializer=serialize),
    })


def serve(config: EmulatorConfig, runtime: Runtime):
    """Start the Google emulator; returns (port, stop function)."""
    if config.protocol == "grpc":
        from ._grpc import serve_grpc

        return serve_grpc(config.host, config.port, [make_grpc_handler(runtime)], runtime.stopped)
    return serve_http(config.host, config.port, make_rest_app(runtime), "google", runtime.stopped)
