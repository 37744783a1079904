"""Agents' workspaces: plain folders under `.git/soa/work/<run>/<n>` that hold the selected files
of one git tree, moved from tree to tree by writing only what differs.

A folder remembers what was written into it: the tree, the selection, and each file as written
(its blob, and the inode, size and change time it had then, as git's index tells a changed file).
Tests ran in the folder since, so before it moves on, it is compared with that record: files
someone added are removed, and files someone changed or removed are written again. A file whose
change time is too close to the end of its writing to tell a later change apart is compared by
content (git's "racy" rule). So a folder that moves to a sibling's tree costs what the two trees
differ in, not a new folder: on a slow file system creating files is most of a workspace's cost.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import RepositoryError
from . import metrics
from .core import Core, Location, checked_rev, posix, split_z
from .objects import Entry, ObjectStore, Selection

# Longer than a file system timestamp's tick (at most 10 ms on Linux) and the lag of the
# coarse clock behind it: a file written within this of its checkout's end is checked by content.
_RACY_NS = 50_000_000


@dataclass(frozen=True)
class _Written:
    sha: str
    inode: int
    size: int
    changed_ns: int


@dataclass
class _Held:
    tree: str
    folders: tuple[str, ...]
    files: dict[str, _Written] = field(default_factory=dict)
    folders_made: set[str] = field(default_factory=set)
    finished_ns: int = 0


class WorkspaceFiles:
    """What this process wrote into each folder. One thread at a time per folder; any number of
    folders at once."""

    def __init__(self) -> None:
        self._held: dict[Path, _Held] = {}
        self._lock = threading.Lock()

    def write(self, store: ObjectStore, tree: str, folders: Iterable[str], into: Path) -> None:
        """Make `into` hold exactly the files of `tree` that `folders` select."""
        key = tuple(sorted(set(folders)))
        wanted = Selection(key)
        with self._lock:
            held = self._held.pop(into, None)
        if held is None or held.folders != key or not into.is_dir():
            _remove(into)
            into.mkdir(parents=True)
            held = _Held(tree=tree, folders=key)
            changes = list(store.files(tree, wanted))
        else:
            changes = list(store.changes(held.tree, tree, wanted))
            changing = {path for path, _ in changes}
            for path in list(self._disturbed(store, into, held)):
                _remove(into / path)
                held.files.pop(path, None)
                if path not in changing and wanted.holds(path):
                    entry = store.lookup(tree, path)
                    if entry is not None and not entry.is_tree:
                        changes.append((path, entry))
        for path, entry in changes:
            self._put(store, into, held, path, entry)
        held.tree = tree
        held.finished_ns = time.time_ns()
        with self._lock:
            self._held[into] = held

    def forget(self, under: Path) -> None:
        """`under` and every folder inside it were removed."""
        with self._lock:
            for path in [p for p in self._held if p == under or under in p.parents]:
                del self._held[path]

    def _put(self, store: ObjectStore, into: Path, held: _Held, path: str,
             entry: Entry | None) -> None:
        _check_path(path)
        target = into / path
        if entry is None or entry.mode == "160000":     # gone, or a submodule: no files
            _remove(target)
            held.files.pop(path, None)
            return
        folder = path.rpartition("/")[0]
        if folder and folder not in held.folders_made:
            parts = folder.split("/")
            held.folders_made.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
            target.parent.mkdir(parents=True, exist_ok=True)
        data = store.blob(entry.sha)
        try:
            _place(target, data, entry.mode)
        except FileNotFoundError:
            # Its folder was there when written before; whatever ran here since removed it.
            target.parent.mkdir(parents=True, exist_ok=True)
            _place(target, data, entry.mode)
        st = os.lstat(target)
        held.files[path] = _Written(entry.sha, st.st_ino, st.st_size, st.st_ctime_ns)

    def _disturbed(self, store: ObjectStore, into: Path, held: _Held) -> Iterator[str]:
        """Paths in `into` that are not as written: added, changed or removed since."""
        seen: set[str] = set()
        pending = [""]
        while pending:
            folder = pending.pop()
            with os.scandir(into / folder if folder else into) as entries:
                for item in entries:
                    path = f"{folder}/{item.name}" if folder else item.name
                    if item.is_dir(follow_symlinks=False):
                        if path in held.folders_made:
                            pending.append(path)
                        else:
                            yield path
                    elif path not in held.files:
                        yield path
                    else:
                        seen.add(path)
                        if not self._as_written(store, item, held.files[path], held.finished_ns):
                            yield path
        yield from (path for path in list(held.files) if path not in seen)

    @staticmethod
    def _as_written(store: ObjectStore, item: os.DirEntry, written: _Written,
                    finished_ns: int) -> bool:
        st = item.stat(follow_symlinks=False)
        if (st.st_ino, st.st_size, st.st_ctime_ns) != (written.inode, written.size,
                                                       written.changed_ns):
            return False
        if written.changed_ns < finished_ns - _RACY_NS:
            return True
        if stat.S_ISLNK(st.st_mode):
            return os.fsencode(os.readlink(item.path)) == store.blob(written.sha)
        with open(item.path, "rb") as f:
            return f.read() == store.blob(written.sha)


class Workspaces(Core):
    """Agents' workspaces, and what git tells about the folders they need."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        self._workspace_files = WorkspaceFiles()

    def workspace(self, run: str, name: str) -> Path:
        """Where workspace `name` of run `run` lives (not created)."""
        return self._run_folder(run) / _workspace_name(name)

    def check_out(self, rev: str, folders: Iterable[str], into: Path) -> None:
        """Make the workspace `into` hold the files of `rev` that `folders` select (everything
        under them, and the files directly in the root and in each folder above them, as a
        cone-mode sparse checkout would), and nothing else.

        A workspace this object filled before moves to `rev` by writing only what differs from
        what it holds, and repairing whatever was changed in it since (see `WorkspaceFiles`): moving
        a workspace to a merge, or handing it to another agent, costs what changed.
        """
        into = self._workspace_path(into)
        # A folder that exists is moved to `rev`; a new one is filled.
        with metrics.measure("workspace_sync" if into.is_dir() else "workspace_fill"):
            self._workspace_files.write(self._store,
                                        self._store.commit_tree(self._require_commit(rev)),
                                        folders, into)

    def run_workspaces(self, run: str) -> list[Path]:
        """The run's workspace folders left on disk."""
        folder = self._run_folder(run)
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def remove_workspaces(self, run: str) -> None:
        """Remove every workspace of `run`, and its folder; none of any other run."""
        folder = self._run_folder(run)
        shutil.rmtree(folder, ignore_errors=True)
        self._workspace_files.forget(folder.resolve())

    def _run_folder(self, run: str) -> Path:
        return self._workspaces_root / _workspace_name(run)

    def _workspace_path(self, path: Path) -> Path:
        """`path`, resolved, if it is one of soa-git's workspaces: never the user's files."""
        resolved = Path(path).resolve()
        root = self._workspaces_root.resolve()
        if resolved.parent.parent != root:
            raise RepositoryError(f"{path} is not an agent workspace under {root}")
        return resolved

    def subfolders(self, rev: str, folder: str) -> set[str]:
        """Names of the folders directly inside `folder` ('' is the root) at `rev`."""
        spec = f"{checked_rev(rev)}:{posix(folder)}" if folder else f"{checked_rev(rev)}^{{tree}}"
        r = self._git("ls-tree", "-z", spec, check=False)
        if r.status != 0:
            return set()
        names = set()
        for entry in split_z(r.out):
            meta, _, name = entry.partition("\t")
            if meta.split()[1:2] == ["tree"]:
                names.add(name)
        return names

    def import_lines(self, rev: str, folders: Iterable[str],
                     files: Iterable[str] = ()) -> list[str]:
        """Every line that starts an import (`import x`, `from x import y`) in the Python files
        under `folders` and in `files`, at `rev`: one `git grep`."""
        specs = [f":(glob){posix(f).strip('/')}/**/*.py" for f in folders if f.strip("/")]
        specs += [f":(literal){posix(f)}" for f in files]
        if not specs:
            return []
        r = self._git("grep", "-h", "-I", "--no-color", "-E",
                      r"^[[:space:]]*(from|import)[[:space:]]",
                      checked_rev(rev), "--", *specs, check=False)
        return os.fsdecode(r.out).splitlines() if r.status == 0 else []


def _workspace_name(name: str) -> str:
    """A run id or workspace name as one folder name under .git/soa/work, never a path out
    of it."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"invalid workspace name {name!r}")
    return name


def _place(target: Path, data: bytes, mode: str) -> None:
    if mode == "120000":
        _remove(target)
        os.symlink(os.fsdecode(data), target)
    else:
        _write_file(target, data, executable=mode == "100755")


def _write_file(target: Path, data: bytes, *, executable: bool) -> None:
    """Overwrite a regular file in place (much cheaper than a new file on some file systems),
    else replace whatever is there; never through a symbolic link."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        _remove(target)
        st = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o755 if executable else 0o644)
    try:
        if st is not None and bool(st.st_mode & 0o100) != executable:
            os.fchmod(fd, 0o755 if executable else 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Whatever is at `path` (a file, a link, a folder), if anything."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _check_path(path: str) -> None:
    """git refuses to check such paths out; a tree made by hand could still hold them."""
    for part in path.split("/"):
        if part in ("", ".", "..") or part.lower() == ".git":
            raise RepositoryError(f"refusing to write {path!r}: not a safe path")
