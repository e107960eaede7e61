"""A small threaded HTTP/1.1 server for the emulators.

Unlike a bare :mod:`http.server` handler it reads ``Transfer-Encoding: chunked`` request
bodies (the legacy Azure client sends them), keeps connections alive correctly, and can
be stopped promptly: ``stop()`` shuts the listener and every open connection down.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("robust_api.emulators")

#: Largest request body read (bigger ones get 413 and the connection is closed).
MAX_BODY_BYTES = 128 * 1024 * 1024


@dataclass
class Request:
    """One HTTP request as the emulator apps see it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # email.message.Message: case-insensitive .get()
    body: bytes

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """A header value (case-insensitive), or ``default``."""
        return self.headers.get(name, default)

    def param(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of query parameter ``name``, or ``default``."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    """One HTTP response: status, body bytes, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: Optional[dict[str, str]] = None,
                  content_type: str = "application/json") -> Response:
    """A JSON response (compact encoding, UTF-8)."""
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return Response(status, body, content_type, dict(headers or {}))


class _BodyError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "robust-api-emulator/1.0"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are dropped after this many seconds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler API
        logger.debug("%s %s: " + format, self.server.emulator_name, self.address_string(), *args)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        self._serve()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST  # noqa: N815

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise _BodyError(400, "connection closed inside a chunked body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = self.rfile.readline(65537)
                    if trailer in (b"\r\n", b"\n", b""):
                        break
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError(413, "request body too large")
            data = self.rfile.read(size)
            if len(data) != size:
                raise _BodyError(400, "connection closed inside a chunk")
            chunks.append(data)
            self.rfile.readline(65537)  # the CRLF after the chunk data

    def _read_body(self) -> bytes:
        encoding = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in encoding:
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _BodyError(400, f"bad Content-Length {length!r}") from None
        if n < 0:
            raise _BodyError(400, f"bad Content-Length {length!r}")
        if n > MAX_BODY_BYTES:
            raise _BodyError(413, "request body too large")
        data = self.rfile.read(n)
        if len(data) != n:
            raise _BodyError(400, "connection closed inside the body")
        return data

    def _serve(self) -> None:
        server: EmulatorHTTPServer = self.server  # type: ignore[assignment]
        try:
            body = self._read_body()
        except _BodyError as exc:
            self.close_connection = True
            self._write(json_response(exc.status, {"error": {"code": exc.status, "message": str(exc)}}), close=True)
            return
        parts = urlsplit(self.path)
        request = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True), self.headers, body)
        try:
            response = server.app(request)
        except Exception:
            logger.exception("%s emulator failed on %s %s", server.emulator_name, self.command, parts.path)
            response = json_response(500, {"error": {"code": 500, "message": "emulator internal error"}})
        if response is None or server.stopping.is_set():  # stopped while the request hung
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: Response, close: bool = False) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if close or self.close_connection:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(response.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError) as exc:
            logger.debug("%s: client went away before the answer: %s", self.server.emulator_name, exc)
            self.close_connection = True


class EmulatorHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon threads that tracks its connections to close them on stop."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 256  # listen backlog: many clients may connect at once

    def __init__(self, host: str, port: int, app: Callable[[Request], Optional[Response]], name: str,
                 stopping: threading.Event):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self.emulator_name = name
        self.stopping = stopping
        self._connections: set = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn, which may wait on DNS: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open client connection down (wakes handlers blocked on reads)."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve_http(host: str, port: int, app: Callable[[Request], Optional[Response]], name: str,
               stopping: threading.Event) -> tuple[int, Callable[[], None]]:
    """Start ``app`` on ``host:port`` in a daemon thread.

    Returns:
        (the bound port, a function that stops the server promptly).
    """
    server = EmulatorHTTPServer(host, port, app, name, stopping)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"robust-api-emulator-{name}", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(timeout=2.0)

    return server.server_address[1], stop


def request_id() -> str:
    """A random request id (as services put in their answers)."""
    return str(uuid.uuid4())
