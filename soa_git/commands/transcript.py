"""`soa-git transcript AGENT`: the exact model messages of each of an agent's steps."""

from __future__ import annotations

from pathlib import Path

from .. import history
from ..gitrepo import GitRepo


def transcript(cwd: Path, agent: str) -> tuple[history.RunRecord, history.AgentRecord, list[dict]]:
    run, found = history.find_agent(GitRepo.open(cwd), agent)
    return run, found, history.transcript(found)
