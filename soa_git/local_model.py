"""`--model local`: llama.cpp's own OpenAI-compatible server, run inside soa-git's process by
xllamacpp, on 127.0.0.1 with an ephemeral port and a random key, for one command's duration.

soa-git then talks to it through the same `openai` client as to any endpoint. The server lives
in this process, so it ends with it however the process ends; within it, `serving` stops the
server when the command's block ends, by exception, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType

from .errors import ConfigError, ModelError
from .weights import (LocalWeights, Progress, ProgressCallback, find_weights, install_command,
                      quiet)

__all__ = ["LocalEndpoint", "is_local", "serving"]

LOCAL = "local"
HOST = "127.0.0.1"
# Each parallel slot gets this much context: a Mother's prompt plus its longest answer fit.
SLOT_CONTEXT = 8192
SEED = 1234


def is_local(model: str) -> bool:
    return model == LOCAL or model.startswith(f"{LOCAL}:")


@dataclass(frozen=True)
class LocalEndpoint:
    base_url: str
    api_key: str
    model: str
    weights: LocalWeights
    slots: int


def _runtime(which: str) -> ModuleType:
    try:
        import xllamacpp
    except ImportError:
        raise ConfigError(f"--model local needs the llama.cpp runtime: run "
                          f"{install_command(which)}") from None
    return xllamacpp


@contextlib.contextmanager
def serving(model: str, *, slots: int = 1, port: int = 0, environ: Mapping[str, str] | None = None,
            on_progress: ProgressCallback = quiet) -> Iterator[LocalEndpoint]:
    """The local model `model` names (`local`, `local:<name>`, `local:/path.gguf`), served until
    the block ends."""
    which = model.partition(":")[2]
    runtime = _runtime(which)
    with _sigterm_as_interrupt():
        weights = find_weights(which, environ=dict(environ or os.environ),
                               on_progress=on_progress)
        context = SLOT_CONTEXT * max(1, slots)
        _check_memory(weights, context)
        _check_port(port)
        key = secrets.token_urlsafe(24)
        params = _params(runtime, weights, slots=max(1, slots), port=port, key=key,
                         context=context)
        on_progress(Progress("loading", weights.source))
        try:
            server = runtime.Server(params)
        except RuntimeError:
            raise ModelError(_why_not_loaded(weights, port)) from None
        try:
            endpoint = LocalEndpoint(f"{server.listening_address}/v1", key, weights.name,
                                     weights, max(1, slots))
            on_progress(Progress("ready", endpoint.base_url))
            yield endpoint
        finally:
            # The binding stops the HTTP server and joins its threads when the object goes. A
            # request still generating would hold that join forever: llama.cpp's server cancels
            # a request only when its connection closes, so close them first.
            _drop_connections(server.listening_address)
            del server


def _params(runtime: ModuleType, weights: LocalWeights, *, slots: int, port: int, key: str,
            context: int):
    params = runtime.CommonParams()
    params.model.path = str(weights.path)
    params.model_alias = {weights.name}  # a set: the names the server answers to
    params.hostnames = [HOST]
    params.port = port
    params.api_keys = [key]
    params.n_parallel = slots            # siblings' requests decode together
    params.cont_batching = True
    params.n_ctx = context
    params.use_jinja = True              # the chat template the GGUF file carries
    params.ui = False
    params.verbosity = -1
    params.sampling.seed = SEED
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    params.cpuparams.n_threads = threads or 1
    params.cpuparams_batch.n_threads = threads or 1
    return params


def _drop_connections(address: str) -> None:
    """Shut down every connection this process holds to `address` (http://host:port).

    The clients are the command's own (the organizer's threads, a benchmark's); a thread blocked
    reading an answer gets an error at once, which the command is already unwinding past.
    Linux lists a process's sockets in /proc; elsewhere nothing is dropped.
    """
    host, _, port = address.rpartition("//")[2].rpartition(":")
    peer = (host, int(port))
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in descriptors:
        # A duplicate: closing it leaves the client's own descriptor alone, while shutdown()
        # acts on the connection both share.
        try:
            duplicate = os.dup(int(name))
        except OSError:
            continue    # already gone
        try:
            connection = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)     # not a socket
            continue
        with connection:
            try:
                if connection.family == socket.AF_INET and connection.getpeername() == peer:
                    connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue    # not connected


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(weights: LocalWeights, context: int) -> None:
    # The weights, the KV cache (at most ~64 KiB a token for the models this size) and buffers.
    needed = weights.path.stat().st_size + context * (64 << 10) + (256 << 20)
    available = _available_memory()
    if available is not None and needed > available:
        raise ConfigError(f"the model {weights.path} needs about {needed / 2**30:.1f} GiB of "
                          f"memory and only {available / 2**30:.1f} GiB are available")


def _check_port(port: int) -> None:
    if port == 0:
        return
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise ConfigError(f"port {port} on {HOST} is in use; choose another port or "
                              "leave it out to get a free one") from None


def _why_not_loaded(weights: LocalWeights, port: int) -> str:
    """llama.cpp says only that it failed; name the likeliest cause we can check."""
    try:
        _check_port(port)
    except ConfigError as exc:
        return str(exc)
    return f"llama.cpp could not load {weights.path}; the file may be truncated or corrupt"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the server stops and no half-written file stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
