"""Reviewing runs read back from git alone: history.py and the list, tree, log, show and
transcript commands, on real runs against the scripted model, and in a fresh clone."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from soa_git import history
from soa_git.errors import TargetError
from soa_git.gitrepo import GitRepo, metrics

from .helpers.repos import git, isolated, make_repo
from .helpers.shapes import (AREA_RIGHT, AREA_WRONG, FMT_LOOSE, FMT_RIGHT, REVISE, fill_scripted,
                             shapes_repo, shapes_script)

FETCH = ("+refs/heads/soa/*:refs/heads/soa/*", "+refs/notes/soa:refs/notes/soa")


@dataclass(frozen=True)
class Runs:
    repo: Path
    done: str       # area repaired once; fmt answers the Mother's comment: rich history
    failed: str     # fmt never formats, so the root never passes


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """One repository, two runs: the second (newest) one fails. Built once: runs take seconds."""
    with isolated(tmp_path_factory):
        repo = shapes_repo(tmp_path_factory.mktemp("history") / "shapes")
        rich = shapes_script(area_first=AREA_WRONG, fmt_first=FMT_LOOSE, extra=[
            {"when": r"^soa-git task: repair area_report[.]area$",
             "replies": [f"I added instead of multiplying.\n\n{AREA_RIGHT}"]},
            {"when": r"^soa-git task: revise area_report$", "replies": [REVISE]},
            {"when": r"^soa-git task: repair area_report[.]fmt$",
             "replies": [f"Two decimals now.\n\n{FMT_RIGHT}"]}])
        [done] = fill_scripted(repo, rich)
        # Run ids start with the second they began: make sure the second run is later.
        while datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") <= done.run[:15]:
            time.sleep(0.05)
        never = shapes_script(fmt_first=FMT_LOOSE, extra=[
            {"when": r"^soa-git task: revise area_report$", "replies": [REVISE]},
            {"when": r"^soa-git task: repair area_report[.]fmt$",
             "replies": [f"Still plain.\n\n{FMT_LOOSE}"]}])
        [failed] = fill_scripted(repo, never, repair_rounds=1)
    assert (done.state, failed.state) == ("done", "failed"), (done.message, failed.message)
    return Runs(repo, done.run, failed.run)


@pytest.fixture
def cli(runs, cli, monkeypatch):
    """cli(*args, ok=True, cwd=None) -> the output of `soa-git ARGS`, in the runs' repository
    unless `cwd` is given."""
    monkeypatch.chdir(runs.repo)

    def invoke(*args: str, ok: bool = True, cwd: Path | None = None):
        return cli(cwd or runs.repo, *args, ok=ok)

    return invoke


def as_json(output: str) -> dict:
    return json.loads(output)


def copy_of(runs: Runs, tmp_path: Path) -> tuple[Path, GitRepo]:
    """A private copy of the runs' repository, for tests that change it."""
    copy = tmp_path / "copy"
    shutil.copytree(runs.repo, copy)
    return copy, GitRepo.open(copy)


# ---- history.py ------------------------------------------------------------------------------


def test_a_finished_run_is_read_back_from_git(runs):
    repo = GitRepo.open(runs.repo)
    run = history.load_run(repo, runs.done)

    assert (run.state, run.target, run.root) == ("done", "shapes/report.py::area_report", "area_report")
    assert run.message == f"all tests pass; review the branch soa/{runs.done}/area_report"
    assert run.branch == f"soa/{runs.done}/area_report"
    assert run.base == git(runs.repo, "rev-parse", "main").strip()
    assert [a.path for a in run.agents] == ["area_report", "area_report.area", "area_report.fmt"]
    assert run.depth == 2 and run.tests_passed == 5
    assert run.tokens == sum(a.tokens for a in run.agents) > 0
    began = datetime.strptime(runs.done[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    assert run.started == began.isoformat()
    assert run.updated >= run.started

    root, area, fmt = run.agents
    assert (root.role, root.parent, root.file, root.test_file) == (
        "mother", None, "shapes/report.py", "tests/soa/test_area_report.py")
    assert (area.role, area.parent, area.file, area.test_file) == (
        "child", "area_report", "shapes/area_report__area.py", "tests/soa/test_area_report__area.py")
    assert [c.subject for c in area.commits] == [
        "skeleton: area from area_report", "generate: implement area", "modify: repair area (round 1)"]
    assert [c.subject for c in fmt.commits][-1] == "modify: answer a comment on fmt (round 1)"
    # A run may open with a `start` commit on the root (no code, the run's settings in its note).
    subjects = [c.subject for c in root.commits if c.phase != "start"]
    # Children are merged as they pass, so the first two merges come in the order they finished.
    assert subjects[0] == "generate: split area_report into area, fmt"
    assert sorted(subjects[1:3]) == ["merge: accept area into area_report",
                                     "merge: accept fmt into area_report"]
    assert subjects[3:] == ["modify: revise area_report (round 1), comment to fmt",
                            "merge: accept fmt into area_report"]
    for agent in run.agents:
        assert agent.tip == git(runs.repo, "rev-parse", agent.branch).strip()
        assert agent.commits[-1].sha == agent.tip
        assert all(c.agent == agent.path for c in agent.commits)
        # Each agent's own tests plus its docstring's examples (fmt's docstring has none).
        expected = "1 passed" if agent.path == "area_report.fmt" else "2 passed"
        assert (agent.state, agent.tests, agent.rounds) == ("passed", expected, 1)
        assert agent.tokens == sum(c.tokens for c in agent.commits)
    # The root owns one function of the user's file; a child its whole module.
    assert root.lines == 8 and area.lines == 8
    assert area.commits[1].tests == "2 failed" and area.commits[1].round == 0
    assert area.commits[2].phase == "modify" and area.commits[2].round == 1
    assert area.commits[1].date.startswith(run.started[:4])
    assert area.commits[1].author == "soa agent area_report.area"


def test_transcript_and_attempts(runs):
    repo = GitRepo.open(runs.repo)
    run, fmt = history.find_agent(repo, f"{runs.done}/area_report.fmt")
    steps = history.transcript(fmt)
    assert [s["task"] for s in steps] == ["implement", "repair"]
    assert [s["commit"] for s in steps] == [fmt.commits[1].sha, fmt.commits[2].sha]
    assert steps[1]["messages"][-1]["role"] == "assistant"
    assert "exactly two decimals" in steps[1]["messages"][-2]["content"]

    attempts = history.attempts(repo, fmt)
    assert [a.kind for a in attempts] == ["skeleton", "implement", "answer"]
    assert attempts[2].comment == "Format the value with exactly two decimals, e.g. 6 -> '6.00'."
    assert attempts[2].reflection.startswith("Two decimals now.")
    assert '+    return f"{value:.2f}"' in attempts[2].diff
    assert "-    return str(value)" in attempts[2].diff
    assert "new file mode" in attempts[0].diff and attempts[0].previous == attempts[0].commit.parents[0]

    root = history.attempts(repo, run.agents[0])
    revise = next(a for a in root if a.kind == "revise")
    assert revise.comments_sent == {"fmt": "Format the value with exactly two decimals, e.g. 6 -> '6.00'."}
    assert revise.reflection == "The report needs two decimals; fmt prints the plain number."
    merges = [a for a in root if a.kind == "merge"]
    assert sorted(m.merged for m in merges[:2]) == ["area_report.area", "area_report.fmt"]
    assert merges[2].merged == "area_report.fmt"
    # A merge's trailer is the child's result; the Mother's own result after merging is in the note.
    assert [(m.child_tests, m.tests) for m in merges] == [
        ("1 passed", None), ("2 passed", "2 failed"), ("1 passed", "2 passed")]


def test_a_run_whose_root_never_passes_is_failed(runs):
    run = history.load_run(GitRepo.open(runs.repo), runs.failed)
    assert run.state == "failed"
    assert run.message.startswith("area_report still fails its tests")
    root = run.agent("area_report")
    assert root is not None and (root.state, root.tests) == ("failed", "2 failed")
    assert run.agent("area_report.fmt").state == "passed"


def test_runs_are_listed_newest_first(runs):
    repo = GitRepo.open(runs.repo)
    assert history.run_ids(repo) == [runs.failed, runs.done]
    assert [r.run for r in history.list_runs(repo)] == [runs.failed, runs.done]
    assert [r.state for r in history.list_runs(repo)] == ["failed", "done"]


def test_without_its_end_record_a_run_is_interrupted_or_running(runs, tmp_path):
    copy, repo = copy_of(runs, tmp_path)
    tip = git(copy, "rev-parse", f"soa/{runs.done}/area_report").strip()
    kept = [line for line in git(copy, "notes", "--ref=soa", "show", tip).splitlines()
            if json.loads(line)["task"] != "end"]
    (tmp_path / "note").write_text("\n".join(kept) + "\n")
    git(copy, "notes", "--ref=soa", "add", "-f", "-F", str(tmp_path / "note"), tip)

    run = history.load_run(repo, runs.done)
    assert run.state == "interrupted" and "process is gone" in run.message
    assert run.tokens == sum(a.tokens for a in run.agents) > 0
    assert [a.state for a in run.agents] == ["passed"] * 3

    repo.lock_run(runs.done)
    try:
        run = history.load_run(repo, runs.done)
        assert run.state == "running"
        assert f"running in process {os.getpid()} on " in run.message
    finally:
        repo.unlock_run(runs.done)
    assert history.load_run(repo, runs.done).state == "interrupted"
    # A live lock on a run that has ended: a process is resuming it.
    repo.lock_run(runs.failed)
    try:
        assert history.load_run(repo, runs.failed).state == "running"
    finally:
        repo.unlock_run(runs.failed)
    assert history.load_run(repo, runs.failed).state == "failed"


def test_find_agent(runs, tmp_path):
    repo = GitRepo.open(runs.repo)
    run, agent = history.find_agent(repo, "area_report.fmt")
    assert (run.run, agent.path) == (runs.failed, "area_report.fmt")     # the newest run that has it
    run, agent = history.find_agent(repo, f"{runs.done}/area_report.fmt")
    assert (run.run, agent.branch) == (runs.done, f"soa/{runs.done}/area_report.fmt")
    run, agent = history.find_agent(repo, f"soa/{runs.done}/area_report")
    assert (run.run, agent.path) == (runs.done, "area_report")

    with pytest.raises(history.RunNotFound, match=r"^no run named 20990101-000000-abcd here; "
                                                  r"`soa-git list` shows the runs$"):
        history.find_agent(repo, "20990101-000000-abcd/area_report")
    with pytest.raises(TargetError, match=rf"^run {runs.done} has no agent named 'area_report.nope'; "
                                          "its agents are area_report, area_report.area, area_report.fmt$"):
        history.find_agent(repo, f"{runs.done}/area_report.nope")
    with pytest.raises(TargetError, match=r"^no run here has an agent named 'fmt'; "
                                          r"did you mean area_report.fmt\?$"):
        history.find_agent(repo, "fmt")
    with pytest.raises(TargetError, match="no run here has an agent named 'nothing'"):
        history.find_agent(repo, "nothing")
    with pytest.raises(history.RunNotFound, match="no run named 20990101-000000-abcd"):
        history.load_run(repo, "20990101-000000-abcd")

    empty = GitRepo.open(make_repo(tmp_path / "empty", {"a.py": "x = 1\n"}))
    assert history.run_ids(empty) == [] and history.list_runs(empty) == []
    with pytest.raises(history.RunNotFound, match="no soa-git runs here yet"):
        history.find_agent(empty, "area_report")


def test_reading_takes_a_fixed_number_of_git_calls(runs):
    repo = GitRepo.open(runs.repo)
    calls: list[str] = []

    def count(read) -> int:
        calls.clear()
        metrics.use(lambda name, seconds: calls.append(name) if name.startswith("git:") else None)
        try:
            read()
        finally:
            metrics.use(None)
        return len(calls)

    done, failed = history.load_run(repo, runs.done), history.load_run(repo, runs.failed)
    assert sum(len(a.commits) for a in done.agents) != sum(len(a.commits) for a in failed.agents)
    # for-each-ref, one git log, one cat-file --batch: whatever the number of commits or runs.
    assert count(lambda: history.load_run(repo, runs.done)) == 3
    assert count(lambda: history.load_run(repo, runs.failed)) == 3
    assert count(lambda: history.list_runs(repo)) == 3
    assert count(lambda: history.run_ids(repo)) == 1
    assert count(lambda: history.find_agent(repo, "area_report.fmt")) == 3


# ---- the commands ----------------------------------------------------------------------------


def test_list(runs, cli):
    lines = cli("list").splitlines()
    assert lines[0].split() == ["run", "target", "state", "agents", "tests", "tokens", "age"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [runs.failed, "shapes/report.py::area_report", "failed"],
        [runs.done, "shapes/report.py::area_report", "done"]]
    data = as_json(cli("list", "--json"))
    assert list(data) == ["runs"]
    assert [r["run"] for r in data["runs"]] == [runs.failed, runs.done]
    assert list(data["runs"][1]) == ["run", "target", "branch", "base", "state", "message", "started",
                                     "updated", "depth", "lines", "tests_passed", "tokens",
                                     "agent_count", "tests"]
    assert (data["runs"][1]["agent_count"], data["runs"][1]["tests"]) == (3, "2 passed")


TREE_KEYS = ["run", "target", "branch", "base", "state", "message", "started", "updated", "depth",
             "lines", "tests_passed", "tokens", "agents"]
AGENT_KEYS = ["path", "role", "function", "parent", "file", "test_file", "branch", "tip", "state",
              "tests", "passed", "rounds", "commits", "lines", "tokens", "why"]


def test_tree(runs, cli):
    text = cli("tree", runs.done)
    lines = text.splitlines()
    assert lines[0] == f"run {runs.done}: done, shapes/report.py::area_report"
    assert lines[2].split() == ["agent", "role", "state", "tests", "rounds", "lines", "tokens", "file",
                                "branch"]
    assert lines[3].split()[:4] == ["area_report", "mother", "passed", "2"]
    assert lines[4].startswith("  area ") and lines[5].startswith("  fmt ")
    cells = lines[4].split()
    assert cells[:7] == ["area", "child", "passed", "2", "passed", "1", "8"]
    assert cells[8:] == ["shapes/area_report__area.py", f"soa/{runs.done}/area_report.area"]
    data = as_json(cli("tree", runs.done, "--json"))
    assert list(data) == TREE_KEYS
    assert list(data["agents"][0]) == AGENT_KEYS
    assert [(a["path"], a["role"], a["state"], a["rounds"]) for a in data["agents"]] == [
        ("area_report", "mother", "passed", 1), ("area_report.area", "child", "passed", 1),
        ("area_report.fmt", "child", "passed", 1)]
    # Without a RUN: the newest run.
    assert as_json(cli("tree", "--json"))["run"] == runs.failed
    assert cli("tree", "20990101-000000-abcd", ok=False).strip() == (
        "Error: no run named 20990101-000000-abcd here; `soa-git list` shows the runs")


def test_log(runs, cli):
    text = cli("log", f"{runs.done}/area_report.area")
    assert text.splitlines()[0] == (f"agent area_report.area in run {runs.done}: child under area_report, "
                                    "passed (2 passed), 1 round")
    assert "#1 skeleton" in text and "#2 implement" in text and "#3 repair" in text
    assert "I added instead of multiplying." in text
    assert "     -    return width + height" in text and "     +    return width * height" in text
    fmt = cli("log", f"{runs.done}/area_report.fmt")
    assert "comment from the Mother:\n     Format the value with exactly two decimals" in fmt

    data = as_json(cli("log", f"{runs.done}/area_report.area", "--json"))
    assert list(data) == ["run", "agent", "attempts"]
    assert list(data["agent"]) == AGENT_KEYS
    assert list(data["attempts"][0]) == [
        "number", "commit", "previous", "subject", "kind", "phase", "round", "date", "model", "tokens",
        "tests", "child_tests", "merged", "reflection", "comment", "comments_sent", "diff"]
    assert [(a["kind"], a["tests"]) for a in data["attempts"]] == [
        ("skeleton", None), ("implement", "2 failed"), ("repair", "2 passed")]
    assert cli("log", "nothing", ok=False).startswith("Error: no run here has an agent named 'nothing'")


def test_show(runs, cli):
    text = cli("show", runs.done)
    assert text.splitlines()[0] == (f"run {runs.done}: done: all tests pass; review the branch "
                                    f"soa/{runs.done}/area_report")
    assert "  fmt " in text and "tests passed: 5" in text
    assert f"review: git log --graph soa/{runs.done}/area_report" in text
    data = as_json(cli("show", runs.done, "--json"))
    assert list(data) == ["kind", *TREE_KEYS] and data["kind"] == "run"

    agent = cli("show", f"{runs.done}/area_report")
    assert "comment to fmt:" in agent and "merged area_report.fmt (its tests: 1 passed)" in agent
    assert "its function at" in agent and '        return "area: " + fmt(area(width, height))' in agent
    assert "def untouched" not in agent.split("its function at")[1]     # only the root's function
    data = as_json(cli("show", f"{runs.done}/area_report.fmt", "--json"))
    assert list(data) == ["kind", "run", "agent", "attempts", "code", "test_code"]
    assert data["kind"] == "agent" and 'return f"{value:.2f}"' in data["code"]
    assert "def test_fmt" in data["test_code"]
    assert cli("show", "20990101-000000-abcd", ok=False).startswith("Error: no run named")


def test_transcript(runs, cli):
    repo = GitRepo.open(runs.repo)
    _, area = history.find_agent(repo, f"{runs.done}/area_report.area")
    steps = history.transcript(area)
    text = cli("transcript", f"{runs.done}/area_report.area")
    assert text.startswith(f"transcript of area_report.area in run {runs.done}: 2 steps")
    assert "=== step 2 of 2: repair (modify, round 1)" in text
    for step in steps:
        for message in step["messages"]:
            assert f"--- {message['role']}\n{message['content']}\n" in text     # verbatim
    data = as_json(cli("transcript", f"{runs.done}/area_report.area", "--json"))
    assert list(data) == ["run", "agent", "steps"]
    assert data["steps"] == steps
    assert {"task", "phase", "round", "model", "tests", "usage", "messages", "commit", "subject"} <= set(
        data["steps"][0])


def test_a_fresh_clone_reads_the_same_runs(runs, cli, tmp_path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(runs.repo), str(clone))
    git(clone, "fetch", "-q", "origin", *FETCH)
    agent = f"{runs.done}/area_report.fmt"
    commands = [("tree", runs.done, "--json"), ("list", "--json"), ("log", agent, "--json"),
                ("transcript", agent, "--json"), ("show", agent, "--json")]
    here = [cli(*command) for command in commands]
    there = [cli(*command, cwd=clone) for command in commands]
    assert there == here
    assert as_json(there[0])["state"] == "done"
