"""What the outside world sees of a run: each agent, live and at the end, and the run's summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from . import failures, pycode
from .llm import Usage
from .node import Node
from .targets import Target


@dataclass(frozen=True)
class AgentView:
    """What the outside world sees of one agent, live and at the end."""

    run: str
    path: str
    role: str
    function: str
    file: str
    test_file: str
    branch: str
    state: str
    tests: str
    passed: int
    rounds: int
    lines: int
    tokens: int
    error: str | None
    why: str | None = None      # a failed agent's error, or its tests' first failure
    seconds: float = 0.0        # since it started working (until it finished)


@dataclass(frozen=True)
class RunSummary:
    run: str
    target: Target
    branch: str
    base: str
    state: str              # done | failed | stopped
    message: str
    agents: tuple[AgentView, ...]
    depth: int              # levels in the tree, as max_depth counts them
    lines: int
    tests_passed: int
    usage: Usage
    seconds: float


def view(run: str, node: Node, own_code: str, tokens: int) -> AgentView:
    """`own_code` is the agent's code as it stands ("" before its first answer)."""
    progress = node.progress
    return AgentView(run=run, path=node.path, role=node.role, function=node.name,
                     file=node.files.module, test_file=node.files.tests, branch=node.branch.name,
                     state=progress.state, tests=progress.result.summary(),
                     passed=progress.result.passed, rounds=progress.rounds,
                     lines=pycode.code_lines(own_code), tokens=tokens, error=progress.error,
                     why=progress.why(), seconds=progress.seconds())


def summarize(run: str, target: Target, base: str, root: Node, views: Sequence[AgentView],
              depth: int, halt: str | None, usage: Usage, seconds: float) -> RunSummary:
    """How the run ended, from its root: done when the root's tests pass; `halt` is why the
    whole run stopped early, if it did."""
    result = root.progress.result
    if halt:
        state, message = "stopped", f"the run stopped early: {halt}"
    elif result.ok:
        state, message = "done", f"all tests pass; review the branch {root.branch.name}"
    elif root.progress.error:
        state, message = "failed", root.progress.error
    else:
        why = failures.reason(result)
        state, message = "failed", (f"{root.name} still fails its tests "
                                    f"({result.summary()})" + (f": {why}" if why else ""))
    return RunSummary(run=run, target=target, branch=root.branch.name, base=base, state=state,
                      message=message, agents=tuple(views), depth=depth,
                      lines=sum(v.lines for v in views), tests_passed=sum(v.passed for v in views),
                      usage=usage, seconds=seconds)
