"""gitrepo against real git repositories: no mocks of git."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from soa_git.errors import OwnershipError, RepositoryError
from soa_git.gitrepo import (NOTES_REF, Author, BranchMoved, GitRepo, MergeCheck,
                             MergeConflict)
from soa_git.runformat import TRAILER_KEYS

AGENT = Author("solve.parse", "solve.parse@agents.soa-git")
MOTHER = Author("solve", "solve@agents.soa-git")
USER = ("-c", "user.name=Some User", "-c", "user.email=user@example.com")
FILES = {"pkg/a.py": "def a():\n    return 1\n",
         "pkg/b.py": "def b():\n    return 2\n",
         "tests/test_a.py": "from pkg.a import a\n\n\ndef test_a():\n    assert a() == 1\n"}
HOOKS = ("pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "post-checkout",
         "post-merge", "reference-transaction")


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No global or system git config, and no identity: soa-git must bring its own."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
                 "GIT_OBJECT_DIRECTORY", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL",
                 "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)


def git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for name, text in FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", ".")
    git(path, *USER, "commit", "-q", "-m", "initial")
    # Git must not guess an identity from the machine: every commit's identity comes from soa-git.
    git(path, "config", "user.useConfigOnly", "true")
    return path


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "project")


@pytest.fixture
def repo(repo_path: Path) -> GitRepo:
    return GitRepo.open(repo_path)


def make_user_tree_dirty(root: Path) -> None:
    """A user in the middle of work: a staged change, an unstaged change, an untracked file."""
    (root / "pkg/b.py").write_text("def b():\n    return 22\n")
    git(root, "add", "pkg/b.py")
    (root / "pkg/a.py").write_text("def a():\n    return 11  # wip\n")
    (root / "scratch.txt").write_text("notes to self\n")


def user_state(root: Path) -> dict[str, object]:
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and ".git" not in p.relative_to(root).parts}
    return {"head": git(root, "rev-parse", "HEAD"), "branch": git(root, "symbolic-ref", "HEAD"),
            "status": git(root, "status", "--porcelain"), "index": git(root, "ls-files", "-s"),
            "stash": git(root, "stash", "list"), "files": files}


def note_of(repo_path: Path, sha: str) -> str | None:
    """The note of `sha` under NOTES_REF, exactly as stored, read by git itself."""
    blob = git(repo_path, "notes", f"--ref={NOTES_REF}", "list", sha, check=False).strip()
    return git(repo_path, "cat-file", "blob", blob) if blob else None


def first_parents(repo_path: Path, branch: str) -> list[str]:
    return git(repo_path, "rev-list", "--first-parent", branch).split()


def trailers_for(agent: str, phase: str = "generate") -> dict[str, str]:
    return {"Soa-Tokens": "120", "Soa-Phase": phase, "Soa-Agent": agent, "Soa-Run": "r1",
            "Soa-Role": "child", "Soa-Model": "m-1"}


def commit_file(repo: GitRepo, branch: str, path: str, text: str, author: Author = AGENT,
                start: str = "HEAD") -> str:
    sha = repo.commit_files(branch, {path: text}, start=start, subject=f"write {path}",
                            trailers=trailers_for(author.name), author=author, allowed_paths=[path])
    assert sha is not None
    return sha


def start(repo: GitRepo, branch: str, base: str = "HEAD") -> str:
    return repo.start_branch(branch, base, subject="start", trailers={}, author=MOTHER, note="{}")


def install_failing_hooks(root: Path, marker: Path) -> None:
    hooks = root / ".git" / "hooks"
    for name in HOOKS:
        (hooks / name).write_text(f"#!/bin/sh\necho {name} >> '{marker}'\nexit 1\n")
        (hooks / name).chmod(0o755)


def files_under(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ---- opening ------------------------------------------------------------------------------


def test_open_finds_the_root_from_a_subdirectory_or_a_file(repo_path: Path) -> None:
    for start in (repo_path / "pkg", repo_path / "pkg" / "a.py"):
        repo = GitRepo.open(start)
        assert repo.root == repo_path.resolve()
        assert repo.git_dir == (repo_path / ".git").resolve()
    assert repo.head() == git(repo_path, "rev-parse", "HEAD").strip()
    assert repo.head_branch() == "main"


def test_open_refuses_what_is_not_a_usable_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepositoryError, match="is not inside a git repository"):
        GitRepo.open(plain)
    with pytest.raises(RepositoryError, match="does not exist"):
        GitRepo.open(tmp_path / "missing")

    empty = tmp_path / "empty"
    git(tmp_path, "init", "-q", "-b", "main", str(empty))
    with pytest.raises(RepositoryError, match="no commits yet; commit something first"):
        GitRepo.open(empty)
    assert GitRepo.open(empty, allow_empty=True).root == empty.resolve()

    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    with pytest.raises(RepositoryError, match="bare repository; run soa-git in a working tree"):
        GitRepo.open(bare)


def test_open_finds_the_repository_from_the_path_alone(repo_path: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """git finds the repository (GitPython did, imported at every commit for that alone): a
    linked worktree keeps its own HEAD and index, and a hook's GIT_DIR and GIT_WORK_TREE, here
    another repository's, steer nothing."""
    other = make_repo(tmp_path / "other")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    opened = GitRepo.open(repo_path / "pkg")
    assert (opened.root, opened.git_dir) == (repo_path.resolve(), (repo_path / ".git").resolve())
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")

    linked = tmp_path / "linked"
    git(repo_path, "worktree", "add", "-q", "-b", "side", str(linked))
    opened = GitRepo.open(linked)
    assert opened.root == linked.resolve()
    assert opened.git_dir == (repo_path / ".git").resolve()
    assert opened.head_branch() == "side"
    assert opened.user_status() == []

    with pytest.raises(RepositoryError, match="run soa-git in a working tree"):
        GitRepo.open(repo_path / ".git")


def test_a_sha256_repository_is_read_and_written(tmp_path: Path) -> None:
    path = tmp_path / "sha256"
    git(tmp_path, "init", "-q", "-b", "main", "--object-format=sha256", str(path))
    (path / "a.py").write_text("A = 1\n")
    git(path, "add", "a.py")
    git(path, "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-q", "-m", "one")
    repo = GitRepo.open(path)
    assert len(repo.head()) == 64
    start(repo, "soa/r1/solve")
    commit_file(repo, "soa/r1/solve", "a.py", "A = 2\n")
    assert repo.read_file("soa/r1/solve", "a.py") == "A = 2\n"
    assert git(path, "fsck", "--strict").strip() == ""


def test_head_branch_is_none_when_detached(repo: GitRepo, repo_path: Path) -> None:
    git(repo_path, "checkout", "-q", "--detach")
    assert repo.head_branch() is None


# ---- reading and branches -----------------------------------------------------------------


def test_read_file_and_file_exists(repo: GitRepo) -> None:
    assert repo.read_file("HEAD", "pkg/a.py") == FILES["pkg/a.py"]
    assert repo.read_file("HEAD", "pkg/missing.py") is None
    assert repo.file_exists("HEAD", "tests/test_a.py")
    assert not repo.file_exists("HEAD", "pkg")  # a directory is not a file
    assert not repo.file_exists("HEAD", "nope.py")
    with pytest.raises(RepositoryError, match="is not a commit"):
        repo.read_file("no-such-branch", "pkg/a.py")
    with pytest.raises(RepositoryError, match="not a valid revision"):
        repo.read_file("--output=x", "pkg/a.py")


def test_create_list_and_delete_branches(repo: GitRepo, repo_path: Path) -> None:
    head = repo.head()
    starts = {name: start(repo, name) for name in ("soa/r1/solve", "soa/r1/solve.parse", "soa/r10/solve")}
    assert repo.branch_sha("soa/r1/solve") == starts["soa/r1/solve"]
    assert git(repo_path, "rev-parse", "soa/r1/solve^").strip() == head
    assert git(repo_path, "notes", f"--ref={NOTES_REF}", "show", starts["soa/r1/solve"]) == "{}"
    assert repo.branch_sha("soa/r2/solve") is None
    with pytest.raises(RepositoryError, match="branch soa/r1/solve already exists"):
        start(repo, "soa/r1/solve")
    with pytest.raises(RepositoryError, match="is not a commit"):
        start(repo, "soa/r1/other", "no-such-rev")
    with pytest.raises(RepositoryError, match="cannot update branch soa/r1/bad..name"):
        start(repo, "soa/r1/bad..name")

    assert repo.list_branches("soa/r1/") == {n: starts[n] for n in ("soa/r1/solve", "soa/r1/solve.parse")}
    assert set(repo.list_branches("soa/r1")) == {"soa/r1/solve", "soa/r1/solve.parse",
                                                 "soa/r10/solve"}
    assert set(repo.list_branches("soa/r1/solve.")) == {"soa/r1/solve.parse"}
    assert repo.list_branches("nothing/") == {}

    repo.delete_branch("soa/r1/solve.parse")
    repo.delete_branch("soa/r1/solve.parse")  # already gone is fine
    assert repo.branch_sha("soa/r1/solve.parse") is None
    with pytest.raises(RepositoryError, match="only deletes its own soa/ branches"):
        repo.delete_branch("main")
    elsewhere = repo_path.parent / "elsewhere"
    git(repo_path, "worktree", "add", "-q", str(elsewhere), "soa/r1/solve")
    with pytest.raises(RepositoryError, match="is checked out at"):
        repo.delete_branch("soa/r1/solve")
    git(repo_path, "worktree", "remove", str(elsewhere))
    repo.delete_branch("soa/r1/solve")
    assert "soa/r1/solve" not in git(repo_path, "branch", "--list")


# ---- workspaces and commits ---------------------------------------------------------------


def test_a_workspace_holds_the_cone_of_its_folders_and_follows_the_branch(
        repo: GitRepo, repo_path: Path) -> None:
    (repo_path / "README.md").write_text("top\n")
    (repo_path / "docs/deep").mkdir(parents=True)
    (repo_path / "docs/guide.md").write_text("guide\n")
    (repo_path / "docs/deep/more.md").write_text("more\n")
    (repo_path / "run.sh").write_text("#!/bin/sh\n")
    (repo_path / "run.sh").chmod(0o755)
    git(repo_path, "add", ".")
    git(repo_path, *USER, "commit", "-q", "-m", "more files")
    first = commit_file(repo, "soa/r1/solve", "pkg/a.py", "def a():\n    return 2\n")
    ws = repo.workspace("r1", "solve")
    assert ws == repo.git_dir / "soa" / "work" / "r1" / "solve" and not ws.exists()

    repo.check_out(first, ["pkg"], ws)
    # Everything under pkg/, the files in the root; not docs/ nor tests/.
    assert files_under(ws) == {"README.md": "top\n", "run.sh": "#!/bin/sh\n",
                               "pkg/a.py": "def a():\n    return 2\n", "pkg/b.py": FILES["pkg/b.py"]}
    assert os.access(ws / "run.sh", os.X_OK) and not os.access(ws / "README.md", os.X_OK)
    repo.check_out(first, ["docs/deep"], repo.workspace("r1", "docs"))
    assert set(files_under(repo.workspace("r1", "docs"))) == {"README.md", "run.sh", "docs/guide.md",
                                                              "docs/deep/more.md"}

    second = commit_file(repo, "soa/r1/solve", "pkg/new/c.py", "C = 1\n")
    untouched = (ws / "pkg/b.py").stat().st_ino
    repo.check_out(second, ["pkg"], ws)
    # Only what differs between the two commits is written.
    assert files_under(ws)["pkg/new/c.py"] == "C = 1\n"
    assert (ws / "pkg/b.py").stat().st_ino == untouched

    # A folder that becomes a file (and back): the workspace follows.
    third = commit_file(repo, "soa/r1/solve", "pkg/new", "now a file\n")
    repo.check_out(third, ["pkg"], ws)
    assert (ws / "pkg/new").read_text() == "now a file\n"
    repo.check_out(second, ["pkg"], ws)
    assert (ws / "pkg/new/c.py").read_text() == "C = 1\n"

    assert repo.run_workspaces("r1") == [repo.workspace("r1", "docs"), ws]
    repo.remove_workspaces("r1")
    repo.remove_workspaces("r1")   # already gone is fine
    assert repo.run_workspaces("r1") == [] and not (repo.git_dir / "soa" / "work" / "r1").exists()
    # A workspace filled again after its run's folder went is filled anew, not patched.
    repo.check_out(second, ["pkg"], ws)
    assert files_under(ws)["pkg/new/c.py"] == "C = 1\n"
    with pytest.raises(ValueError, match="invalid workspace name"):
        repo.workspace("r1", "../escape")


def test_a_workspace_moving_on_repairs_whatever_its_tests_did_to_it(
        repo: GitRepo, repo_path: Path, tmp_path: Path) -> None:
    commit_file(repo, "soa/r1/solve", "pkg/sub/c.py", "C = 1\n")
    first = commit_file(repo, "soa/r1/solve", "pkg/d.py", "D = 4\n")
    second = commit_file(repo, "soa/r1/solve", "pkg/a.py", "def a():\n    return 2\n")
    expected_first = {**{k: v for k, v in FILES.items() if k.startswith("pkg/")},
                      "pkg/sub/c.py": "C = 1\n", "pkg/d.py": "D = 4\n"}
    expected = {**expected_first, "pkg/a.py": "def a():\n    return 2\n"}
    outside = tmp_path / "outside.txt"
    outside.write_text("not the workspace's\n")
    ws = repo.workspace("r1", "1")
    repo.check_out(first, ["pkg"], ws)
    assert files_under(ws) == expected_first

    # At once, so its change time may be the one it was written with: a same-size edit.
    with open(ws / "pkg/b.py", "r+") as f:
        f.write("X")
    (ws / "pkg/a.py").write_text("edited by a test\n")
    (ws / "junk.txt").write_text("a file a test left\n")
    (ws / "pkg/__pycache__").mkdir()
    (ws / "pkg/__pycache__/a.cpython.pyc").write_bytes(b"\0")
    shutil.rmtree(ws / "pkg/sub")
    (ws / "pkg/sub").write_text("a file where a folder was\n")
    (ws / "pkg/d.py").unlink()
    (ws / "pkg/d.py").symlink_to(outside)

    repo.check_out(second, ["pkg"], ws)
    assert files_under(ws) == expected
    assert not (ws / "pkg/d.py").is_symlink()
    assert outside.read_text() == "not the workspace's\n"

    # Handed from one selection to another, a workspace is filled anew.
    repo.check_out(second, ["docs"], ws)
    assert files_under(ws) == {}
    # One removed behind soa-git's back is filled anew too.
    shutil.rmtree(ws)
    repo.check_out(second, ["pkg"], ws)
    assert files_under(ws) == expected


def test_commit_writes_trailers_author_and_committer(repo: GitRepo, repo_path: Path) -> None:
    trailers = {"X-Reviewed": "no", **trailers_for("solve.parse"),
                "Soa-Tests": "4 passed,\n 1 failed"}
    sha = repo.commit_files("soa/r1/solve.parse",
                            {"pkg/a.py": "def a():\n    return 3\n",
                             "./tests/test_parse.py": "def test_parse():\n    pass\n"},
                            start="HEAD", subject="implement  parse\n",
                            body="Reflection: return 3.\n\nSecond paragraph.", trailers=trailers,
                            author=AGENT, allowed_paths=["pkg/a.py", "tests/test_parse.py"])
    assert sha is not None and repo.branch_sha("soa/r1/solve.parse") == sha
    assert git(repo_path, "rev-parse", "soa/r1/solve.parse").strip() == sha

    expected = ["Soa-Run: r1", "Soa-Agent: solve.parse", "Soa-Role: child", "Soa-Phase: generate",
                "Soa-Tests: 4 passed, 1 failed", "Soa-Model: m-1", "Soa-Tokens: 120",
                "X-Reviewed: no"]
    assert git(repo_path, "log", "-1", "--format=%(trailers)", sha).split("\n")[:-2] == expected
    assert git(repo_path, "log", "-1", "--format=%an|%ae|%cn|%ce", sha).strip() == \
        "solve.parse|solve.parse@agents.soa-git|soa-git|soa-git@localhost"
    assert git(repo_path, "log", "-1", "--format=%s", sha).strip() == "implement parse"
    # The same object `git commit-tree` would write: git reads it back byte for byte.
    raw = git(repo_path, "cat-file", "commit", sha)
    assert raw.endswith("\n\nimplement parse\n\nReflection: return 3.\n\nSecond paragraph.\n\n"
                        + "\n".join(expected) + "\n")
    assert subprocess.run(["git", "fsck", "--strict"], cwd=repo_path).returncode == 0

    newest, initial = repo.commits(["soa/r1/solve.parse"])
    assert (newest.sha, newest.subject, newest.body, newest.parents, newest.author) == \
        (sha, "implement parse", "Reflection: return 3.\n\nSecond paragraph.", (initial.sha,),
         AGENT)
    assert newest.trailers == dict(line.split(": ", 1) for line in expected)
    assert initial.trailers == {} and initial.body == "" and initial.author.name == "Some User"
    assert repo.changed_paths(initial.sha, sha) == ["pkg/a.py", "tests/test_parse.py"]
    assert repo.read_file(sha, "tests/test_parse.py") == "def test_parse():\n    pass\n"
    assert repo.read_file(sha, "tests/test_a.py") == FILES["tests/test_a.py"]
    assert set(TRAILER_KEYS) >= set(newest.trailers) - {"X-Reviewed"}


def test_nothing_changed_means_no_commit_unless_asked(repo: GitRepo) -> None:
    before = commit_file(repo, "soa/r1/solve", "pkg/a.py", "def a():\n    return 9\n")

    def commit(allow_empty: bool) -> str | None:
        return repo.commit_files("soa/r1/solve", {"pkg/a.py": "def a():\n    return 9\n"},
                                 subject="nothing", trailers={}, author=AGENT,
                                 allowed_paths=["pkg/a.py"], allow_empty=allow_empty)

    assert commit(False) is None and repo.branch_sha("soa/r1/solve") == before
    empty = commit(True)
    assert empty and repo.branch_sha("soa/r1/solve") == empty
    assert repo.changed_paths(before, empty) == []
    with pytest.raises(RepositoryError, match="branch soa/r1/none does not exist"):
        repo.commit_files("soa/r1/none", {}, subject="x", trailers={}, author=AGENT, allowed_paths=[])


def test_a_change_outside_the_agents_files_is_refused(repo: GitRepo, repo_path: Path) -> None:
    before = commit_file(repo, "soa/r1/solve.parse", "pkg/a.py", "def a():\n    return 5\n")
    objects = git(repo_path, "count-objects", "-v")
    with pytest.raises(OwnershipError) as caught:
        repo.commit_files("soa/r1/solve.parse", {"pkg/a.py": "x = 1\n", "pkg/b.py": "stolen\n",
                                                 "new.py": "x = 1\n"},
                          subject="overreach", trailers=trailers_for("solve.parse"), author=AGENT,
                          allowed_paths=["pkg/a.py", "tests/test_parse.py"])
    assert str(caught.value) == ("agent solve.parse may only change pkg/a.py and "
                                 "tests/test_parse.py, not new.py and pkg/b.py")
    assert repo.branch_sha("soa/r1/solve.parse") == before
    assert git(repo_path, "count-objects", "-v") == objects     # nothing written
    with pytest.raises(OwnershipError, match="may not change any file, not pkg/a.py"):
        repo.commit_files("soa/r1/solve.parse", {"pkg/a.py": ""}, subject="x", trailers={},
                          author=AGENT, allowed_paths=[])


def test_workspaces_are_never_the_users_tree(repo: GitRepo, repo_path: Path) -> None:
    before = user_state(repo_path)
    for folder in (repo_path, repo_path / "pkg", repo.git_dir / "soa" / "work"):
        with pytest.raises(RepositoryError, match="is not an agent workspace"):
            repo.check_out("HEAD", ["pkg"], folder)
    assert user_state(repo_path) == before


def test_user_hooks_never_run(repo: GitRepo, repo_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    install_failing_hooks(repo_path, marker)
    commit_file(repo, "soa/r1/solve", "pkg/a.py", "def a():\n    return 7\n", MOTHER)
    sha = commit_file(repo, "soa/r1/solve.parse", "pkg/parse.py", "def parse():\n    return 1\n",
                      start="soa/r1/solve")
    merge = repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="accept parse",
                       trailers=trailers_for("solve", "merge"), author=MOTHER)
    repo.append_note(sha, "transcript")
    newest = repo.commits(["soa/r1/solve"])[0]
    assert newest.sha == merge and len(newest.parents) == 2
    assert not marker.exists()


# ---- merges -------------------------------------------------------------------------------


def test_merge_check_clean_and_conflicting(repo: GitRepo, repo_path: Path) -> None:
    a = commit_file(repo, "soa/r1/one", "pkg/a.py", "def a():\n    return 'one'\n")
    b = commit_file(repo, "soa/r1/two", "pkg/a.py", "def a():\n    return 'two'\n")
    c = commit_file(repo, "soa/r1/three", "pkg/c.py", "C = 3\n")

    clean = repo.merge_check(a, c)
    assert clean.clean and clean.conflicts == () and clean.tree is not None
    assert "c.py" in git(repo_path, "ls-tree", "-r", "--name-only", clean.tree)
    assert repo.merge_check(a, b) == MergeCheck(clean=False, tree=None, conflicts=("pkg/a.py",))


def test_merge_makes_a_two_parent_commit(repo: GitRepo, repo_path: Path) -> None:
    mother_tip = commit_file(repo, "soa/r1/solve", "pkg/a.py", "def a():\n    return parse()\n", MOTHER)
    child_tip = commit_file(repo, "soa/r1/solve.parse", "pkg/parse.py", "def parse():\n    return 1\n",
                            start="soa/r1/solve")
    ws = repo.workspace("r1", "solve")
    repo.check_out(mother_tip, ["pkg"], ws)

    sha = repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="merge: accept parse into solve",
                     trailers={**trailers_for("solve", "merge"), "Soa-Tests": "3 passed"},
                     author=MOTHER, note='{"task": "merge"}')
    merged = repo.commits(["soa/r1/solve"])[0]
    assert merged.sha == sha == repo.branch_sha("soa/r1/solve")
    assert merged.parents == (mother_tip, child_tip)
    assert merged.trailers["Soa-Phase"] == "merge" and merged.trailers["Soa-Tests"] == "3 passed"
    assert git(repo_path, "log", "-1", "--format=%an|%cn", sha).strip() == "solve|soa-git"
    assert note_of(repo_path, sha) == merged.note == '{"task": "merge"}'
    repo.check_out(sha, ["pkg"], ws)
    assert (ws / "pkg/parse.py").read_text() == "def parse():\n    return 1\n"
    # Merging again changes nothing: the child's work is already in.
    assert repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="again", trailers={},
                      author=MOTHER) == sha
    assert first_parents(repo_path, "soa/r1/solve") == \
        [sha, mother_tip, git(repo_path, "rev-parse", "main").strip()]


@pytest.fixture
def asked_git(monkeypatch) -> list:
    """Every merge git was asked to compute (GitRepo.merge_check), as it is asked."""
    calls: list = []
    merge_check = GitRepo.merge_check
    monkeypatch.setattr(GitRepo, "merge_check",
                        lambda self, *a: calls.append(a) or merge_check(self, *a))
    return calls


THREE_LINES = "one = 1\ntwo = 2\nthree = 3\n"


@pytest.mark.parametrize("ours, theirs, in_process", [
    ({"pkg/a.py": "A = 'mother'\n"}, {"pkg/c.py": "C = 'child'\n"}, True),
    ({"pkg/x/one.py": "ONE = 1\n"}, {"pkg/x/two.py": "TWO = 2\n"}, True),
    ({}, {"pkg/b.py": "B = 'child'\n", "tests/test_b.py": "def test_b():\n    pass\n"}, True),
    ({"pkg/n.py": THREE_LINES.replace("one", "ONE")},
     {"pkg/n.py": THREE_LINES.replace("three", "THREE")}, False),
], ids=["one-file-each", "a-new-folder-on-both-sides", "theirs-only", "same-file-both-sides"])
def test_merge_from_a_known_base_is_made_in_process_and_matches_git(
        repo: GitRepo, repo_path: Path, asked_git: list, ours: dict, theirs: dict,
        in_process: bool) -> None:
    fork = commit_file(repo, "soa/r1/solve", "pkg/n.py", THREE_LINES, MOTHER)
    for path, text in theirs.items():
        commit_file(repo, "soa/r1/solve.c", path, text, start=fork)
    for path, text in ours.items():
        commit_file(repo, "soa/r1/solve", path, text, MOTHER)
    by_git = git(repo_path, "merge-tree", "--write-tree", "soa/r1/solve", "soa/r1/solve.c").strip()

    sha = repo.merge("soa/r1/solve", "soa/r1/solve.c", subject="merge", trailers={},
                     author=MOTHER, base=fork)
    assert git(repo_path, "rev-parse", f"{sha}^{{tree}}").strip() == by_git
    assert bool(asked_git) != in_process
    assert subprocess.run(["git", "-C", str(repo_path), "fsck", "--strict"]).returncode == 0


def test_merge_from_a_base_the_other_branch_does_not_reach_is_left_to_git(
        repo: GitRepo, repo_path: Path, asked_git: list) -> None:
    fork = commit_file(repo, "soa/r1/solve", "pkg/a.py", "A = 1\n", MOTHER)
    commit_file(repo, "soa/r1/solve.c", "pkg/c.py", "C = 1\n", start=fork)
    later = commit_file(repo, "soa/r1/solve", "pkg/a.py", "A = 2\n", MOTHER)
    sha = repo.merge("soa/r1/solve", "soa/r1/solve.c", subject="merge", trailers={},
                     author=MOTHER, base=later)
    assert asked_git
    assert git(repo_path, "show", f"{sha}:pkg/a.py") == "A = 2\n"
    assert git(repo_path, "show", f"{sha}:pkg/c.py") == "C = 1\n"


def test_a_conflicting_merge_changes_nothing(repo: GitRepo, repo_path: Path) -> None:
    commit_file(repo, "soa/r1/solve", "pkg/a.py", "def a():\n    return 'mother'\n", MOTHER)
    commit_file(repo, "soa/r1/solve.parse", "pkg/a.py", "def a():\n    return 'child'\n")

    def state() -> tuple[str, ...]:
        return (git(repo_path, "for-each-ref"), git(repo_path, "status", "--porcelain"),
                git(repo_path, "worktree", "list", "--porcelain"))

    before = state()
    with pytest.raises(MergeConflict) as caught:
        repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="accept", trailers={},
                   author=MOTHER)
    assert caught.value.conflicts == ("pkg/a.py",)
    assert isinstance(caught.value, RepositoryError) and "pkg/a.py" in str(caught.value)
    assert state() == before


def test_merge_never_moves_a_branch_a_working_tree_has_checked_out(repo: GitRepo,
                                                                   repo_path: Path) -> None:
    commit_file(repo, "soa/r1/solve.parse", "pkg/parse.py", "P = 1\n")
    main = repo.branch_sha("main")
    with pytest.raises(RepositoryError, match="branch main is checked out at"):
        repo.merge("main", "soa/r1/solve.parse", subject="x", trailers={}, author=MOTHER)
    mother = start(repo, "soa/r1/solve")
    elsewhere = repo_path.parent / "elsewhere"
    git(repo_path, "worktree", "add", "-q", str(elsewhere), "soa/r1/solve")
    with pytest.raises(RepositoryError, match=f"branch soa/r1/solve is checked out at {elsewhere}"):
        repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="x", trailers={}, author=MOTHER)
    assert repo.branch_sha("main") == main and repo.branch_sha("soa/r1/solve") == mother


def test_a_branch_that_moved_meanwhile_is_reported(repo: GitRepo, repo_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    start(repo, "soa/r1/solve")
    commit_file(repo, "soa/r1/solve.parse", "pkg/parse.py", "P = 1\n")
    tree = git(repo_path, "rev-parse", "HEAD^{tree}").strip()
    elsewhere = git(repo_path, *USER, "commit-tree", "-p", "HEAD", "-m", "elsewhere", tree).strip()
    check = repo.merge_check

    def another_writer_wins(ours: str, theirs: str) -> MergeCheck:
        git(repo_path, "update-ref", "refs/heads/soa/r1/solve", elsewhere)
        return check(ours, theirs)

    monkeypatch.setattr(repo, "merge_check", another_writer_wins)
    notes = repo.ref_sha(NOTES_REF)
    with pytest.raises(BranchMoved, match="soa/r1/solve moved while soa-git was updating it"):
        repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="x", trailers={}, author=MOTHER,
                   note="never attached")
    assert repo.branch_sha("soa/r1/solve") == elsewhere
    assert repo.ref_sha(NOTES_REF) == notes     # the note moves with the branch, or not at all


# ---- notes --------------------------------------------------------------------------------


def test_notes_round_trip(repo: GitRepo, repo_path: Path) -> None:
    head = repo.head()
    assert note_of(repo_path, head) is None
    text = '{"content": "def f():\\n    pass"}\n\n\n  indented, with trailing spaces  \n'
    repo.append_note(head, text)
    assert note_of(repo_path, head) == text
    repo.append_note(head, "appended ✓")
    assert note_of(repo_path, head) == text.rstrip() + "\nappended ✓"
    assert git(repo_path, "notes", f"--ref={NOTES_REF}", "list").split()[1:] == [head]
    assert git(repo_path, "for-each-ref", "refs/notes/").count("\n") == 1  # no scratch refs left
    with pytest.raises(RepositoryError, match="is not a commit"):
        repo.append_note("0" * 40, "for nothing")


def test_notes_from_two_processes_are_all_kept(repo: GitRepo, repo_path: Path) -> None:
    tree = git(repo_path, "rev-parse", "HEAD^{tree}").strip()
    commits = [git(repo_path, *USER, "commit-tree", "-p", "HEAD", "-m", f"c{i}", tree).strip()
               for i in range(24)]
    script = ("import sys; from pathlib import Path; from soa_git.gitrepo import GitRepo\n"
              "repo = GitRepo.open(Path(sys.argv[1]))\n"
              "for sha in sys.argv[2:]:\n    repo.append_note(sha, 'note for ' + sha)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(repo_path), *commits[i::2]],
                              env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert [note_of(repo_path, sha) for sha in commits] == [f"note for {sha}" for sha in commits]


# ---- the user's work ----------------------------------------------------------------------


def test_the_users_tree_index_and_branch_are_never_touched(repo: GitRepo, repo_path: Path) -> None:
    make_user_tree_dirty(repo_path)
    git(repo_path, "stash", "list")
    before = user_state(repo_path)
    commit_file(repo, "soa/r1/solve", "pkg/a.py", "def a():\n    return 'mother'\n", MOTHER)
    sha = commit_file(repo, "soa/r1/solve.parse", "pkg/parse.py", "P = 1\n", start="soa/r1/solve")
    ws = repo.workspace("r1", "solve.parse")
    repo.check_out(sha, ["pkg", "tests"], ws)
    with pytest.raises(OwnershipError):
        repo.commit_files("soa/r1/solve.parse", {"pkg/b.py": "not mine\n"}, subject="x",
                          trailers={}, author=AGENT, allowed_paths=["pkg/parse.py"])
    repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="accept", trailers={}, author=MOTHER)
    commit_file(repo, "soa/r1/solve.other", "pkg/a.py", "def a():\n    return 'other'\n")
    with pytest.raises(MergeConflict):
        repo.merge("soa/r1/solve", "soa/r1/solve.other", subject="x", trailers={}, author=MOTHER)
    repo.append_note(sha, "transcript")
    repo.remove_workspaces("r1")
    repo.delete_branch("soa/r1/solve.other")
    assert user_state(repo_path) == before


def test_an_environment_inherited_from_a_git_hook_cannot_reach_the_users_index(
        repo: GitRepo, repo_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_user_tree_dirty(repo_path)
    before = user_state(repo_path)
    index_bytes = (repo_path / ".git/index").read_bytes()
    # What git exports to a pre-commit or post-commit hook that might call soa-git.
    monkeypatch.setenv("GIT_DIR", str(repo_path / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo_path))
    monkeypatch.setenv("GIT_INDEX_FILE", str(repo_path / ".git/index"))
    start(repo, "soa/r1/solve")
    commit_file(repo, "soa/r1/solve.parse", "pkg/parse.py", "P = 1\n")
    merged = repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="accept", trailers={},
                        author=MOTHER)
    repo.append_note(merged, "note")
    ws = repo.workspace("r1", "solve")
    repo.check_out(merged, ["pkg"], ws)
    assert (repo_path / ".git/index").read_bytes() == index_bytes
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name)
    assert user_state(repo_path) == before
    assert (ws / "pkg/parse.py").read_text() == "P = 1\n"


# ---- many agents at once ------------------------------------------------------------------


def test_parallel_agents_commit_note_and_merge_without_corruption(repo: GitRepo,
                                                                  repo_path: Path) -> None:
    make_user_tree_dirty(repo_path)
    before = user_state(repo_path)
    base = start(repo, "soa/p/solve")

    def agent(i: int) -> tuple[list[str], str]:
        name = f"solve.f{i}"
        me = Author(name, f"{name}@agents.soa-git")
        commits = []
        for step in range(3):
            sha = repo.commit_files(f"soa/p/{name}", {f"pkg/f{i}.py": f"def f{i}():\n    return {step}\n"},
                                    start=base, subject=f"step {step}", trailers=trailers_for(name),
                                    author=me, allowed_paths=[f"pkg/f{i}.py"],
                                    note=f"transcript {i}.{step}")
            assert sha is not None
            commits.append(sha)
        for _ in range(500):
            try:
                merge = repo.merge("soa/p/solve", f"soa/p/{name}", subject=f"accept f{i}",
                                   trailers=trailers_for("solve", "merge"), author=MOTHER)
                break
            except BranchMoved:
                continue
        else:
            raise AssertionError(f"agent {i} never got its merge in")
        repo.append_note(merge, f"merge {i}")
        return commits, merge

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(agent, range(12)))

    fsck = subprocess.run(["git", "fsck", "--strict", "--no-progress"], cwd=repo_path,
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert "error" not in (fsck.stdout + fsck.stderr).lower()

    by_sha = {c.sha: c for c in repo.commits(["soa/p/solve"])}
    history = [by_sha[sha] for sha in first_parents(repo_path, "soa/p/solve")]
    merges = [c for c in history if len(c.parents) == 2]
    assert len(merges) == 12 and history[12].sha == base and len(history) == 14
    assert {c.parents[1] for c in merges} == {commits[-1] for commits, _ in results}
    assert {c.sha for c in merges} == {merge for _, merge in results}
    for i in range(12):
        assert repo.read_file("soa/p/solve", f"pkg/f{i}.py") == f"def f{i}():\n    return 2\n"
    for i, (commits, merge) in enumerate(results):    # read by git, not from this process
        assert [note_of(repo_path, sha) for sha in commits] == \
            [f"transcript {i}.{s}" for s in range(3)]
        assert note_of(repo_path, merge) == f"merge {i}"
    notes = git(repo_path, "notes", f"--ref={NOTES_REF}", "list").splitlines()
    assert len(notes) == 1 + 12 * 4
    assert git(repo_path, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo_path, "for-each-ref", "refs/notes/").count("\n") == 1
    assert user_state(repo_path) == before


def test_the_object_reader_ends_with_its_repository(repo_path: Path) -> None:
    def readers() -> int:
        mine = str(os.getpid())
        count = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            count += fields[1] == mine and b"cat-file\0--batch" in cmdline
        return count

    gc.collect()    # readers of repositories other tests left for the collector
    before = readers()
    opened = [GitRepo.open(repo_path) for _ in range(3)]
    for one in opened:
        one.append_note(one.head(), "read through the object store")
    assert readers() == before + 3
    del opened, one
    gc.collect()
    assert readers() == before
