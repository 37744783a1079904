"""`soa-git log AGENT`: an agent's attempts in order, each with its diff, tests and reflection."""

from __future__ import annotations

from pathlib import Path

from .. import history
from ..gitrepo import GitRepo


def log(cwd: Path, agent: str) -> history.AgentLog:
    return history.agent_log(GitRepo.open(cwd), agent)
