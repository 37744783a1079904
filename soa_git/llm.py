"""The model seam: what agents ask a model through (`ChatModel`), token accounting per agent
with budgets, and replay of a recorded run.

Agents depend only on the `ChatModel` protocol, so tests and replays can swap the model. The
client of a real endpoint is `soa_git.openai_chat`, kept apart so that commands which never call
a model do not import the `openai` package (most of soa-git's start-up time).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from soa_git.errors import BudgetExhausted, ModelError

__all__ = ["ChatModel", "Metered", "Notice", "ReplayModel", "Reply", "TokenLedger", "Usage"]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False  # True when the server sent no `usage` and we counted characters
    # Of the prompt tokens, those the server read from its prompt cache instead of computing
    # (OpenAI's and llama.cpp's `prompt_tokens_details.cached_tokens`; 0 when not reported).
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.estimated or other.estimated,
            self.cached_tokens + other.cached_tokens,
        )

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def record(self) -> dict[str, Any]:
        """The form a transcript note keeps; `from_record` reads it back."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "estimated": self.estimated,
                **({"cached_tokens": self.cached_tokens} if self.cached_tokens else {})}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Usage:
        return cls(int(record.get("prompt_tokens", 0)), int(record.get("completion_tokens", 0)),
                   bool(record.get("estimated")), int(record.get("cached_tokens", 0)))


@dataclass(frozen=True)
class Reply:
    text: str
    usage: Usage
    model: str


@dataclass(frozen=True)
class Notice:
    """Something an agent's model call is going through that a user waiting should see, e.g.
    "endpoint answered 500 Internal Server Error, retry 2/5 in 4 s". Library code never prints:
    the command's event callback receives it."""

    agent: str
    text: str


class ChatModel(Protocol):
    name: str

    def complete(self, messages: list[dict[str, str]], *, agent: str,
                 max_tokens: int | None = None) -> Reply: ...


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


class Metered:
    """A model as one run sees it: every answer is charged to the run's own ledger too, and the
    run's budgets are checked before each call, while several runs share the model itself (one
    endpoint client, one served local model)."""

    def __init__(self, model: ChatModel, ledger: TokenLedger) -> None:
        self.name = model.name
        self.model = model
        self.ledger = ledger

    def complete(self, messages: list[dict[str, str]], *, agent: str,
                 max_tokens: int | None = None) -> Reply:
        self.ledger.check(agent)
        reply = self.model.complete(messages, agent=agent, max_tokens=max_tokens)
        self.ledger.record(agent, reply.usage)
        return reply


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

    def complete(self, messages: list[dict[str, str]], *, agent: str,
                 max_tokens: int | None = None) -> Reply:
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
