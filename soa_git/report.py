"""Renders a run: the agent tree as text lines, the summary, and the same as JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Iterable

from .organizer import AgentView, RunSummary


def _depth(path: str) -> int:
    return path.count(".")


def _ordered(views: Iterable[AgentView]) -> list[AgentView]:
    """Depth-first order from dotted paths: a parent before its children, siblings by name."""
    return sorted(views, key=lambda v: v.path.split("."))


def tree_lines(views: Iterable[AgentView]) -> list[str]:
    ordered = _ordered(views)
    width = max((2 * _depth(v.path) + len(v.function) for v in ordered), default=0)
    lines = []
    for view in ordered:
        name = "  " * _depth(view.path) + view.function
        rounds = f"  {view.rounds} round{'s' if view.rounds != 1 else ''}" if view.rounds else ""
        lines.append(f"{name:<{width}}  {view.role:<6}  {view.state:<9}  {view.tests}{rounds}")
    return lines


def event_line(view: AgentView) -> str:
    """One plain line per state change, for logs and pipes."""
    tests = f" ({view.tests})" if view.state in ("passed", "failed", "testing") else ""
    return f"{view.path} [{view.role}] {view.state}{tests}"


def summary_lines(summary: RunSummary) -> list[str]:
    lines = [f"run {summary.run}: {summary.state}: {summary.message}", ""]
    lines += tree_lines(summary.agents)
    per_agent = summary.lines / max(len(summary.agents), 1)
    estimated = " (estimated)" if summary.usage.estimated else ""
    lines += [
        "",
        f"agents: {len(summary.agents)}, depth: {summary.depth}",
        f"lines of code: {summary.lines} in total, {per_agent:.1f} per agent",
        f"tests passed: {summary.tests_passed}",
        f"tokens: {summary.usage.total:,} ({summary.usage.prompt_tokens:,} prompt, "
        f"{summary.usage.completion_tokens:,} completion){estimated}",
        f"wall time: {summary.seconds:.1f} s",
        f"review: git log --graph {summary.branch}",
    ]
    return lines


def summary_json(summary: RunSummary) -> dict:
    data = asdict(summary)
    data["usage"]["total_tokens"] = summary.usage.total
    data["agents"] = [asdict(v) for v in _ordered(summary.agents)]
    data["seconds"] = round(summary.seconds, 3)
    return data
