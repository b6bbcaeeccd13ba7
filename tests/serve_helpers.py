"""A real server (uvicorn on 127.0.0.1, a free port, in a thread) around a tiny checkpoint, for the serving tests."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

from xllava_jax.serve.__main__ import build_parser, build_service
from xllava_jax.serve.app import Service, create_app


def data_url(path: Path) -> str:
    """A data: URL of an image file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@contextlib.contextmanager
def running_server(checkpoint: Path, *flags: str) -> Iterator[tuple[str, Service]]:
    """(base URL, service) of `python -m xllava_jax.serve --checkpoint CKPT FLAGS` running until the block ends."""
    import uvicorn

    args = build_parser().parse_args(["--checkpoint", str(checkpoint), "--model_name", "tiny", *flags])
    service = build_service(args)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="on"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
