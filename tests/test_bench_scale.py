"""The scale benchmark runs, and soa-git's work per agent does not grow with the run's size.

Growth is checked by counting (git subprocesses per agent, workspaces alive at once), never by
timing: speed targets belong in `benchmarks/scale.py`, not in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import scale, scale_shape


@pytest.mark.parametrize("agents,depth,expected", [
    (1, 1, [1]), (1, 4, [1]), (10, 2, [1, 9]), (10, 4, [1, 2, 3, 4]), (100, 3, [1, 9, 90]),
    (1000, 3, [1, 31, 968])])
def test_shapes_add_up(agents, depth, expected):
    assert scale_shape.level_counts(agents, depth) == expected
    shape = scale_shape.build_shape(agents, depth)
    assert len(shape.children) == agents
    assert shape.leaves[scale_shape.ROOT_FUNCTION] == sum(1 for c in shape.children.values() if not c)


def test_a_tiny_benchmark_writes_json_and_a_plot(tmp_path: Path):
    out = tmp_path / "scale.json"
    assert scale.main(["--agents", "1,10", "--depth", "1-2", "--files", "10", "--latency", "0",
                       "--jobs", "4", "--limit", "120", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["agents"], r["depth"]) for r in data["results"]] == [(1, 1), (10, 2)]
    for r in data["results"]:
        assert "skipped" not in r, r
        assert r["state"] == "done" and r["agents_run"] == r["agents"] == r["passed_agents"]
        assert r["model_calls"] == r["agents"]       # one answer per agent: the floor is exact
        assert r["git_calls"] > 0 and r["peak_rss_mb"] > 0
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _measure(agents: int, tmp_path: Path, templates: dict) -> dict:
    result = scale.measure_one({"files": 10, "agents": agents, "depth": 2, "latency_s": 0},
                               jobs=4, limit_s=300, templates=templates, scratch=tmp_path)
    assert "skipped" not in result, result
    assert result["state"] == "done", result["message"]
    return result


def test_a_repeated_configuration_records_its_median_run(tmp_path: Path):
    result = scale.measure({"files": 10, "agents": 1, "depth": 1, "latency_s": 0}, 3, jobs=4,
                           limit_s=120, templates={}, scratch=tmp_path)
    walls = [run["wall_s"] for run in result["runs"]]
    assert len(walls) == 3 and walls == sorted(walls) and result["wall_s"] == walls[1]
    assert result["state"] == "done"


def test_work_per_agent_does_not_grow_with_the_number_of_agents(tmp_path: Path):
    templates: dict = {}
    small, large = _measure(10, tmp_path, templates), _measure(30, tmp_path, templates)
    # Steps whose number does not depend on timing. Notes and branch moves that arrive together
    # share one update-ref transaction and one notes commit, so those are counted as asked for
    # (ref_writes) and objects apart from the notes commits.
    for result in (small, large):
        calls = result["calls"]
        calls["objects_outside_notes_commits"] = (calls.get("object_writes", 0)
                                                  - calls.get("notes_commit_object_writes", 0))
    steady = {"commit_files", "merge", "append_note", "start_branch", "workspace_fill",
              "tests", "objects_outside_notes_commits", "git:merge-tree", "ref_writes"}
    per_agent = {k: (small["calls"].get(k, 0) / 10, large["calls"].get(k, 0) / 30) for k in steady}
    # The root's fixed costs spread over more agents: per agent, nothing may cost more.
    grown = {k: v for k, v in per_agent.items() if v[1] > v[0] * 1.05 + 0.2}
    assert not grown, grown
    assert large["git_calls"] / 30 <= small["git_calls"] / 10 * 1.25
    # Workspaces are handed from agent to agent: no more than `jobs` children and their Mother.
    assert small["peak_workspaces"] <= 5 and large["peak_workspaces"] <= 5
    # A child's prompt does not carry all its siblings' skeletons once there are many: the
    # tokens per agent do not grow with the width of the tree (the root's answer does, once).
    assert large["tokens"] / 30 <= small["tokens"] / 10 * 1.1
