"""Refs and their transactions: every branch move and every note goes through here.

An agent's commit, its note and its branch move are one `update-ref --stdin` transaction, each
ref a compare-and-swap, so a lost race is an error (`BranchMoved`) or a retry, never a lost
commit or a commit without its note. The notes ref, shared by all agents, is written under a
module-level lock; threads that arrive while another writes are served together.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from ..errors import RepositoryError
from ..runformat import NOTES_REF
from . import metrics
from .core import SOA_GIT, Core, Location, backoff, checked_rev, reason
from .objects import FILE_MODE, Entry


SCRATCH_NOTES = "refs/notes/soa-pending/"


# `git notes` run as soa-git (removing and merging notes).
_SOA_NOTES_ENV = {"GIT_AUTHOR_NAME": "soa-git", "GIT_AUTHOR_EMAIL": "soa-git@localhost",
                  "GIT_COMMITTER_NAME": "soa-git", "GIT_COMMITTER_EMAIL": "soa-git@localhost"}


# update-ref's compare-and-swap lost: the ref is not (or no longer) at the expected value.
_CAS_LOST = re.compile(r"but expected|reference already exists|unable to resolve reference")


NOTE_ATTEMPTS = 20


# Serializes notes writes among the threads of this process.
notes_lock = threading.Lock()


@dataclass
class _RefWrite:
    """One thread's note and/or ref move, waiting for the notes lock (see GitRepo._write)."""

    target: str | None                      # the commit whose note is set
    compose: Callable[[str], str] | None    # its note so far -> its new note
    also: tuple[str, str, str | None] | None  # (ref, new, old or None to create)
    what: str
    reflog: str
    done: bool = False
    error: Exception | None = None


class RefRefused(RepositoryError):
    """git refused to update `ref` (an invalid name, a locked or unwritable ref)."""

    def __init__(self, message: str, ref: str = "") -> None:
        super().__init__(message)
        self.ref = ref


class BranchMoved(RefRefused):
    """A branch moved between reading it and updating it (another thread or process won)."""


class Refs(Core):
    """Reading and moving refs; the notes under NOTES_REF."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        # Tips of the refs this object moved itself (its run's branches, the notes ref): a
        # run's branches are moved by nobody else while it holds the run's lock, and every
        # move is a compare-and-swap that drops a tip found stale.
        self._tips: dict[str, str] = {}
        self._tips_lock = threading.Lock()
        self._queue: list[_RefWrite] = []
        self._queue_lock = threading.Lock()

    def ref_sha(self, ref: str) -> str | None:
        """The sha a full ref name (refs/...) points at, None if it does not exist."""
        known = self._known_tip(ref)
        if known is not None:
            return known
        r = self._git("show-ref", "--verify", "-s", ref, check=False)
        return r.text if r.status == 0 and r.text else None

    def _known_tip(self, ref: str) -> str | None:
        """Where this object last moved `ref` itself, if it did."""
        with self._tips_lock:
            return self._tips.get(ref)

    def branch_sha(self, branch: str) -> str | None:
        return self.ref_sha(f"refs/heads/{branch}")

    def list_branches(self, prefix: str) -> dict[str, str]:
        """Branch name -> sha for every branch whose name starts with `prefix`."""
        # for-each-ref's `*` stops at `/`, but a pattern ending in `/` matches the whole folder.
        folder = prefix[:prefix.rfind("/") + 1]
        r = self._git("for-each-ref", "--format=%(objectname) %(refname)", f"refs/heads/{folder}")
        branches = {}
        for line in r.text.splitlines():
            sha, name = line.split(" ", 1)
            name = name.removeprefix("refs/heads/")
            if name.startswith(prefix):
                branches[name] = sha
        return branches

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self._git("merge-base", "--is-ancestor", checked_rev(ancestor),
                         checked_rev(descendant), check=False).status == 0

    @metrics.measured("append_note")
    def append_note(self, sha: str, line: str) -> None:
        """Add `line` as the last line of the note of commit `sha` (one compare-and-swap)."""
        self._write_note(self._require_commit(sha),
                         lambda earlier: f"{earlier.rstrip()}\n{line}" if earlier else line)

    def scratch_notes_ref(self, purpose: str) -> str:
        """A fresh scratch ref under refs/notes/soa-pending/ (`clean` removes leftovers)."""
        return f"{SCRATCH_NOTES}{purpose}-{uuid.uuid4().hex}"

    def delete_ref(self, ref: str) -> None:
        """Delete a scratch ref soa-git made (refs/notes/soa-pending/* only): its own, or one a
        killed process left behind. One that is already gone is fine."""
        if not ref.startswith(SCRATCH_NOTES):
            raise RepositoryError(f"{ref} is not one of soa-git's scratch notes refs")
        sha = self.ref_sha(ref)
        if sha:
            self._update_ref(ref, "", sha, what=ref, delete=True)

    def pending_note_refs(self) -> list[str]:
        """Scratch refs of note writes (refs/notes/soa-pending/*) a killed process left behind."""
        r = self._git("for-each-ref", "--format=%(refname)", SCRATCH_NOTES)
        return r.text.splitlines()

    def _update_ref(self, ref: str, new: str, old: str, *, what: str,
                    reflog: str = "soa-git", delete: bool = False) -> None:
        """Compare-and-swap `ref` from `old` to `new` (or delete it if it is still at `old`)."""
        self._move([(ref, "" if delete else new, old)], what=what, reflog=reflog)

    def _move(self, updates: list[tuple[str, str, str | None]], *, what: str,
              reflog: str, names: Mapping[str, str] | None = None) -> None:
        """One atomic transaction of compare-and-swaps (ref, new, old): all refs move or none.
        `new` "" deletes the ref; `old` None means the ref must not exist yet. `what` names
        the refs in errors, or `names[ref]` where given."""
        lines = []
        for ref, new, old in updates:
            if not new:
                lines.append(f"delete {ref} {old}")
            elif old is None:
                lines.append(f"create {ref} {new}")
            else:
                lines.append(f"update {ref} {new} {old}")
        r = self._git("update-ref", "-m", reflog, "--stdin",
                      stdin="".join(f"{line}\n" for line in lines).encode(), check=False,
                      retry=True)
        with self._tips_lock:
            for ref, new, _ in updates:
                if r.status == 0 and new:
                    self._tips[ref] = new
                else:
                    self._tips.pop(ref, None)
        if r.status == 0:
            return
        # git names the ref it could not update; in a transaction, which one matters.
        culprit = next((ref for ref, _, _ in updates if f"'{ref}'" in r.err), updates[-1][0])
        what = (names or {}).get(culprit, what)
        if "reference already exists" in r.err:
            raise BranchMoved(f"{what} already exists", ref=culprit)
        if _CAS_LOST.search(r.err):
            raise BranchMoved(f"{what} moved while soa-git was updating it; try again",
                              ref=culprit)
        raise RefRefused(f"cannot update {what}: {reason(r.err)}", ref=culprit)

    def _publish(self, ref: str, new: str, old: str | None, *, note: str | None, what: str,
                 reflog: str) -> None:
        """Move `ref` to the new commit `new`, with `note` on it in the same transaction."""
        self._write(_RefWrite(new if note is not None else None,
                              None if note is None else (lambda earlier: note),
                              (ref, new, old), what, reflog))

    def _write_note(self, target: str, compose: Callable[[str], str]) -> None:
        """Set the note of `target` to `compose(its note so far, or "")`."""
        self._write(_RefWrite(target, compose, None, NOTES_REF, "notes: add"))

    @metrics.measured("ref_writes")
    def _write(self, mine: _RefWrite) -> None:
        """Carry out `mine`: returns once its note and its ref moved; BranchMoved if its ref
        had moved.

        Notes and branch moves are written under the notes lock. Threads that arrive while
        another writes are served together: whoever takes the lock next writes every waiting
        note, and moves every waiting branch, in one transaction.
        """
        with self._queue_lock:
            self._queue.append(mine)
        with notes_lock:
            if not mine.done:
                with self._queue_lock:
                    waiting, self._queue = self._queue, []
                while waiting:
                    # A transaction moves each ref once; a second move of one waits its turn
                    # (and then finds the ref moved, as it would have without the batch).
                    batch: list[_RefWrite] = []
                    refs: set[str] = set()
                    for write in waiting:
                        if write.also is None:
                            batch.append(write)
                        elif write.also[0] not in refs:
                            batch.append(write)
                            refs.add(write.also[0])
                    self._write_batch(batch)
                    waiting = [w for w in waiting if not w.done]
        if mine.error is not None:
            raise mine.error

    def _write_batch(self, batch: list[_RefWrite]) -> None:
        """Every write of `batch` in one transaction; one whose branch moved fails alone, and
        another process moving NOTES_REF meanwhile costs a retry on its new tip."""
        try:
            for attempt in range(NOTE_ATTEMPTS):
                if not batch:
                    return
                moves = [w.also for w in batch if w.also]
                notes = [w for w in batch if w.compose]
                if notes:
                    old = self.ref_sha(NOTES_REF)
                    with metrics.inside("notes_commit"):
                        moves.insert(0, (NOTES_REF, self._notes_commit(old, notes), old))
                try:
                    self._move(moves, what=NOTES_REF,
                               names={w.also[0]: w.what for w in batch if w.also},
                               reflog=batch[0].reflog if len(batch) == 1
                               else f"soa-git: {len(batch)} steps")
                except (BranchMoved, RefRefused) as failed:
                    if failed.ref == NOTES_REF and isinstance(failed, BranchMoved):
                        backoff(attempt)
                        continue
                    # One writer's branch: that write fails, the others go again without it.
                    loser = next((w for w in batch if w.also and w.also[0] == failed.ref), None)
                    if loser is None:
                        raise
                    loser.error, loser.done = failed, True
                    batch = [w for w in batch if w is not loser]
                    continue
                for write in batch:
                    write.done = True
                return
            raise RepositoryError("could not write notes: other processes kept updating "
                                  f"{NOTES_REF}")
        except Exception as exc:
            for write in batch:
                if not write.done:
                    write.error, write.done = exc, True

    def _notes_commit(self, old: str | None, writes: list[_RefWrite]) -> str:
        """A commit of NOTES_REF after `old` with the notes of `writes` set, in their order."""
        tree = self._store.commit_tree(old) if old else None
        texts: dict[str, str] = {}
        for write in writes:
            assert write.target is not None and write.compose is not None
            found = self._find_note(tree, write.target)
            # A new note goes one folder down (git's own layout for many notes), so no note
            # costs a rewrite of a tree holding every other note.
            key = found[0] if found else f"{write.target[:2]}/{write.target[2:]}"
            if key not in texts:
                texts[key] = self._note_text(found[1]) if found else ""
            texts[key] = write.compose(texts[key])
        new_tree = self._store.edit(tree, {key: Entry(FILE_MODE,
                                                      self._store.write_blob(text.encode()))
                                           for key, text in texts.items()})
        return self._write_commit(new_tree, (old,) if old else (), "Notes added by soa-git\n",
                                  SOA_GIT)

    def _note_text(self, entry: Entry) -> str:
        return self._store.blob(entry.sha).decode("utf-8", errors="replace")

    def _find_note(self, tree: str | None, target: str) -> tuple[str, Entry] | None:
        """Where the note of `target` is in a notes tree, and its entry: at any fanout
        (`ab/cdef...`, `ab/cd/ef...`), as git reads them; None if it has none."""
        folder, rest = "", target
        while tree and rest:
            entries = self._store.tree(tree)
            entry = entries.get(rest)
            if entry is not None and not entry.is_tree:
                return folder + rest, entry
            sub = entries.get(rest[:2])
            if sub is None or not sub.is_tree:
                return None
            tree, folder, rest = sub.sha, f"{folder}{rest[:2]}/", rest[2:]
        return None

    def _swap_notes(self, *notes_args: str, stdin: bytes | None = None, reflog: str,
                    adds: bool = False, more: Iterable[tuple[str, ...]] = ()) -> bool:
        """Run `git notes <notes_args>` on a scratch copy of NOTES_REF, then swap the result in
        with a compare-and-swap; False when another process moved NOTES_REF first.

        `git notes` overwrites the notes ref without checking its old value, so two processes
        writing at once would drop each other's notes. The ref goes when no note is left
        (`adds`: the command only adds a note, so none can be left empty; no need to look).
        `more` are further `git notes` commands run on the same scratch ref, swapped in at once.
        """
        old = self.ref_sha(NOTES_REF) or ""
        scratch = self.scratch_notes_ref("write")
        try:
            if old:
                self._git("update-ref", scratch, old, "", retry=True)
            for args in (notes_args, *more):
                r = self._git("notes", f"--ref={scratch}", *args, env=_SOA_NOTES_ENV,
                              stdin=stdin if args is notes_args else None, check=False, retry=True)
                if r.status != 0:
                    raise RepositoryError(f"cannot update {NOTES_REF}: {reason(r.err)}")
            new = self._git("rev-parse", "--verify", "-q", scratch, check=False).text
            try:
                if old and not adds and not (new and self._git("ls-tree", new).text):
                    self._update_ref(NOTES_REF, "", old, what=NOTES_REF, delete=True)
                elif new and new != old:
                    self._update_ref(NOTES_REF, new, old, what=NOTES_REF, reflog=reflog)
            except BranchMoved:
                return False
            return True
        finally:
            self._git("update-ref", "-d", scratch, check=False, retry=True)
