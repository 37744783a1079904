"""The in-process three-way tree merge: taken only where it is what git's merge would give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from soa_git.gitrepo.objects import FILE_MODE, Entry, ObjectStore

from .helpers.repos import git, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> tuple[ObjectStore, str]:
    """A store, and the tree of its repository's one commit."""
    path = make_repo(tmp_path / "repo", {"pkg/a.py": "A = 1\n", "pkg/b.py": "B = 1\n",
                                          "README.md": "top\n"})
    store = ObjectStore(path / ".git" / "objects", ["git", "-C", str(path)], dict(os.environ))
    return store, git(path, "rev-parse", "HEAD^{tree}").strip()


def edited(store: ObjectStore, tree: str, changes: dict[str, str | None]) -> str:
    return store.edit(tree, {path: None if text is None
                             else Entry(FILE_MODE, store.write_blob(text.encode()))
                             for path, text in changes.items()})


def test_changes_on_different_paths_merge(repo: tuple[ObjectStore, str]) -> None:
    store, base = repo
    ours = edited(store, base, {"pkg/a.py": "A = 2\n", "new/x.py": "X = 1\n"})
    theirs = edited(store, base, {"pkg/c.py": "C = 1\n", "new/y.py": "Y = 1\n"})
    merged = store.merge_trees(base, ours, theirs)
    assert merged == edited(store, base, {"pkg/a.py": "A = 2\n", "pkg/c.py": "C = 1\n",
                                          "new/x.py": "X = 1\n", "new/y.py": "Y = 1\n"})
    # The same change on both sides is no conflict; no change on one side is the other side.
    assert store.merge_trees(base, ours, ours) == ours
    assert store.merge_trees(base, base, theirs) == theirs


@pytest.mark.parametrize("ours, theirs", [
    ({"pkg/a.py": "A = 2\n"}, {"pkg/a.py": "A = 3\n"}),      # one file, two changes
    ({"pkg/b.py": None}, {"pkg/c.py": "C = 1\n"}),          # a removal (renames are git's)
    ({"pkg/x.py": "X = 1\n"}, {"pkg/b.py": None, "pkg/y.py": "B = 1\n"}),
    ({"pkg": "a file now\n"}, {"pkg/c.py": "C = 1\n"}),     # a folder that became a file
], ids=["same-file", "removed-on-ours", "removed-on-theirs", "folder-to-file"])
def test_what_only_git_can_merge_is_left_to_it(repo: tuple[ObjectStore, str], ours: dict,
                                               theirs: dict) -> None:
    store, base = repo
    assert store.merge_trees(base, edited(store, base, ours), edited(store, base, theirs)) is None
