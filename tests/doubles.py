"""Test doubles shared by the test modules (import as ``from doubles import ...``)."""

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest


def halfspace_label(x: np.ndarray) -> str:
    """The half-space base classifier on one pixel: "A" iff pixel (0, 0, 0) < 0.5."""
    return "A" if float(x[0, 0, 0]) < 0.5 else "B"


class Counting:
    """A callable provider that counts what it was asked (calls and images)."""

    def __init__(self):
        self.calls = 0
        self.images = 0

    def __call__(self, batch):
        assert batch.dtype == np.float32 and batch.ndim == 4
        self.calls += 1
        self.images += len(batch)
        return [halfspace_label(x) for x in batch]


@contextmanager
def tiny_http_server(answer):
    """An HTTP server on 127.0.0.1 for any route and method (GET, POST, PUT).

    ``answer(method, path, headers) -> (status, body)``: a dict or list body is sent as JSON,
    a str as text/plain. The request body is read (Content-Length or chunked) and dropped.
    Yields the base URL ``http://127.0.0.1:PORT``.
    """

    class Handler(BaseHTTPRequestHandler):
        def _reply(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    self.rfile.read(size + 2)
                    if size == 0:
                        break
            status, body = answer(self.command, self.path, self.headers)
            text = isinstance(body, str)
            data = (body if text else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = do_PUT = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")`` after ``from doubles import one_torch_thread``): its tensors are tiny, and
    extra threads only add synchronisation, which costs seconds per pass on a loaded machine.
    The previous count is restored for the other modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
