"""`soa-git report RUN`: everything a reviewer needs about one run, read back from git alone:
the run, each agent's attempts, the diff of the result against where the run started, and the
commands that fetch the run into a clone. `report.py` (the package's) renders it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import github, history, runformat
from ..gitrepo import GitRepo


@dataclass(frozen=True)
class RunReport:
    run: history.RunRecord
    logs: tuple[history.AgentLog, ...]      # one per agent, in the run's order
    diff_stat: str                          # `git diff --stat base root-branch`
    remote: str                             # the remote the fetch commands name
    web: str | None = None                  # https://github.com/OWNER/NAME when it is on GitHub

    @property
    def fetch_refspecs(self) -> tuple[str, str]:
        return runformat.fetch_refspecs(self.run.run)


def build(cwd: Path, run: str | None, *, remote: str = "origin") -> RunReport:
    repo = GitRepo.open(cwd)
    record = history.load_run(repo, run) if run else history.newest_run(repo)
    logs = tuple(history.AgentLog(run=record, agent=agent,
                                  attempts=tuple(history.attempts(repo, agent)))
                 for agent in record.agents)
    root = record.agent(record.root)
    tip = root.tip if root else record.base
    stat = repo.diff_stat(record.base, tip) if record.base and tip else ""
    url = repo.remote_url(remote) or ""
    found = github.repo_from_url(url) if "github.com" in url else None
    web = f"https://github.com/{found[0]}/{found[1]}" if found else None
    return RunReport(run=record, logs=logs, diff_stat=stat, remote=remote, web=web)
