"""`soa-git list`: the runs in this repository, newest first."""

from __future__ import annotations

from pathlib import Path

from .. import history
from ..gitrepo import GitRepo


def list_runs(cwd: Path) -> list[history.RunRecord]:
    return history.list_runs(GitRepo.open(cwd))
