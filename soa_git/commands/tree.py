"""`soa-git tree [RUN]`: one run's agent hierarchy (the newest run by default)."""

from __future__ import annotations

from pathlib import Path

from .. import history
from ..gitrepo import GitRepo


def tree(cwd: Path, run: str | None) -> history.RunRecord:
    repo = GitRepo.open(cwd)
    return history.load_run(repo, run) if run else history.newest_run(repo)
