"""Remotes: publishing a run's branches and merging the notes a remote already has.

Nothing is forced, and a remote that wants a password fails with a sentence.
"""

from __future__ import annotations

import os
from typing import Iterable

from ..errors import RepositoryError
from ..runformat import NOTES_REF
from .core import backoff, checked_rev, reason
from .refs import NOTE_ATTEMPTS, Refs, notes_lock


class Remotes(Refs):
    """push, fetch and ls-remote."""

    # A remote that wants a password fails with a sentence instead of waiting for a terminal.
    _NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}

    def remote_url(self, remote: str) -> str | None:
        """The URL `git push REMOTE` pushes to (its pushurl if set); None if there is no such
        remote."""
        if not remote or remote.startswith("-"):
            raise RepositoryError(f"{remote!r} is not a valid remote name")
        r = self._git("remote", "get-url", "--push", remote, check=False)
        return r.text if r.status == 0 and r.text else None

    def remote_ref_sha(self, remote: str, ref: str) -> str | None:
        """The sha `ref` has on `remote` (one `ls-remote`), None if the remote has no such ref."""
        r = self._git("ls-remote", "--refs", checked_rev(remote), ref, env=self._NO_PROMPT,
                      check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot read {ref} from {remote}: {reason(r.err)}")
        for line in r.text.splitlines():
            sha, _, name = line.partition("\t")
            if name == ref:
                return sha
        return None

    def fetch_ref(self, remote: str, ref: str, into: str) -> str:
        """Fetch `ref` of `remote` into the local ref `into` (forced); its sha."""
        r = self._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", checked_rev(remote),
                      f"+{ref}:{into}", env=self._NO_PROMPT, check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot fetch {ref} from {remote}: {reason(r.err)}")
        return self._git("rev-parse", "--verify", "-q", into).text

    def merge_notes(self, other: str) -> None:
        """Merge the notes ref `other` into NOTES_REF (a fast-forward when it can be). Two
        notes on one commit are concatenated, one line each, sorted, duplicates dropped
        (`cat_sort_uniq`): every record is one JSON line, so none is lost or torn."""
        self._require_commit(other)
        with notes_lock:
            for attempt in range(NOTE_ATTEMPTS):
                if self._swap_notes("merge", "-q", "--strategy=cat_sort_uniq", other,
                                    reflog=f"notes: merge {other}"):
                    return
                backoff(attempt)
        raise RepositoryError(f"could not merge notes into {NOTES_REF}: other processes kept "
                              "updating it")

    def push(self, remote: str, refspecs: Iterable[str]) -> list[tuple[str, str, str]]:
        """`git push --porcelain REMOTE REFSPECS`, never forced, without the user's hooks:
        (flag, remote ref, git's summary) per ref, where the flag is `*` new, ` ` fast-forward,
        `=` up to date, `!` rejected. A push git could not even attempt raises."""
        refspecs = list(refspecs)
        if any(not spec or spec.startswith(("-", "+")) for spec in refspecs):
            raise ValueError(f"refspecs {refspecs!r} must not force or look like options")
        r = self._git("push", "--porcelain", checked_rev(remote), *refspecs, env=self._NO_PROMPT,
                      check=False)
        outcomes = []
        for line in os.fsdecode(r.out).splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and len(parts[0]) == 1 and ":" in parts[1]:
                outcomes.append((parts[0], parts[1].rpartition(":")[2], parts[2]))
        if r.status != 0 and not any(flag == "!" for flag, _, _ in outcomes):
            raise RepositoryError(f"cannot push to {remote}: {reason(r.err)}")
        return outcomes
