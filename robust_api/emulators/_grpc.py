"""Starting and stopping the gRPC emulators."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger("robust_api.emulators")

#: The most bytes one gRPC message may carry in either direction (the clients' own
#: defaults are larger for Clarifai; Google's limit checks happen in the emulator).
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


def serve_grpc(host: str, port: int, handlers: Sequence[Any], stopping: threading.Event,
               max_workers: int = 64) -> tuple[int, Callable[[], None]]:
    """Start a gRPC server with ``handlers`` (generic RPC handlers) on ``host:port``.

    Returns:
        (the bound port, a function that stops the server at once: grace 0).
    """
    import grpc

    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="robust-api-emulator-grpc")
    server = grpc.server(executor, handlers=list(handlers), options=[
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        executor.shutdown(wait=False)
        raise OSError(f"cannot bind a gRPC server to {address}: {exc}") from None
    if not bound:
        executor.shutdown(wait=False)
        raise OSError(f"cannot bind a gRPC server to {address}")
    server.start()

    def stop() -> None:
        stopping.set()
        server.stop(grace=0).wait(timeout=1.0)
        executor.shutdown(wait=False, cancel_futures=True)

    return bound, stop
