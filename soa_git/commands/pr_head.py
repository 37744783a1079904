"""`soa-git pr-head NUMBER --at TIME`: the commit a `/soa run` comment reviewed.

The workflow (hooks/github/soa-git.yml) runs the agents on the pull request's head as it was when
the comment was written, and refuses if it moved since: a push after the review must not run
unreviewed code with the model's key. A commit's own dates are the pusher's to choose, so they
prove nothing; GitHub's record of the head branch's pushes does (the repository activity API:
each push, force push, creation or deletion with GitHub's timestamp and the commit it left).
The head passes only if the branch's newest change came before the comment's second and left
it at today's head; anything else (a change since, a record that lags behind the head, no
record) is refused.

The token comes from GITHUB_TOKEN, the API from GITHUB_API_URL, as for `soa-git pr`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from ..errors import ConfigError
from ..github import GitHub, GitHubError, parse_repo


@dataclass(frozen=True)
class ReviewedHead:
    number: int
    sha: str
    repo: str       # the head's repository, OWNER/NAME
    branch: str
    fork: bool      # the head lives in another repository than the pull request


def pr_head(repo: str, number: int, at: str, *,
            environ: Mapping[str, str] | None = None) -> ReviewedHead:
    environ = os.environ if environ is None else environ
    owner, name = parse_repo(repo)
    commented = _moment(at, "--at")
    github = GitHub.from_environ(environ, "read the pull request")
    pull = github.pull(owner, name, number)
    head = pull.get("head") or {}
    sha, branch = str(head.get("sha") or ""), str(head.get("ref") or "")
    head_repo = str((head.get("repo") or {}).get("full_name") or "")
    if not (sha and branch and head_repo):
        raise GitHubError(f"pull request #{number} has no head branch any more (a deleted "
                          "fork?); nothing to run")
    last = github.last_change(*parse_repo(head_repo), branch)
    if last is None:
        raise GitHubError(f"GitHub's activity of {head_repo}:{branch} shows no push, so the "
                          "reviewed head is not known; comment again")
    when = _moment(str(last.get("timestamp") or ""), "GitHub's activity timestamp")
    # Times of the comment are whole seconds: a change within its second may come after it.
    if when.replace(microsecond=0) >= commented:
        raise GitHubError(
            f"the head of pull request #{number} moved after the comment (a "
            f"{last.get('activity_type') or 'change'} to {head_repo}:{branch} at "
            f"{last.get('timestamp')}; the comment is of {at}); review it and comment again")
    if last.get("after") != sha:
        raise GitHubError(
            f"the head of pull request #{number} is {sha[:12]}, but GitHub's activity says "
            f"{head_repo}:{branch} was last left at {str(last.get('after'))[:12]}; comment "
            "again")
    base_repo = str(((pull.get("base") or {}).get("repo") or {}).get("full_name") or "")
    return ReviewedHead(number=number, sha=sha, repo=head_repo, branch=branch,
                        fork=head_repo.lower() != base_repo.lower())


def _moment(text: str, what: str) -> datetime:
    """An ISO 8601 time as GitHub writes it (`2026-12-02T14:00:00Z`), in UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a time like 2026-12-02T14:00:00Z") from None
    if when.tzinfo is None:
        raise ConfigError(f"{what} {text!r} has no time zone (GitHub writes ...Z)")
    return when.astimezone(timezone.utc)
