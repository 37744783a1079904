"""The client of a real model endpoint: any OpenAI-compatible server through the `openai`
package, with retries, a concurrency limit and token accounting per agent.

Only commands that call a model import this module: importing `openai` costs more than all
the rest of soa-git's start-up.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import httpx2
import openai

from soa_git import faults
from soa_git.errors import ModelError
from soa_git.llm import Notice, Reply, TokenLedger, Usage

__all__ = ["OpenAIChat"]

# The longest single pause between attempts, whether backoff or a server's Retry-After:
# beyond it a run looks hung.
MAX_WAIT_S = 60.0
CONNECTION_ATTEMPTS = 2
CHARS_PER_TOKEN = 4
# The largest answer body read. Parsing is what a large answer costs (tree-sitter took 20 s on
# 800 KB), and code answers are a few KB: beyond this the answer is refused unread.
MAX_ANSWER_BYTES = 256 * 1024
# One model call, all its attempts and pauses included, ends within this many request timeouts.
CALL_DEADLINE_TIMEOUTS = 3


class AnswerTooLarge(httpx2.TransportError):
    """The answer's body grew past MAX_ANSWER_BYTES; it was not read further."""


class _BoundedTransport(httpx2.HTTPTransport):
    """Each request, body included, ends by a deadline, and no body is read past a size cap.

    The client's own timeout bounds each read, not the whole answer: a server sending a byte a
    second would never be cut off. Here a timer shuts the request's socket down when the deadline
    passes, wherever the request is blocked (headers, body); every request gets a new connection
    so the socket is always known.
    """

    def __init__(self, deadline_s: float, max_bytes: int) -> None:
        super().__init__(limits=httpx2.Limits(max_keepalive_connections=0))
        self._deadline_s = deadline_s
        self._max_bytes = max_bytes

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        sockets: list[socket.socket] = []
        expired = threading.Event()

        def trace(event: str, info: dict) -> None:
            if event.endswith(("connect_tcp.complete", "connect_unix_socket.complete")):
                sock = info["return_value"].get_extra_info("socket")
                if sock is not None:
                    sockets.append(sock)
                    if expired.is_set():
                        _shut(sock)

        def expire() -> None:
            expired.set()
            for sock in sockets:
                _shut(sock)

        timer = threading.Timer(self._deadline_s, expire)
        timer.daemon = True
        timer.start()
        request.extensions = {**request.extensions, "trace": trace}
        try:
            response = super().handle_request(request)
            size = response.headers.get("content-length", "")
            if size.isdigit() and int(size) > self._max_bytes:
                response.close()
                raise AnswerTooLarge(f"the answer has {size} bytes", request=request)
        except httpx2.TransportError:
            timer.cancel()
            if expired.is_set():
                raise httpx2.ReadTimeout("the answer did not end in time", request=request)
            raise
        response.stream = _BoundedStream(response.stream, self._max_bytes, expired, timer,
                                         request)
        return response


class _BoundedStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, max_bytes: int, expired: threading.Event,
                 timer: threading.Timer, request: httpx2.Request) -> None:
        self._inner, self._max_bytes, self._expired = inner, max_bytes, expired
        self._timer, self._request = timer, request

    def __iter__(self) -> Iterator[bytes]:
        read = 0
        try:
            for chunk in self._inner:
                read += len(chunk)
                if read > self._max_bytes:
                    raise AnswerTooLarge(f"the answer passed {self._max_bytes} bytes",
                                         request=self._request)
                yield chunk
        except httpx2.TransportError as exc:
            if self._expired.is_set() and not isinstance(exc, AnswerTooLarge):
                raise httpx2.ReadTimeout("the answer did not end in time",
                                         request=self._request) from None
            raise
        if self._expired.is_set():
            raise httpx2.ReadTimeout("the answer did not end in time", request=self._request)

    def close(self) -> None:
        self._timer.cancel()
        self._inner.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's requested pause in seconds (Retry-After-Ms, Retry-After seconds or date)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if name != "retry-after":
                continue
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def _retryable(status: int) -> bool:
    """Rate limits and server errors pass; any other 4xx will fail the same way again."""
    return status == 429 or status >= 500


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class OpenAIChat:
    """ChatModel over any OpenAI-compatible base_url, via the `openai` Chat Completions API."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key: str | None,
        ledger: TokenLedger,
        max_concurrency: int = 4,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 120.0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        on_notice: Callable[[Notice], None] = lambda notice: None,
    ) -> None:
        self.name = model
        # Public: a call made elsewhere (a Ray node, see ray_executor.py) hands its notices here.
        self.on_notice = on_notice
        # What it takes to open the same client elsewhere (`OpenAIChat(**endpoint, ledger=...)`).
        self.endpoint = dict(model=model, base_url=base_url, api_key=api_key,
                             max_concurrency=max_concurrency, max_attempts=max_attempts,
                             backoff_s=backoff_s, timeout_s=timeout_s, temperature=temperature,
                             max_tokens=max_tokens)
        self.base_url = base_url
        self.ledger = ledger
        self._api_key = api_key
        self._max_attempts = max(1, max_attempts)
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._temperature = temperature
        self._max_tokens = max_tokens
        # Local servers need no key, but the client insists on one. max_retries=0: the retry
        # policy lives here, where it can count attempts and explain the final failure.
        # timeout_s bounds each attempt from its start to the answer's last byte.
        self._client = openai.OpenAI(
            api_key=api_key or "unused", base_url=base_url, max_retries=0, timeout=timeout_s,
            http_client=httpx2.Client(
                transport=_BoundedTransport(timeout_s, MAX_ANSWER_BYTES), timeout=timeout_s),
        )
        self._slots = threading.BoundedSemaphore(max(1, max_concurrency))

    def complete(self, messages: list[dict[str, str]], *, agent: str,
                 max_tokens: int | None = None) -> Reply:
        """One answer; `max_tokens` caps it (default: the client's own cap)."""
        self.ledger.check(agent)
        completion = self._create(messages, max_tokens or self._max_tokens, agent)
        faults.reached("model")
        # The client does not validate bodies: a wrong server or a proxy's page shows up here.
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise ModelError(self._not_a_completion())
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None) or ""
        served_usage = getattr(completion, "usage", None)
        model = getattr(completion, "model", None) or self.name
        if served_usage is not None:
            details = getattr(served_usage, "prompt_tokens_details", None)
            usage = Usage(served_usage.prompt_tokens or 0, served_usage.completion_tokens or 0,
                          cached_tokens=getattr(details, "cached_tokens", None) or 0)
        else:
            prompt = "".join(str(m.get("content") or "") for m in messages)
            usage = Usage(_estimate_tokens(prompt), _estimate_tokens(text), estimated=True)
        # Tokens were spent even when the answer is useless, so record before judging it.
        self.ledger.record(agent, usage)
        if not text.strip():
            raise ModelError("the model returned an empty answer")
        return Reply(text=text, usage=usage, model=model)

    def _create(self, messages: list[dict[str, str]], max_tokens: int | None,
                agent: str) -> Any:
        """One completion, retrying rate limits, server errors, timeouts and lost connections."""
        options: dict[str, Any] = {"model": self.name, "messages": messages}
        if self._temperature is not None:
            options["temperature"] = self._temperature
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        failure: openai.APIError | None = None
        deadline = time.monotonic() + CALL_DEADLINE_TIMEOUTS * self._timeout_s
        attempts = 0
        for attempt in range(self._max_attempts):
            attempts += 1
            retry_after: float | None = None
            try:
                # The slot covers only the request, so a request waiting out a backoff frees it.
                with self._slots:
                    return self._client.chat.completions.create(**options)
            except openai.APIStatusError as exc:
                failure = exc
                if not _retryable(exc.status_code):
                    break
                retry_after = _retry_after_s(exc.response.headers)
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                if isinstance(exc.__cause__, AnswerTooLarge):
                    raise ModelError(f"the model's answer was larger than "
                                     f"{MAX_ANSWER_BYTES // 1024} KB ({exc.__cause__}); it was "
                                     "not read") from None
                failure = exc
                # A refused connection means nothing listens there; one retry covers a dropped
                # connection, and more would only delay the answer by seconds.
                if (attempt >= CONNECTION_ATTEMPTS - 1
                        and not isinstance(exc, openai.APITimeoutError)):
                    break
            except json.JSONDecodeError:
                raise ModelError(self._not_a_completion()) from None
            pause = self._pause_s(attempt, retry_after)
            # No attempt starts after the call's deadline less one timeout, so the call ends by
            # the deadline (each attempt ends within its own timeout).
            if time.monotonic() + pause > deadline - self._timeout_s:
                break
            if attempt + 1 < self._max_attempts:
                self.on_notice(Notice(agent, f"{self._hitch(failure)}, retry {attempt + 2}/"
                                             f"{self._max_attempts} in {pause:.0f} s"))
                time.sleep(pause)
        assert failure is not None  # max_attempts >= 1, so the loop failed at least once
        # Raised outside any `except` so no client exception, which may quote the key, rides along.
        raise ModelError(self._explain(failure, attempts))

    def _pause_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_WAIT_S)
        # Jitter spreads out parallel agents that were all rate-limited at the same moment.
        return min(self._backoff_s * 2**attempt * (1 + random.random() / 4), MAX_WAIT_S)

    def _hitch(self, failure: openai.APIError) -> str:
        """A failure about to be retried, in a few words."""
        if isinstance(failure, openai.APIStatusError):
            return f"endpoint answered {_status_text(failure.status_code)}"
        if isinstance(failure, openai.APITimeoutError):
            return f"endpoint gave no answer in {self._timeout_s:g} s"
        return "connection to the endpoint lost"

    def _not_a_completion(self) -> str:
        return f"the model endpoint {self.base_url} did not answer with a chat completion"

    def _explain(self, failure: openai.APIError, attempts: int) -> str:
        if isinstance(failure, openai.APIStatusError) and not _retryable(failure.status_code):
            return self._refusal(failure)
        return self._gave_up(failure, attempts)

    def _refusal(self, exc: openai.APIStatusError) -> str:
        """The sentence for a 4xx error that retrying cannot fix."""
        status = exc.status_code
        if status in (401, 403):
            return f"the model endpoint refused the API key ({status})"
        if status == 404:
            return f"the model endpoint has no model named '{self.name}' ({status})"
        detail = self._server_message(exc)
        return f"the model endpoint rejected the request ({_status_text(status)})" + (
            f": {detail}" if detail else ""
        )

    def _gave_up(self, exc: openai.APIError, count: int) -> str:
        attempts = f"{count} attempt{'s' if count != 1 else ''}"
        if isinstance(exc, openai.APIStatusError):
            return (
                f"the model endpoint kept answering {_status_text(exc.status_code)} "
                f"after {attempts}"
            )
        if isinstance(exc, openai.APITimeoutError):
            return (
                f"the model endpoint {self.base_url} did not answer within "
                f"{self._timeout_s:g} seconds, {attempts} in a row"
            )
        return f"the model endpoint {self.base_url} is unreachable ({_connection_reason(exc)})"

    def _server_message(self, exc: openai.APIStatusError) -> str:
        """The server's own explanation, first line only, with the API key masked."""
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message.strip():
            return ""
        line = message.strip().splitlines()[0][:300]
        # Some servers quote the key they rejected; it must never reach a message or a log.
        return line.replace(self._api_key, "***") if self._api_key else line


def _connection_reason(exc: BaseException) -> str:
    """A short cause for a failed connection, from the innermost OS error if there is one."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    inner = exc.__cause__
    return str(inner).lower() if inner is not None and str(inner) else "connection failed"
