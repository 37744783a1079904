"""Every git operation soa-git performs: agent branches, workspaces, commits, merges, notes.

This is the only module that runs git (with `gitobjects`, its in-process object layer). It hands
out plain values (shas, paths, dataclasses), never live GitPython objects. It is safe for many
threads in one process, each working on its own agent branch and workspace, and for two
soa-git processes in one repository:

- an agent commits without a worktree or an index: its files become blobs and trees in this
  process, and one `update-ref --stdin` transaction moves its branch and the notes ref
  together, each as a compare-and-swap, so a lost race is an error (`BranchMoved`) or a retry,
  never a lost commit or a commit without its note;
- an agent's workspace is a plain folder holding only the files its tests can import,
  written from the branch's trees (see `check_out`);
- the notes ref, shared by all agents, is written under a module-level lock, and every git
  call retries while another process holds one of git's own `.lock` files;
- every call pins GIT_DIR, GIT_WORK_TREE and GIT_INDEX_FILE, so an environment inherited from
  a git hook can never point a command at the user's index or working tree;
- every call sets `core.hooksPath` to an empty directory: the user's hooks never run on
  `soa/` branches (they run when the user takes the result).

Needs git 2.38 or newer (`git merge-tree --write-tree`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, NamedTuple

import git

from . import faults, runformat
from .checkouts import Checkouts
from .errors import OwnershipError, RepositoryError
from .gitobjects import FILE_MODE, Entry, ObjectStore
from .runformat import NOTES_REF

_SCRATCH_NOTES = "refs/notes/soa-pending/"

_MIN_GIT = (2, 38)
# `git notes` run as soa-git (removing and merging notes).
_SOA_NOTES_ENV = {"GIT_AUTHOR_NAME": "soa-git", "GIT_AUTHOR_EMAIL": "soa-git@localhost",
                  "GIT_COMMITTER_NAME": "soa-git", "GIT_COMMITTER_EMAIL": "soa-git@localhost"}
# Another git process holds one of git's lock files (git already waited briefly for ref locks).
_LOCK_BUSY = re.compile(r"\.lock'?: File exists")
# update-ref's compare-and-swap lost: the ref is not (or no longer) at the expected value.
_CAS_LOST = re.compile(r"but expected|reference already exists|unable to resolve reference")
_LOCK_ATTEMPTS = 12
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_NOTE_ATTEMPTS = 20

# Serializes notes writes among the threads of this process.
_shared_lock = threading.Lock()


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


class RunLocked(RepositoryError):
    """A live process holds the run's lock."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started: str
    alive: bool


class MergeConflict(RepositoryError):
    """Merging one branch into another would conflict; no ref, worktree or index was changed."""

    def __init__(self, message: str, conflicts: tuple[str, ...]) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class RefRefused(RepositoryError):
    """git refused to update `ref` (an invalid name, a locked or unwritable ref)."""

    def __init__(self, message: str, ref: str = "") -> None:
        super().__init__(message)
        self.ref = ref


class BranchMoved(RefRefused):
    """A branch moved between reading it and updating it (another thread or process won)."""


@dataclass(frozen=True)
class Author:
    name: str
    email: str


# Who commits every commit soa-git writes, and authors its own (start, notes).
SOA_GIT = Author("soa-git", "soa-git@localhost")


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    subject: str
    body: str
    trailers: dict[str, str]
    parents: tuple[str, ...]
    author: Author


@dataclass(frozen=True)
class MergeCheck:
    clean: bool
    tree: str | None
    conflicts: tuple[str, ...]


@dataclass(frozen=True)
class BranchTip:
    branch: str         # without refs/heads/
    sha: str
    date: str           # the tip's committer date, ISO 8601


@dataclass(frozen=True)
class LoggedCommit:
    """One commit as `commits` reads it: its message, trailers, and its note under NOTES_REF."""

    sha: str
    parents: tuple[str, ...]
    author: Author
    date: str           # author date, ISO 8601
    subject: str
    body: str           # without the trailer block
    trailers: dict[str, str]
    note: str | None


class _Result(NamedTuple):
    status: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return os.fsdecode(self.out).strip()


class _Worktree(NamedTuple):
    path: Path
    branch: str | None
    prunable: bool


class GitRepo:
    """One repository, opened from any path inside its working tree."""

    def __init__(self, repo: git.Repo) -> None:
        self._repo = repo
        self.root = Path(repo.working_tree_dir).resolve()
        self.git_dir = Path(repo.common_dir).resolve()
        # The user's own checkout may itself be a linked worktree with its own HEAD and index.
        self._own_git_dir = Path(repo.git_dir).resolve()
        self._soa_dir = self.git_dir / "soa"
        self._workspaces_root = self._soa_dir / "work"
        self._hooks_dir = self._soa_dir / "no-hooks"
        # Tips of the refs this object moved itself (its run's branches, the notes ref): a
        # run's branches are moved by nobody else while it holds the run's lock, and every
        # move is a compare-and-swap that drops a tip found stale.
        self._tips: dict[str, str] = {}
        self._tips_lock = threading.Lock()
        self._objects: ObjectStore | None = None
        self._checkouts = Checkouts()
        self._queue: list[_RefWrite] = []
        self._queue_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, allow_empty: bool = False) -> GitRepo:
        """The repository containing `path`; `allow_empty` accepts one with no commits yet."""
        path = Path(path)
        try:
            repo = git.Repo(path.parent if path.is_file() else path, search_parent_directories=True)
        except git.NoSuchPathError:
            raise RepositoryError(f"{path} does not exist") from None
        except git.InvalidGitRepositoryError:
            raise RepositoryError(f"{path} is not inside a git repository") from None
        if repo.bare or repo.working_tree_dir is None:
            raise RepositoryError(f"{repo.git_dir} is a bare repository; "
                                  "run soa-git in a working tree")
        try:
            version = repo.git.version_info
        except git.GitCommandNotFound:
            raise RepositoryError("git is not installed or not on PATH") from None
        if version[:2] < _MIN_GIT:
            raise RepositoryError(f"soa-git needs git {_MIN_GIT[0]}.{_MIN_GIT[1]} or newer, "
                                  f"but this is git {'.'.join(map(str, version))}")
        opened = cls(repo)
        opened._hooks_dir.mkdir(parents=True, exist_ok=True)
        if not allow_empty and opened._head_sha() is None:
            raise RepositoryError("the repository has no commits yet; commit something first")
        return opened

    @classmethod
    def create(cls, path: Path, message: str) -> GitRepo:
        """A new repository at `path` on branch main, its one commit holding the files there."""
        path = Path(path)
        if (path / ".git").exists():
            raise RepositoryError(f"{path} is already a git repository")
        git.Repo.init(path, initial_branch="main")
        opened = cls.open(path, allow_empty=True)
        index = {"GIT_INDEX_FILE": str(opened._own_git_dir / "index")}
        opened._git("add", "-A", env=index)
        tree = opened._git("write-tree", env=index).text
        sha = opened._write_commit(tree, (), message, SOA_GIT)
        opened._git("update-ref", "HEAD", sha)
        return opened

    # ---- reading ------------------------------------------------------------------------

    def head(self) -> str:
        sha = self._head_sha()
        if sha is None:
            raise RepositoryError("the repository has no commits yet; commit something first")
        return sha

    def head_branch(self) -> str | None:
        r = self._git("symbolic-ref", "-q", "HEAD", check=False)
        return r.text.removeprefix("refs/heads/") if r.status == 0 else None

    def read_file(self, rev: str, path: str) -> str | None:
        r = self._git("cat-file", "blob", f"{_rev(rev)}:{_posix(path)}", check=False)
        if r.status != 0:
            self._require_commit(rev)
            return None
        try:
            return r.out.decode("utf-8")
        except UnicodeDecodeError:
            raise RepositoryError(f"{path} at {rev} is not UTF-8 text") from None

    def file_exists(self, rev: str, path: str) -> bool:
        r = self._git("cat-file", "-t", f"{_rev(rev)}:{_posix(path)}", check=False)
        if r.status != 0:
            self._require_commit(rev)
        return r.status == 0 and r.text == "blob"

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

    def log(self, branch: str, *, first_parent: bool = False) -> list[CommitInfo]:
        """Commits reachable from `branch`, newest first."""
        fields = ("%H", "%P", "%an", "%ae", "%s", "%b", runformat.TRAILERS_FORMAT)
        r = self._git("log", "-z", "--no-show-signature", f"--format={'%x00'.join(fields)}",
                      *(["--first-parent"] if first_parent else []),
                      f"refs/heads/{branch}", "--", check=False)
        if r.status != 0:
            if self.branch_sha(branch) is None:
                raise RepositoryError(f"branch {branch} does not exist")
            raise RepositoryError(f"cannot read the history of {branch}: {_reason(r.err)}")
        values = os.fsdecode(r.out).split("\0")
        commits = []
        for i in range(0, len(values) - len(fields) + 1, len(fields)):
            sha, parents, name, email, subject, body, raw_trailers = values[i:i + len(fields)]
            trailers = runformat.parse_trailers(raw_trailers)
            commits.append(CommitInfo(sha=sha, subject=subject,
                                      body=runformat.strip_trailers(body, trailers),
                                      trailers=trailers,
                                      parents=tuple(parents.split()), author=Author(name, email)))
        return commits

    def changed_paths(self, base: str, rev: str) -> list[str]:
        """Paths whose content differs between the trees of `base` and `rev`, sorted."""
        r = self._git("diff-tree", "-r", "-z", "--name-only", "--no-renames", _rev(base), _rev(rev),
                      check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot compare {base} with {rev}: {_reason(r.err)}")
        return sorted(_split_z(r.out))

    # ---- branches and commits -----------------------------------------------------------

    def start_branch(self, branch: str, base: str, *, subject: str, trailers: Mapping[str, str],
                     author: Author, note: str) -> str:
        """Create `branch` at a new empty commit on `base` that carries `note`: the branch and
        its record appear together, or not at all."""
        _guard_hook()
        parent = self._require_commit(base)
        tree = self._store.commit_tree(parent)
        sha = self._write_commit(tree, (parent,), runformat.message(subject, "", trailers), author)
        self._publish(f"refs/heads/{branch}", sha, None, note=note, what=f"branch {branch}",
                      reflog=f"branch: created from {base}")
        return sha

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
        _guard_hook()
        allowed = {_posix(p) for p in allowed_paths}
        foreign = sorted(set(map(_posix, files)) - allowed)
        if foreign:
            agent = runformat.CommitTrailers.read(trailers).agent or author.name
            owned = (f"may only change {_join(sorted(allowed))}" if allowed
                     else "may not change any file")
            raise OwnershipError(f"agent {agent} {owned}, not {_join(foreign)}")
        ref = f"refs/heads/{branch}"
        # Given a start, a branch this process has not moved yet is most likely new: creating it
        # needs no look first, and finding it there after all (a resumed run) costs one look.
        parent = self._known_tip(ref) if start is not None else self.branch_sha(branch)
        if parent is None and start is None:
            raise RepositoryError(f"branch {branch} does not exist")
        blobs = {_posix(path): Entry(FILE_MODE, self._store.write_blob(text.encode("utf-8")))
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
                      _rev(ours), _rev(theirs), check=False)
        if r.status not in (0, 1):
            raise RepositoryError(f"cannot merge {theirs} into {ours}: {_reason(r.err)}")
        tree, *paths = _split_z(r.out)
        if r.status == 0:
            return MergeCheck(clean=True, tree=tree, conflicts=())
        return MergeCheck(clean=False, tree=None, conflicts=tuple(dict.fromkeys(paths)))

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
        _guard_hook()
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
                                    f"{_join(check.conflicts)}", check.conflicts)
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
        _guard_hook()
        ours, theirs = self.branch_sha(branch), self.branch_sha(onto)
        if ours is None or theirs is None:
            raise RepositoryError(f"branch {branch if ours is None else onto} does not exist")
        self._check_merge_target(branch)
        own = self._store.commit_tree(ours)
        tree = self._store.edit(self._store.commit_tree(theirs),
                                {_posix(p): self._store.lookup(own, _posix(p)) for p in keep_paths})
        sha = self._write_commit(tree, (ours, theirs), runformat.message(subject, "", trailers),
                                 author)
        self._publish(f"refs/heads/{branch}", sha, ours, note=None, what=f"branch {branch}",
                      reflog=f"catch up with {onto}")
        return sha

    # ---- workspaces ---------------------------------------------------------------------

    def workspace(self, run: str, name: str) -> Path:
        """Where workspace `name` of run `run` lives (not created)."""
        return self._run_folder(run) / _workspace_name(name)

    def check_out(self, rev: str, folders: Iterable[str], into: Path) -> None:
        """Make the workspace `into` hold the files of `rev` that `folders` select (everything
        under them, and the files directly in the root and in each folder above them, as a
        cone-mode sparse checkout would), and nothing else.

        A workspace this object filled before moves to `rev` by writing only what differs from
        what it holds, and repairing whatever was changed in it since (see `checkouts`): moving
        a workspace to a merge, or handing it to another agent, costs what changed.
        """
        self._checkouts.write(self._store, self._store.commit_tree(self._require_commit(rev)),
                              folders, self._workspace_path(into))

    def run_workspaces(self, run: str) -> list[Path]:
        """The run's workspace folders left on disk."""
        folder = self._run_folder(run)
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def remove_workspaces(self, run: str) -> None:
        """Remove every workspace of `run`, and its folder; none of any other run."""
        folder = self._run_folder(run)
        shutil.rmtree(folder, ignore_errors=True)
        self._checkouts.forget(folder.resolve())

    def _run_folder(self, run: str) -> Path:
        return self._workspaces_root / _workspace_name(run)

    # ---- reading runs -------------------------------------------------------------------

    def branch_tips(self, folder: str) -> list[BranchTip]:
        """Every branch under `folder` (e.g. "soa/"), with its tip and the tip's date: one call."""
        if not folder.endswith("/") or folder.startswith("-"):
            raise ValueError(f"{folder!r} is not a folder of branches (it must end with /)")
        r = self._git("for-each-ref",
                      "--format=%(objectname) %(committerdate:iso-strict) %(refname)",
                      f"refs/heads/{folder}")
        tips = []
        for line in r.text.splitlines():
            sha, date, name = line.split(" ", 2)
            tips.append(BranchTip(branch=name.removeprefix("refs/heads/"), sha=sha, date=date))
        return tips

    def commits(self, revs: Iterable[str], *, containing: str | None = None) -> list[LoggedCommit]:
        """Commits reachable from any of `revs`, newest first, each with its note: one git log.

        `containing` keeps only commits whose message (or note) contains that exact text; git
        still walks the whole history, but prints only those.
        """
        revs = [_rev(rev) for rev in dict.fromkeys(revs)]
        if not revs:
            return []
        fields = ("%H", "%P", "%an", "%ae", "%aI", "%s", "%b", runformat.TRAILERS_FORMAT, "%N")
        grep = ("--fixed-strings", f"--grep={containing}") if containing else ()
        # --no-notes first: a notes.displayRef in the user's config would add other notes to %N.
        r = self._git("log", "-z", "--no-show-signature", "--no-notes", f"--notes={NOTES_REF}",
                      f"--format={'%x00'.join(fields)}", *grep, "--stdin", "--",
                      stdin="".join(f"{rev}\n" for rev in revs).encode("utf-8"), check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot read the history of {_join(revs)}: {_reason(r.err)}")
        values = r.out.decode("utf-8", errors="replace").split("\0")
        commits = []
        for i in range(0, len(values) - len(fields) + 1, len(fields)):
            sha, parents, name, email, date, subject, body, raw_trailers, note = (
                values[i:i + len(fields)])
            trailers = runformat.parse_trailers(raw_trailers)
            commits.append(LoggedCommit(
                sha=sha.strip(), parents=tuple(parents.split()), author=Author(name, email),
                date=date, subject=subject, body=runformat.strip_trailers(body, trailers),
                trailers=trailers,
                note=note.strip("\n") or None))
        return commits

    def read_blobs(self, specs: Iterable[tuple[str, str]]) -> list[str | None]:
        """The text of each (rev, path); None where that file does not exist: one cat-file call."""
        specs = [f"{_rev(rev)}:{_posix(path)}" for rev, path in specs]
        if not specs:
            return []
        if any("\n" in spec for spec in specs):
            raise ValueError("a path with a line break cannot be read in a batch")
        out = self._git("cat-file", "--batch", stdin="".join(f"{s}\n" for s in specs).encode()).out
        texts: list[str | None] = []
        at = 0
        for _ in specs:
            end = out.index(b"\n", at)
            header = out[at:end].split()
            at = end + 1
            if len(header) == 3 and header[2].isdigit():
                size = int(header[2])
                content = out[at:at + size]
                at += size + 1
                is_blob = header[1] == b"blob"
                texts.append(content.decode("utf-8", errors="replace") if is_blob else None)
            else:
                texts.append(None)      # "<spec> missing" or "<spec> ambiguous"
        return texts

    def diff(self, old: str, new: str, paths: Iterable[str]) -> str:
        """`git diff old new -- paths` as plain text, whatever the user's diff settings."""
        r = self._git("diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-relative",
                      "--src-prefix=a/", "--dst-prefix=b/", _rev(old), _rev(new), "--",
                      *(_posix(p) for p in paths), check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot compare {old} with {new}: {_reason(r.err)}")
        return r.out.decode("utf-8", errors="replace")

    # ---- accepting and cleaning ---------------------------------------------------------

    # What makes git look somewhere other than the working tree it runs in.
    _USER_LOCATION_VARS = frozenset({
        "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_QUARANTINE_PATH"})

    @staticmethod
    def _few(paths: list[str], shown: int = 3) -> str:
        if len(paths) <= shown:
            return _join(paths)
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
            raise RepositoryError(f"cannot read the state of your working tree: {_reason(r.err)}")
        return [(entry[:2], entry[3:]) for entry in _split_z(r.out)]

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
        _guard_hook()
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
                                f"{_join(check.conflicts)}; nothing was changed", check.conflicts)
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
        tracked = set(_split_z(self._git("ls-tree", "-r", "-z", "--name-only", ours, "--",
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
            conflicts = tuple(_split_z(self._user_git("diff", "--name-only", "--diff-filter=U",
                                                      "-z").out))
            # A merge git refused outright (it checks before writing) left nothing to undo.
            if (self._own_git_dir / "MERGE_HEAD").exists() or \
                    any(code != "??" for code, _ in self.user_status()):
                self._undo_user_merge(squash_msg if squash and not had_squash_msg else None)
            if conflicts:
                raise MergeConflict(f"merging {branch} into {current} conflicts in "
                                    f"{_join(conflicts)}; nothing was changed", conflicts)
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

    def foreign_checkouts(self, branches: Iterable[str]) -> dict[str, Path]:
        """Branch -> working tree, for those of `branches` checked out anywhere (the user's own
        checkout, or a worktree the user made; soa-git itself checks out nothing)."""
        wanted = set(branches)
        return {wt.branch: wt.path for wt in self._worktrees()
                if wt.branch in wanted and not wt.prunable}

    def run_lock_file(self, run: str) -> Path | None:
        path = self._lock_path(run)
        return path if path.exists() else None

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
                                  f"{_reason(r.err)}")
        return sorted((set(r.text.split()) & candidates) | missing)

    def remove_notes(self, shas: Iterable[str]) -> None:
        """Drop the notes of these commits from NOTES_REF (compare-and-swap, like add_note);
        the ref itself goes when no note is left."""
        shas = sorted(set(shas))
        if not shas:
            return
        with _shared_lock:
            for attempt in range(_NOTE_ATTEMPTS):
                if not self._git("show-ref", "--verify", "-q", NOTES_REF, check=False).status == 0:
                    return
                if self._swap_notes("remove", "--ignore-missing", "--stdin", reflog="notes: remove",
                                    stdin="".join(f"{s}\n" for s in shas).encode()):
                    return
                _backoff(attempt)
        raise RepositoryError(f"could not remove notes: other processes kept updating {NOTES_REF}")

    def pending_note_refs(self) -> list[str]:
        """Scratch refs of note writes (refs/notes/soa-pending/*) a killed process left behind."""
        r = self._git("for-each-ref", "--format=%(refname)", _SCRATCH_NOTES)
        return r.text.splitlines()

    def _user_git(self, *args: str) -> _Result:
        """git as the user runs it in their own working tree: their index, their hooks, their
        configuration. No location inherited from our environment (a hook's GIT_DIR, say)
        steers it, and none of ours leaks into their hooks."""
        import subprocess

        env = {k: v for k, v in os.environ.items() if k not in self._USER_LOCATION_VARS}
        try:
            done = subprocess.run([git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args],
                                  cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True)
        except FileNotFoundError:
            raise RepositoryError("git is not installed or not on PATH") from None
        return _Result(done.returncode, done.stdout, os.fsdecode(done.stderr))

    @staticmethod
    def _last_words(r: _Result) -> str:
        """Why a command failed: git's own first error line, else the last line a hook printed."""
        lines = [line.strip() for line in (r.err + "\n" + os.fsdecode(r.out)).splitlines()
                 if line.strip()]
        if not lines:
            return f"git exited with status {r.status} and said nothing; a hook may have refused"
        errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
        return _reason(errors[0] if errors else lines[-1])

    def _undo_user_merge(self, squash_msg: Path | None) -> None:
        """Put the user's index and files back after a merge that did not become a commit."""
        if (self._own_git_dir / "MERGE_HEAD").exists():
            r = self._user_git("merge", "--abort")
        else:
            r = self._user_git("reset", "-q", "--merge")
        if r.status != 0:
            raise RepositoryError(f"the merge failed and could not be undone ({_reason(r.err)}); "
                                  "run `git merge --abort` or `git reset --merge`")
        if squash_msg is not None:
            squash_msg.unlink(missing_ok=True)

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

    # ---- pushing ----------------------------------------------------------------------------

    # A remote that wants a password fails with a sentence instead of waiting for a terminal.
    _NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0"}

    def remote_url(self, remote: str) -> str | None:
        """The URL `git push REMOTE` pushes to (its pushurl if set); None if there is no such
        remote."""
        if not remote or remote.startswith("-"):
            raise RepositoryError(f"{remote!r} is not a valid remote name")
        r = self._git("remote", "get-url", "--push", remote, check=False)
        return r.text if r.status == 0 and r.text else None

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

    def remote_ref_sha(self, remote: str, ref: str) -> str | None:
        """The sha `ref` has on `remote` (one `ls-remote`), None if the remote has no such ref."""
        r = self._git("ls-remote", "--refs", _rev(remote), ref, env=self._NO_PROMPT, check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot read {ref} from {remote}: {_reason(r.err)}")
        for line in r.text.splitlines():
            sha, _, name = line.partition("\t")
            if name == ref:
                return sha
        return None

    def fetch_ref(self, remote: str, ref: str, into: str) -> str:
        """Fetch `ref` of `remote` into the local ref `into` (forced); its sha."""
        r = self._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", _rev(remote),
                      f"+{ref}:{into}", env=self._NO_PROMPT, check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot fetch {ref} from {remote}: {_reason(r.err)}")
        return self._git("rev-parse", "--verify", "-q", into).text

    def scratch_notes_ref(self, purpose: str) -> str:
        """A fresh scratch ref under refs/notes/soa-pending/ (`clean` removes leftovers)."""
        return f"{_SCRATCH_NOTES}{purpose}-{uuid.uuid4().hex}"

    def delete_ref(self, ref: str) -> None:
        """Delete a scratch ref soa-git made (refs/notes/soa-pending/* only): its own, or one a
        killed process left behind. One that is already gone is fine."""
        if not ref.startswith(_SCRATCH_NOTES):
            raise RepositoryError(f"{ref} is not one of soa-git's scratch notes refs")
        sha = self.ref_sha(ref)
        if sha:
            self._update_ref(ref, "", sha, what=ref, delete=True)

    def merge_notes(self, other: str) -> None:
        """Merge the notes ref `other` into NOTES_REF (a fast-forward when it can be). Two
        notes on one commit are concatenated, one line each, sorted, duplicates dropped
        (`cat_sort_uniq`): every record is one JSON line, so none is lost or torn."""
        self._require_commit(other)
        with _shared_lock:
            for attempt in range(_NOTE_ATTEMPTS):
                if self._swap_notes("merge", "-q", "--strategy=cat_sort_uniq", other,
                                    reflog=f"notes: merge {other}"):
                    return
                _backoff(attempt)
        raise RepositoryError(f"could not merge notes into {NOTES_REF}: other processes kept "
                              "updating it")

    def push(self, remote: str, refspecs: Iterable[str]) -> list[tuple[str, str, str]]:
        """`git push --porcelain REMOTE REFSPECS`, never forced, without the user's hooks:
        (flag, remote ref, git's summary) per ref, where the flag is `*` new, ` ` fast-forward,
        `=` up to date, `!` rejected. A push git could not even attempt raises."""
        refspecs = list(refspecs)
        if any(not spec or spec.startswith(("-", "+")) for spec in refspecs):
            raise ValueError(f"refspecs {refspecs!r} must not force or look like options")
        r = self._git("push", "--porcelain", _rev(remote), *refspecs, env=self._NO_PROMPT,
                      check=False)
        outcomes = []
        for line in os.fsdecode(r.out).splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and len(parts[0]) == 1 and ":" in parts[1]:
                outcomes.append((parts[0], parts[1].rpartition(":")[2], parts[2]))
        if r.status != 0 and not any(flag == "!" for flag, _, _ in outcomes):
            raise RepositoryError(f"cannot push to {remote}: {_reason(r.err)}")
        return outcomes

    def diff_stat(self, base: str, rev: str) -> str:
        """`git diff --stat base rev`: one line per changed file and a total, at a fixed width
        (the terminal's does not matter), whatever the user's diff settings."""
        r = self._git("diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-relative",
                      "--stat=100,70", "--stat-graph-width=20", _rev(base), _rev(rev), "--",
                      check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot compare {base} with {rev}: {_reason(r.err)}")
        return r.out.decode("utf-8", errors="replace")

    # ---- what a workspace needs -----------------------------------------------------------

    def subfolders(self, rev: str, folder: str) -> set[str]:
        """Names of the folders directly inside `folder` ('' is the root) at `rev`."""
        spec = f"{_rev(rev)}:{_posix(folder)}" if folder else f"{_rev(rev)}^{{tree}}"
        r = self._git("ls-tree", "-z", spec, check=False)
        if r.status != 0:
            return set()
        names = set()
        for entry in _split_z(r.out):
            meta, _, name = entry.partition("\t")
            if meta.split()[1:2] == ["tree"]:
                names.add(name)
        return names

    def import_lines(self, rev: str, folders: Iterable[str],
                     files: Iterable[str] = ()) -> list[str]:
        """Every line that starts an import (`import x`, `from x import y`) in the Python files
        under `folders` and in `files`, at `rev`: one `git grep`."""
        specs = [f":(glob){_posix(f).strip('/')}/**/*.py" for f in folders if f.strip("/")]
        specs += [f":(literal){_posix(f)}" for f in files]
        if not specs:
            return []
        r = self._git("grep", "-h", "-I", "--no-color", "-E",
                      r"^[[:space:]]*(from|import)[[:space:]]",
                      _rev(rev), "--", *specs, check=False)
        return os.fsdecode(r.out).splitlines() if r.status == 0 else []

    # ---- hooks ------------------------------------------------------------------------

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

    # ---- run locks ----------------------------------------------------------------------

    def lock_run(self, run: str) -> None:
        _guard_hook()
        """Take the run's lock file, replacing one whose holder died; RunLocked if it lives."""
        path = self._lock_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        for _ in range(_LOCK_ATTEMPTS):
            try:
                with open(path, "x", encoding="utf-8") as handle:
                    handle.write(record)
                return
            except FileExistsError:
                holder = self.run_lock_holder(run)
                if holder is not None and holder.alive:
                    raise RunLocked(f"run {run} is in use by process {holder.pid} on {holder.host} "
                                    "since " + holder.started) from None
                # Renaming is atomic: of two processes replacing a dead holder, one wins.
                try:
                    os.rename(path, path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}"))
                except FileNotFoundError:
                    pass
                for stale in path.parent.glob(f"{path.name}.stale-*"):
                    stale.unlink(missing_ok=True)
        raise RunLocked(f"run {run} is in use by another process")

    def unlock_run(self, run: str) -> None:
        path = self._lock_path(run)
        holder = self.run_lock_holder(run)
        if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
            path.unlink(missing_ok=True)

    def run_lock_holder(self, run: str) -> LockHolder | None:
        """Who holds the run's lock, and whether that process still lives (None: nobody)."""
        try:
            data = json.loads(self._lock_path(run).read_text(encoding="utf-8"))
            pid, host, started = int(data["pid"]), str(data["host"]), str(data["started"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # A holder killed while writing its record leaves a torn file: it is not alive.
            return LockHolder(pid=0, host="", started="", alive=False)
        return LockHolder(pid=pid, host=host, started=started, alive=_process_alive(pid, host))

    def clear_stale_locks(self, run: str) -> list[Path]:
        """Remove git lock files a killed process left on this run's branches.

        Only the holder of the run's lock calls this, so no live process can own them.
        """
        stale = [p for p in (self.git_dir / "refs" / "heads" / "soa" / run).rglob("*.lock")]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def _lock_path(self, run: str) -> Path:
        return self._soa_dir / "locks" / f"{run}.lock"

    # ---- notes --------------------------------------------------------------------------

    def add_note(self, sha: str, text: str) -> None:
        """Attach `text` to commit `sha` under NOTES_REF, replacing an earlier note."""
        self._write_note(self._require_commit(sha), lambda earlier: text)

    def append_note(self, sha: str, line: str) -> None:
        """Add `line` as the last line of the note of commit `sha` (one compare-and-swap)."""
        self._write_note(self._require_commit(sha),
                         lambda earlier: f"{earlier.rstrip()}\n{line}" if earlier else line)

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return self._git("merge-base", "--is-ancestor", _rev(ancestor), _rev(descendant),
                         check=False).status == 0

    def read_note(self, sha: str) -> str | None:
        notes = self.ref_sha(NOTES_REF)
        if notes is None:
            return None
        found = self._find_note(self._store.commit_tree(notes), self._require_commit(sha))
        return self._note_text(found[1]) if found else None

    # ---- internals ----------------------------------------------------------------------

    def _git(self, *args: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None,
             check: bool = True, retry: bool = False) -> _Result:
        """Run one git command against the repository.

        Calls `execute` with the whole command line because `repo.git(c=..., C=...)` keeps
        options on the shared Git object, which is not safe across threads.
        """
        command = [*self._git_command(), *args]
        full_env = {**self._location_env(), **(env or {})}
        for attempt in range(_LOCK_ATTEMPTS if retry else 1):
            if attempt:
                _backoff(attempt)
            status, out, err = self._execute(command, full_env, stdin)
            if status == 0 or not _LOCK_BUSY.search(err):
                break
        if check and status != 0:
            raise RepositoryError(f"git {args[0]} failed: {_reason(err)}")
        return _Result(status, out, err)

    def _execute(self, command: list[str], env: dict[str, str], stdin: bytes | None
                 ) -> tuple[int, bytes, str]:
        try:
            if stdin is None:
                return self._repo.git.execute(command, env=env, with_extended_output=True,
                                              with_exceptions=False, stdout_as_string=False,
                                              strip_newline_in_stdout=False)
            with tempfile.TemporaryFile() as stream:
                stream.write(stdin)
                stream.seek(0)
                return self._repo.git.execute(command, istream=stream, env=env,
                                              with_extended_output=True, with_exceptions=False,
                                              stdout_as_string=False, strip_newline_in_stdout=False)
        except git.GitCommandNotFound:
            raise RepositoryError("git is not installed or not on PATH") from None

    def _git_command(self) -> list[str]:
        return [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git",
                "-c", f"core.hooksPath={self._hooks_dir}", "-c", "core.fsmonitor=false"]

    def _location_env(self) -> dict[str, str]:
        """Where a command runs, stated outright rather than inherited from our environment.
        No command of ours needs an index; a scratch path keeps the user's safe."""
        return {"GIT_DIR": str(self._own_git_dir), "GIT_WORK_TREE": str(self.root),
                "GIT_INDEX_FILE": str(self._soa_dir / "unused-index"),
                "GIT_COMMON_DIR": str(self.git_dir),
                "GIT_OBJECT_DIRECTORY": str(self.git_dir / "objects")}

    @property
    def _store(self) -> ObjectStore:
        with self._tips_lock:
            if self._objects is None:
                reader = self._repo.config_reader()
                object_format = reader.get_value("extensions", "objectformat", "sha1")
                self._objects = ObjectStore(self.git_dir / "objects", self._git_command(),
                                            {**os.environ, **self._location_env()},
                                            object_format=str(object_format).lower())
            return self._objects

    def _head_sha(self) -> str | None:
        r = self._git("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
        return r.text if r.status == 0 else None

    def _require_commit(self, rev: str) -> str:
        if _FULL_SHA.fullmatch(rev):
            # The id of a commit needs no name resolution: the object store knows, mostly from
            # memory. Anything else (a tag to peel, a missing object) is git's to judge.
            try:
                self._store.commit_tree(rev)
                return rev
            except RepositoryError:
                pass
        r = self._git("rev-parse", "--verify", "-q", f"{_rev(rev)}^{{commit}}", check=False)
        if r.status != 0:
            raise RepositoryError(f"{rev} is not a commit in this repository")
        return r.text

    def _write_commit(self, tree: str, parents: tuple[str, ...], message: str,
                      author: Author) -> str:
        """A commit object, as `git commit-tree` writes it (never signed); committed by soa-git."""
        when = _git_time()
        return self._store.write_commit(tree, parents, message,
                                        author=f"{author.name} <{author.email}> {when}",
                                        committer=f"{SOA_GIT.name} <{SOA_GIT.email}> {when}")

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
        raise RefRefused(f"cannot update {what}: {_reason(r.err)}", ref=culprit)

    def _publish(self, ref: str, new: str, old: str | None, *, note: str | None, what: str,
                 reflog: str) -> None:
        """Move `ref` to the new commit `new`, with `note` on it in the same transaction."""
        self._write(_RefWrite(new if note is not None else None,
                              None if note is None else (lambda earlier: note),
                              (ref, new, old), what, reflog))

    def _write_note(self, target: str, compose: Callable[[str], str]) -> None:
        """Set the note of `target` to `compose(its note so far, or "")`."""
        self._write(_RefWrite(target, compose, None, NOTES_REF, "notes: add"))

    def _write(self, mine: _RefWrite) -> None:
        """Carry out `mine`: returns once its note and its ref moved; BranchMoved if its ref
        had moved.

        Notes and branch moves are written under the notes lock. Threads that arrive while
        another writes are served together: whoever takes the lock next writes every waiting
        note, and moves every waiting branch, in one transaction.
        """
        with self._queue_lock:
            self._queue.append(mine)
        with _shared_lock:
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
            for attempt in range(_NOTE_ATTEMPTS):
                if not batch:
                    return
                moves = [w.also for w in batch if w.also]
                notes = [w for w in batch if w.compose]
                if notes:
                    old = self.ref_sha(NOTES_REF)
                    moves.insert(0, (NOTES_REF, self._notes_commit(old, notes), old))
                try:
                    self._move(moves, what=NOTES_REF,
                               names={w.also[0]: w.what for w in batch if w.also},
                               reflog=batch[0].reflog if len(batch) == 1
                               else f"soa-git: {len(batch)} steps")
                except (BranchMoved, RefRefused) as failed:
                    if failed.ref == NOTES_REF and isinstance(failed, BranchMoved):
                        _backoff(attempt)
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
                    raise RepositoryError(f"cannot update {NOTES_REF}: {_reason(r.err)}")
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

    def _worktrees(self) -> list[_Worktree]:
        for attempt in range(6):
            # A worktree half added or half removed (by another thread or process) makes
            # `git worktree list` fail ("failed to read", "Invalid path"): look again.
            r = self._git("worktree", "list", "--porcelain", "-z", check=False)
            if r.status == 0:
                break
            _backoff(attempt)
        if r.status != 0:
            raise RepositoryError(f"git worktree failed: {_reason(r.err)}")
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

    def _workspace_path(self, path: Path) -> Path:
        """`path`, resolved, if it is one of soa-git's workspaces: never the user's files."""
        resolved = Path(path).resolve()
        root = self._workspaces_root.resolve()
        if resolved.parent.parent != root:
            raise RepositoryError(f"{path} is not an agent workspace under {root}")
        return resolved


HOOK_ALLOW_ENV = "SOA_GIT_ALLOW_IN_HOOK"


def _guard_hook() -> None:
    """Inside a pre-commit framework hook (PRE_COMMIT=1) soa-git starts no run and writes no
    branch or commit, unless the hook was invoked on purpose and says so with
    SOA_GIT_ALLOW_IN_HOOK=1 (the manual-stage soa-git-fill does). Locking a run counts as
    starting it, so `soa-git run` refuses before its first model call."""
    if os.environ.get("PRE_COMMIT") == "1" and os.environ.get(HOOK_ALLOW_ENV) != "1":
        raise RepositoryError("soa-git makes no branches or commits while PRE_COMMIT=1 is set "
                              "(inside a pre-commit hook); run `soa-git run` yourself, or the "
                              "manual-stage hook soa-git-fill")


def _process_alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True    # another machine sharing this .git: its processes cannot be checked
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _workspace_name(name: str) -> str:
    """A run id or workspace name as one folder name under .git/soa/work, never a path out
    of it."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"invalid workspace name {name!r}")
    return name


def _git_time() -> str:
    """Now, as git writes it in a commit: seconds since the epoch and the local UTC offset."""
    now = time.time()
    offset = time.localtime(now).tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    return f"{int(now)} {sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


def _rev(rev: str) -> str:
    # A revision that looks like an option would be read as one by git.
    if not rev or rev.startswith("-"):
        raise RepositoryError(f"{rev!r} is not a valid revision")
    return rev


def _posix(path: str) -> str:
    return PurePosixPath(path).as_posix()


def _split_z(out: bytes) -> list[str]:
    return [os.fsdecode(p) for p in out.split(b"\0") if p]


def _join(items: Iterable[str]) -> str:
    items = list(items)
    if not items:
        return "no file"
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _reason(err: str) -> str:
    """git's first error line, without its `fatal:`/`error:` prefix."""
    for line in err.splitlines():
        line = line.strip()
        if line:
            for prefix in ("fatal: ", "error: "):
                line = line.removeprefix(prefix)
            return line
    return "git gave no reason"


def _backoff(attempt: int) -> None:
    time.sleep(min(0.02 * 2 ** attempt, 1.0) * random.uniform(0.5, 1.5))
