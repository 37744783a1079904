"""`soa-git accept` and `soa-git clean` on real runs against the scripted model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from soa_git.cli import main
from soa_git.commands.accept import accept
from soa_git.commands.clean import clean
from soa_git.errors import RepositoryError, SoaError
from soa_git.gitrepo import GitRepo, MergeConflict, RunLocked

from .helpers.repos import git, snapshot
from .helpers.shapes import AREA_WRONG, fill, shapes_repo, shapes_script

TARGET = "shapes/report.py::area_report"


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    repo = shapes_repo(tmp_path / "shapes")
    # accept commits as the user, with the user's own identity.
    git(repo, "config", "user.name", "Test User")
    git(repo, "config", "user.email", "user@example.com")
    return repo


def done_run(repo: Path, serve, **flags) -> str:
    [summary] = fill(repo, serve(shapes_script()), **flags)
    assert summary.state == "done", summary.message
    return summary.run


def root(run: str) -> str:
    return f"soa/{run}/area_report"


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def notes(repo: Path) -> set[str]:
    """Annotated commits under refs/notes/soa."""
    out = subprocess.run(["git", "-C", str(repo), "notes", "--ref=soa", "list"], capture_output=True,
                         text=True).stdout
    return {line.split()[1] for line in out.splitlines()}


def run_commits(repo: Path, run: str) -> set[str]:
    return set(git(repo, "rev-list", *[f"refs/heads/{b}" for b in branches(repo, run)],
                   "--not", "main").split())


def branches(repo: Path, run: str) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", f"refs/heads/soa/{run}/").split()


def worktrees(repo: Path) -> str:
    return git(repo, "worktree", "list", "--porcelain")


def soa_dirs(repo: Path) -> list[str]:
    """Workspaces on disk, as run/agent."""
    folder = repo / ".git" / "soa" / "work"
    return sorted(f"{p.parent.name}/{p.name}" for p in folder.glob("*/*"))


def leftover_workspace(repo: Path, run: str, agent: str) -> Path:
    """A workspace as a killed process leaves it: a folder with the agent's files."""
    path = GitRepo.open(repo).workspace(run, agent)
    path.mkdir(parents=True)
    (path / "module.py").write_text("x = 1\n")
    return path


def state(repo: Path) -> dict:
    """The snapshot of conftest, but also on a detached HEAD, plus refs and merge state."""
    branch = subprocess.run(["git", "-C", str(repo), "symbolic-ref", "-q", "HEAD"],
                            capture_output=True, text=True).stdout
    head = git(repo, "rev-parse", "HEAD")
    return {"head": head, "branch": branch, "refs": refs(repo),
            "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
            "files": {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
                      if p.is_file() and ".git" not in p.parts},
            "merging": sorted(p.name for p in (repo / ".git").iterdir()
                              if p.name in ("MERGE_HEAD", "MERGE_MSG", "SQUASH_MSG"))}


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def install_hook(repo: Path, marker: Path, exit_code: int = 0) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    refuse = "echo 'pre-commit: not today' >&2\n" if exit_code else ""
    hook.write_text(f'#!/bin/sh\necho "$(git rev-parse --show-toplevel)" >> "{marker}"\n'
                    f"{refuse}exit {exit_code}\n")
    hook.chmod(0o755)


# ---- accept ------------------------------------------------------------------------------------


def test_accept_merges_the_run_with_the_users_hooks(shapes, serve, tmp_path):
    marker = tmp_path / "hook-ran"
    install_hook(shapes, marker)
    run = done_run(shapes, serve)
    assert not marker.exists(), "a soa-git commit ran the user's pre-commit hook"
    main_before = git(shapes, "rev-parse", "main").strip()
    tip = git(shapes, "rev-parse", root(run)).strip()

    done = accept(run, cwd=shapes)

    assert done.commit == git(shapes, "rev-parse", "HEAD").strip()
    assert git(shapes, "symbolic-ref", "--short", "HEAD").strip() == done.into == "main"
    assert git(shapes, "log", "-1", "--format=%P", "HEAD").split() == [main_before, tip]
    assert git(shapes, "log", "-1", "--format=%s %an", "HEAD").strip() == (
        f"soa-git: accept run {run} ({TARGET}) Test User")
    # The generated files are in the user's working tree, and it is clean.
    assert "def area(" in (shapes / "shapes/area_report__area.py").read_text()
    assert "fmt(area(width, height))" in (shapes / "shapes/report.py").read_text()
    assert (shapes / "tests/soa/test_area_report.py").exists()
    assert "shapes/area_report__fmt.py" in done.files
    assert git(shapes, "status", "--porcelain", "--untracked-files=all") == ""
    # The hook ran exactly once, in the user's own working tree.
    assert marker.read_text().splitlines() == [str(shapes.resolve())]
    # The same run cannot be merged twice.
    with pytest.raises(RepositoryError, match="already merged"):
        accept(run, cwd=shapes)


def test_accept_squash_is_one_commit_with_the_same_tree(shapes, serve):
    run = done_run(shapes, serve)
    main_before = git(shapes, "rev-parse", "main").strip()
    done = accept(run, cwd=shapes, squash=True)
    assert git(shapes, "log", "-1", "--format=%P", done.commit).split() == [main_before]
    assert git(shapes, "rev-parse", f"{done.commit}^{{tree}}") == git(shapes, "rev-parse", f"{root(run)}^{{tree}}")
    assert git(shapes, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (shapes / ".git" / "SQUASH_MSG").exists()
    with pytest.raises(RepositoryError, match="changes nothing"):
        accept(run, cwd=shapes, squash=True)


def test_refusals_change_nothing(shapes, serve):
    run = done_run(shapes, serve)

    def refused(run_id: str, match: str) -> None:
        before = state(shapes)
        index = (shapes / ".git" / "index").read_bytes()
        with pytest.raises(SoaError, match=match):
            accept(run_id, cwd=shapes)
        assert state(shapes) == before
        assert (shapes / ".git" / "index").read_bytes() == index

    # A changed tracked file, staged or not.
    (shapes / "README.md").write_text("shapes, edited\n")
    refused(run, "uncommitted changes [(]README.md[)]")
    git(shapes, "add", "README.md")
    refused(run, "uncommitted changes")
    git(shapes, "reset", "-q", "--hard")
    # An untracked file the merge would overwrite (an unrelated one is fine, see below).
    (shapes / "shapes/area_report__area.py").write_text("mine\n")
    refused(run, "untracked shapes/area_report__area.py would be overwritten")
    (shapes / "shapes/area_report__area.py").unlink()
    # An ignored one too, which git itself would overwrite without a word.
    (shapes / ".git/info/exclude").write_text("tests/soa/\n")
    (shapes / "tests/soa").mkdir(parents=True)
    (shapes / "tests/soa/test_area_report.py").write_text("my own\n")
    refused(run, "untracked tests/soa/test_area_report.py would be overwritten")
    (shapes / "tests/soa/test_area_report.py").unlink()
    # A detached HEAD.
    git(shapes, "checkout", "-q", "--detach")
    refused(run, "HEAD is detached")
    git(shapes, "checkout", "-q", "main")
    # Not a run, or not a run id at all.
    refused("20990101-000000-abcd", "no run named 20990101-000000-abcd")
    refused("../main", "is not a run id")

    # An unfinished run: its root tip's note lost the end record (a process killed at the end).
    tip = git(shapes, "rev-parse", root(run)).strip()
    note = git(shapes, "notes", "--ref=soa", "show", tip)
    assert json.loads(note.splitlines()[-1])["task"] == "end"
    unfinished = "\n".join(note.splitlines()[:-1]) + "\n"
    subprocess.run(["git", "-C", str(shapes), "notes", "--ref=soa", "add", "-f", "-F", "-", tip],
                   input=unfinished, text=True, check=True, capture_output=True)
    refused(run, f"run {run} did not finish")
    # The same, while a live process holds its lock.
    repo = GitRepo.open(shapes)
    repo.lock_run(run)
    try:
        refused(run, f"run {run} has not finished [(]running in process {os.getpid()}")
    finally:
        repo.unlock_run(run)
    # With the end record back, the same repository accepts it, an unrelated untracked file and all.
    subprocess.run(["git", "-C", str(shapes), "notes", "--ref=soa", "add", "-f", "-F", "-", tip],
                   input=note, text=True, check=True, capture_output=True)
    (shapes / "scratch.txt").write_text("keep me\n")
    accept(run, cwd=shapes)
    assert (shapes / "scratch.txt").read_text() == "keep me\n"


def test_a_failed_run_is_refused_with_its_reason(shapes, serve):
    [summary] = fill(shapes, serve(shapes_script(area_first=AREA_WRONG)), repair_rounds=0)
    assert summary.state == "failed"
    before = state(shapes)
    with pytest.raises(RepositoryError, match=f"run {summary.run} ended failed: area_report still "
                       "fails its tests .*; accepting it would merge failing code"):
        accept(summary.run, cwd=shapes)
    assert state(shapes) == before


def test_a_conflicting_accept_changes_nothing(shapes, serve):
    run = done_run(shapes, serve)
    # Meanwhile the user wrote the same function on main.
    report = shapes / "shapes/report.py"
    report.write_text(report.read_text().replace(
        "    'area: 6.00'\n    \"\"\"\n    ...", "    'area: 6.00'\n    \"\"\"\n    return f\"area: {width * height:.2f}\""))
    git(shapes, "commit", "-q", "-am", "area_report by hand")
    before = snapshot(shapes)
    state_before = state(shapes)
    with pytest.raises(MergeConflict, match="conflicts in shapes/report.py; nothing was changed") as caught:
        accept(run, cwd=shapes)
    assert caught.value.conflicts == ("shapes/report.py",)
    assert snapshot(shapes) == before
    assert state(shapes) == state_before
    assert not (shapes / ".git" / "MERGE_HEAD").exists()


def test_a_hook_that_refuses_aborts_the_merge(shapes, serve, tmp_path):
    run = done_run(shapes, serve)
    install_hook(shapes, tmp_path / "hook-ran", exit_code=1)
    before = state(shapes)
    with pytest.raises(RepositoryError, match=r"the commit was refused \(pre-commit: not today\); "
                       "the merge was aborted and main is as before"):
        accept(run, cwd=shapes)
    assert state(shapes) == before
    with pytest.raises(RepositoryError, match="the commit was refused"):
        accept(run, cwd=shapes, squash=True)
    assert state(shapes) == before
    assert (tmp_path / "hook-ran").read_text().count("\n") == 2


# ---- clean -------------------------------------------------------------------------------------


def test_clean_removes_one_run_and_leaves_another(shapes, serve):
    first, second = done_run(shapes, serve), done_run(shapes, serve)
    # Leftovers of a killed process: workspaces of each run, a scratch notes ref, a lock whose
    # holder died.
    leftover_workspace(shapes, first, "area_report.area")
    leftover_workspace(shapes, first, "area_report.ghost")
    leftover_workspace(shapes, second, "area_report.fmt")
    git(shapes, "update-ref", "refs/notes/soa-pending/0123abcd", "refs/notes/soa")
    lock = shapes / ".git/soa/locks" / f"{first}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": "then"}))

    first_notes = notes(shapes) & run_commits(shapes, first)
    second_notes = notes(shapes) & run_commits(shapes, second)
    assert first_notes and second_notes and not first_notes & second_notes
    second_refs = [line for line in refs(shapes).splitlines() if f"/{second}/" in line]
    user = snapshot(shapes)

    plan = clean(first, cwd=shapes)

    assert [r.run for r in plan.runs] == [first]
    assert set(plan.runs[0].branches) == {f"soa/{first}/area_report", f"soa/{first}/area_report.area",
                                          f"soa/{first}/area_report.fmt"}
    assert len(plan.runs[0].workspaces) == 2 and plan.runs[0].lock == str(lock)
    assert set(plan.runs[0].notes) == first_notes
    assert plan.pending_refs == ("refs/notes/soa-pending/0123abcd",)
    assert not branches(shapes, first)
    assert [line for line in refs(shapes).splitlines() if "soa" in line and "refs/notes/soa " not in line] \
        == second_refs
    assert notes(shapes) == second_notes
    assert soa_dirs(shapes) == [f"{second}/area_report.fmt"]
    assert not lock.exists() and not list(lock.parent.glob(f"{first}*"))
    assert snapshot(shapes) == user
    with pytest.raises(RepositoryError, match=f"no run {first}"):
        clean(first, cwd=shapes)


def test_dry_run_lists_and_changes_nothing(shapes, serve):
    run = done_run(shapes, serve)
    leftover_workspace(shapes, run, "area_report.fmt")
    before = (refs(shapes), notes(shapes), worktrees(shapes), soa_dirs(shapes), snapshot(shapes))

    plan = clean(run, cwd=shapes, dry_run=True)

    assert plan.dry_run and [r.run for r in plan.runs] == [run]
    assert set(plan.runs[0].branches) == set(branches(shapes, run))
    assert set(plan.runs[0].notes) == notes(shapes)
    assert [Path(p).name for p in plan.runs[0].workspaces] == ["area_report.fmt"]
    assert (refs(shapes), notes(shapes), worktrees(shapes), soa_dirs(shapes), snapshot(shapes)) == before
    all_plan = clean(None, cwd=shapes, all_runs=True, dry_run=True)
    assert all_plan.runs == plan.runs
    assert (refs(shapes), notes(shapes), worktrees(shapes), soa_dirs(shapes), snapshot(shapes)) == before

    # A run whose branch you have checked out is yours to switch away from first.
    git(shapes, "checkout", "-q", root(run))
    with pytest.raises(RepositoryError, match=f"branch {root(run)} is checked out at {shapes}"):
        clean(run, cwd=shapes)
    kept = clean(None, cwd=shapes, all_runs=True)
    assert kept.runs == () and kept.kept == ((run, f"its branch {root(run)} is checked out at {shapes}"),)
    assert refs(shapes) == before[0] and notes(shapes) == before[1]


def test_clean_all_leaves_no_trace(shapes, serve):
    first, second = done_run(shapes, serve), done_run(shapes, serve)
    leftover_workspace(shapes, second, "area_report")
    git(shapes, "update-ref", "refs/notes/soa-pending/feed", "refs/notes/soa")
    user = snapshot(shapes)

    plan = clean(None, cwd=shapes, all_runs=True)

    assert sorted(r.run for r in plan.runs) == sorted([first, second])
    assert "soa" not in refs(shapes)
    assert soa_dirs(shapes) == []
    assert worktrees(shapes).count("worktree ") == 1
    assert snapshot(shapes) == user
    fsck = subprocess.run(["git", "-C", str(shapes), "fsck", "--strict"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert clean(None, cwd=shapes, all_runs=True).empty


def test_clean_refuses_a_live_run_and_takes_a_dead_ones(shapes, serve):
    run = done_run(shapes, serve)
    repo = GitRepo.open(shapes)
    repo.lock_run(run)
    try:
        before = (refs(shapes), notes(shapes), soa_dirs(shapes))
        with pytest.raises(RunLocked, match=f"run {run} is in use by process {os.getpid()}"):
            clean(run, cwd=shapes)
        plan = clean(None, cwd=shapes, all_runs=True)
        assert plan.runs == () and plan.kept[0][0] == run
        assert (refs(shapes), notes(shapes), soa_dirs(shapes)) == before
        assert repo.run_lock_holder(run).alive
    finally:
        repo.unlock_run(run)
    lock = shapes / ".git/soa/locks" / f"{run}.lock"
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": "then"}))
    assert clean(run, cwd=shapes).runs[0].lock == str(lock)
    assert not lock.exists() and not branches(shapes, run)


def test_clean_keeps_the_notes_of_an_accepted_run(shapes, serve):
    run = done_run(shapes, serve)
    accept(run, cwd=shapes)
    kept = notes(shapes)
    plan = clean(run, cwd=shapes)
    assert plan.runs[0].notes == () and notes(shapes) == kept
    assert not branches(shapes, run)
    fsck = subprocess.run(["git", "-C", str(shapes), "fsck", "--strict"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr


# ---- the command line --------------------------------------------------------------------------


def test_cli_accept_and_clean(shapes, serve, monkeypatch):
    run = done_run(shapes, serve)
    monkeypatch.chdir(shapes)
    cli = CliRunner()

    usage = cli.invoke(main, ["clean"])
    assert usage.exit_code == 2 and "give a RUN or --all" in usage.output
    assert cli.invoke(main, ["clean", run, "--all"]).exit_code == 2

    planned = cli.invoke(main, ["clean", run, "--dry-run", "--json"])
    assert planned.exit_code == 0, planned.output
    data = json.loads(planned.output)
    assert data["dry_run"] and data["runs"][0]["run"] == run and data["runs"][0]["notes"] > 0
    text = cli.invoke(main, ["clean", run, "--dry-run"]).output
    assert text.startswith(f"would remove run {run}:\n  branch    soa/{run}/area_report\n")

    (shapes / "README.md").write_text("dirty\n")
    refused = cli.invoke(main, ["accept", run])
    assert refused.exit_code == 1 and "Error: your working tree has uncommitted changes" in refused.output
    git(shapes, "checkout", "-q", "README.md")
    accepted = cli.invoke(main, ["accept", run])
    assert accepted.exit_code == 0, accepted.output
    sha = git(shapes, "rev-parse", "HEAD").strip()
    assert accepted.output.splitlines()[0] == f"accepted run {run} ({TARGET}) into main: {sha}"

    removed = cli.invoke(main, ["clean", "--all"])
    assert removed.exit_code == 0, removed.output
    assert removed.output.startswith(f"removed run {run}:")
    assert not branches(shapes, run)
