"""Git objects read and written inside soa-git's own process: the fast path.

An agent's step touches two files, so it needs a handful of objects: two blobs, the trees on
their paths, a commit and its note. Starting a git process for each costs more than everything
else the step does, so objects are read through one long-lived `git cat-file --batch` and
written as loose objects, byte for byte as `git hash-object -w` writes them. Trees are
immutable, so every tree read or written is kept (up to a bound) and most reads never leave
the process. Refs are never touched here: refs.py moves them, with compare-and-swap.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import threading
import weakref
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..errors import RepositoryError
from . import metrics

TREE_MODE = "40000"
FILE_MODE = "100644"
# Parsed tree entries kept in memory; a wide folder's tree is one entry per file.
_TREE_CACHE_ENTRIES = 400_000
_BLOB_CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    mode: str
    sha: str

    @property
    def is_tree(self) -> bool:
        return self.mode == TREE_MODE


Tree = Mapping[str, Entry]


class _Cache:
    """A least-recently-used map bounded by the total weight of its values; thread-safe."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._used = 0
        self._items: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> object | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def fetch(self, key: str, make: Callable[[], Any], weigh: Callable[[Any], int]) -> Any:
        """The value for `key`, made (outside the lock) and kept if it is not there."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value, weigh(value))
        return value

    def put(self, key: str, value: object, weight: int) -> None:
        with self._lock:
            if key in self._items or weight > self._budget:
                return
            self._items[key] = (value, weight)
            self._used += weight
            while self._used > self._budget:
                _, (_, dropped) = self._items.popitem(last=False)
                self._used -= dropped


class ObjectStore:
    """The objects of one repository. Safe for many threads."""

    def __init__(self, objects_dir: Path, command: list[str], env: Mapping[str, str],
                 object_format: str = "sha1") -> None:
        """`command` runs git on this repository (`git -c ...`); `env` pins where it runs."""
        self._objects = objects_dir
        self._command = command
        self._env = dict(env)
        self._hash = object_format
        self._raw_len = hashlib.new(object_format).digest_size
        self._reader: subprocess.Popen | None = None
        self._read_lock = threading.Lock()
        self._trees = _Cache(_TREE_CACHE_ENTRIES)
        self._blobs = _Cache(_BLOB_CACHE_BYTES)
        self._commit_heads = _Cache(1_000_000)     # commit -> (tree, parents)
        self._written: set[str] = set()     # objects known to be in the store: no stat needed
        self._scratch_names = itertools.count()
        self._folders: set[str] = set()     # objects/xx folders known to exist

    # ---- reading ------------------------------------------------------------------------

    @metrics.measured("object_reads")
    def read(self, sha: str) -> tuple[str, bytes]:
        """(type, content) of an object; RepositoryError if the repository lacks it."""
        with self._read_lock:
            reader = self._started()
            assert reader.stdin is not None and reader.stdout is not None
            try:
                reader.stdin.write(sha.encode("ascii") + b"\n")
                reader.stdin.flush()
                header = reader.stdout.readline().decode("ascii", errors="replace").split()
                if len(header) != 3:
                    raise RepositoryError(f"object {sha} is not in the repository")
                size = int(header[2])
                data = reader.stdout.read(size + 1)[:size]
            except (OSError, ValueError) as exc:
                self._stop_reader()
                raise RepositoryError(f"cannot read object {sha}: {exc}") from None
        return header[1], data

    def tree(self, sha: str) -> Tree:
        return self._trees.fetch(sha, lambda: self._parse_tree(self._read_a("tree", sha)),
                                 lambda tree: len(tree) + 1)

    def blob(self, sha: str) -> bytes:
        return self._blobs.fetch(sha, lambda: self._read_a("blob", sha),
                                 lambda data: len(data) + 64)

    def commit_tree(self, sha: str) -> str:
        """The tree of commit `sha`."""
        return self._commit_head(sha)[0]

    def parents(self, sha: str) -> tuple[str, ...]:
        """The parents of commit `sha`."""
        return self._commit_head(sha)[1]

    def _commit_head(self, sha: str) -> tuple[str, tuple[str, ...]]:
        def read() -> tuple[str, tuple[str, ...]]:
            data = self._read_a("commit", sha)
            lines = data[:data.find(b"\n\n")].decode("utf-8", errors="replace").split("\n")
            if not lines[0].startswith("tree "):
                raise RepositoryError(f"commit {sha} has no tree")
            return lines[0][5:], tuple(line[7:] for line in lines[1:]
                                       if line.startswith("parent "))

        return self._commit_heads.fetch(sha, read, lambda head: 1)

    def _read_a(self, kind: str, sha: str) -> bytes:
        found, data = self.read(sha)
        if found != kind:
            raise RepositoryError(f"object {sha} is a {found}, not a {kind}")
        return data

    def lookup(self, tree: str, path: str) -> Entry | None:
        """The entry at posix `path` under `tree`, or None."""
        *folders, name = path.split("/")
        current: Tree = self.tree(tree)
        for folder in folders:
            entry = current.get(folder)
            if entry is None or not entry.is_tree:
                return None
            current = self.tree(entry.sha)
        return current.get(name)

    def files(self, tree: str, wanted: Selection) -> Iterator[tuple[str, Entry]]:
        """Every file (path, entry) of `tree` that `wanted` selects, folders first-walked."""
        for path, entry in self._changes(None, tree, wanted, ""):
            assert entry is not None
            yield path, entry

    def changes(self, old: str, new: str, wanted: Selection) -> Iterator[tuple[str, Entry | None]]:
        """Files that differ between two trees, within `wanted`: (path, new entry or None)."""
        yield from self._changes(old, new, wanted, "")

    def _changes(self, old: str | None, new: str | None, wanted: Selection,
                 prefix: str) -> Iterator[tuple[str, Entry | None]]:
        if old == new:
            return
        before = self.tree(old) if old else {}
        after = self.tree(new) if new else {}
        for name in sorted(set(before) | set(after)):
            path = prefix + name
            a, b = before.get(name), after.get(name)
            if a == b:
                continue
            a_tree = a.sha if a is not None and a.is_tree else None
            b_tree = b.sha if b is not None and b.is_tree else None
            a_file = a is not None and not a.is_tree
            b_file = b is not None and not b.is_tree
            if a_file and not b_file and wanted.holds(path):
                yield path, None    # first, in case a folder of that name comes
            if (a_tree or b_tree) and wanted.enters(path):
                yield from self._changes(a_tree, b_tree, wanted, path + "/")
            if b_file and wanted.holds(path):
                yield path, b

    # ---- writing ------------------------------------------------------------------------

    @metrics.measured("object_writes")
    def write(self, kind: str, data: bytes) -> str:
        """Store an object as a loose object (if it is not one already); its id."""
        raw = f"{kind} {len(data)}\0".encode("ascii") + data
        sha = hashlib.new(self._hash, raw).hexdigest()
        if sha in self._written:
            return sha
        folder = os.path.join(self._objects, sha[:2])
        path = os.path.join(folder, sha[2:])
        if not os.path.exists(path):
            if sha[:2] not in self._folders:
                os.makedirs(folder, exist_ok=True)
                self._folders.add(sha[:2])
            # As git does: written aside under a name no other writer uses, then renamed into
            # place. Objects are named by their content, so a rename over the same object
            # written meanwhile replaces it with identical bytes.
            scratch = os.path.join(folder, f"tmp_obj_{os.getpid()}_{next(self._scratch_names)}")
            with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444),
                           "wb") as f:
                f.write(zlib.compress(raw, 1))
            os.replace(scratch, path)
        self._written.add(sha)
        return sha

    def write_blob(self, data: bytes) -> str:
        sha = self.write("blob", data)
        self._blobs.put(sha, data, len(data) + 64)
        return sha

    def write_tree(self, entries: Tree) -> str:
        # git orders entries by name, a folder's name as if it ended in "/".
        order = sorted(entries, key=lambda n: n + "/" if entries[n].is_tree else n)
        data = b"".join(f"{entries[n].mode} {n}".encode("utf-8") + b"\0"
                        + bytes.fromhex(entries[n].sha)
                        for n in order)
        sha = self.write("tree", data)
        self._trees.put(sha, dict(entries), len(entries) + 1)
        return sha

    def edit(self, tree: str | None, changes: Mapping[str, Entry | None]) -> str:
        """`tree` (None: an empty one) with each posix path set to its entry (None removes it):
        the new tree's id. Only the trees on the changed paths are rewritten."""
        return self.write_tree(self._edited(tree, changes))

    def _edited(self, tree: str | None, changes: Mapping[str, Entry | None]) -> dict[str, Entry]:
        entries = dict(self.tree(tree)) if tree else {}
        inner: dict[str, dict[str, Entry | None]] = {}
        for path, entry in changes.items():
            head, _, rest = path.partition("/")
            if rest:
                inner.setdefault(head, {})[rest] = entry
            elif entry is None:
                entries.pop(head, None)
            else:
                entries[head] = entry
        for name, below in inner.items():
            current = entries.get(name)
            sub = self._edited(current.sha if current is not None and current.is_tree else None,
                               below)
            if sub:
                entries[name] = Entry(TREE_MODE, self.write_tree(sub))
            else:
                entries.pop(name, None)     # git has no empty folders
        return entries

    def write_commit(self, tree: str, parents: Iterable[str], message: str, *,
                     author: str, committer: str) -> str:
        """`author`/`committer` as git writes them: `Name <email> <seconds> <+hhmm>`."""
        parents = tuple(parents)
        lines = [f"tree {tree}", *(f"parent {p}" for p in parents),
                 f"author {author}", f"committer {committer}", "", message]
        sha = self.write("commit", "\n".join(lines).encode("utf-8"))
        self._commit_heads.put(sha, (tree, parents), 1)
        return sha

    def merge_trees(self, base: str, ours: str, theirs: str) -> str | None:
        """The tree of a three-way merge in which each path changed on one side at most and
        nothing was removed, or None: then git's own merge is needed (a content merge, or
        rename detection, which pairs what was removed with what was added). Folders only one
        side changed are taken whole."""
        merged = self._merged(base, ours, theirs)
        return None if merged is None else self.write_tree(merged)

    def _merged(self, base: str | None, ours: str, theirs: str) -> dict[str, Entry] | None:
        before = self.tree(base) if base else {}
        mine, other = self.tree(ours), self.tree(theirs)
        if any(name not in mine or name not in other for name in before):
            return None
        merged = dict(mine)
        for name, entry in other.items():
            old, current = before.get(name), mine.get(name)
            if entry == current or entry == old:
                continue
            if current is None or current == old:
                merged[name] = entry
            elif current.is_tree and entry.is_tree and (old is None or old.is_tree):
                inner = self._merged(old.sha if old else None, current.sha, entry.sha)
                if inner is None:
                    return None
                merged[name] = Entry(TREE_MODE, self.write_tree(inner))
            else:
                return None
        return merged

    # ---- internals ----------------------------------------------------------------------

    def _parse_tree(self, data: bytes) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        at = 0
        while at < len(data):
            space = data.index(b" ", at)
            nul = data.index(b"\0", space)
            end = nul + 1 + self._raw_len
            name = data[space + 1:nul].decode("utf-8", errors="surrogateescape")
            entries[name] = Entry(data[at:space].decode("ascii"), data[nul + 1:end].hex())
            at = end
        return entries

    def _started(self) -> subprocess.Popen:
        if self._reader is None or self._reader.poll() is not None:
            try:
                self._reader = subprocess.Popen(
                    [*self._command, "cat-file", "--batch"], env=self._env,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            except FileNotFoundError:
                raise RepositoryError("git is not installed or not on PATH") from None
            # The reader ends with this store: a process that opens many repositories (tests,
            # a bot) does not keep one `cat-file` per repository it ever read.
            weakref.finalize(self, _end, self._reader)
        return self._reader

    def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            _end(reader)


def _end(reader: subprocess.Popen) -> None:
    if reader.stdin is not None:
        try:
            reader.stdin.close()
        except OSError:
            pass
    reader.kill()
    reader.wait()
    if reader.stdout is not None:
        reader.stdout.close()


class Selection:
    """Which files of a tree a workspace holds: everything under `folders`, and the files
    directly in the root and in every folder above one of them (git's cone-mode rule)."""

    def __init__(self, folders: Iterable[str]) -> None:
        self._folders = {f.strip("/") for f in folders if f.strip("/")}
        self._above = {"/".join(f.split("/")[:i]) for f in self._folders
                       for i in range(1, f.count("/") + 1)}

    def _inside(self, path: str) -> bool:
        return any(path == f or path.startswith(f + "/") for f in self._folders)

    def enters(self, folder: str) -> bool:
        return folder in self._above or self._inside(folder)

    def holds(self, path: str) -> bool:
        parent = path.rpartition("/")[0]
        return self._inside(path) or parent == "" or parent in self._above
