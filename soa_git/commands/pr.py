"""`soa-git pr RUN`: open (or update) the pull request of a run's root branch against the
branch the run started from, with the run's report as its body, through GitHub's REST API.

The token comes from GITHUB_TOKEN, the API from GITHUB_API_URL (GitHub Actions sets it; GitHub
Enterprise has its own); the repository from `--repo OWNER/NAME` or the remote's URL. The run's
branches must already be on GitHub: `soa-git push RUN` first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

from ..errors import ConfigError, RepositoryError
from ..github import GitHub, PullRequest, parse_repo, repo_from_url
from ..gitrepo import GitRepo
from .report import RunReport


def pr(report: RunReport, *, cwd: Path, body: str | Callable[[RunReport], str],
       repo: str | None = None, base: str | None = None,
       environ: Mapping[str, str] | None = None) -> PullRequest:
    environ = os.environ if environ is None else environ
    run = report.run
    if run.state in ("running", "interrupted"):
        raise RepositoryError(f"run {run.run} is {run.state}; open its pull request when it has "
                              "ended")
    git_repo = GitRepo.open(cwd)
    owner, name = parse_repo(repo) if repo else _repo_of_remote(git_repo, report.remote)
    base = base or git_repo.head_branch()
    if not base:
        raise ConfigError("HEAD is detached, so the branch to merge into is not known; "
                          "give it with --base BRANCH")
    github = GitHub.from_environ(environ, "write pull requests")
    text = body(report) if callable(body) else body
    return github.upsert_pull(owner, name,
                              title=f"soa-git: {run.target or run.root} (run {run.run})",
                              branch=run.branch, base=base, body=text)


def _repo_of_remote(repo: GitRepo, remote: str) -> tuple[str, str]:
    url = repo.remote_url(remote)
    if url is None:
        raise ConfigError(f"there is no remote named {remote!r} here; give the GitHub repository "
                          "with --repo OWNER/NAME")
    found = repo_from_url(url)
    if found is None:
        raise ConfigError(f"remote {remote!r} is not a GitHub URL (https://HOST/OWNER/NAME or "
                          "git@HOST:OWNER/NAME); give the repository with --repo OWNER/NAME")
    return found
