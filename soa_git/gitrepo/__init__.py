"""Every git operation soa-git performs: agent branches, workspaces, commits, merges, notes.

This package is the only code that runs git, as plain `git` processes (the repository itself is
found by `git rev-parse`). It hands out plain values (shas, paths, dataclasses). `GitRepo` is
its one facade; each concern is a room of it, a module small enough to read in one sitting:

- `core`: opening a repository and running git against it, pinned to it (GIT_DIR,
  GIT_WORK_TREE and GIT_INDEX_FILE set outright, so an environment inherited from a git hook
  never points a command at the user's index; `core.hooksPath` empty, so the user's hooks never
  run on `soa/` branches); every call retries while another process holds one of git's locks;
- `objects`: git objects read (one long-lived `cat-file --batch`) and written in process, and
  the three-way tree merge a child's merge needs when no file changed on both sides;
- `refs`: refs and their transactions: one `update-ref --stdin` moves an agent's branch and
  the notes ref together, each a compare-and-swap, so a lost race is an error (`BranchMoved`) or
  a retry, never a lost commit or a commit without its note;
- `branches`: starting a branch, an agent's commit (without a worktree or an index: only its
  own paths can enter it), merges;
- `workspaces`: the plain folders agents' tests run in, moved from tree to tree by writing only
  what differs;
- `locks`: a run's lock file; `reading`: runs read back; `user`: the user's own checkout
  (accept, the hooks); `remotes`: push and fetch; `cleanup`: what runs leave behind;
- `metrics`: where the time goes, for the scale benchmark.

It is safe for many threads in one process, each working on its own agent branch and workspace,
and for two soa-git processes in one repository. Needs git 2.38 or newer
(`git merge-tree --write-tree`).
"""

from __future__ import annotations

from ..runformat import NOTES_REF
from .branches import Branches, MergeCheck, MergeConflict
from .cleanup import Cleanup
from .core import HOOK_ALLOW_ENV, SOA_GIT, Author
from .locks import LockHolder, Locks, RunLocked
from .reading import BranchTip, LoggedCommit, RunReading
from .refs import BranchMoved, RefRefused
from .remotes import Remotes
from .user import UserSide
from .workspaces import Workspaces

__all__ = ["NOTES_REF", "HOOK_ALLOW_ENV", "SOA_GIT", "Author", "BranchMoved", "BranchTip",
           "GitRepo", "LockHolder", "LoggedCommit", "MergeCheck", "MergeConflict", "RefRefused",
           "RunLocked"]


class GitRepo(UserSide, Remotes, Cleanup, Workspaces, Locks, RunReading, Branches):
    """One repository, opened from any path inside its working tree (`GitRepo.open`)."""
