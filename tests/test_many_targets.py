"""`soa-git run` over several files or a directory: one run per skeleton, `parallel_runs` at once,
each on its own branches, one writer (this process) for the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from soa_git.errors import TargetError

from .helpers.repos import git
from .helpers.targets import fill_targets as fill, two_targets


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return two_targets(tmp_path / "repo")


def test_a_directory_runs_every_committed_skeleton_under_it(repo):
    summaries, _ = fill(repo, ["."])
    assert sorted(s.target.file for s in summaries) == ["app/core.py", "calc/sums.py"]
    assert all(s.state == "done" for s in summaries), [s.message for s in summaries]
    assert len({s.run for s in summaries}) == 2
    for summary in summaries:
        changed = git(repo, "diff", "--name-only", "main", summary.branch).split()
        assert summary.target.file in changed
        other = "calc/" if summary.target.file.startswith("app/") else "app/"
        assert not any(path.startswith(other) for path in changed)
    done = subprocess.run(["git", "-C", str(repo), "fsck", "--strict"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_runs_overlap_up_to_parallel_runs(repo):
    # One model call per run, each taking 0.5 s: run one after the other, they never overlap.
    _, alone = fill(repo, ["app/core.py", "calc/sums.py"], latency_s=0.5)
    _, together = fill(repo, ["app/core.py", "calc/sums.py"], latency_s=0.5, parallel_runs=2)
    assert alone.most == 1
    assert together.most == 2


def test_several_files_and_a_target_named_twice_run_once_each(repo):
    summaries, _ = fill(repo, ["calc/sums.py", "calc/sums.py::total", "app/core.py::total"])
    assert [s.target.file for s in summaries] == ["calc/sums.py", "app/core.py"]


def test_a_directory_without_skeletons_changes_nothing(repo):
    (repo / "empty").mkdir()
    (repo / "empty" / "mod.py").write_text("X = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "empty")
    before = git(repo, "for-each-ref")
    with pytest.raises(TargetError, match="holds no committed Python file with a skeleton"):
        fill(repo, ["calc/sums.py", "empty"])
    assert git(repo, "for-each-ref") == before
