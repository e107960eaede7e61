"""Clarifai emulator: ``PostModelOutputs`` over gRPC (``clarifai.api.V2``) and over the JSON/REST
gateway (``POST /v2/users/{user}/apps/{app}/models/{model}[/versions/{v}]/outputs``).

Service-level failures are not transport errors: they come back in ``response.status.code``
and ``response.outputs[i].status.code`` (codes from ``status_code_pb2``), as with the real
service. The JSON gateway answers with the same message as JSON (HTTP status set to match,
which the JSON channel ignores).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any, Optional

from ._core import EmulatorConfig, ImageProblem, Runtime, counted_and_delayed, label_id, open_image, truncate_body
from ._http import Request, Response, json_response, serve_http

logger = logging.getLogger("robust_api.emulators")

MAX_INPUTS = 128
MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MODEL_ID = "general-image-recognition"
DEFAULT_VERSION_ID = "aa7f35c01e0642fda5cf400f543e7c40"
_PATH = re.compile(r"^/v2(?:/users/(?P<user>[^/]+)/apps/(?P<app>[^/]+))?/models/(?P<model>[^/]+)"
                   r"(?:/versions/(?P<version>[^/]+))?/outputs/?$")
_MALFORMED = b"\x0a\xff\xff\xff\xff\x0f\x01"  # field 1, length far past the end: cannot deserialize


class _Outcome:
    """The result of one PostModelOutputs call before it is put on the wire."""

    def __init__(self, kind: str, response: Any = None, http_status: int = 200):
        self.kind = kind  # "ok", "status" (a top-level failure status), "unavailable", "malformed", "dropped"
        self.response = response
        self.http_status = http_status


class ClarifaiCore:
    """PostModelOutputs, independent of the transport."""

    def __init__(self, runtime: Runtime):
        from clarifai_grpc.grpc.api import resources_pb2, service_pb2
        from clarifai_grpc.grpc.api.status import status_code_pb2, status_pb2

        self.runtime = runtime
        self.resources = resources_pb2
        self.service = service_pb2
        self.codes = status_code_pb2
        self.status = status_pb2

    def _failure(self, code: int, description: str, details: str = "", http_status: int = 400) -> _Outcome:
        response = self.service.MultiOutputResponse(
            status=self.status.Status(code=code, description=description, details=details,
                                      req_id=uuid.uuid4().hex))
        return _Outcome("status", response, http_status)

    def predict(self, request: Any, authorization: Optional[str]) -> _Outcome:
        """Answer a ``PostModelOutputsRequest`` sent with the ``authorization`` metadata value."""
        runtime, codes = self.runtime, self.codes
        key = None
        if authorization:
            parts = authorization.split()
            if len(parts) == 2 and parts[0].lower() == "key":
                key = parts[1]
        if not runtime.key_ok(key):
            runtime.stats.add_auth_failure()
            return self._failure(codes.CONN_KEY_INVALID, "Invalid API key or Invalid API key/application pair",
                                 "the emulator expects metadata ('authorization', 'Key <PAT>')", 401)
        if not runtime.admit():
            return self._throttled(f"exceeded limit of {runtime.config.rate_limit:g} requests per second")
        fault = runtime.draw_request_fault(len(request.inputs))
        if fault == "throttle":
            return self._throttled("exceeded limit of 15 requests per second (emulated)")
        if fault == "server_error":
            return _Outcome("unavailable", self._failure(codes.INTERNAL_SERVER_ISSUE, "Internal server issue",
                                                         "emulated server error", 500).response, 500)
        if fault == "malformed":
            return _Outcome("malformed")
        if fault == "timeout" and not runtime.hang():
            return _Outcome("dropped")
        inputs = list(request.inputs)
        if not inputs:
            runtime.stats.add_rejected()
            return self._failure(codes.INPUT_INVALID_ARGUMENT, "Invalid request argument", "no inputs given")
        if len(inputs) > MAX_INPUTS:
            runtime.stats.add_rejected()
            return self._failure(codes.INPUT_OVER_LIMIT, "Too many inputs",
                                 f"{len(inputs)} inputs given; at most {MAX_INPUTS} per request")
        output_config = request.model.model_version.output_info.output_config
        max_concepts = int(output_config.max_concepts)
        min_value = float(output_config.min_value)
        model = self.resources.Model(
            id=request.model_id or DEFAULT_MODEL_ID, app_id=request.user_app_id.app_id or "main",
            user_id=request.user_app_id.user_id or "clarifai",
            model_version=self.resources.ModelVersion(id=request.version_id or DEFAULT_VERSION_ID),
        )
        image_faults = runtime.draw_image_faults(len(inputs))
        outputs, failed = [], 0
        for item, image_fault in zip(inputs, image_faults):
            output = self.resources.Output(id=uuid.uuid4().hex, model=model,
                                           input=self.resources.Input(id=item.id or uuid.uuid4().hex))
            code, description = self._classify(item, image_fault, max_concepts, min_value, output)
            output.status.code = code
            output.status.description = description
            failed += code != codes.SUCCESS
            outputs.append(output)
        if failed:
            top = self.status.Status(code=codes.MIXED_STATUS, description="Mixed Success")
        else:
            top = self.status.Status(code=codes.SUCCESS, description="Ok")
        top.req_id = uuid.uuid4().hex
        return _Outcome("ok", self.service.MultiOutputResponse(status=top, outputs=outputs))

    def _throttled(self, details: str) -> _Outcome:
        return self._failure(self.codes.CONN_THROTTLED, "Making too many requests", details, 429)

    def _classify(self, item: Any, image_fault: bool, max_concepts: int, min_value: float,
                  output: Any) -> tuple[int, str]:
        runtime, codes = self.runtime, self.codes
        if image_fault:
            return codes.MODEL_BUSY_PLEASE_RETRY, "Model is busy, please retry (emulated transient failure)"
        data = bytes(item.data.image.base64)
        if not data:
            runtime.stats.add_rejected()
            if item.data.image.url:
                return codes.INPUT_DOWNLOAD_FAILED, "the emulator cannot fetch image URLs; send image.base64"
            return codes.INPUT_INVALID_ARGUMENT, "input has no image bytes"
        if len(data) > MAX_IMAGE_BYTES:
            runtime.stats.add_rejected()
            return codes.INPUT_OVER_LIMIT, f"image of {len(data)} bytes exceeds the {MAX_IMAGE_BYTES}-byte limit"
        try:
            labels = runtime.classify(open_image(data), max_concepts if max_concepts > 0 else None)
        except ImageProblem:
            runtime.stats.add_rejected()
            return codes.MP_IMAGE_DECODE_ERROR, "Failed to decode image"
        for name, score in labels:
            if score >= min_value:
                output.data.concepts.add(id=label_id(name), name=name, value=score, app_id="main")
        return codes.SUCCESS, "Ok"


def make_grpc_handler(runtime: Runtime):
    """A generic gRPC handler that serves ``/clarifai.api.V2/PostModelOutputs`` with
    :class:`EmulatedV2Servicer` (other V2 methods answer UNIMPLEMENTED)."""
    import grpc
    from clarifai_grpc.grpc.api import service_pb2, service_pb2_grpc

    core = ClarifaiCore(runtime)

    class EmulatedV2Servicer(service_pb2_grpc.V2Servicer):
        """The V2 service with PostModelOutputs answered by the emulator."""

        def PostModelOutputs(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC naming
            runtime.stats.add_request()
            metadata = {k.lower(): v for k, v in context.invocation_metadata()}
            outcome = core.predict(request, metadata.get("authorization"))
            if outcome.kind == "dropped" or not runtime.delay():
                context.abort(grpc.StatusCode.UNAVAILABLE, "emulator stopped")
            if outcome.kind == "unavailable":
                context.abort(grpc.StatusCode.UNAVAILABLE, "upstream connect error (emulated server error)")
            if outcome.kind == "malformed":
                return _MALFORMED
            return outcome.response

    servicer = EmulatedV2Servicer()
    serialize_proto = service_pb2.MultiOutputResponse.SerializeToString

    def serialize(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize_proto(response)

    return grpc.method_handlers_generic_handler("clarifai.api.V2", {
        "PostModelOutputs": grpc.unary_unary_rpc_method_handler(
            servicer.PostModelOutputs, request_deserializer=service_pb2.PostModelOutputsRequest.FromString,
            response_serializer=serialize),
    })


def make_json_app(runtime: Runtime):
    """The request handler of the JSON gateway emulator."""
    from google.protobuf import json_format

    core = ClarifaiCore(runtime)

    def to_json(message: Any) -> dict:
        return json_format.MessageToDict(message, preserving_proto_field_name=True, use_integers_for_enums=True)

    def _handle(request: Request) -> Optional[Response]:
        match = _PATH.match(request.path)
        if match is None or request.method != "POST":
            response = core._failure(core.codes.CONN_DOES_NOT_EXIST, "Resource does not exist",
                                     f"no route {request.method} {request.path}", 404)
            return json_response(404, to_json(response.response))
        try:
            payload = json.loads(request.body.decode("utf-8") or "{}")
            message = json_format.ParseDict(payload, core.service.PostModelOutputsRequest(),
                                            ignore_unknown_fields=True)
        except (ValueError, UnicodeDecodeError, json_format.ParseError) as exc:
            runtime.stats.add_rejected()
            outcome = core._failure(core.codes.CONN_BAD_REQUEST_FORMAT, "Bad request format", str(exc)[:200], 400)
            return json_response(400, to_json(outcome.response))
        message.model_id = match.group("model")
        if match.group("version"):
            message.version_id = match.group("version")
        if match.group("user"):
            message.user_app_id.user_id = match.group("user")
            message.user_app_id.app_id = match.group("app")
        outcome = core.predict(message, request.header("Authorization"))
        if outcome.kind == "dropped":
            return None
        if outcome.kind == "malformed":
            body = json.dumps({"status": {"code": 10000}, "outputs": [{"data": {"concepts": []}}]}).encode()
            return Response(200, truncate_body(body))
        headers = runtime.retry_after_headers() if outcome.http_status == 429 else None
        return json_response(outcome.http_status, to_json(outcome.response), headers)

    return counted_and_delayed(runtime, _handle)


def serve(config: EmulatorConfig, runtime: Runtime):
    """Start the Clarifai emulator; returns (port, stop function)."""
    if config.protocol == "json":
        return serve_http(config.host, config.port, make_json_app(runtime), "clarifai", runtime.stopped)
    from ._grpc import serve_grpc

    return serve_grpc(config.host, config.port, [make_grpc_handler(runtime)], runtime.stopped)
