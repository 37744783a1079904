"""The run format round trip: what runformat writes into a real repository, it reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from soa_git import runformat as rf
from soa_git.gitrepo import Author, GitRepo

from .helpers.repos import make_repo

MOTHER = rf.CommitTrailers(run="20261126-101357-978d", agent="summarize", role="mother",
                           phase="modify", round=2, model="m-1", tokens=120, estimated=True,
                           target="pkg/stats.py::summarize", tests="3 passed, 1 failed")
CHILD = rf.CommitTrailers(run="20261126-101357-978d", agent="summarize.mean_of", role="child",
                          phase="generate", round=0, model="m-2", tokens=7,
                          parent="summarize")

# Every kind of commit an agent makes: (subject, body, kind, reflection, received, sent).
COMMITS = [
    (rf.start_subject("20261126-101357-978d", "pkg/stats.py::summarize"), "", "start", "", None,
     {}),
    (rf.skeleton_subject("mean_of", "summarize"), rf.SKELETON_BODY, "skeleton", rf.SKELETON_BODY,
     None, {}),
    (rf.split_subject("summarize", ["mean_of", "median_of"]),
     rf.step_body("  I split it in two.\n", ""), "split", "I split it in two.", None, {}),
    (rf.implement_subject("mean_of"), rf.step_body("", ""), "implement", "", None, {}),
    (rf.repair_subject("mean_of", 1, answering=False), rf.step_body("Off by one.", ""), "repair",
     "Off by one.", None, {}),
    (rf.repair_subject("mean_of", 1, answering=False, fresh=True), rf.step_body("Anew.", ""),
     "afresh", "Anew.", None, {}),
    (rf.repair_subject("mean_of", 2, answering=True),
     rf.step_body("Two decimals now.", rf.received_body("Use two decimals.\n\nAs in 6.00.")),
     "answer", "Two decimals now.", "Use two decimals.\n\nAs in 6.00.", {}),
    (rf.revise_subject("summarize", 1, ["mean_of", "median_of"]),
     rf.step_body("Both children are wrong.", rf.sent_body({"mean_of": "Divide by n.",
                                                            "median_of": "Sort first.\n\nThen pick."})),
     "revise", "Both children are wrong.", None,
     {"mean_of": "Divide by n.", "median_of": "Sort first.\n\nThen pick."}),
    (rf.revise_subject("summarize", 2, []), rf.step_body("My own bug.", rf.sent_body({})),
     "revise", "My own bug.", None, {}),
    (rf.redo_subject("mean_of", "summarize"), "", "redo", "", None, {}),
    (rf.merge_subject("mean_of", "summarize"), "", "merge", "", None, {}),
]


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    return GitRepo.open(make_repo(tmp_path / "repo", {"pkg/__init__.py": ""}))


def test_commits_read_back_as_written(repo: GitRepo) -> None:
    """Subjects, bodies and trailers through real git commits and `git log`'s trailer parser."""
    branch = rf.branch(MOTHER.run, MOTHER.agent)
    author = Author(rf.author_name(MOTHER.agent), rf.author_email(MOTHER.agent))
    written = []
    for number, (subject, body, *_) in enumerate(COMMITS):
        trailers = MOTHER if number % 2 else CHILD
        written.append(repo.commit_files(branch, {}, subject=subject, body=body,
                                         trailers=trailers.write(), author=author,
                                         allowed_paths=(), start="HEAD", allow_empty=True))
    read = {c.sha: c for c in repo.commits([branch], containing=rf.run_marker(MOTHER.run))}
    assert set(read) == set(written)
    assert len(repo.commits([branch], containing=rf.run_marker(None))) == len(COMMITS)
    assert repo.commits([branch], containing=rf.run_marker("20261126-101357-0000")) == []
    for number, (sha, (subject, _, kind, reflection, received, sent)) in enumerate(
            zip(written, COMMITS)):
        commit = read[sha]
        assert rf.CommitTrailers.read(commit.trailers) == (MOTHER if number % 2 else CHILD)
        assert commit.subject == subject
        assert rf.kind(commit.subject, "") == kind
        assert rf.read_body(commit.subject, commit.body) == (reflection, received, sent)
        assert rf.parse_branch(branch) == (MOTHER.run, MOTHER.agent)


def test_trailers_keep_their_order_and_one_line_each() -> None:
    text = rf.message("a  subject\n", "", {**CHILD.write(), "Soa-Tests": "1 passed,\n 2 failed"})
    assert text.splitlines()[2:] == [
        "Soa-Run: 20261126-101357-978d", "Soa-Agent: summarize.mean_of", "Soa-Role: child",
        "Soa-Parent: summarize", "Soa-Phase: generate", "Soa-Round: 0",
        "Soa-Tests: 1 passed, 2 failed", "Soa-Model: m-2", "Soa-Tokens: 7"]
    assert text.splitlines()[0] == "a subject"
    with pytest.raises(ValueError):
        rf.message("x", "", {"not a key": "y"})
    assert rf.test_counts("3 passed, 1 failed, 2 errors") == {"passed": 3, "failed": 1,
                                                              "errors": 2}


def test_notes_read_back_as_written() -> None:
    records = [
        rf.start_record("summarize", {"model": "m", "api_key_env": "OPENAI_API_KEY"}),
        rf.step_record(agent="summarize", task="revise", phase="modify", round=1, model="m",
                       tests="1 failed", usage={"prompt_tokens": 3}, comment="Divide by n.",
                       messages=[{"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "é ```python\nx\n```"}]),
        rf.merge_record("summarize", "summarize.mean_of", "abc123", "3 passed"),
        rf.test_record("summarize", "4 passed"),
        rf.error_record("summarize.median_of", "no code block"),
        rf.end_record("summarize", state="done", message="all tests pass", usage={"x": 1},
                      seconds=1.23456),
    ]
    note = "\n".join(rf.note_line(r) for r in records) + "\na person's own line\n[1, 2]"
    read = rf.read_note(note)
    assert read == [{**r, "seconds": 1.235} if r["task"] == "end" else r for r in records]
    assert "é" in note
    assert [rf.is_step(r) for r in read] == [False, True, False, False, False, False]
    assert rf.answer(read[1]) == "é ```python\nx\n```" and read[1]["comment"] == "Divide by n."
    assert rf.merged_child(read) == "summarize.mean_of"
    assert rf.own_test_result(read, "summarize") == "4 passed"
    assert rf.own_test_result(read, "summarize.mean_of") is None
    assert rf.run_end(read)["state"] == "done"


def test_file_headers_and_run_ids_read_back() -> None:
    assert rf.tested_function(rf.test_header("mean_of") + "import x\n") == "mean_of"
    assert rf.tested_function('"""Unit tests of something else."""\n') is None
    text = rf.test_header("mean_of") + "import math\n" + rf.test_import("pkg.m", ["mean_of", "h"])
    assert rf.tested_module(text + "\n", "mean_of") == "pkg.m" == rf.tested_module(text, "h")
    assert rf.tested_module(text, "median_of") is None
    assert rf.module_header("mean_of", "summarize.mean_of").startswith('"""`mean_of`, written')
    run = rf.new_run_id()
    assert rf.is_run_id(run) and rf.run_started(run) is not None
    assert rf.run_started("my-run") is None
    assert rf.parse_branch("soa/r1/solve.parse") == ("r1", "solve.parse")
    assert rf.parse_branch("soa/r1") is None and rf.parse_branch("main") is None
