"""A merge conflict sends the child back to redo its work on the new base; no half-done merge."""

from __future__ import annotations

import subprocess

import pytest

from soa_git.gitrepo import Author, GitRepo, MergeConflict

from .helpers.repos import git, make_repo
from .helpers.shapes import fill, shapes_repo, shapes_script

AGENT = Author("soa agent a", "a@soa-git.invalid")


def edit_and_commit(repo: GitRepo, branch: str, files: dict[str, str], allowed: tuple[str, ...]) -> str:
    sha = repo.commit_files(branch, files, start=repo.head(), subject="edit", trailers={"Soa-Agent": "a"},
                            author=AGENT, allowed_paths=allowed)
    assert sha
    return sha


def test_catch_up_keeps_the_agents_files_and_takes_the_rest_from_the_base(tmp_path):
    path = make_repo(tmp_path / "r", {"own.py": "x = 0\n", "shared.py": "y = 0\n"})
    repo = GitRepo.open(path)
    edit_and_commit(repo, "soa/r/m", {"own.py": "x = 'mother'\n", "shared.py": "y = 1\n"}, ("own.py", "shared.py"))
    edit_and_commit(repo, "soa/r/m.c", {"own.py": "x = 'child'\n"}, ("own.py",))

    with pytest.raises(MergeConflict) as raised:
        repo.merge("soa/r/m", "soa/r/m.c", subject="merge", trailers={}, author=AGENT)
    assert raised.value.conflicts == ("own.py",)
    assert git(path, "status", "--porcelain") == ""

    caught = repo.catch_up("soa/r/m.c", "soa/r/m", ["own.py"], subject="redo", trailers={"Soa-Agent": "m.c"},
                           author=AGENT)
    assert git(path, "show", f"{caught}:own.py") == "x = 'child'\n"
    assert git(path, "show", f"{caught}:shared.py") == "y = 1\n"
    assert len(git(path, "rev-list", "--parents", "-1", caught).split()) == 3
    merged = repo.merge("soa/r/m", "soa/r/m.c", subject="merge", trailers={}, author=AGENT)
    assert git(path, "show", f"{merged}:own.py") == "x = 'child'\n"
    assert subprocess.run(["git", "-C", str(path), "fsck", "--strict"]).returncode == 0


def test_a_conflicting_child_redoes_its_work_and_is_merged(tmp_path, serve, monkeypatch):
    shapes = shapes_repo(tmp_path / "shapes", readme=False)
    real_merge = GitRepo.merge
    calls = []

    def first_merge_conflicts(self, branch, other, **kwargs):
        calls.append(other)
        if len(calls) == 1:
            raise MergeConflict("merging conflicts in shapes/area_report__area.py", ("shapes/area_report__area.py",))
        return real_merge(self, branch, other, **kwargs)

    monkeypatch.setattr(GitRepo, "merge", first_merge_conflicts)
    [summary] = fill(shapes, serve(shapes_script()), jobs=1)
    assert summary.state == "done", summary.message
    redone = calls[0]
    log = git(shapes, "log", "--format=%s", redone).splitlines()
    assert log[0].startswith("modify: redo ")
    assert redone in calls[1:], "the child was merged after redoing its work"
