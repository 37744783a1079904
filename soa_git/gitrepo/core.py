"""One repository, and every git command run against it: pinned to the repository, never to the
user's index or hooks, retried while another process holds one of git's lock files.

The other modules of this package are rooms of one `GitRepo` (see `__init__`); this is the
floor they stand on: opening, running git, the object store, and the small helpers they share.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, NamedTuple, Self

from ..errors import RepositoryError
from . import metrics
from .objects import ObjectStore


_MIN_GIT = (2, 38)
# Another git process holds one of git's lock files (git already waited briefly for ref locks).
_LOCK_BUSY = re.compile(r"\.lock'?: File exists")
LOCK_ATTEMPTS = 12
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# What makes git look somewhere other than the directory it runs in (a hook's GIT_DIR, say).
LOCATION_VARS = frozenset({
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_QUARANTINE_PATH"})
# git's messages in English whatever the user's locale: some errors are told apart by their words.
_ENGLISH = {"LANGUAGE": "C", "LC_ALL": "C"}


@dataclass(frozen=True)
class Author:
    name: str
    email: str


# Who commits every commit soa-git writes, and authors its own (start, notes).
SOA_GIT = Author("soa-git", "soa-git@localhost")


@dataclass(frozen=True)
class Location:
    """Where a repository is, as git found it."""

    root: Path
    git_dir: Path          # this working tree's own (a linked worktree has its own HEAD, index)
    common_dir: Path       # the repository's, shared by its linked worktrees
    object_format: str     # sha1 or sha256


class Result(NamedTuple):
    status: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return os.fsdecode(self.out).strip()


class Core:
    """One repository, opened from any path inside its working tree."""

    def __init__(self, location: Location) -> None:
        self.root = location.root.resolve()
        self.git_dir = location.common_dir.resolve()
        # The user's own checkout may itself be a linked worktree with its own HEAD and index.
        self._own_git_dir = location.git_dir.resolve()
        self._object_format = location.object_format
        self._soa_dir = self.git_dir / "soa"
        self._workspaces_root = self._soa_dir / "work"
        self._hooks_dir = self._soa_dir / "no-hooks"
        self._objects: ObjectStore | None = None
        self._objects_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, allow_empty: bool = False) -> Self:
        """The repository containing `path`; `allow_empty` accepts one with no commits yet."""
        path = Path(path)
        if not path.exists():
            raise RepositoryError(f"{path} does not exist")
        start = path.parent if path.is_file() else path
        version = _git_version()
        if version[:2] < _MIN_GIT:
            raise RepositoryError(f"soa-git needs git {_MIN_GIT[0]}.{_MIN_GIT[1]} or newer, "
                                  f"but this is git {'.'.join(map(str, version))}")
        # git finds the repository from the path alone, as git itself would run there.
        found = run_git(["rev-parse", "--path-format=absolute", "--is-bare-repository",
                         "--git-dir", "--git-common-dir", "--show-object-format",
                         "--show-toplevel"], cwd=start, env=env_without_location())
        lines = os.fsdecode(found.out).splitlines()
        if len(lines) < 4:
            if "not a git repository" in found.err:
                raise RepositoryError(f"{path} is not inside a git repository")
            raise RepositoryError(f"git cannot open the repository at {path}: {reason(found.err)}")
        bare, git_dir, common_dir, object_format = lines[:4]
        if bare == "true" or len(lines) < 5:
            raise RepositoryError(f"{git_dir} is a bare repository; run soa-git in a working tree"
                                  if bare == "true" else
                                  f"{path} is inside {git_dir}; run soa-git in a working tree")
        opened = cls(Location(Path(lines[4]), Path(git_dir), Path(common_dir), object_format))
        opened._hooks_dir.mkdir(parents=True, exist_ok=True)
        if not allow_empty and opened._head_sha() is None:
            raise RepositoryError("the repository has no commits yet; commit something first")
        return opened

    @classmethod
    def create(cls, path: Path, message: str) -> Self:
        """A new repository at `path` on branch main, its one commit holding the files there."""
        path = Path(path)
        if (path / ".git").exists():
            raise RepositoryError(f"{path} is already a git repository")
        created = run_git(["init", "-q", "--initial-branch=main", str(path)], cwd=None,
                          env=env_without_location())
        if created.status != 0:
            raise RepositoryError(f"git init failed: {reason(created.err)}")
        opened = cls.open(path, allow_empty=True)
        index = {"GIT_INDEX_FILE": str(opened._own_git_dir / "index")}
        opened._git("add", "-A", env=index)
        tree = opened._git("write-tree", env=index).text
        sha = opened._write_commit(tree, (), message, SOA_GIT)
        opened._git("update-ref", "HEAD", sha)
        return opened

    def head(self) -> str:
        sha = self._head_sha()
        if sha is None:
            raise RepositoryError("the repository has no commits yet; commit something first")
        return sha

    def head_branch(self) -> str | None:
        r = self._git("symbolic-ref", "-q", "HEAD", check=False)
        return r.text.removeprefix("refs/heads/") if r.status == 0 else None

    def read_file(self, rev: str, path: str) -> str | None:
        r = self._git("cat-file", "blob", f"{checked_rev(rev)}:{posix(path)}", check=False)
        if r.status != 0:
            self._require_commit(rev)
            return None
        try:
            return r.out.decode("utf-8")
        except UnicodeDecodeError:
            raise RepositoryError(f"{path} at {rev} is not UTF-8 text") from None

    def file_exists(self, rev: str, path: str) -> bool:
        r = self._git("cat-file", "-t", f"{checked_rev(rev)}:{posix(path)}", check=False)
        if r.status != 0:
            self._require_commit(rev)
        return r.status == 0 and r.text == "blob"

    def _git(self, *args: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None,
             check: bool = True, retry: bool = False) -> Result:
        """Run one git command against the repository."""
        command = [*self._git_options(), *args]
        full_env = {**os.environ, **_ENGLISH, **self._location_env(), **(env or {})}
        for attempt in range(LOCK_ATTEMPTS if retry else 1):
            if attempt:
                backoff(attempt)
            with metrics.measure("git:" + args[0]):
                r = run_git(command, cwd=self.root, env=full_env, stdin=stdin)
            if r.status == 0 or not _LOCK_BUSY.search(r.err):
                break
        if check and r.status != 0:
            raise RepositoryError(f"git {args[0]} failed: {reason(r.err)}")
        return r

    def _git_options(self) -> list[str]:
        return ["-c", f"core.hooksPath={self._hooks_dir}", "-c", "core.fsmonitor=false"]

    def _location_env(self) -> dict[str, str]:
        """Where a command runs, stated outright rather than inherited from our environment.
        No command of ours needs an index; a scratch path keeps the user's safe."""
        return {"GIT_DIR": str(self._own_git_dir), "GIT_WORK_TREE": str(self.root),
                "GIT_INDEX_FILE": str(self._soa_dir / "unused-index"),
                "GIT_COMMON_DIR": str(self.git_dir),
                "GIT_OBJECT_DIRECTORY": str(self.git_dir / "objects")}

    @property
    def _store(self) -> ObjectStore:
        with self._objects_lock:
            if self._objects is None:
                self._objects = ObjectStore(self.git_dir / "objects",
                                            ["git", *self._git_options()],
                                            {**os.environ, **self._location_env()},
                                            object_format=self._object_format)
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
        r = self._git("rev-parse", "--verify", "-q", f"{checked_rev(rev)}^{{commit}}", check=False)
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


def run_git(args: list[str], *, cwd: Path | None, env: Mapping[str, str] | None = None,
            stdin: bytes | None = None) -> Result:
    """One git process, its output kept; nothing of the caller's terminal reaches it."""
    feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, **feed)
    except FileNotFoundError:
        raise RepositoryError("git is not installed or not on PATH") from None
    return Result(done.returncode, done.stdout, os.fsdecode(done.stderr))


def env_without_location() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in LOCATION_VARS}


def _git_version() -> tuple[int, ...]:
    """(2, 39, 5) for `git version 2.39.5`."""
    words = run_git(["version"], cwd=None).text.split()
    numbers = words[2] if len(words) > 2 else ""
    return tuple(int(n) for n in numbers.split(".")[:4] if n.isdigit())


HOOK_ALLOW_ENV = "SOA_GIT_ALLOW_IN_HOOK"


def guard_hook() -> None:
    """Inside a pre-commit framework hook (PRE_COMMIT=1) soa-git starts no run and writes no
    branch or commit, unless the hook was invoked on purpose and says so with
    SOA_GIT_ALLOW_IN_HOOK=1 (the manual-stage soa-git-fill does). Locking a run counts as
    starting it, so `soa-git run` refuses before its first model call."""
    if os.environ.get("PRE_COMMIT") == "1" and os.environ.get(HOOK_ALLOW_ENV) != "1":
        raise RepositoryError("soa-git makes no branches or commits while PRE_COMMIT=1 is set "
                              "(inside a pre-commit hook); run `soa-git run` yourself, or the "
                              "manual-stage hook soa-git-fill")


def _git_time() -> str:
    """Now, as git writes it in a commit: seconds since the epoch and the local UTC offset."""
    now = time.time()
    offset = time.localtime(now).tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    return f"{int(now)} {sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


def checked_rev(rev: str) -> str:
    # A revision that looks like an option would be read as one by git.
    if not rev or rev.startswith("-"):
        raise RepositoryError(f"{rev!r} is not a valid revision")
    return rev


def posix(path: str) -> str:
    return PurePosixPath(path).as_posix()


def split_z(out: bytes) -> list[str]:
    return [os.fsdecode(p) for p in out.split(b"\0") if p]


def join_names(items: Iterable[str]) -> str:
    items = list(items)
    if not items:
        return "no file"
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def reason(err: str) -> str:
    """git's first error line, without its `fatal:`/`error:` prefix."""
    for line in err.splitlines():
        line = line.strip()
        if line:
            for prefix in ("fatal: ", "error: "):
                line = line.removeprefix(prefix)
            return line
    return "git gave no reason"


def backoff(attempt: int) -> None:
    time.sleep(min(0.02 * 2 ** attempt, 1.0) * random.uniform(0.5, 1.5))
