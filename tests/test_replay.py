"""`--model replay:RUN`: a run reproduced offline from its recorded transcripts."""

from __future__ import annotations

import pytest

from soa_git.commands.run import run
from soa_git.errors import ModelError, SoaError

from .helpers.repos import git, snapshot
from .helpers.shapes import KEY, respond, shape, shapes_repo


@pytest.fixture
def recorded(tmp_path, serve):
    repo = shapes_repo(tmp_path / "shapes", readme=False)
    [summary] = run("shapes/report.py::area_report", cwd=repo, environ=KEY,
                    flags={"base_url": serve(respond).base_url})
    assert summary.state == "done"
    return repo, summary


def test_a_replayed_run_builds_the_same_tree_and_files_offline(recorded):
    repo, recording = recorded
    original = recording.run
    # No endpoint and no key: every answer comes from the notes.
    [replayed] = run("shapes/report.py::area_report", cwd=repo, environ={},
                     flags={"model": f"replay:{original}", "base_url": "http://127.0.0.1:9/v1"})
    assert replayed.state == "done", replayed.message
    assert replayed.run != original
    assert shape(repo, replayed.run) == shape(repo, original)
    assert [(a.path, a.rounds, a.tests) for a in replayed.agents] == [
        (a.path, a.rounds, a.tests) for a in recording.agents]
    model = git(repo, "log", "-1", "--format=%(trailers:key=Soa-Model,valueonly)",
                f"soa/{replayed.run}/area_report.area").strip()
    assert model == "scripted"


def test_a_prompt_that_differs_from_the_recording_ends_the_replay(recorded):
    repo, recording = recorded
    original = recording.run
    report = repo / "shapes" / "report.py"
    report.write_text(report.read_text().replace("with two decimals", "with three decimals"))
    git(repo, "commit", "-qam", "a different contract")
    before, refs = snapshot(repo), git(repo, "for-each-ref")
    with pytest.raises(ModelError, match=f"replay of run {original}: agent area_report, step 1, "
                                         "asks with a prompt that differs from the recording"):
        run("shapes/report.py::area_report", cwd=repo, environ={}, flags={"model": f"replay:{original}"})
    assert snapshot(repo) == before and git(repo, "for-each-ref") == refs


def test_replaying_an_unknown_run_is_one_clear_error(recorded):
    repo, _ = recorded
    with pytest.raises(SoaError, match="no run named nope"):
        run("shapes/report.py::area_report", cwd=repo, environ={}, flags={"model": "replay:nope"})
