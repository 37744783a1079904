"""Kill a real `soa-git run` at exact points, then resume: same tree, no finished step redone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from soa_git import history
from soa_git.commands.resume import resume
from soa_git.commands.run import run
from soa_git.errors import RepositoryError
from soa_git.gitrepo import GitRepo

from .helpers.repos import git, snapshot
from .helpers.shapes import ANSWERS, KEY, respond, shape, shapes_repo

STEP_TASKS = {"decompose", "implement", "repair", "revise"}


def runs(repo: Path) -> set[str]:
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/soa/").split()
    return {ref.split("/")[3] for ref in refs}


def committed_steps(repo: Path) -> int:
    """Steps on the run's branches (a commit killed before its branch moved does not count)."""
    on_branches = set(git(repo, "rev-list", "--branches=soa/*").split())
    notes = git(repo, "notes", "--ref=soa", "list").split()
    blobs = [blob for blob, commit in zip(notes[::2], notes[1::2]) if commit in on_branches]
    return sum(1 for blob in blobs for line in git(repo, "cat-file", "blob", blob).splitlines()
               if json.loads(line).get("task") in STEP_TASKS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, int]:
    """An uninterrupted run of the same scenario: its shape and how many model calls it made."""
    from soa_git.scripted import ScriptedServer
    repo = shapes_repo(tmp_path_factory.mktemp("reference") / "shapes", readme=False)
    with ScriptedServer(respond) as server:
        [summary] = run("shapes/report.py::area_report", cwd=repo, flags={"base_url": server.base_url},
                        environ=KEY)
        calls = len(server.requests)
    assert summary.state == "done", summary.message
    assert calls == len(ANSWERS)
    return shape(repo, summary.run), calls


def killed_run(repo: Path, base_url: str, kill_at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **KEY, "SOA_GIT_KILL_AT": kill_at}
    return subprocess.run([sys.executable, "-c", "from soa_git.cli import main; main()", "run",
                           "shapes/report.py::area_report", "--base-url", base_url],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)


# Points across the whole run: the first answer, children's answers, repairs, the Mother's
# revision; test runs; commits (skeletons, steps) between writing and moving the branch; merges.
KILL_POINTS = ["model:2", "model:4", "model:5", "model:6", "test:1", "test:4", "test:6",
               "commit:1", "commit:3", "commit:5", "commit:7", "merge:1", "merge:2", "merge:3"]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_killed_anywhere_then_resumed_ends_like_an_uninterrupted_run(kill_at, reference, tmp_path, serve):
    expected_shape, expected_calls = reference
    repo = shapes_repo(tmp_path / "shapes", readme=False)
    before = snapshot(repo)
    server = serve(respond)

    killed = killed_run(repo, server.base_url, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    fsck = subprocess.run(["git", "-C", str(repo), "fsck", "--strict"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert snapshot(repo) == before
    [run_id] = runs(repo)

    calls_before, steps_before = len(server.requests), committed_steps(repo)
    summary = resume(run_id, cwd=repo, flags={"base_url": server.base_url}, environ=KEY)
    assert summary.state == "done", summary.message
    assert shape(repo, run_id) == expected_shape
    # Agents merged before the kill show what they are, not `waiting`.
    assert [a.state for a in summary.agents] == ["passed"] * len(summary.agents), summary.agents
    # Only the steps that were never committed cost a model call again.
    assert len(server.requests) - calls_before == expected_calls - steps_before
    # The run's total counts the whole run, the killed process's committed steps included.
    assert summary.usage.total == sum(a.tokens for a in history.load_run(GitRepo.open(repo),
                                                                         run_id).agents)
    assert snapshot(repo) == before
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert subprocess.run(["git", "-C", str(repo), "fsck", "--strict"]).returncode == 0


def test_killed_at_its_first_answer_is_a_run_that_resume_knows(tmp_path, serve):
    """The first answer came before any write: a kill there left no run for `resume`, and a
    kill before the first commit left a lock that no run owned."""
    repo = shapes_repo(tmp_path / "shapes", readme=False)
    before = snapshot(repo)
    server = serve(respond)
    killed = killed_run(repo, server.base_url, "model:1")
    assert killed.returncode == -signal.SIGKILL
    assert snapshot(repo) == before
    [run_id] = runs(repo)
    locks = GitRepo.open(repo).git_dir / "soa" / "locks"
    assert {p.name for p in locks.iterdir()} <= {f"{run_id}.lock"}
    summary = resume(run_id, cwd=repo, flags={"base_url": server.base_url}, environ=KEY)
    assert summary.state == "done", summary.message
    assert not list(locks.iterdir())
    # After a resume the run's total counts the whole run: the step resumed did not come back,
    # so it is every committed step's tokens, the first process's included.
    record = history.load_run(GitRepo.open(repo), run_id)
    assert summary.usage.total == record.tokens == sum(a.tokens for a in record.agents)


def test_resume_is_refused_while_the_run_lives_and_for_a_finished_run(tmp_path, serve):
    repo = shapes_repo(tmp_path / "shapes", readme=False)
    server = serve(respond)
    assert killed_run(repo, server.base_url, "commit:3").returncode == -signal.SIGKILL
    [run_id] = runs(repo)
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock = Path(GitRepo.open(repo).git_dir) / "soa" / "locks" / f"{run_id}.lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "now"}))
        with pytest.raises(RepositoryError, match=f"run {run_id} is (running|in use by process {holder.pid})"):
            resume(run_id, cwd=repo, flags={"base_url": server.base_url}, environ=KEY)
    finally:
        holder.kill()
        holder.wait()
    # Its holder died: the lock is taken over, and the run finishes.
    assert resume(run_id, cwd=repo, flags={"base_url": server.base_url}, environ=KEY).state == "done"
    with pytest.raises(RepositoryError, match="is done, so there is nothing to resume"):
        resume(run_id, cwd=repo, flags={"base_url": server.base_url}, environ=KEY)


def test_two_runs_at_once_in_one_repository_keep_apart(tmp_path, serve):
    repo = shapes_repo(tmp_path / "shapes", readme=False)
    before = snapshot(repo)
    server = serve(respond)
    env = {**os.environ, **KEY}
    command = [sys.executable, "-c", "from soa_git.cli import main; main()", "run",
               "shapes/report.py::area_report", "--base-url", server.base_url, "--json"]
    processes = [subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0])["runs"][0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    first, second = (r["run"] for r in results)
    assert first != second and runs(repo) == {first, second}
    assert shape(repo, first) == shape(repo, second)
    # Each run's every step kept its transcript although both wrote refs/notes/soa at once.
    assert committed_steps(repo) == 2 * len(ANSWERS)
    assert snapshot(repo) == before
    assert subprocess.run(["git", "-C", str(repo), "fsck", "--strict"]).returncode == 0
