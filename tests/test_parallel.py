"""Many siblings at once, and budgets: the repository stays sound under parallel agents."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from soa_git.commands.run import run
from soa_git.gitrepo import GitRepo

from .helpers.repos import git, make_repo, snapshot

SIBLINGS = 12
KEY = {"OPENAI_API_KEY": "sk-test-key"}

SKELETON = '''def total(x: int) -> int:
    """Sum of x + i for i in range(12).

    >>> total(0)
    66
    """
    ...
'''


def decompose() -> str:
    helpers = "\n\n".join(
        f'def add_{i}(x: int) -> int:\n    """Return x + {i}.\n\n    >>> add_{i}(1)\n    {i + 1}\n    """\n    ...\n'
        for i in range(SIBLINGS))
    tests = "\n\n".join(f"def test_add_{i}():\n    assert add_{i}(1) == {i + 1}\n" for i in range(SIBLINGS))
    body = " + ".join(f"add_{i}(x)" for i in range(SIBLINGS))
    return (f"Twelve helpers.\n\n```python\ndef total(x: int) -> int:\n    return {body}\n\n\n"
            f"{helpers}\n\n{tests}\n\ndef test_total():\n    assert total(0) == 66\n```\n")


class SlowScript:
    """Answers each child after a delay and records how many requests were in flight at once."""

    def __init__(self, delay: float):
        self.delay = delay
        self.in_flight = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, request: dict) -> str:
        first = request["messages"][-1]["content"].splitlines()[0]
        if first == "soa-git task: decompose total":
            return decompose()
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        i = int(first.rsplit("_", 1)[1])
        return f"Done.\n\n```python\ndef add_{i}(x: int) -> int:\n    return x + {i}\n```\n"


@pytest.fixture
def adder(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "adder", {"adder/__init__.py": "", "adder/core.py": SKELETON})


def test_many_siblings_in_parallel_keep_the_repository_sound(adder, serve):
    before = snapshot(adder)
    script = SlowScript(delay=0.3)
    server = serve(script)
    [summary] = run("adder/core.py::total", cwd=adder, environ=KEY,
                    flags={"base_url": server.base_url, "max_children": SIBLINGS, "jobs": 6})

    assert summary.state == "done", summary.message
    assert script.most == 6, "siblings should work concurrently, bounded by jobs"
    assert len(summary.agents) == SIBLINGS + 1

    fsck = subprocess.run(["git", "-C", str(adder), "fsck", "--strict", "--no-dangling"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0 and "error" not in fsck.stderr.lower(), fsck.stderr
    merges = git(adder, "log", "--merges", "--format=%P", summary.branch).splitlines()
    assert len(merges) == SIBLINGS
    children = git(adder, "for-each-ref", "--format=%(objectname)", f"refs/heads/soa/{summary.run}/total.*")
    assert {m.split()[1] for m in merges} == set(children.split())
    # Every model step's commit carries its transcript, none lost to concurrent note writes.
    steps = git(adder, "log", "--all", "--format=%H %(trailers:key=Soa-Phase,valueonly,separator=)",
                "--branches=soa/*").splitlines()
    generate = [line.split()[0] for line in steps if line.endswith("generate")]
    noted = set(git(adder, "notes", "--ref=soa", "list").split()[1::2])
    missing = [sha for sha in generate if sha not in noted
               and "skeleton:" not in git(adder, "log", "-1", "--format=%s", sha)]
    assert not missing
    assert snapshot(adder) == before
    assert len(git(adder, "worktree", "list", "--porcelain").split("worktree ")) == 2


def test_a_mother_merges_each_child_from_where_it_forked_without_asking_git(
        adder, serve, monkeypatch):
    merges, asked_git = [], []
    real_merge, real_check = GitRepo.merge, GitRepo.merge_check

    def merge(self, branch, other, **kwargs):
        base = kwargs.get("base")
        truth = git(adder, "merge-base", branch, other).strip()
        merges.append((other, base, truth))
        return real_merge(self, branch, other, **kwargs)

    monkeypatch.setattr(GitRepo, "merge", merge)
    monkeypatch.setattr(GitRepo, "merge_check",
                        lambda self, *a: asked_git.append(a) or real_check(self, *a))
    [summary] = run("adder/core.py::total", cwd=adder, environ=KEY,
                    flags={"base_url": serve(SlowScript(delay=0)).base_url,
                           "max_children": SIBLINGS, "jobs": 4})

    assert summary.state == "done", summary.message
    assert len(merges) == SIBLINGS
    assert all(base == truth for _, base, truth in merges), merges
    assert not asked_git
    assert git(adder, "show", f"{summary.branch}:adder/total__add_11.py").count("return x + 11")


def test_token_budget_stops_the_run_cleanly(adder, serve):
    before = snapshot(adder)
    server = serve(SlowScript(delay=0))
    [summary] = run("adder/core.py::total", cwd=adder, environ=KEY,
                    flags={"base_url": server.base_url, "max_children": SIBLINGS, "jobs": 2})
    spent = summary.usage.total
    assert summary.state == "done"

    # The budget is checked before each call: the root answers, then no child may call.
    (adder / ".soa-git.toml").write_text("run-token-budget = 10\n")
    git(adder, "add", ".soa-git.toml")
    git(adder, "commit", "-q", "-m", "budget")
    before = snapshot(adder)
    [stopped] = run("adder/core.py::total", cwd=adder, environ=KEY,
                    flags={"base_url": server.base_url, "max_children": SIBLINGS, "jobs": 2})
    assert stopped.state == "stopped"
    assert "token budget" in stopped.message
    assert stopped.usage.total < spent
    assert all(a.state in ("stopped", "failed") for a in stopped.agents if a.path != "total")
    assert snapshot(adder) == before
    fsck = subprocess.run(["git", "-C", str(adder), "fsck", "--strict"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    note = git(adder, "notes", "--ref=soa", "show", f"soa/{stopped.run}/total~0")
    assert json.loads(note.splitlines()[0])["agent"] == "total"
