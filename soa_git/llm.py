"""The model seam: an OpenAI-compatible chat client with retries, a concurrency limit and
token accounting per agent.

Agents depend only on the `ChatModel` protocol, so tests and replays can swap the model.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import openai

from soa_git import faults
from soa_git.errors import BudgetExhausted, ModelError

__all__ = ["ChatModel", "OpenAIChat", "ReplayModel", "Reply", "TokenLedger", "Usage"]

# The longest single pause between attempts, whether backoff or a server's Retry-After:
# beyond it a run looks hung.
MAX_WAIT_S = 60.0
CONNECTION_ATTEMPTS = 2
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False  # True when the server sent no `usage` and we counted characters

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.estimated or other.estimated,
        )

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def record(self) -> dict[str, Any]:
        """The form a transcript note keeps; `from_record` reads it back."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "estimated": self.estimated}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Usage:
        return cls(int(record.get("prompt_tokens", 0)), int(record.get("completion_tokens", 0)),
                   bool(record.get("estimated")))


@dataclass(frozen=True)
class Reply:
    text: str
    usage: Usage
    model: str


class ChatModel(Protocol):
    name: str

    def complete(self, messages: list[dict[str, str]], *, agent: str) -> Reply: ...


class TokenLedger:
    """Thread-safe usage per agent, and the run / per-agent token budgets (None = unlimited)."""

    def __init__(self, run_limit: int | None = None, agent_limit: int | None = None) -> None:
        self.run_limit = run_limit
        self.agent_limit = agent_limit
        self._lock = threading.Lock()
        self._by_agent: dict[str, Usage] = {}
        # Kept as it grows: summing every agent on each check would cost more per call the
        # larger the run.
        self._total = Usage()

    def check(self, agent: str) -> None:
        """Raise BudgetExhausted if the run or `agent` has already reached its budget."""
        if self.run_limit is not None and self.total.total >= self.run_limit:
            raise BudgetExhausted(f"the run's token budget of {self.run_limit} tokens is spent")
        if self.agent_limit is not None and self.for_agent(agent).total >= self.agent_limit:
            raise BudgetExhausted(
                f"agent '{agent}' spent its token budget of {self.agent_limit} tokens"
            )

    def record(self, agent: str, usage: Usage) -> None:
        with self._lock:
            self._by_agent[agent] = self._by_agent.get(agent, Usage()) + usage
            self._total = self._total + usage

    def for_agent(self, agent: str) -> Usage:
        with self._lock:
            return self._by_agent.get(agent, Usage())

    @property
    def total(self) -> Usage:
        with self._lock:
            return self._total


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


@dataclass(frozen=True)
class _Recorded:
    step: int                         # 1-based, in the agent's own order
    request: list[dict[str, str]]
    reply: str
    usage: Usage
    model: str


class ReplayModel:
    """Answers every call from a recorded run's transcripts, in each agent's own order.

    The recording is the step records of the run's notes (`messages` ending in the answer);
    a step that needed a re-ask holds several answers. A request that differs from the
    recorded one ends the replay: the run being replayed no longer asks what was asked.
    """

    def __init__(self, run: str, steps: Mapping[str, Sequence[Mapping[str, Any]]],
                 ledger: TokenLedger) -> None:
        self.name = f"replay:{run}"
        self.run = run
        self.ledger = ledger
        self._lock = threading.Lock()
        self._queues = {agent: deque(_exchanges(records)) for agent, records in steps.items()}

    def complete(self, messages: list[dict[str, str]], *, agent: str) -> Reply:
        self.ledger.check(agent)
        with self._lock:
            queue = self._queues.get(agent)
            recorded = queue.popleft() if queue else None
        if recorded is None:
            raise ModelError(f"replay of run {self.run}: agent {agent} asks for more answers "
                             "than the recording holds")
        if [dict(m) for m in messages] != recorded.request:
            raise ModelError(f"replay of run {self.run}: agent {agent}, step {recorded.step}, "
                             "asks with a prompt that differs from the recording")
        self.ledger.record(agent, recorded.usage)
        return Reply(text=recorded.reply, usage=recorded.usage, model=recorded.model)


def _exchanges(records: Sequence[Mapping[str, Any]]) -> list[_Recorded]:
    """Every (request, answer) pair of an agent's steps; a step's usage goes with its last
    answer."""
    exchanges = []
    for number, record in enumerate(records, start=1):
        messages = [dict(m) for m in record["messages"]]
        answers = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        spent = Usage.from_record(record.get("usage") or {})
        for i in answers:
            usage = spent if i == answers[-1] else Usage()
            exchanges.append(_Recorded(number, messages[:i], messages[i]["content"], usage,
                                       str(record.get("model") or "replay")))
    return exchanges


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
    ) -> None:
        self.name = model
        self.base_url = base_url
        self.ledger = ledger
        self._api_key = api_key
        self._max_attempts = max(1, max_attempts)
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._temperature = temperature
        # Local servers need no key, but the client insists on one. max_retries=0: the retry
        # policy lives here, where it can count attempts and explain the final failure.
        self._client = openai.OpenAI(
            api_key=api_key or "unused", base_url=base_url, max_retries=0, timeout=timeout_s
        )
        self._slots = threading.BoundedSemaphore(max(1, max_concurrency))

    def complete(self, messages: list[dict[str, str]], *, agent: str) -> Reply:
        self.ledger.check(agent)
        completion = self._create(messages)
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
            usage = Usage(served_usage.prompt_tokens or 0, served_usage.completion_tokens or 0)
        else:
            prompt = "".join(str(m.get("content") or "") for m in messages)
            usage = Usage(_estimate_tokens(prompt), _estimate_tokens(text), estimated=True)
        # Tokens were spent even when the answer is useless, so record before judging it.
        self.ledger.record(agent, usage)
        if not text.strip():
            raise ModelError("the model returned an empty answer")
        return Reply(text=text, usage=usage, model=model)

    def _create(self, messages: list[dict[str, str]]) -> Any:
        """One completion, retrying rate limits, server errors, timeouts and lost connections."""
        options: dict[str, Any] = {"model": self.name, "messages": messages}
        if self._temperature is not None:
            options["temperature"] = self._temperature
        failure: openai.APIError | None = None
        for attempt in range(self._max_attempts):
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
                failure = exc
                # A refused connection means nothing listens there; one retry covers a dropped
                # connection, and more would only delay the answer by seconds.
                if (attempt >= CONNECTION_ATTEMPTS - 1
                        and not isinstance(exc, openai.APITimeoutError)):
                    break
            except json.JSONDecodeError:
                raise ModelError(self._not_a_completion()) from None
            if attempt + 1 < self._max_attempts:
                time.sleep(self._pause_s(attempt, retry_after))
        assert failure is not None  # max_attempts >= 1, so the loop failed at least once
        # Raised outside any `except` so no client exception, which may quote the key, rides along.
        raise ModelError(self._explain(failure))

    def _pause_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_WAIT_S)
        # Jitter spreads out parallel agents that were all rate-limited at the same moment.
        return min(self._backoff_s * 2**attempt * (1 + random.random() / 4), MAX_WAIT_S)

    def _not_a_completion(self) -> str:
        return f"the model endpoint {self.base_url} did not answer with a chat completion"

    def _explain(self, failure: openai.APIError) -> str:
        if isinstance(failure, openai.APIStatusError) and not _retryable(failure.status_code):
            return self._refusal(failure)
        return self._gave_up(failure)

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

    def _gave_up(self, exc: openai.APIError) -> str:
        attempts = f"{self._max_attempts} attempt{'s' if self._max_attempts != 1 else ''}"
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
