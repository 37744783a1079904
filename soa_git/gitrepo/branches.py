"""Agents' branches: starting one, committing an agent's files, merging a child into its Mother.

An agent commits without a worktree or an index: its files become blobs and trees in this
process, and only its own paths can enter its commit. A merge touches no files either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

from .. import faults, runformat
from ..runformat import NOTES_REF
from . import metrics
from ..errors import OwnershipError, RepositoryError
from .core import Author, backoff, checked_rev, guard_hook, join_names, posix, reason, split_z
from .objects import FILE_MODE, Entry
from .refs import BranchMoved, Refs, notes_lock


class MergeConflict(RepositoryError):
    """Merging one branch into another would conflict; no ref, worktree or index was changed."""

    def __init__(self, message: str, conflicts: tuple[str, ...]) -> None:
        super().__init__(message)
        self.conflicts = conflicts


@dataclass(frozen=True)
class MergeCheck:
    clean: bool
    tree: str | None
    conflicts: tuple[str, ...]


class _Worktree(NamedTuple):
    path: Path
    branch: str | None
    prunable: bool


class Branches(Refs):
    """Agents' branches and commits, and merges between them."""

    @metrics.measured("start_branch")
    def start_branch(self, branch: str, base: str, *, subject: str, trailers: Mapping[str, str],
                     author: Author, note: str) -> str:
        """Create `branch` at a new empty commit on `base` that carries `note`: the branch and
        its record appear together, or not at all."""
        guard_hook()
        parent = self._require_commit(base)
        tree = self._store.commit_tree(parent)
        sha = self._write_commit(tree, (parent,), runformat.message(subject, "", trailers), author)
        self._publish(f"refs/heads/{branch}", sha, None, note=note, what=f"branch {branch}",
                      reflog=f"branch: created from {base}")
        return sha

    def take_back_start(self, branch: str, start: str, notes_before: str | None) -> None:
        """Undo `start_branch` and the notes written on `start` since: the branch goes and the
        notes ref is put back to `notes_before`, in one transaction, when no other commit's note
        changed since; otherwise the branch and its note go, and the others' notes stay."""
        with notes_lock:
            now = self.ref_sha(NOTES_REF)
            if now is not None:
                changed = (self._git("diff-tree", "-r", "--name-only", notes_before, now)
                           if notes_before else self._git("ls-tree", "-r", "--name-only", now))
                if {path.replace("/", "") for path in changed.text.split()} == {start}:
                    try:
                        self._move([(f"refs/heads/{branch}", "", start),
                                    (NOTES_REF, notes_before or "", now)],
                                   what=f"branch {branch}", reflog="soa-git: take back a start")
                        return
                    except BranchMoved:
                        pass
        self.delete_branch(branch)
        self.remove_notes([start])  # type: ignore[attr-defined]  (Cleanup, in GitRepo)

    def delete_branch(self, branch: str) -> None:
        """Delete one of soa-git's own branches; a branch that is already gone is fine."""
        if not branch.startswith(runformat.BRANCH_FOLDER):
            raise RepositoryError(f"soa-git only deletes its own soa/ branches, not {branch}")
        sha = self.branch_sha(branch)
        if sha is None:
            return
        for path in self._checked_out_at(branch):
            raise RepositoryError(f"branch {branch} is checked out at {path}; "
                                  "remove that worktree first")
        self._update_ref(f"refs/heads/{branch}", "", sha, what=f"branch {branch}", delete=True)

    @metrics.measured("commit_files")
    def commit_files(self, branch: str, files: Mapping[str, str], *, subject: str, body: str = "",
                     trailers: Mapping[str, str], author: Author, allowed_paths: Iterable[str],
                     start: str | None = None, allow_empty: bool = False,
                     note: str | None = None) -> str | None:
        """Commit `files` (posix path -> text) on top of `branch`; a branch that does not exist
        yet is created at `start`. Every path must be one of `allowed_paths` (OwnershipError,
        nothing written, otherwise): an agent's commit can only ever touch its own files.

        `note` is attached in the same ref transaction that moves the branch, so a commit on a
        branch always has its note. Returns the new commit's sha, or None when nothing changed
        and `allow_empty` is off.
        """
        guard_hook()
        allowed = {posix(p) for p in allowed_paths}
        foreign = sorted(set(map(posix, files)) - allowed)
        if foreign:
            agent = runformat.CommitTrailers.read(trailers).agent or author.name
            owned = (f"may only change {join_names(sorted(allowed))}" if allowed
                     else "may not change any file")
            raise OwnershipError(f"agent {agent} {owned}, not {join_names(foreign)}")
        ref = f"refs/heads/{branch}"
        # Given a start, a branch this process has not moved yet is most likely new: creating it
        # needs no look first, and finding it there after all (a resumed run) costs one look.
        parent = self._known_tip(ref) if start is not None else self.branch_sha(branch)
        if parent is None and start is None:
            raise RepositoryError(f"branch {branch} does not exist")
        blobs = {posix(path): Entry(FILE_MODE, self._store.write_blob(text.encode("utf-8")))
                 for path, text in files.items()}
        message = runformat.message(subject, body, trailers)
        while True:
            base = parent or self._require_commit(start or "")
            tree = self._store.commit_tree(base)
            new_tree = self._store.edit(tree, blobs)
            if new_tree == tree and not allow_empty and parent is not None:
                return None
            sha = self._write_commit(new_tree, (base,), message, author)
            faults.reached("commit")
            try:
                self._publish(ref, sha, parent, note=note, what=f"branch {branch}",
                              reflog=f"commit: {message.splitlines()[0]}")
                return sha
            except BranchMoved:
                if parent is not None:
                    raise
                parent = self.branch_sha(branch)
                if parent is None:
                    raise

    def merge_check(self, ours: str, theirs: str) -> MergeCheck:
        """Would merging `theirs` into `ours` be clean? Writes objects; no ref, index or file."""
        r = self._git("merge-tree", "--write-tree", "--name-only", "--no-messages", "-z",
                      checked_rev(ours), checked_rev(theirs), check=False)
        if r.status not in (0, 1):
            raise RepositoryError(f"cannot merge {theirs} into {ours}: {reason(r.err)}")
        tree, *paths = split_z(r.out)
        if r.status == 0:
            return MergeCheck(clean=True, tree=tree, conflicts=())
        return MergeCheck(clean=False, tree=None, conflicts=tuple(dict.fromkeys(paths)))

    @metrics.measured("merge")
    def merge(self, branch: str, other_branch: str, *, subject: str, trailers: Mapping[str, str],
              author: Author, note: str | None = None, base: str | None = None) -> str:
        """A --no-ff merge of `other_branch` into `branch`, made without any worktree.

        `base` is what the caller knows of the two branches' history: a commit of `branch`
        where `other_branch` started or was last merged, none of whose later commits `branch`
        holds. If every line of `other_branch`'s history since reaches it, it is their merge
        base, and a merge in which each file changed on one side at most is made in process;
        anything else is merged by git, which finds the base itself (walking `branch`'s whole
        history since, which grows with every merge into it).

        Raises MergeConflict (nothing changed) or BranchMoved (someone else moved `branch`
        meanwhile; try again). Returns the merge commit's sha, or the branch's sha when
        `other_branch` is already merged.
        """
        guard_hook()
        message = runformat.message(subject, "", trailers)
        ours, theirs = self.branch_sha(branch), self.branch_sha(other_branch)
        for name, sha in ((branch, ours), (other_branch, theirs)):
            if sha is None:
                raise RepositoryError(f"branch {name} does not exist")
        assert ours is not None and theirs is not None
        self._check_merge_target(branch)
        tree = None
        if base is not None and self._reaches(theirs, base):
            tree = self._store.merge_trees(self._store.commit_tree(base),
                                           self._store.commit_tree(ours),
                                           self._store.commit_tree(theirs))
        if tree is None:
            check = self.merge_check(ours, theirs)
            if not check.clean or check.tree is None:
                raise MergeConflict(f"merging {other_branch} into {branch} conflicts in "
                                    f"{join_names(check.conflicts)}", check.conflicts)
            tree = check.tree
        # Only a merge that changes nothing can be one of a branch already merged.
        if tree == self._store.commit_tree(ours) and self.is_ancestor(theirs, ours):
            return ours
        sha = self._write_commit(tree, (ours, theirs), message, author)
        faults.reached("merge")
        self._publish(f"refs/heads/{branch}", sha, ours, note=note, what=f"branch {branch}",
                      reflog=f"merge {other_branch}: {message.splitlines()[0]}")
        return sha

    def _reaches(self, tip: str, base: str, limit: int = 64) -> bool:
        """Every line of `tip`'s history reaches `base` within `limit` commits."""
        seen: set[str] = set()
        pending = [tip]
        while pending:
            sha = pending.pop()
            if sha == base or sha in seen:
                continue
            seen.add(sha)
            parents = self._store.parents(sha)
            if not parents or len(seen) > limit:
                return False
            pending.extend(parents)
        return True

    def catch_up(self, branch: str, onto: str, keep_paths: Iterable[str], *, subject: str,
                 trailers: Mapping[str, str], author: Author) -> str:
        """Bring `branch` onto the newer `onto` keeping its own `keep_paths`: a merge commit
        whose tree is `onto`'s with those paths as `branch` has them.

        This is how an agent redoes its work on a new base after a conflict: its own files win,
        everything else is the base's.
        """
        guard_hook()
        ours, theirs = self.branch_sha(branch), self.branch_sha(onto)
        if ours is None or theirs is None:
            raise RepositoryError(f"branch {branch if ours is None else onto} does not exist")
        self._check_merge_target(branch)
        own = self._store.commit_tree(ours)
        tree = self._store.edit(self._store.commit_tree(theirs),
                                {posix(p): self._store.lookup(own, posix(p)) for p in keep_paths})
        sha = self._write_commit(tree, (ours, theirs), runformat.message(subject, "", trailers),
                                 author)
        self._publish(f"refs/heads/{branch}", sha, ours, note=None, what=f"branch {branch}",
                      reflog=f"catch up with {onto}")
        return sha

    def changed_paths(self, base: str, rev: str) -> list[str]:
        """Paths whose content differs between the trees of `base` and `rev`, sorted."""
        r = self._git("diff-tree", "-r", "-z", "--name-only", "--no-renames", checked_rev(base),
                      checked_rev(rev), check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot compare {base} with {rev}: {reason(r.err)}")
        return sorted(split_z(r.out))

    def _worktrees(self) -> list[_Worktree]:
        for attempt in range(6):
            # A worktree half added or half removed (by another thread or process) makes
            # `git worktree list` fail ("failed to read", "Invalid path"): look again.
            r = self._git("worktree", "list", "--porcelain", "-z", check=False)
            if r.status == 0:
                break
            backoff(attempt)
        if r.status != 0:
            raise RepositoryError(f"git worktree failed: {reason(r.err)}")
        out = r.out
        worktrees = []
        for record in os.fsdecode(out).split("\0\0"):
            attrs = dict((line.split(" ", 1) + [""])[:2] for line in record.split("\0") if line)
            if "worktree" in attrs:
                branch = attrs.get("branch")
                worktrees.append(_Worktree(Path(attrs["worktree"]).resolve(),
                                           branch.removeprefix("refs/heads/") if branch else None,
                                           "prunable" in attrs))
        return worktrees

    def _checked_out_at(self, branch: str) -> list[Path]:
        """Live working trees with `branch` checked out (a stale registration has none)."""
        return [wt.path for wt in self._worktrees() if wt.branch == branch and not wt.prunable]

    def _check_merge_target(self, branch: str) -> None:
        """Moving a branch that a working tree has checked out would leave that tree behind.

        Reading the HEAD files first spares a `git worktree list` on every merge of a run.
        """
        wanted = f"ref: refs/heads/{branch}"
        heads = [self.git_dir / "HEAD", self._own_git_dir / "HEAD",
                 *(self.git_dir / "worktrees").glob("*/HEAD")]
        if not any(_read_text(h).strip() == wanted for h in heads):
            return
        for path in self._checked_out_at(branch):
            raise RepositoryError(f"branch {branch} is checked out at {path}; "
                                  "soa-git will not move it under that working tree")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
