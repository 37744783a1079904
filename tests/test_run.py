"""End-to-end runs: the real organizer, real git, the real openai client over loopback HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from soa_git import history
from soa_git.commands.run import run
from soa_git.errors import ModelError
from soa_git.gitrepo import GitRepo
from soa_git.scripted import Scripted

from .helpers.repos import file_at, free_port, git, make_repo, snapshot, soa_branches, trailers
from .helpers.shapes import (AREA_RIGHT, AREA_WRONG, DECOMPOSE, FMT_LOOSE, FMT_RIGHT, KEY,
                             SHAPES_SKELETON, fill, implementation, shapes_script)

def run_python_tests(repo: Path, rev: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    checkout = tmp_path / f"checkout-{rev.replace('/', '_')}"
    git(repo, "worktree", "add", "-q", "--detach", str(checkout), rev)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=checkout, capture_output=True, text=True)


def test_two_level_tree_passes_first_time(sample_repo, sample_script, serve, tmp_path):
    before = snapshot(sample_repo)
    server = serve(sample_script)
    [summary] = fill(sample_repo, server, "pipeline/stats.py::summarize")

    assert summary.state == "done", summary.message
    run_id = summary.run
    branches = soa_branches(sample_repo)
    expected = {f"soa/{run_id}/summarize"} | {f"soa/{run_id}/summarize.{name}"
                                               for name in ("mean_of", "median_of", "totals_by_city")}
    assert set(branches) == expected
    assert summary.branch == f"soa/{run_id}/summarize"
    assert {a.role for a in summary.agents if a.path == "summarize"} == {"mother"}

    # Each child joined the Mother's branch in a --no-ff merge whose second parent is the child's tip.
    merges = git(sample_repo, "log", "--merges", "--format=%H %P", summary.branch).splitlines()
    assert len(merges) == 3
    child_tips = {branches[b] for b in expected - {summary.branch}}
    assert {line.split()[2] for line in merges} == child_tips
    for line in merges:
        merge = line.split()[0]
        assert trailers(sample_repo, merge)["Soa-Phase"] == "merge"
        assert git(sample_repo, "show", "-s", "--format=%an", merge).strip() == "soa agent summarize"

    tip_trailers = trailers(sample_repo, branches[f"soa/{run_id}/summarize.mean_of"])
    assert tip_trailers["Soa-Run"] == run_id
    assert tip_trailers["Soa-Agent"] == "summarize.mean_of"
    assert tip_trailers["Soa-Parent"] == "summarize"
    assert tip_trailers["Soa-Role"] == "child"
    assert tip_trailers["Soa-Phase"] == "generate"
    # The Mother's three tests and the one made from the docstring's example.
    assert tip_trailers["Soa-Tests"] == "4 passed"
    assert tip_trailers["Soa-Model"] == "scripted"
    assert int(tip_trailers["Soa-Tokens"]) > 0

    # The transcript of the step is a note on its commit: the exact messages, never the key.
    note = git(sample_repo, "notes", "--ref=soa", "show", branches[f"soa/{run_id}/summarize.mean_of"])
    record = json.loads(note.splitlines()[0])
    assert record["agent"] == "summarize.mean_of"
    assert record["messages"][1]["content"].startswith("soa-git task: implement summarize.mean_of")
    assert record["messages"][-1]["role"] == "assistant"
    assert "sk-test-key" not in note

    # One file per agent, next to the target; the user's other functions are byte-identical.
    stats = file_at(sample_repo, summary.branch, "pipeline/stats.py")
    original = (sample_repo / "pipeline/stats.py").read_text()
    assert stats.split("def summarize")[0] == original.split("def summarize")[0]
    assert stats.split("def top_cities")[1] == original.split("def top_cities")[1]
    assert "from pipeline.summarize__mean_of import mean_of" in stats
    assert "def mean_of" in file_at(sample_repo, summary.branch, "pipeline/summarize__mean_of.py")

    # The result passes the sample project's own tests for summarize.
    result = run_python_tests(sample_repo, summary.branch, tmp_path, "tests/test_pipeline.py", "-k", "summarize")
    assert result.returncode == 0, result.stdout + result.stderr

    assert snapshot(sample_repo) == before
    assert not list((sample_repo / ".git" / "soa" / "worktrees").glob("*/*")), "worktrees left behind"
    fsck = subprocess.run(["git", "-C", str(sample_repo), "fsck", "--strict"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr


def test_child_whose_first_answer_fails_is_repaired(shapes, serve):
    server = serve(shapes_script(area_first=AREA_WRONG, extra=[
        {"when": r"^soa-git task: repair area_report[.]area$",
         "replies": [f"I added instead of multiplying.\n\n{AREA_RIGHT}"]}]))
    [summary] = fill(shapes, server)

    assert summary.state == "done", summary.message
    area = next(a for a in summary.agents if a.path == "area_report.area")
    assert area.rounds == 1 and area.state == "passed"
    branch = f"soa/{summary.run}/area_report.area"
    assert git(shapes, "log", "--format=%s", branch).splitlines()[:2] == [
        "modify: repair area (round 1)", "generate: implement area"]
    # The Mother's test and the docstring's example `area(2, 3) == 6`.
    assert {k: trailers(shapes, branch)[k] for k in ("Soa-Phase", "Soa-Round", "Soa-Tests")} == {
        "Soa-Phase": "modify", "Soa-Round": "1", "Soa-Tests": "2 passed"}
    assert trailers(shapes, branch + "~1")["Soa-Tests"] == "2 failed"
    body = git(shapes, "log", "-1", "--format=%B", f"soa/{summary.run}/area_report.area")
    assert "I added instead of multiplying." in body
    # The repair prompt carried the failing test's feedback.
    repair = [r for r in server.requests if "repair area_report.area" in json.dumps(r["body"])]
    assert "test_area" in repair[0]["body"]["messages"][-1]["content"]


def test_mother_comment_fixes_a_child(shapes, serve):
    revise = ("The report needs two decimals; fmt prints the plain number.\n\n"
              "```comment fmt\nFormat the value with exactly two decimals, e.g. 6 -> '6.00'.\n```\n")
    server = serve(shapes_script(fmt_first=FMT_LOOSE, extra=[
        {"when": r"^soa-git task: revise area_report$", "replies": [revise]},
        {"when": r"^soa-git task: repair area_report[.]fmt$", "replies": [f"Two decimals now.\n\n{FMT_RIGHT}"]},
    ]))
    [summary] = fill(shapes, server)

    assert summary.state == "done", summary.message
    run_id = summary.run
    fmt_branch = f"soa/{run_id}/area_report.fmt"
    # The child answered the comment on its own branch, and the Mother merged it again.
    fmt_log = git(shapes, "log", "--format=%s", fmt_branch).splitlines()
    assert fmt_log[0] == "modify: answer a comment on fmt (round 1)"
    assert "exactly two decimals" in git(shapes, "log", "-1", "--format=%B", fmt_branch)
    repair_prompt = next(r for r in server.requests if "repair area_report.fmt" in json.dumps(r["body"]))
    assert "exactly two decimals" in repair_prompt["body"]["messages"][-1]["content"]
    merged_parents = git(shapes, "log", "--merges", "--format=%P", summary.branch).split()
    assert soa_branches(shapes)[fmt_branch] in merged_parents
    mother_log = git(shapes, "log", "--first-parent", "--format=%s", summary.branch).splitlines()
    assert mother_log[0] == "merge: accept fmt into area_report"
    assert any(s.startswith("modify: revise area_report (round 1), comment to fmt") for s in mother_log)
    assert 'return f"{value:.2f}"' in file_at(shapes, summary.branch, "shapes/area_report__fmt.py")


def test_answer_that_does_not_parse_is_retried_with_the_error(shapes, serve):
    script = shapes_script(extra=[{"when": r"^soa-git task: reformat area_report$",
                                   "replies": [DECOMPOSE]}])
    script[0]["replies"] = ["```python\ndef area_report(width, height:\n    return 1\n```"]
    server = serve(script)
    [summary] = fill(shapes, server)
    assert summary.state == "done", summary.message
    retry = server.requests[1]["body"]["messages"]
    assert retry[-1]["content"].startswith("soa-git task: reformat area_report")
    assert "does not parse (line 1, column" in retry[-1]["content"]
    # The task is restated and the rejected answer is not sent again.
    assert "Your function is `area_report`" in retry[-1]["content"]
    assert [m["role"] for m in retry] == ["system", "user"]
    split = git(shapes, "log", "--format=%H", "--grep=^generate: split", f"soa/{summary.run}/area_report")
    note = git(shapes, "notes", "--ref=soa", "show", split.strip())
    recorded = json.loads(note.splitlines()[0])["messages"]
    assert [m["role"] for m in recorded] == ["system", "user", "assistant", "user", "assistant"]


def test_rate_limit_then_success(shapes, serve):
    limited = {"status": 429, "headers": {"Retry-After": "0"}}
    script = shapes_script()
    script[0]["replies"] = [limited, DECOMPOSE]
    server = serve(script)
    [summary] = fill(shapes, server)
    assert summary.state == "done", summary.message
    assert len(server.requests) == 4


def test_endpoint_down_leaves_the_repository_untouched(shapes):
    before = snapshot(shapes)
    refs_before = git(shapes, "for-each-ref")
    with pytest.raises(ModelError, match="unreachable"):
        run("shapes/report.py::area_report", cwd=shapes,
            flags={"base_url": f"http://127.0.0.1:{free_port()}/v1"}, environ=KEY)
    assert snapshot(shapes) == before
    assert git(shapes, "for-each-ref") == refs_before


def test_nonsense_answers_leave_a_failed_run_with_their_transcript(shapes, serve):
    """It left nothing: no branch, no transcript, `list` said there were no runs."""
    before = snapshot(shapes)
    server = serve(lambda request: "I am a teapot and write no code.")
    [summary] = fill(shapes, server)
    assert summary.state == "failed"
    assert "could not be used after 3 tries" in summary.message
    assert snapshot(shapes) == before
    repo = GitRepo.open(shapes)
    [record] = history.list_runs(repo)
    assert (record.run, record.state) == (summary.run, "failed")
    assert "could not be used after 3 tries" in record.message
    [root] = record.agents
    assert root.state == "failed" and "could not be used" in (root.why or "")
    [step] = history.transcript(root)
    answers = [m["content"] for m in step["messages"] if m["role"] == "assistant"]
    assert answers == ["I am a teapot and write no code."] * 3
    assert step["task"] == "error" and step["asked"] == "decompose"
    # Every token the run spent is in its record, and in its one agent's.
    assert record.tokens == summary.usage.total == root.tokens > 0


def test_every_skeleton_of_a_file_is_attempted_when_the_first_fails(tmp_path, serve):
    """The first run's unusable answers ended the command; the other skeletons were never tried."""
    text = SHAPES_SKELETON.replace("def untouched() -> int:\n    return 42",
                                   'def other() -> int:\n    """One."""\n    ...')
    repo = make_repo(tmp_path / "two", {"shapes/__init__.py": "", "shapes/report.py": text})
    server = serve(lambda request: "No code today.")
    summaries = fill(repo, server, "shapes/report.py")
    assert [(s.target.function, s.state) for s in summaries] == [("area_report", "failed"),
                                                                ("other", "failed")]
    # Each run counts its own tokens (its steps' own), not the sum of the runs before it.
    for summary in summaries:
        [agent] = history.load_run(GitRepo.open(repo), summary.run).agents
        assert summary.usage.total == agent.tokens > 0


def test_scripted_usage_missing_is_marked_estimated(shapes, serve):
    script = [Scripted(text=text, usage=False) for text in (DECOMPOSE, AREA_RIGHT, FMT_RIGHT)]
    by_task = {"decompose area_report": script[0], "area_report.area": script[1], "area_report.fmt": script[2]}

    def respond(request):
        first = request["messages"][-1]["content"].splitlines()[0]
        return next(reply for key, reply in by_task.items() if first.endswith(key))

    server = serve(respond)
    [summary] = fill(shapes, server)
    assert summary.state == "done"
    assert summary.usage.estimated
    tokens = git(shapes, "log", "--format=%(trailers:key=Soa-Tokens,valueonly)", summary.branch)
    assert "(estimated)" in tokens


FMT_DECOMPOSE = '''fmt rounds, then pads.

```python
def fmt(value: float) -> str:
    return pad(round2(value))


def round2(value: float) -> float:
    """Round to two decimals.

    >>> round2(1.234)
    1.23
    """
    ...


def pad(value: float) -> str:
    """Show exactly two decimals.

    >>> pad(6)
    '6.00'
    """
    ...


def test_round2():
    assert round2(1.234) == 1.23


def test_pad():
    assert pad(6) == "6.00"
```
'''


def test_three_levels_a_child_mother_merges_its_own_children(shapes, serve):
    server = serve(shapes_script(fmt_first=FMT_DECOMPOSE, extra=[
        {"when": r"^soa-git task: implement area_report[.]fmt[.]round2$",
         "replies": [implementation("round2", "return round(value, 2)", "value: float", "float")]},
        {"when": r"^soa-git task: implement area_report[.]fmt[.]pad$",
         "replies": [implementation("pad", 'return f"{value:.2f}"', "value: float", "str")]},
    ]))
    [summary] = fill(shapes, server, max_depth=3)

    assert summary.state == "done", summary.message
    assert summary.depth == 3
    roles = {a.path: a.role for a in summary.agents}
    assert roles == {"area_report": "mother", "area_report.area": "child", "area_report.fmt": "mother",
                     "area_report.fmt.pad": "child", "area_report.fmt.round2": "child"}
    fmt_branch = f"soa/{summary.run}/area_report.fmt"
    fmt_merges = git(shapes, "log", "--merges", "--first-parent", "--format=%s", fmt_branch).splitlines()
    assert sorted(fmt_merges) == ["merge: accept pad into fmt", "merge: accept round2 into fmt"]
    # The grandchildren's code reached the root through two levels of merges.
    module = file_at(shapes, summary.branch, "shapes/area_report__fmt__pad.py")
    assert 'return f"{value:.2f}"' in module
    assert "from shapes.area_report__fmt__pad import pad" in file_at(
        shapes, summary.branch, "shapes/area_report__fmt.py")
    prompts = [r["body"]["messages"][1]["content"].splitlines()[0] for r in server.requests]
    assert "soa-git task: decompose area_report.fmt" in prompts
    assert "soa-git task: implement area_report.fmt.pad" in prompts
