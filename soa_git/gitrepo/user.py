"""The user's side: their index, working tree, hooks and identity. `accept` merges a run into the
user's branch here, with their hooks; the hooks commands read what the user staged.

Everything else in this package works beside the user's checkout and never touches it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from .. import runformat
from ..errors import RepositoryError
from .branches import Branches, MergeConflict
from .core import (SOA_GIT, Author, Result, env_without_location, guard_hook, join_names,
                   reason, run_git, split_z)


class UserSide(Branches):
    """Reading and changing the user's own checkout."""

    @staticmethod
    def _few(paths: list[str], shown: int = 3) -> str:
        if len(paths) <= shown:
            return join_names(paths)
        return f"{', '.join(paths[:shown])} and {len(paths) - shown} more"

    def user_status(self) -> list[tuple[str, str]]:
        """(XY, path) of every change in the user's own index and working tree, `??` for an
        untracked file, as `git status --porcelain` shows them. Only reads: the user's index is
        not even refreshed."""
        r = self._git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames",
                      "--ignore-submodules=none",
                      env={"GIT_INDEX_FILE": str(self._own_git_dir / "index"),
                           "GIT_OPTIONAL_LOCKS": "0"}, check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot read the state of your working tree: {reason(r.err)}")
        return [(entry[:2], entry[3:]) for entry in split_z(r.out)]

    def merge_into_head(self, branch: str, message: str, *, squash: bool = False) -> str:
        """Merge `branch` into the user's current branch, in the user's working tree, with the
        user's hooks and configuration; returns the new commit's sha.

        The one method that changes the user's branch, index and files. It refuses, changing
        nothing, on a detached HEAD, uncommitted changes to tracked files, an untracked file the
        merge would overwrite, a branch already merged, and a conflict (checked with
        `merge-tree` first). A merge (`--no-ff --no-commit`, or `--squash`) is concluded by
        `git commit`, so the user's pre-commit, prepare-commit-msg, commit-msg and post-commit
        hooks run; if git or a hook refuses, the merge is aborted and everything is as before.
        """
        guard_hook()
        theirs = self.branch_sha(branch)
        if theirs is None:
            raise RepositoryError(f"branch {branch} does not exist")
        current = self.head_branch()
        if current is None:
            raise RepositoryError("HEAD is detached; check out the branch to merge into first")
        if current.startswith(runformat.BRANCH_FOLDER):
            raise RepositoryError(f"you are on soa-git's own branch {current}; check out the "
                                  "branch to merge into first")
        ours = self.head()
        if self._git("merge-base", "--is-ancestor", theirs, ours, check=False).status == 0:
            raise RepositoryError(f"{branch} is already merged into {current}")
        check = self.merge_check(ours, theirs)
        if not check.clean or check.tree is None:
            raise MergeConflict(f"merging {branch} into {current} conflicts in "
                                f"{join_names(check.conflicts)}; nothing was changed",
                                check.conflicts)
        incoming = set(self.changed_paths(ours, check.tree))
        if not incoming:
            raise RepositoryError(f"{branch} changes nothing on {current} (was it accepted "
                                  "with --squash already?)")
        status = self.user_status()
        changed = sorted(path for code, path in status if code != "??")
        if changed:
            raise RepositoryError("your working tree has uncommitted changes "
                                  f"({self._few(changed)}); commit or stash them first")
        # git would refuse to overwrite an untracked file, but silently overwrites an ignored one.
        tracked = set(split_z(self._git("ls-tree", "-r", "-z", "--name-only", ours, "--",
                                        *sorted(incoming)).out))
        blocking = sorted(path for path in incoming - tracked
                          if os.path.lexists(self.root / path))
        if blocking:
            raise RepositoryError(f"the untracked {self._few(blocking)} would be overwritten "
                                  "by the merge; move or remove them first")
        squash_msg = self._own_git_dir / "SQUASH_MSG"
        had_squash_msg = squash_msg.exists()
        mode = ("--squash",) if squash else ("--no-ff", "--no-commit")
        r = self._user_git("merge", *mode, "--no-edit", theirs)
        if r.status != 0:
            conflicts = tuple(split_z(self._user_git("diff", "--name-only", "--diff-filter=U",
                                                     "-z").out))
            # A merge git refused outright (it checks before writing) left nothing to undo.
            if (self._own_git_dir / "MERGE_HEAD").exists() or \
                    any(code != "??" for code, _ in self.user_status()):
                self._undo_user_merge(squash_msg if squash and not had_squash_msg else None)
            if conflicts:
                raise MergeConflict(f"merging {branch} into {current} conflicts in "
                                    f"{join_names(conflicts)}; nothing was changed", conflicts)
            raise RepositoryError(f"git merge refused to merge {branch} ({self._last_words(r)}); "
                                  "nothing was changed")
        r = self._user_git("commit", "-q", "-m", message)
        if r.status != 0:
            self._undo_user_merge(squash_msg if squash and not had_squash_msg else None)
            raise RepositoryError(f"the commit was refused ({self._last_words(r)}); "
                                  f"the merge was aborted and {current} is as before")
        sha = self.head()
        if squash_msg.exists() and not had_squash_msg:
            squash_msg.unlink()
        return sha

    def foreign_checkouts(self, branches: Iterable[str]) -> dict[str, Path]:
        """Branch -> working tree, for those of `branches` checked out anywhere (the user's own
        checkout, or a worktree the user made; soa-git itself checks out nothing)."""
        wanted = set(branches)
        return {wt.branch: wt.path for wt in self._worktrees()
                if wt.branch in wanted and not wt.prunable}

    def snapshot_index(self, message: str) -> str:
        """A commit of the index (parent HEAD, on no branch); HEAD itself when nothing is staged.

        write-tree runs on a copy of the index, because it would store its cache in the user's.
        """
        head = self.head()
        with tempfile.TemporaryDirectory(prefix="soa-git-index-") as tmp:
            index = Path(tmp) / "index"
            shutil.copyfile(self._own_git_dir / "index", index)
            r = self._git("write-tree", env={"GIT_INDEX_FILE": str(index)}, check=False)
        if r.status != 0:
            raise RepositoryError("cannot read your staged files (is a merge unfinished?); "
                                  "resolve it first")
        if r.text == self._git("rev-parse", "--verify", f"{head}^{{tree}}").text:
            return head
        ident = self._user_git("var", "GIT_AUTHOR_IDENT")
        author = SOA_GIT
        if ident.status == 0 and "<" in ident.text:
            name, _, rest = ident.text.partition("<")
            author = Author(name.strip(), rest.partition(">")[0])
        return self._write_commit(r.text, (head,), message, author)

    def hooks_dir(self) -> Path:
        """Where git looks for this repository's hooks (core.hooksPath when set)."""
        r = self._user_git("rev-parse", "--git-path", "hooks")
        if r.status != 0:
            raise RepositoryError("cannot find this repository's hooks directory")
        return (self.root / r.text).resolve()

    def _user_git(self, *args: str) -> Result:
        """git as the user runs it in their own working tree: their index, their hooks, their
        configuration. No location inherited from our environment (a hook's GIT_DIR, say)
        steers it, and none of ours leaks into their hooks."""
        return run_git(list(args), cwd=self.root, env=env_without_location())

    @staticmethod
    def _last_words(r: Result) -> str:
        """Why a command failed: git's own first error line, else the last line a hook printed."""
        lines = [line.strip() for line in (r.err + "\n" + os.fsdecode(r.out)).splitlines()
                 if line.strip()]
        if not lines:
            return f"git exited with status {r.status} and said nothing; a hook may have refused"
        errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
        return reason(errors[0] if errors else lines[-1])

    def _undo_user_merge(self, squash_msg: Path | None) -> None:
        """Put the user's index and files back after a merge that did not become a commit."""
        if (self._own_git_dir / "MERGE_HEAD").exists():
            r = self._user_git("merge", "--abort")
        else:
            r = self._user_git("reset", "-q", "--merge")
        if r.status != 0:
            raise RepositoryError(f"the merge failed and could not be undone ({reason(r.err)}); "
                                  "run `git merge --abort` or `git reset --merge`")
        if squash_msg is not None:
            squash_msg.unlink(missing_ok=True)
