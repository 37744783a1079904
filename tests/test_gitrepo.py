"""gitrepo against real git repositories: no mocks of git."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from soa_git.errors import OwnershipError, RepositoryError
from soa_git.gitrepo import (NOTES_REF, TRAILER_KEYS, Author, BranchMoved, CommitInfo, GitRepo,
                             MergeCheck, MergeConflict)

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


def trailers_for(agent: str, phase: str = "generate") -> dict[str, str]:
    return {"Soa-Tokens": "120", "Soa-Phase": phase, "Soa-Agent": agent, "Soa-Run": "r1",
            "Soa-Role": "child", "Soa-Model": "m-1"}


def agent_worktree(repo: GitRepo, branch: str, start: str = "HEAD") -> Path:
    repo.create_branch(branch, start)
    return repo.add_worktree(branch, branch.removeprefix("soa/"))


def commit_file(repo: GitRepo, wt: Path, path: str, text: str, author: Author = AGENT) -> str:
    (wt / path).parent.mkdir(parents=True, exist_ok=True)
    (wt / path).write_text(text)
    sha = repo.commit(wt, subject=f"write {path}", trailers=trailers_for(author.name),
                      author=author, allowed_paths=[path])
    assert sha is not None
    return sha


def install_failing_hooks(root: Path, marker: Path) -> None:
    hooks = root / ".git" / "hooks"
    for name in HOOKS:
        (hooks / name).write_text(f"#!/bin/sh\necho {name} >> '{marker}'\nexit 1\n")
        (hooks / name).chmod(0o755)


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
    for name in ("soa/r1/solve", "soa/r1/solve.parse", "soa/r10/solve"):
        repo.create_branch(name, "HEAD")
    assert repo.branch_sha("soa/r1/solve") == head
    assert repo.branch_sha("soa/r2/solve") is None
    with pytest.raises(RepositoryError, match="branch soa/r1/solve already exists"):
        repo.create_branch("soa/r1/solve", "HEAD")
    with pytest.raises(RepositoryError, match="is not a commit"):
        repo.create_branch("soa/r1/other", "no-such-rev")
    with pytest.raises(RepositoryError, match="cannot create branch"):
        repo.create_branch("soa/r1/bad..name", "HEAD")

    assert repo.list_branches("soa/r1/") == {"soa/r1/solve": head, "soa/r1/solve.parse": head}
    assert set(repo.list_branches("soa/r1")) == {"soa/r1/solve", "soa/r1/solve.parse",
                                                 "soa/r10/solve"}
    assert set(repo.list_branches("soa/r1/solve.")) == {"soa/r1/solve.parse"}
    assert repo.list_branches("nothing/") == {}

    repo.delete_branch("soa/r1/solve.parse")
    repo.delete_branch("soa/r1/solve.parse")  # already gone is fine
    assert repo.branch_sha("soa/r1/solve.parse") is None
    with pytest.raises(RepositoryError, match="only deletes its own soa/ branches"):
        repo.delete_branch("main")
    wt = repo.add_worktree("soa/r1/solve", "r1/solve")
    with pytest.raises(RepositoryError, match="is checked out at"):
        repo.delete_branch("soa/r1/solve")
    repo.remove_worktree(wt)
    repo.delete_branch("soa/r1/solve")
    assert "soa/r1/solve" not in git(repo_path, "branch", "--list")


# ---- worktrees and commits ----------------------------------------------------------------


def test_worktree_lives_under_git_dir_with_the_branch_checked_out(repo: GitRepo) -> None:
    wt = agent_worktree(repo, "soa/r1/solve.parse")
    assert wt == repo.git_dir / "soa" / "worktrees" / "r1__solve.parse"
    assert git(wt, "symbolic-ref", "HEAD").strip() == "refs/heads/soa/r1/solve.parse"
    assert (wt / "pkg" / "a.py").read_text() == FILES["pkg/a.py"]
    assert git(wt, "status", "--porcelain") == ""
    with pytest.raises(RepositoryError, match="branch soa/r1/nope does not exist"):
        repo.add_worktree("soa/r1/nope", "r1/nope")


def test_stale_worktrees_are_replaced_and_removal_is_idempotent(repo: GitRepo,
                                                                repo_path: Path) -> None:
    wt = agent_worktree(repo, "soa/r1/solve")
    (wt / "junk.txt").write_text("left by a crashed run\n")
    assert repo.add_worktree("soa/r1/solve", "r1/solve") == wt  # registered and on disk
    assert not (wt / "junk.txt").exists()

    shutil.rmtree(wt)  # registered, directory gone
    assert repo.add_worktree("soa/r1/solve", "r1/solve") == wt
    assert (wt / "pkg" / "a.py").exists()

    repo.remove_worktree(wt)
    wt.mkdir(parents=True)
    (wt / "stray").write_text("x")  # on disk, not registered
    assert repo.add_worktree("soa/r1/solve", "r1/solve") == wt
    repo.remove_worktree(wt)
    repo.remove_worktree(wt)
    assert not wt.exists()
    assert git(repo_path, "worktree", "list", "--porcelain").count("worktree ") == 1
    with pytest.raises(RepositoryError, match="is not an agent worktree"):
        repo.remove_worktree(repo_path)


def test_a_vanished_worktree_does_not_hold_its_branch(repo: GitRepo) -> None:
    wt = agent_worktree(repo, "soa/r1/gone")
    shutil.rmtree(wt)  # a run killed while cleaning up
    repo.delete_branch("soa/r1/gone")
    assert repo.branch_sha("soa/r1/gone") is None


def test_commit_writes_trailers_author_and_committer(repo: GitRepo, repo_path: Path) -> None:
    wt = agent_worktree(repo, "soa/r1/solve.parse")
    (wt / "pkg/a.py").write_text("def a():\n    return 3\n")
    (wt / "tests/test_a.py").unlink()
    (wt / "tests/test_parse.py").write_text("def test_parse():\n    pass\n")
    trailers = {"X-Reviewed": "no", **trailers_for("solve.parse"),
                "Soa-Tests": "4 passed,\n 1 failed"}
    sha = repo.commit(wt, subject="implement  parse\n",
                      body="Reflection: return 3.\n\nSecond paragraph.", trailers=trailers,
                      author=AGENT,
                      allowed_paths=["pkg/a.py", "tests/test_a.py", "./tests/test_parse.py"])
    assert sha is not None and repo.branch_sha("soa/r1/solve.parse") == sha
    assert git(wt, "rev-parse", "HEAD").strip() == sha
    assert git(wt, "status", "--porcelain") == ""

    expected = ["Soa-Run: r1", "Soa-Agent: solve.parse", "Soa-Role: child", "Soa-Phase: generate",
                "Soa-Tests: 4 passed, 1 failed", "Soa-Model: m-1", "Soa-Tokens: 120",
                "X-Reviewed: no"]
    assert git(repo_path, "log", "-1", "--format=%(trailers)", sha).split("\n")[:-2] == expected
    assert git(repo_path, "log", "-1", "--format=%an|%ae|%cn|%ce", sha).strip() == \
        "solve.parse|solve.parse@agents.soa-git|soa-git|soa-git@localhost"
    assert git(repo_path, "log", "-1", "--format=%s", sha).strip() == "implement parse"

    newest, initial = repo.log("soa/r1/solve.parse")
    assert newest == CommitInfo(sha=sha, subject="implement parse",
                                body="Reflection: return 3.\n\nSecond paragraph.",
                                trailers=dict(line.split(": ", 1) for line in expected),
                                parents=(initial.sha,), author=AGENT)
    assert initial.trailers == {} and initial.body == "" and initial.author.name == "Some User"
    assert repo.changed_paths(initial.sha, sha) == ["pkg/a.py", "tests/test_a.py",
                                                    "tests/test_parse.py"]
    assert repo.read_file(sha, "tests/test_parse.py") == "def test_parse():\n    pass\n"
    assert not repo.file_exists(sha, "tests/test_a.py")
    assert set(TRAILER_KEYS) >= set(newest.trailers) - {"X-Reviewed"}


def test_nothing_changed_means_no_commit(repo: GitRepo) -> None:
    wt = agent_worktree(repo, "soa/r1/solve")
    before = repo.branch_sha("soa/r1/solve")
    def commit() -> str | None:
        return repo.commit(wt, subject="nothing", trailers={}, author=AGENT,
                           allowed_paths=["pkg/a.py"])

    assert commit() is None
    (wt / "pkg/__pycache__").mkdir()
    (wt / "pkg/__pycache__/a.cpython-311.pyc").write_bytes(b"\0cache")  # left by a test run
    (wt / ".pytest_cache").mkdir()
    (wt / ".pytest_cache/README.md").write_text("cache")
    assert commit() is None
    assert repo.branch_sha("soa/r1/solve") == before


def test_a_change_outside_the_agents_files_is_refused(repo: GitRepo) -> None:
    wt = agent_worktree(repo, "soa/r1/solve.parse")
    before = repo.branch_sha("soa/r1/solve.parse")
    (wt / "pkg/a.py").write_text("def a():\n    return 5\n")
    (wt / "pkg/b.py").write_text("def b():\n    return 'stolen'\n")
    (wt / "tests/test_a.py").unlink()
    (wt / "new.py").write_text("x = 1\n")
    with pytest.raises(OwnershipError) as caught:
        repo.commit(wt, subject="overreach", trailers=trailers_for("solve.parse"), author=AGENT,
                    allowed_paths=["pkg/a.py", "tests/test_parse.py"])
    assert str(caught.value) == ("agent solve.parse may only change pkg/a.py and "
                                 "tests/test_parse.py, not new.py, pkg/b.py and tests/test_a.py")
    assert repo.branch_sha("soa/r1/solve.parse") == before
    assert git(wt, "diff", "--cached", "--name-only") == ""  # the index is back at HEAD
    # The files are left to the caller, who knows which ones to restore.
    assert (wt / "pkg/b.py").read_text() == "def b():\n    return 'stolen'\n"
    assert (wt / "new.py").exists() and not (wt / "tests/test_a.py").exists()
    with pytest.raises(OwnershipError, match="may not change any file, not new.py, pkg/a.py"):
        repo.commit(wt, subject="x", trailers={}, author=AGENT, allowed_paths=[])


def test_commit_only_in_agent_worktrees(repo: GitRepo, repo_path: Path) -> None:
    (repo_path / "pkg/a.py").write_text("changed by the user\n")
    with pytest.raises(RepositoryError, match="is not an agent worktree"):
        repo.commit(repo_path, subject="x", trailers={}, author=AGENT, allowed_paths=["pkg/a.py"])
    assert git(repo_path, "diff", "--cached", "--name-only") == ""


def test_user_hooks_never_run(repo: GitRepo, repo_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    install_failing_hooks(repo_path, marker)
    mother = agent_worktree(repo, "soa/r1/solve")
    commit_file(repo, mother, "pkg/a.py", "def a():\n    return 7\n", MOTHER)
    child = agent_worktree(repo, "soa/r1/solve.parse", "soa/r1/solve")
    sha = commit_file(repo, child, "pkg/parse.py", "def parse():\n    return 1\n")
    merge = repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="accept parse",
                       trailers=trailers_for("solve", "merge"), author=MOTHER, worktree=mother)
    repo.add_note(sha, "transcript")
    repo.remove_worktree(child)
    newest = repo.log("soa/r1/solve")[0]
    assert newest.sha == merge and len(newest.parents) == 2
    assert not marker.exists()


# ---- merges -------------------------------------------------------------------------------


def test_merge_check_clean_and_conflicting(repo: GitRepo) -> None:
    one = agent_worktree(repo, "soa/r1/one")
    two = agent_worktree(repo, "soa/r1/two")
    three = agent_worktree(repo, "soa/r1/three")
    a = commit_file(repo, one, "pkg/a.py", "def a():\n    return 'one'\n")
    b = commit_file(repo, two, "pkg/a.py", "def a():\n    return 'two'\n")
    c = commit_file(repo, three, "pkg/c.py", "C = 3\n")

    clean = repo.merge_check(a, c)
    assert clean.clean and clean.conflicts == () and clean.tree is not None
    assert "c.py" in git(one, "ls-tree", "-r", "--name-only", clean.tree)
    assert repo.merge_check(a, b) == MergeCheck(clean=False, tree=None, conflicts=("pkg/a.py",))
    for wt in (one, two, three):
        assert git(wt, "status", "--porcelain") == ""


def test_merge_makes_a_two_parent_commit_and_syncs_the_worktree(repo: GitRepo,
                                                                repo_path: Path) -> None:
    mother = agent_worktree(repo, "soa/r1/solve")
    mother_tip = commit_file(repo, mother, "pkg/a.py", "def a():\n    return parse()\n", MOTHER)
    child = agent_worktree(repo, "soa/r1/solve.parse", "soa/r1/solve")
    child_tip = commit_file(repo, child, "pkg/parse.py", "def parse():\n    return 1\n")

    sha = repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="merge: accept parse into solve",
                     trailers={**trailers_for("solve", "merge"), "Soa-Tests": "3 passed"},
                     author=MOTHER, worktree=mother)
    merged = repo.log("soa/r1/solve")[0]
    assert merged.sha == sha == repo.branch_sha("soa/r1/solve")
    assert merged.parents == (mother_tip, child_tip)
    assert merged.trailers["Soa-Phase"] == "merge" and merged.trailers["Soa-Tests"] == "3 passed"
    assert git(repo_path, "log", "-1", "--format=%an|%cn", sha).strip() == "solve|soa-git"
    assert (mother / "pkg/parse.py").read_text() == "def parse():\n    return 1\n"
    assert git(mother, "status", "--porcelain") == ""
    assert git(mother, "rev-parse", "HEAD").strip() == sha
    # Merging again changes nothing: the child's work is already in.
    assert repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="again", trailers={},
                      author=MOTHER, worktree=mother) == sha
    assert [c.sha for c in repo.log("soa/r1/solve", first_parent=True)] == \
        [sha, mother_tip, git(repo_path, "rev-parse", "main").strip()]


def test_a_conflicting_merge_changes_nothing(repo: GitRepo, repo_path: Path) -> None:
    mother = agent_worktree(repo, "soa/r1/solve")
    child = agent_worktree(repo, "soa/r1/solve.parse")
    commit_file(repo, mother, "pkg/a.py", "def a():\n    return 'mother'\n", MOTHER)
    commit_file(repo, child, "pkg/a.py", "def a():\n    return 'child'\n")
    (mother / "pkg/b.py").write_text("uncommitted work in progress\n")

    def state() -> tuple[str, ...]:
        return (git(repo_path, "for-each-ref"), git(mother, "status", "--porcelain"),
                git(mother, "ls-files", "-s"), (mother / "pkg/a.py").read_text(),
                (mother / "pkg/b.py").read_text(), git(child, "status", "--porcelain"),
                git(repo_path, "worktree", "list", "--porcelain"))

    before = state()
    with pytest.raises(MergeConflict) as caught:
        repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="accept", trailers={},
                   author=MOTHER, worktree=mother)
    assert caught.value.conflicts == ("pkg/a.py",)
    assert isinstance(caught.value, RepositoryError) and "pkg/a.py" in str(caught.value)
    assert state() == before


def test_merge_never_moves_a_branch_another_working_tree_has_checked_out(repo: GitRepo) -> None:
    child = agent_worktree(repo, "soa/r1/solve.parse")
    commit_file(repo, child, "pkg/parse.py", "P = 1\n")
    main = repo.branch_sha("main")
    with pytest.raises(RepositoryError, match="branch main is checked out at"):
        repo.merge("main", "soa/r1/solve.parse", subject="x", trailers={}, author=MOTHER)
    repo.create_branch("soa/r1/solve", "HEAD")
    with pytest.raises(RepositoryError, match="does not have branch soa/r1/solve checked out"):
        repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="x", trailers={}, author=MOTHER,
                   worktree=child)
    assert repo.branch_sha("main") == main and repo.branch_sha("soa/r1/solve") == main


def test_a_branch_that_moved_meanwhile_is_reported(repo: GitRepo, repo_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    repo.create_branch("soa/r1/solve", "HEAD")
    child = agent_worktree(repo, "soa/r1/solve.parse")
    commit_file(repo, child, "pkg/parse.py", "P = 1\n")
    tree = git(repo_path, "rev-parse", "HEAD^{tree}").strip()
    elsewhere = git(repo_path, *USER, "commit-tree", "-p", "HEAD", "-m", "elsewhere", tree).strip()
    check = repo.merge_check

    def another_writer_wins(ours: str, theirs: str) -> MergeCheck:
        git(repo_path, "update-ref", "refs/heads/soa/r1/solve", elsewhere)
        return check(ours, theirs)

    monkeypatch.setattr(repo, "merge_check", another_writer_wins)
    with pytest.raises(BranchMoved, match="soa/r1/solve moved while soa-git was updating it"):
        repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="x", trailers={}, author=MOTHER)
    assert repo.branch_sha("soa/r1/solve") == elsewhere


# ---- notes --------------------------------------------------------------------------------


def test_notes_round_trip(repo: GitRepo, repo_path: Path) -> None:
    head = repo.head()
    assert repo.read_note(head) is None
    text = '{"content": "def f():\\n    pass"}\n\n\n  indented, with trailing spaces  \n'
    repo.add_note(head, text)
    assert repo.read_note(head) == text
    repo.add_note(head, "replaced ✓")
    assert repo.read_note(head) == "replaced ✓"
    repo.add_note(head, "")
    assert repo.read_note(head) == ""
    assert git(repo_path, "notes", f"--ref={NOTES_REF}", "list").split()[1:] == [head]
    assert git(repo_path, "for-each-ref", "refs/notes/").count("\n") == 1  # no scratch refs left
    with pytest.raises(RepositoryError, match="is not a commit"):
        repo.add_note("0" * 40, "for nothing")


def test_notes_from_two_processes_are_all_kept(repo: GitRepo, repo_path: Path) -> None:
    tree = git(repo_path, "rev-parse", "HEAD^{tree}").strip()
    commits = [git(repo_path, *USER, "commit-tree", "-p", "HEAD", "-m", f"c{i}", tree).strip()
               for i in range(24)]
    script = ("import sys; from pathlib import Path; from soa_git.gitrepo import GitRepo\n"
              "repo = GitRepo.open(Path(sys.argv[1]))\n"
              "for sha in sys.argv[2:]:\n    repo.add_note(sha, 'note for ' + sha)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(repo_path), *commits[i::2]],
                              env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert [repo.read_note(sha) for sha in commits] == [f"note for {sha}" for sha in commits]


# ---- the user's work ----------------------------------------------------------------------


def test_the_users_tree_index_and_branch_are_never_touched(repo: GitRepo, repo_path: Path) -> None:
    make_user_tree_dirty(repo_path)
    git(repo_path, "stash", "list")
    before = user_state(repo_path)
    mother = agent_worktree(repo, "soa/r1/solve")
    commit_file(repo, mother, "pkg/a.py", "def a():\n    return 'mother'\n", MOTHER)
    child = agent_worktree(repo, "soa/r1/solve.parse", "soa/r1/solve")
    sha = commit_file(repo, child, "pkg/parse.py", "P = 1\n")
    (child / "pkg/b.py").write_text("not mine\n")
    with pytest.raises(OwnershipError):
        repo.commit(child, subject="x", trailers={}, author=AGENT, allowed_paths=["pkg/parse.py"])
    repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="accept", trailers={}, author=MOTHER,
               worktree=mother)
    other = agent_worktree(repo, "soa/r1/solve.other")
    commit_file(repo, other, "pkg/a.py", "def a():\n    return 'other'\n")
    with pytest.raises(MergeConflict):
        repo.merge("soa/r1/solve", "soa/r1/solve.other", subject="x", trailers={}, author=MOTHER,
                   worktree=mother)
    repo.add_note(sha, "transcript")
    for wt in (mother, child, other):
        repo.remove_worktree(wt)
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
    mother = agent_worktree(repo, "soa/r1/solve")
    child = agent_worktree(repo, "soa/r1/solve.parse")
    commit_file(repo, child, "pkg/parse.py", "P = 1\n")
    repo.merge("soa/r1/solve", "soa/r1/solve.parse", subject="accept", trailers={}, author=MOTHER,
               worktree=mother)
    repo.add_note(repo.branch_sha("soa/r1/solve") or "", "note")
    repo.remove_worktree(child)
    assert (repo_path / ".git/index").read_bytes() == index_bytes
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name)
    assert user_state(repo_path) == before
    assert (mother / "pkg/parse.py").read_text() == "P = 1\n"


# ---- many agents at once ------------------------------------------------------------------


def test_parallel_agents_commit_note_and_merge_without_corruption(repo: GitRepo,
                                                                  repo_path: Path) -> None:
    make_user_tree_dirty(repo_path)
    before = user_state(repo_path)
    repo.create_branch("soa/p/solve", "HEAD")
    base = repo.branch_sha("soa/p/solve")
    assert base is not None

    def agent(i: int) -> tuple[list[str], str]:
        name = f"solve.f{i}"
        me = Author(name, f"{name}@agents.soa-git")
        wt = agent_worktree(repo, f"soa/p/{name}", base)
        commits = []
        for step in range(3):
            sha = commit_file(repo, wt, f"pkg/f{i}.py", f"def f{i}():\n    return {step}\n", me)
            repo.add_note(sha, f"transcript {i}.{step}")
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
        repo.add_note(merge, f"merge {i}")
        repo.remove_worktree(wt)
        return commits, merge

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(agent, range(12)))

    fsck = subprocess.run(["git", "fsck", "--strict", "--no-progress"], cwd=repo_path,
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert "error" not in (fsck.stdout + fsck.stderr).lower()

    history = repo.log("soa/p/solve", first_parent=True)
    merges = [c for c in history if len(c.parents) == 2]
    assert len(merges) == 12 and history[-1].sha == base and len(history) == 13
    assert {c.parents[1] for c in merges} == {commits[-1] for commits, _ in results}
    assert {c.sha for c in merges} == {merge for _, merge in results}
    for i in range(12):
        assert repo.read_file("soa/p/solve", f"pkg/f{i}.py") == f"def f{i}():\n    return 2\n"
    for i, (commits, merge) in enumerate(results):
        assert [repo.read_note(sha) for sha in commits] == [f"transcript {i}.{s}" for s in range(3)]
        assert repo.read_note(merge) == f"merge {i}"
    assert git(repo_path, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo_path, "for-each-ref", "refs/notes/").count("\n") == 1
    assert user_state(repo_path) == before
