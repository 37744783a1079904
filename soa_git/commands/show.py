"""`soa-git show RUN|AGENT`: a run's summary and tree, or an agent's attempts and current code."""

from __future__ import annotations

from pathlib import Path

from .. import history, runformat
from ..gitrepo import GitRepo


def show(cwd: Path, spec: str) -> history.RunRecord | history.AgentLog:
    repo = GitRepo.open(cwd)
    # Something shaped like a run id is a run, so a missing one is "no such run", not "no agent".
    if spec in history.run_ids(repo) or runformat.is_run_id(spec):
        return history.load_run(repo, spec)
    return history.agent_log(repo, spec, with_code=True)
