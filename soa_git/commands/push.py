"""`soa-git push RUN [REMOTE]`: publish a run's branches and the transcripts (notes) so that a
reviewer can fetch them with the refspecs `soa-git report` prints.

Branches are pushed without force: an agent's branch only ever moves forward, so a rejection
means the remote has commits this repository does not, and nothing is overwritten. The notes
ref is shared by every run; when the remote's has moved on (another machine pushed its runs),
it is fetched and merged into ours first (`cat_sort_uniq`: each record is one JSON line), then
pushed, so neither side loses a transcript. A push that loses a race is tried again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import history, runformat
from ..errors import RepositoryError
from ..gitrepo import NOTES_REF, GitRepo

_ATTEMPTS = 3
_OUTCOME = {"*": "new", " ": "updated", "=": "up to date", "+": "forced", "-": "deleted",
            "!": "rejected"}


@dataclass(frozen=True)
class Pushed:
    run: str
    remote: str
    url: str                                # without any credentials in it
    refs: tuple[tuple[str, str], ...]       # (remote ref, new | updated | up to date)
    notes_merged: bool                      # the remote's notes were merged into ours first
    fetch: tuple[str, str]                  # the refspecs a reviewer fetches


def push(cwd: Path, run: str, remote: str = "origin") -> Pushed:
    repo = GitRepo.open(cwd)
    url = repo.remote_url(remote)
    if url is None:
        raise RepositoryError(f"there is no remote named {remote!r} here; add one with "
                              f"`git remote add {remote} URL`")
    record = history.load_run(repo, run)
    if record.state == "running":
        raise RepositoryError(f"run {run} is still running ({record.message}); push it when it "
                              "has ended")
    specs = runformat.push_refspecs(record.run)
    has_notes = repo.ref_sha(NOTES_REF) is not None
    if has_notes:
        specs.append(f"{NOTES_REF}:{NOTES_REF}")
    merged = False
    for _ in range(_ATTEMPTS):
        if has_notes:
            merged |= _take_remote_notes(repo, remote)
        outcomes = repo.push(remote, specs)
        rejected = [(ref, why) for flag, ref, why in outcomes if flag == "!"]
        if not rejected:
            refs = tuple((ref, _OUTCOME.get(flag, why)) for flag, ref, why in outcomes)
            return Pushed(run=record.run, remote=remote, url=_public(url), refs=refs,
                          notes_merged=merged, fetch=runformat.fetch_refspecs(record.run))
        branches = [(ref, why) for ref, why in rejected if ref != NOTES_REF]
        if branches:
            ref, why = branches[0]
            raise RepositoryError(
                f"{remote} refused {ref.removeprefix('refs/heads/')} ({why}): the remote has "
                "commits on it that this repository does not; fetch them and look before pushing")
        # Only the notes: the remote's moved between our fetch and our push. Merge and retry.
    raise RepositoryError(f"{remote} kept refusing {NOTES_REF}: others keep pushing notes; "
                          "try again")


def _take_remote_notes(repo: GitRepo, remote: str) -> bool:
    """Merge the remote's notes into ours when ours do not already contain them."""
    theirs = repo.remote_ref_sha(remote, NOTES_REF)
    ours = repo.ref_sha(NOTES_REF)
    if theirs is None or theirs == ours:
        return False
    scratch = repo.scratch_notes_ref("fetched")
    try:
        repo.fetch_ref(remote, NOTES_REF, scratch)
        if ours is not None and repo.is_ancestor(scratch, NOTES_REF):
            return False
        repo.merge_notes(scratch)
        return True
    finally:
        repo.delete_ref(scratch)


def _public(url: str) -> str:
    """The URL without a user or token (https://x-access-token:SECRET@github.com/...)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host_part, slash, path = rest.partition("/")
    return f"{scheme}://{host_part.rpartition('@')[2]}{slash}{path}"
