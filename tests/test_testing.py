"""The sandboxed pytest runner: results, limits, isolation, and a worktree left untouched."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from soa_git.testing import TestCase, TestResult, run_tests

from .helpers.processes import running


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def _listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def _run(worktree: Path, test_files: list[str], **kwargs: object) -> TestResult:
    """run_tests, checking that the run left no file behind in the worktree."""
    before = _listing(worktree)
    result = run_tests(worktree, test_files, **kwargs)  # type: ignore[arg-type]
    assert _listing(worktree) == before
    return result


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "wt"
    path.mkdir()
    return path


def test_all_pass_with_package_import_and_test_class(worktree: Path) -> None:
    _write(worktree, {
        "pkg/__init__.py": "",
        "pkg/calc.py": "def add(a, b):\n    return a + b\n",
        "tests/test_calc.py": """
            import unittest

            from pkg.calc import add

            def test_add():
                assert add(1, 2) == 3

            def test_tmp(tmp_path):
                (tmp_path / "x").write_text("scratch goes to the sandbox's TMPDIR")

            class TestNested:
                def test_zero(self):
                    assert add(0, 0) == 0

            # Small models often answer with unittest classes (0.5B, HumanEval/80 and 100).
            class TestAddCase(unittest.TestCase):
                def test_negative(self):
                    self.assertEqual(add(-1, -2), -3)
        """,
    })
    result = _run(worktree, ["tests/test_calc.py"])
    assert result.ok, result.output
    assert result.summary() == "4 passed"
    assert [case.name for case in result.cases] == [
        "tests/test_calc.py::test_add",
        "tests/test_calc.py::test_tmp",
        "tests/test_calc.py::TestNested::test_zero",
        "tests/test_calc.py::TestAddCase::test_negative",
    ]
    assert result.feedback() == "4 passed"


def test_failing_test_is_reported_with_its_assertion(worktree: Path) -> None:
    _write(worktree, {"test_f.py": """
        def test_good():
            assert True

        def test_bad():
            assert 2 + 2 == 5, "arithmetic is broken"
    """})
    result = _run(worktree, ["test_f.py"])
    assert not result.ok
    assert (result.passed, result.failed) == (1, 1)
    assert result.summary() == "1 passed, 1 failed"
    bad = next(case for case in result.cases if case.outcome == "failed")
    assert bad.name == "test_f.py::test_bad"
    assert "arithmetic is broken" in bad.message
    feedback = result.feedback()
    assert "test_f.py::test_bad" in feedback
    assert "arithmetic is broken" in feedback
    assert "test_good" not in feedback


def test_a_failed_equality_shows_both_values_whole_once(worktree: Path) -> None:
    """The repair prompt needs what the code gave: pytest abbreviates long values and asks for
    -vv, and its message repeats the traceback's last lines."""
    _write(worktree, {"test_r.py": """
        def render():
            return "\\n    Sales report\\n    ============\\n    Records: 3\\n    Total: 1260.5\\n"

        def test_render():
            assert render() == "Sales report\\n============\\nRecords: 3\\nTotal: 1,260.50\\n"

        def test_order():
            assert sorted([3, 1, 2], reverse=True) == [1, 2, 3]
    """})
    feedback = _run(worktree, ["test_r.py"]).feedback()
    gave = repr("\n    Sales report\n    ============\n    Records: 3\n    Total: 1260.5\n")
    wanted = repr("Sales report\n============\nRecords: 3\nTotal: 1,260.50\n")
    assert f"assert {gave} == {wanted}" in feedback
    assert "assert [3, 2, 1] == [1, 2, 3]" in feedback
    assert "-vv" not in feedback and "truncated" not in feedback
    assert feedback.count(gave) == 1
    assert "diff" not in feedback


def test_collection_errors_are_kept_and_do_not_hide_other_files(worktree: Path) -> None:
    _write(worktree, {
        "test_import.py": "import no_such_module_xyz\n\ndef test_x():\n    pass\n",
        "test_syntax.py": "def test_x(:\n",
        "test_fine.py": "def test_ok():\n    pass\n",
    })
    result = _run(worktree, ["test_import.py", "test_syntax.py", "test_fine.py"])
    assert not result.ok
    assert (result.errors, result.passed) == (2, 1)
    assert result.summary() == "1 passed, 2 errors"
    assert {case.name for case in result.cases if case.outcome == "error"} == {
        "test_import.py", "test_syntax.py"}
    feedback = result.feedback()
    assert "No module named 'no_such_module_xyz'" in feedback
    assert "SyntaxError" in feedback


def _wait_none_running(marker: str, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while running(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_infinite_loop_times_out_and_everything_it_started_is_killed(worktree: Path) -> None:
    _write(worktree, {"test_loop.py": """
        import subprocess

        def test_forever():
            subprocess.Popen(["sleep", "600.0417"])
            while True:
                pass
    """})
    start = time.monotonic()
    result = _run(worktree, ["test_loop.py"], timeout_s=2)
    assert time.monotonic() - start < 8
    assert result.timed_out and not result.ok
    assert result.cases == ()
    assert result.summary() == "no tests ran, timed out after 2s"
    assert "timed out after 2s" in result.feedback()
    assert _wait_none_running("600.0417")


def test_background_process_left_by_a_passing_test_is_killed(worktree: Path) -> None:
    _write(worktree, {"test_bg.py": """
        import subprocess

        def test_leaves_child():
            subprocess.Popen(["sleep", "600.0418"], start_new_session=True)
    """})
    start = time.monotonic()
    result = _run(worktree, ["test_bg.py"], timeout_s=10)
    assert time.monotonic() - start < 5
    assert result.ok and not result.timed_out
    assert _wait_none_running("600.0418")


def test_memory_hog_fails_with_memory_error(worktree: Path) -> None:
    _write(worktree, {"test_hog.py": """
        def test_hog():
            data = bytearray(2 * 1024 ** 3)
            assert len(data) > 0
    """})
    result = _run(worktree, ["test_hog.py"], memory_mb=256)
    assert not result.ok and not result.timed_out
    assert [case.outcome for case in result.cases] == ["failed"]
    assert "MemoryError" in result.cases[0].message + result.cases[0].details


def test_file_size_is_limited(worktree: Path) -> None:
    _write(worktree, {"test_big.py": """
        import pytest

        def test_big(tmp_path):
            with pytest.raises(OSError):
                with open(tmp_path / "big", "wb") as f:
                    f.write(b"x" * (65 * 1024 * 1024))
    """})
    assert _run(worktree, ["test_big.py"]).ok


def test_environment_has_no_secrets(worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_home = str(Path.home())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-planted")
    _write(worktree, {"test_env.py": f"""
        import os

        def test_env():
            assert "OPENAI_API_KEY" not in os.environ
            assert "GITHUB_TOKEN" not in os.environ
            assert not any("planted" in value for value in os.environ.values())
            assert os.environ["HOME"] != {real_home!r}
            assert os.environ["TMPDIR"] == os.environ["HOME"]
            assert os.environ["PYTHONHASHSEED"] == "0"
    """})
    result = _run(worktree, ["test_env.py"])
    assert result.ok, result.feedback()


def test_user_conftest_and_config_do_not_break_the_run(
    worktree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_ADDOPTS", "--also-bogus")
    _write(worktree, {
        "conftest.py": "raise RuntimeError('user conftest must not be imported')\n",
        "tests/conftest.py": "raise RuntimeError('nor this one')\n",
        "pytest.ini": "[pytest]\naddopts = --bogus-option -x\n",
        "pyproject.toml": "[tool.pytest.ini_options]\naddopts = '--bogus-too'\n",
        "tests/test_ok.py": "def test_ok():\n    pass\n",
    })
    result = _run(worktree, ["tests/test_ok.py"])
    assert result.ok, result.feedback()


def test_python_path_makes_a_module_importable(worktree: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _write(lib, {"helper_mod.py": "VALUE = 42\n"})
    _write(worktree, {"test_lib.py": """
        import helper_mod

        def test_value():
            assert helper_mod.VALUE == 42
    """})
    assert not _run(worktree, ["test_lib.py"]).ok
    before = _listing(lib)
    result = _run(worktree, ["test_lib.py"], python_path=[lib])
    assert result.ok, result.feedback()
    assert _listing(lib) == before  # no __pycache__ next to imported modules either


def test_missing_report_keeps_the_output(worktree: Path) -> None:
    _write(worktree, {"test_exit.py": """
        import os

        def test_vanish():
            os._exit(3)
    """})
    result = _run(worktree, ["test_exit.py"])
    assert result.cases == () and not result.ok and not result.timed_out
    assert result.summary() == "no tests ran"
    assert "exited with code 3 without writing a report" in result.feedback()


def test_crash_is_explained(worktree: Path) -> None:
    _write(worktree, {"test_crash.py": """
        import ctypes

        def test_segfault():
            ctypes.string_at(0)
    """})
    result = _run(worktree, ["test_crash.py"])
    assert result.cases == () and not result.ok
    assert "killed without writing a report: Segmentation fault" in result.feedback()


def test_a_run_reports_the_cpu_its_tests_used(worktree: Path) -> None:
    _write(worktree, {"test_light.py": """
        def test_light():
            assert True
        """, "test_heavy.py": """
        import time

        def test_heavy():
            end = time.process_time() + 0.5
            while time.process_time() < end:
                pass
        """})
    light = _run(worktree, ["test_light.py"])
    heavy = _run(worktree, ["test_heavy.py"])
    assert light.ok and heavy.ok
    assert 0 < light.cpu_s < 0.5 <= heavy.cpu_s < 5


def test_generated_code_runs_at_a_lower_priority(worktree: Path) -> None:
    expected = min(19, os.nice(0) + 10)
    _write(worktree, {"test_nice.py": f"""
        import os

        def test_nice():
            assert os.nice(0) == {expected}
        """})
    assert _run(worktree, ["test_nice.py"]).ok


def test_test_files_must_be_relative_paths_inside_the_worktree(worktree: Path) -> None:
    for bad in ([], ["/etc/passwd"], ["../x.py"], ["-p evil"]):
        with pytest.raises(ValueError):
            run_tests(worktree, bad)


def test_summary_strings() -> None:
    def cases(*outcomes: str) -> tuple[TestCase, ...]:
        return tuple(TestCase(f"t.py::t{i}", outcome) for i, outcome in enumerate(outcomes))

    assert TestResult(cases("passed") * 4 + cases("failed")).summary() == "4 passed, 1 failed"
    assert TestResult(cases("error", "skipped")).summary() == "1 error, 1 skipped"
    assert TestResult(cases("error", "error")).summary() == "2 errors"
    assert TestResult(()).summary() == "no tests ran"
    timed_out = TestResult(cases("passed"), timed_out=True, timeout_s=1.5)
    assert timed_out.summary() == "1 passed, timed out after 1.5s"
    assert not timed_out.ok
    assert not TestResult(cases("skipped")).ok
    assert TestResult(cases("passed", "skipped")).ok


def test_feedback_is_bounded_and_shares_room_between_failures() -> None:
    failures = tuple(
        TestCase(f"t.py::test_{i}", "failed", f"message {i}", "x" * 5000 + f"E   message {i}")
        for i in range(3)
    ) + (TestCase("t.py::test_setup", "error", "no traceback"),)
    text = TestResult(failures).feedback(limit=1200)
    assert len(text) <= 1200
    for i in range(3):
        assert f"t.py::test_{i} (failed)\n[...]x" in text
        assert text.count(f"message {i}") == 1  # the end of a traceback is what is kept
    assert "t.py::test_setup (error): no traceback" in text

    crashed = TestResult((), output="noise\n" * 2000 + "ImportError: the real cause")
    text = crashed.feedback(limit=500)
    assert len(text) <= 500
    assert text.startswith("no tests ran")
    assert text.endswith("ImportError: the real cause")
