"""The local-model benchmark's demo part, read from the demo's real JSON (scripted model)."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.local_model import measure_demo
from .helpers.cli import console_script


def test_the_demo_part_records_each_skeleton_what_was_accepted_and_the_samples_tests():
    """It had read `target` as a string and lost two real-model demos' records at their end."""
    result = measure_demo("scripted", soa_git=console_script()[0], model=("--scripted",))
    try:
        assert result["exit_code"] == 0, result
        files = {"pipeline/records.py::load_records", "pipeline/stats.py::summarize",
                 "pipeline/report.py::render_report"}
        assert set(result["skeletons"]) == files
        assert all(s["state"] == "done" and s["agents"] >= 1 for s in result["skeletons"].values())
        assert set(result["accepted"]) == files
        assert result["sample_tests"].get("passed", 0) > 0 and "failed" not in result["sample_tests"]
    finally:
        shutil.rmtree(Path(result["dir"]).parent, ignore_errors=True)
