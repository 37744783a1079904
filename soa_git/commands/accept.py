"""`soa-git accept`: merge a finished run's result into the user's current branch.

The one command that changes the user's branch, index and working tree. Every refusal comes
before git touches any of them; a merge that git or a user's hook refuses is aborted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .. import history
from ..errors import RepositoryError
from ..gitrepo import GitRepo

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Accepted:
    run: str
    target: str          # file.py::function
    branch: str          # the run's root branch that was merged
    into: str            # the user's branch that now holds it
    commit: str          # the new commit on `into`
    squash: bool
    files: tuple[str, ...]   # paths the commit changed


def check_run_id(run: str) -> str:
    """A run id names refs and files, so it must be one safe path component."""
    if (not _RUN_ID.fullmatch(run) or "__" in run or ".." in run
            or run.endswith((".", ".lock"))):
        raise RepositoryError(f"{run!r} is not a run id (they look like 20261126-101357-978d)")
    return run


def accept(run: str, *, cwd: Path, squash: bool = False) -> Accepted:
    repo = GitRepo.open(cwd)
    record = history.load_run(repo, check_run_id(run))
    if record.state == "running":
        raise RepositoryError(f"run {run} has not finished ({record.message}); accept it when "
                              "it is done")
    if record.state == "interrupted":
        raise RepositoryError(f"run {run} did not finish: its process ended before recording "
                              f"an end, so there is no result to accept (`soa-git resume {run}` "
                              "continues it)")
    if record.state == "stopped":
        raise RepositoryError(f"run {run} ended stopped: {record.message}; accepting it would "
                              f"merge unfinished code (`soa-git resume {run}` continues it)")
    if record.state != "done":
        raise RepositoryError(f"run {run} ended {record.state}: {record.message}; accepting it "
                              "would merge failing code")
    target = record.target or record.root
    into = repo.head_branch()
    sha = repo.merge_into_head(record.branch, f"soa-git: accept run {run} ({target})",
                               squash=squash)
    return Accepted(run=run, target=target, branch=record.branch, into=into or "", commit=sha,
                    squash=squash, files=tuple(repo.changed_paths(f"{sha}^1", sha)))
