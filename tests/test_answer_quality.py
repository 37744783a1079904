"""Runs with the answers small models give: helpers, no tests, wrong tests, worse rewrites."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from soa_git.commands.resume import resume
from soa_git.commands.run import run
from soa_git.commands.transcript import transcript

from .helpers import shapes
from .helpers.processes import running
from .helpers.repos import file_at, git, make_repo
from .helpers.shapes import KEY

DOUBLE = '''"""Numbers."""


def double(x: int) -> int:
    """Twice x.

    >>> double(2)
    4
    """
    ...
'''


def answer(body: str, rest: str = "") -> str:
    return f"Here it is.\n\n```python\ndef double(x: int) -> int:\n    {body}\n{rest}```\n"


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "numbers", {"doubling.py": DOUBLE})


def fill(repo: Path, server, **flags):
    return run("doubling.py::double", cwd=repo,
               flags={"base_url": server.base_url, "max_depth": 1, **flags}, environ=KEY)


def filled(repo: Path, serve, reply: str):
    """A run of `double` whose one answer is `reply`; it ends done."""
    server = serve([{"when": "^soa-git task: implement double$", "replies": [reply]}])
    [summary] = fill(repo, server)
    assert summary.state == "done", summary.message
    return summary


def shapes_filled(tmp_path: Path, serve, area: str = shapes.AREA_RIGHT):
    """The shapes scenario with `area` as area's answer; it ends done. (repo, server, summary)"""
    repo = shapes.shapes_repo(tmp_path / "shapes", readme=False)
    server = serve(shapes.shapes_script(area_first=area))
    [summary] = shapes.fill(repo, server)
    assert summary.state == "done", summary.message
    return repo, server, summary


def notes(repo: Path, branch: str) -> list[dict]:
    """Every note record on the branch's commits, newest commit first."""
    listed = dict(line.split()[::-1] for line in git(repo, "notes", "--ref=soa", "list").splitlines())
    return [json.loads(line) for sha in git(repo, "log", "--format=%H", branch).split()
            if sha in listed for line in git(repo, "notes", "--ref=soa", "show", sha).splitlines()]


def test_root_helpers_sit_beside_the_function_where_its_tests_reach_them(numbers, serve):
    helper = ('\n\ndef _twice(value: int) -> int:\n    """Twice a value.\n\n'
              '    Kept as its own function.\n    """\n    return value + value\n\n\n'
              'def test_twice():\n    assert _twice(5) == 10\n')
    summary = filled(numbers, serve, answer("return _twice(x)", helper))
    source = file_at(numbers, summary.branch, "doubling.py")
    # At module level, its docstring as written.
    assert '\n\ndef _twice(value: int) -> int:\n    """Twice a value.\n\n    Kept as its own' in source
    tests = file_at(numbers, summary.branch, "tests/soa/test_double.py")
    assert "from doubling import double, _twice" in tests
    assert "def test_docstring_example_1():\n    assert double(2) == 4" in tests


def test_a_child_keeps_its_helpers_reachable_by_its_tests(tmp_path, serve):
    area = ("Here it is.\n\n```python\ndef area(width: float, height: float) -> float:\n"
            "    return mul(width, height)\n\n\ndef mul(a, b):\n    return a * b\n\n\n"
            "def test_mul():\n    assert mul(2, 5) == 10\n```\n")
    repo, _, summary = shapes_filled(tmp_path, serve, area)
    view = next(a for a in summary.agents if a.path == "area_report.area")
    assert view.tests == "3 passed"      # the Mother's, the docstring's example, its own
    assert "import area, mul" in file_at(repo, summary.branch, "tests/soa/test_area_report__area.py")


def test_a_rewrite_keeps_the_helpers_its_kept_tests_call(numbers, serve):
    # 1.5B, the sample's load_records: the first answer's tests tested its helpers; a repair
    # that no longer wrote them failed those tests with NameError in every later round.
    first = answer("return _twice(x) if x < 10 else 0",
                   "\n\ndef _add(a, b):\n    return a + b\n\n\n"
                   "def _twice(value):\n    return _add(value, value)\n\n\n"
                   "def test_twice():\n    assert _twice(5) == 10\n\n\n"
                   "def test_big():\n    assert double(20) == 40\n")
    server = serve([{"when": "^soa-git task: implement double$", "replies": [first]},
                    {"when": "^soa-git task: repair double$", "replies": [answer("return 2 * x")]}])
    [summary] = fill(numbers, server, repair_rounds=1)
    assert summary.state == "done", summary.message
    source = file_at(numbers, summary.branch, "doubling.py")
    assert "return 2 * x\n" in source
    assert "def _twice(value):" in source and "def _add(a, b):" in source
    assert "test_twice" in file_at(numbers, summary.branch, "tests/soa/test_double.py")


def test_code_without_any_test_to_judge_it_by_is_kept_untested(tmp_path, serve):
    # HumanEval/84 (0.5B): three answers with code and no usable test, a docstring without
    # examples; the run used to end with nothing on the branch.
    repo = make_repo(tmp_path / "halves", {"halving.py": (
        '"""Numbers."""\n\n\ndef half(x: int) -> int:\n    """Half of x, rounded down."""\n'
        '    ...\n')})
    code = "Here it is.\n\n```python\ndef half(x: int) -> int:\n    return x // 2\n```\n"
    server = serve([{"when": "^soa-git task: implement half$", "replies": [code]},
                     {"when": "^soa-git task: reformat half$", "replies": [code, code]}])
    [summary] = run("halving.py::half", cwd=repo, flags={"base_url": server.base_url,
                                                         "max_depth": 1}, environ=KEY)
    assert summary.state == "failed"
    assert "write unit tests" in summary.message and "untested" in summary.message
    assert "return x // 2" in file_at(repo, summary.branch, "halving.py")
    assert git(repo, "log", "-1", "--format=%s", summary.branch).strip() == (
        "generate: implement half")
    _, _, steps = transcript(repo, f"{summary.run}/half")
    assert sum(m["role"] == "assistant" for s in steps for m in s["messages"]) == 3


def test_examples_stand_in_for_missing_tests_and_overrule_wrong_ones(numbers, serve):
    wrong = ("\n\ndef test_wrong():\n    assert double(2) == 5\n\n\n"
             "def test_undefined():\n    assert triple(2) == 6\n")
    summary = filled(numbers, serve, answer("return 2 * x", wrong))
    tests = file_at(numbers, summary.branch, "tests/soa/test_double.py")
    assert "test_wrong" not in tests and "test_undefined" not in tests
    assert "test_docstring_example_1" in tests


def test_a_root_answer_with_a_star_import_runs_inside_its_function(numbers, serve):
    starred = ("```python\nfrom typing import *\n\ndef double(x: int) -> int:\n"
               "    values: List[int] = [x, x]\n    return sum(values)\n```\n")
    summary = filled(numbers, serve, starred)
    assert summary.agents[0].tests == "1 passed"
    assert "from typing import List" in file_at(numbers, summary.branch, "doubling.py")


def test_an_answer_cut_off_by_its_token_limit_keeps_its_code(numbers, serve):
    endless = "".join(f"    assert double({n}) == {2 * n}\n" for n in range(30))
    summary = filled(numbers, serve, answer("return 2 * x", f"\n\ndef test_many():\n{endless}"
                                            "    assert double(30) == ")[:-4])
    assert summary.agents[0].tests == "2 passed"
    assert "assert double(29) == 58" in file_at(numbers, summary.branch, "tests/soa/test_double.py")


def test_code_that_imports_what_is_not_installed_is_asked_again(numbers, serve):
    missing = ("Here it is.\n\n```python\nimport fastmath\n\ndef double(x: int) -> int:\n"
               "    return fastmath.twice(x)\n```\n")
    server = serve([{"when": "^soa-git task: implement double$", "replies": [missing]},
                    {"when": "^soa-git task: reformat double$",
                     "replies": ["```python\nimport math\nfrom doubling import double as _\n\n"
                                 "def double(x: int) -> int:\n    return 2 * x\n```\n"]}])
    [summary] = fill(numbers, server)
    assert summary.state == "done", summary.message
    retry = server.requests[-1]["body"]["messages"][-1]["content"]
    assert ("`fastmath` cannot be imported here: use only the Python standard library and this "
            "project's own modules") in retry
    assert "return 2 * x" in file_at(numbers, summary.branch, "doubling.py")
    # What the run opened ends with it: no git reader of the repository outlives the run.
    del summary
    gc.collect()
    assert running(f"{numbers}/.git/soa/no-hooks") == []


def test_with_imports_stdlib_an_installed_package_is_asked_again(numbers, serve):
    """HumanEval's scorer cannot import numpy although the harness's environment has it."""
    installed = ("```python\nimport pytest\n\ndef double(x: int) -> int:\n"
                 "    return pytest.approx(2 * x)\n```\n")
    server = serve([{"when": "^soa-git task: implement double$", "replies": [installed]},
                    {"when": "^soa-git task: reformat double$",
                     "replies": [answer("return 2 * x")]}])
    [summary] = fill(numbers, server, imports="stdlib")
    assert summary.state == "done", summary.message
    retry = server.requests[-1]["body"]["messages"][-1]["content"]
    assert "`pytest` cannot be imported here: use only the Python standard library" in retry


def test_a_short_contract_is_not_offered_the_split(numbers, serve):
    # Only the implement prompt is scripted: a decompose prompt would get a 400 and fail the run.
    server = serve([{"when": "^soa-git task: implement double$", "replies": [answer("return 2 * x")]}])
    [summary] = fill(numbers, server, max_depth=2, split_min_lines=5)
    assert summary.state == "done", summary.message
    assert [a.role for a in summary.agents] == ["child"]


PARTLY_RIGHT = answer("return 2 * x if x < 10 else 0",
                      "\n\ndef test_big():\n    assert double(20) == 40\n")
PROSE_ONLY = "I would compare the numbers more carefully."
NO_CODE = "the answer has no ```python block"


@pytest.mark.parametrize("round_1, fresh_rounds, subject, record_says, prompt_says", [
    ({"repair": [answer("return None")]}, 0, "repair double (round 1): kept round 0, this "
     "attempt scored worse", ("attempt_tests", "2 failed"), "scored worse"),
    ({"repair": [PROSE_ONLY], "reformat": [PROSE_ONLY] * 2}, 0, "repair double (round 1): kept "
     "round 0, the answers were unusable", ("unusable", NO_CODE), f"could not be used ({NO_CODE})"),
    ({"implement": [answer("return None")], "repair": []}, 1, "implement double afresh (round 1): "
     "kept round 0, this attempt scored worse", ("attempt_tests", "2 failed"), "scored worse"),
], ids=["worse", "unusable", "afresh"])
def test_a_round_with_nothing_better_keeps_the_best_code_and_resume_knows(
        numbers, serve, round_1, fresh_rounds, subject, record_says, prompt_says):
    # Round 2's request is refused, so the run stops after round 1, to be resumed.
    server = serve([{"when": "^soa-git task: implement double$", "replies": [PARTLY_RIGHT]},
                    *({"when": f"^soa-git task: {task} double$",
                       "replies": replies + ([{"status": 401}] if task == "repair" else [])}
                      for task, replies in round_1.items())])
    [stopped] = fill(numbers, server, fresh_rounds=fresh_rounds)
    assert stopped.state == "stopped"
    branch, run_id = stopped.branch, stopped.run
    assert git(numbers, "log", "-1", "--format=%s", branch).strip() == "modify: " + subject
    assert "x < 10" in file_at(numbers, branch, "doubling.py")
    record = next(r for r in notes(numbers, branch) if r.get("task") in ("repair", "afresh"))
    key, value = record_says
    assert record["kept_round"] == 0 and record[key] == value
    assert record["tests"] == "1 passed, 1 failed"

    server = serve([{"when": "^soa-git task: repair double$", "replies": [answer("return 2 * x")]}])
    summary = resume(run_id, cwd=numbers, flags={"base_url": server.base_url}, environ=KEY)
    assert summary.state == "done", summary.message
    prompt = server.requests[-1]["body"]["messages"][-1]["content"]
    assert "x < 10" in prompt and prompt_says in prompt
    assert "return 2 * x\n" in file_at(numbers, summary.branch, "doubling.py")
    assert "(round 2)" in git(numbers, "log", "-1", "--format=%s", summary.branch)


def test_a_child_is_shown_the_mothers_code_that_calls_it(tmp_path, serve):
    _, server, _ = shapes_filled(tmp_path, serve)
    prompt = next(r["body"]["messages"][-1]["content"] for r in server.requests
                  if "implement area_report.fmt" in r["body"]["messages"][-1]["content"])
    assert 'return "area: " + fmt(area(width, height))' in prompt
