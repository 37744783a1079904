"""What runs leave behind: which runs left anything, and which notes only their branches reach
(`soa-git clean`).
"""

from __future__ import annotations

import os
from typing import Iterable

from .. import runformat
from ..errors import RepositoryError
from ..runformat import NOTES_REF
from .core import backoff, reason
from .refs import NOTE_ATTEMPTS, Refs, notes_lock


class Cleanup(Refs):
    """Finding and removing what runs left."""

    def runs_with_traces(self) -> list[str]:
        """Every run that left anything in this repository: a branch, a workspace, a lock file."""
        runs = {name.split("/")[1] for name in self.list_branches(runformat.BRANCH_FOLDER)
                if name.count("/") >= 2}
        if self._workspaces_root.is_dir():
            runs |= {p.name for p in self._workspaces_root.iterdir()}
        locks = self._soa_dir / "locks"
        if locks.is_dir():
            runs |= {p.name.split(".lock")[0] for p in locks.iterdir() if ".lock" in p.name}
        return sorted(r for r in runs if r)

    def unshared_notes(self, branches: Iterable[str], *, going: Iterable[str] = (),
                       orphans: bool = False) -> list[str]:
        """Commits with a note under NOTES_REF that `branches` reach and nothing else does.

        Nothing else: no other branch, tag, remote-tracking ref or stash, and no HEAD of a
        working tree. Branches in `going` (about to be removed as
        well) do not count as something else. `orphans` adds the noted commits that nothing
        else reaches at all, or that no longer exist. Notes of a run merged into your branch
        are therefore kept: they are the transcript of your history.
        """
        noted = self._noted_commits()
        if not noted:
            return []
        branches = list(branches)
        keep = self._kept_commits({f"refs/heads/{b}" for b in (*branches, *going)})
        positives = [self.branch_sha(b) for b in branches]
        candidates = set(noted)
        missing: set[str] = set()
        if orphans:
            kinds = self._object_kinds(noted)
            missing = {sha for sha, kind in kinds.items() if kind == "missing"}
            positives += [sha for sha, kind in kinds.items() if kind == "commit"]
        positives = [p for p in dict.fromkeys(positives) if p]
        if not positives:
            return sorted(missing)
        lines = [*positives, *(f"^{sha}" for sha in keep)]
        r = self._git("rev-list", "--stdin", stdin="".join(f"{line}\n" for line in lines).encode(),
                      check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot tell which commits only soa-git's branches reach: "
                                  f"{reason(r.err)}")
        return sorted((set(r.text.split()) & candidates) | missing)

    def remove_notes(self, shas: Iterable[str]) -> None:
        """Drop the notes of these commits from NOTES_REF (compare-and-swap, like add_note);
        the ref itself goes when no note is left."""
        shas = sorted(set(shas))
        if not shas:
            return
        with notes_lock:
            for attempt in range(NOTE_ATTEMPTS):
                if not self._git("show-ref", "--verify", "-q", NOTES_REF, check=False).status == 0:
                    return
                if self._swap_notes("remove", "--ignore-missing", "--stdin", reflog="notes: remove",
                                    stdin="".join(f"{s}\n" for s in shas).encode()):
                    return
                backoff(attempt)
        raise RepositoryError(f"could not remove notes: other processes kept updating {NOTES_REF}")

    def _noted_commits(self) -> list[str]:
        if not self._git("show-ref", "--verify", "-q", NOTES_REF, check=False).status == 0:
            return []
        r = self._git("notes", f"--ref={NOTES_REF}", "list")
        return [line.split()[1] for line in r.text.splitlines() if len(line.split()) == 2]

    def _object_kinds(self, shas: Iterable[str]) -> dict[str, str]:
        """sha -> object type, or "missing"."""
        shas = list(shas)
        out = self._git("cat-file", "--batch-check=%(objectname) %(objecttype)",
                        stdin="".join(f"{s}\n" for s in shas).encode()).text
        kinds = {}
        for sha, line in zip(shas, out.splitlines()):
            parts = line.split()
            kinds[sha] = parts[1] if len(parts) == 2 and parts[1] != "missing" else "missing"
        return kinds

    def _kept_commits(self, leaving: set[str]) -> list[str]:
        """The commits that every ref but `leaving` (and notes refs) points at, and the HEAD of
        every working tree."""
        r = self._git("for-each-ref", "--format=%(refname) %(objecttype) %(objectname) "
                      "%(*objecttype) %(*objectname)")
        kept = []
        for line in r.text.splitlines():
            name, kind, sha, *peeled = line.split()
            if name in leaving or name.startswith("refs/notes/"):
                continue
            if kind == "commit":
                kept.append(sha)
            elif peeled and peeled[0] == "commit":
                kept.append(peeled[1])
        out = self._git("worktree", "list", "--porcelain", "-z").out
        for record in os.fsdecode(out).split("\0\0"):
            attrs = dict((line.split(" ", 1) + [""])[:2] for line in record.split("\0") if line)
            if "worktree" in attrs and attrs.get("HEAD"):
                kept.append(attrs["HEAD"])
        return list(dict.fromkeys(kept))
