"""`soa-git serve`: the local model alone, on 127.0.0.1, until Ctrl-C or SIGTERM, so that several
commands and the benchmarks share one loaded model through `--base-url`."""

from __future__ import annotations

import threading
from typing import Callable

from ..local_model import LocalEndpoint, serving
from ..weights import ProgressCallback, quiet


def serve(model: str, *, slots: int, port: int = 0,
          on_ready: Callable[[LocalEndpoint], None] = lambda endpoint: None,
          on_progress: ProgressCallback = quiet, stop: threading.Event | None = None) -> None:
    """Serve `model` until Ctrl-C, SIGTERM or `stop`; the server is gone when this returns."""
    stop = stop or threading.Event()
    with serving(model, slots=slots, port=port, on_progress=on_progress) as endpoint:
        on_ready(endpoint)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass  # how a server is meant to stop; failures before this point still surface
