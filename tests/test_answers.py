"""Reading answers the way small models write them, and the docstring's examples as tests."""

from __future__ import annotations

import pytest

from soa_git import answers
from soa_git.agents import parse_plan
from soa_git.errors import AnswerError
from soa_git.examples import contradicts, description_lines, example_tests, score
from soa_git.testing import TestCase, TestResult

FUNCTION = "def double(x: int) -> int:\n    return 2 * x\n"


def test_code_without_a_fence_is_read_up_to_the_prose_after_it():
    text = f"Sure.\n\n{FUNCTION}\nThis doubles x, as asked."
    assert answers.read_code(text, "double").function.body == "return 2 * x"


def test_several_blocks_join_and_a_block_of_output_is_left_out():
    text = (f"```python\n{FUNCTION}```\n\nRunning it prints:\n\n```\n>>> double(2)\n4\n```\n\n"
            "```python\ndef test_double():\n    assert double(2) == 4\n```\n")
    code = answers.read_code(text, "double")
    assert [t.name for t in code.tests] == ["test_double"]


def test_an_unclosed_fence_still_counts():
    assert answers.read_code(f"```python\n{FUNCTION}", "double").function.name == "double"


def test_an_answer_cut_off_in_an_endless_test_keeps_its_code_and_whole_asserts():
    """A 0.5B model wrote a right `reverse_delete`, then asserts until its token limit: the cut
    line did not parse, so three such answers ended the run (HumanEval/112)."""
    asserts = "".join(f"    assert double({n}) == {2 * n}\n" for n in range(40))
    text = f"```python\n{FUNCTION}\n\ndef test_double():\n{asserts}    assert double(40) =="
    code = answers.read_code(text, "double")
    assert code.function.body == "return 2 * x"
    assert [t.name for t in code.tests] == ["test_double"]
    assert code.tests[0].source.count("assert") == 40


def test_a_closed_block_that_does_not_parse_is_still_an_error():
    with pytest.raises(AnswerError, match="does not parse"):
        answers.read_code(f"```python\n{FUNCTION}\n\ndef test_x(:\n    pass\n```\n", "double")


def test_statements_that_only_run_something_are_dropped():
    text = f"```python\nimport math\nLIMIT = 3\n{FUNCTION}\nprint(double(2))\nassert double(1) == 2\n```"
    code = answers.read_code(text, "double")
    assert code.other == ("LIMIT = 3",) and code.imports == ("import math",)


def test_prose_without_code_is_an_answer_error():
    with pytest.raises(AnswerError, match="no ```python block"):
        answers.python_source("I cannot do that.")


def test_docstring_examples_in_every_usual_form_become_tests():
    doc = ("Halve or scale.\n\n>>> scale(2)\n4\n>>> scale(0.5)\n1.0\n"
           "scale(3) ➞ 6\nscale(4) == 8\n>>> other(1)\n2\n>>> x = 3\n")
    tests = example_tests("scale", doc)
    assert tests == (
        "def test_docstring_example_1():\n    assert scale(2) == 4\n",
        "def test_docstring_example_2():\n    assert abs(scale(0.5) - 1.0) < 1e-6\n",
        "def test_docstring_example_3():\n    assert scale(3) == 6\n",
        "def test_docstring_example_4():\n    assert scale(4) == 8\n")


def test_a_test_the_examples_contradict_is_recognised():
    examples = example_tests("scale", ">>> scale(2)\n4\n")
    assert contradicts("def test_x():\n    assert scale(2) == 5\n", examples)
    assert not contradicts("def test_x():\n    assert scale(2) == 4\n", examples)
    assert not contradicts("def test_x():\n    assert scale(3) == 7\n", examples)


def test_plan_drops_tests_that_call_undefined_names_or_contradict_the_examples():
    examples = example_tests("double", ">>> double(2)\n4\n")
    text = (f"```python\n{FUNCTION}\n\ndef test_wrong():\n    assert double(2) == 5\n\n\n"
            "def test_undefined():\n    assert triple(1) == 3\n\n\n"
            "def test_good():\n    values = [double(v) for v in range(3)]\n    assert values == [0, 2, 4]\n```")
    plan = parse_plan(text, "double", max_children=0, require_tests=True, examples=examples)
    assert [t.split("(")[0] for t in plan.tests["double"]] == ["def test_good"]


def test_helpers_the_function_never_uses_are_dropped_with_their_tests():
    # 1.5B, the sample's load_records: it parsed the CSV inline, wrote a parse_header beside it
    # that it never called, and a wrong test of parse_header failed right code in every round.
    text = ("```python\nSEP = make_sep()\n\n\ndef make_sep():\n    return ','\n\n\n"
            "def load(text):\n    return sorted(split(text), key=clean)\n\n\n"
            "def split(text):\n    return text.split(SEP)\n\n\n"
            "def clean(field):\n    return _strip(field)\n\n\n"
            "def _strip(field):\n    return field.strip()\n\n\n"
            "def parse_header(line):\n    return line.split(',')\n\n\n"
            "def test_load():\n    assert load('b,a') == ['a', 'b']\n\n\n"
            "def test_parse_header():\n    assert parse_header(' a , b') == ['a', 'b']\n```")
    code = answers.read_code(text, "load")
    # Used by a call, as a value, through another helper, or by a constant beside the function.
    assert [h.name for h in code.helpers] == ["make_sep", "split", "clean", "_strip"]
    # Left out by the reader, so every user of it (the HumanEval baselines too) runs without it.
    assert [t.name for t in code.tests] == ["test_load"]
    plan = parse_plan(text, "load", max_children=0, require_tests=True)
    assert "parse_header" not in "".join(plan.extra)
    assert [t.split("(")[0] for t in plan.tests["load"]] == ["def test_load"]


def test_a_function_with_examples_needs_no_written_tests():
    examples = example_tests("double", ">>> double(2)\n4\n")
    text = f"```python\n{FUNCTION}```"
    assert parse_plan(text, "double", max_children=0, require_tests=True, examples=examples).tests == {}
    with pytest.raises(AnswerError, match="write unit tests"):
        parse_plan(text, "double", max_children=0, require_tests=True)


def test_examples_that_name_earlier_values_or_print_the_result_become_tests():
    doc = ('Render.\n\n>>> data = {"a": 1}\n>>> print(render(data), end="")\nline one\nline two\n'
           '>>> print(render({}))\nnothing\n>>> render(unknown)\n\'x\'\n')
    assert example_tests("render", doc) == (
        "def test_docstring_example_1():\n    data = {'a': 1}\n"
        "    assert render(data) == 'line one\\nline two\\n'\n",
        "def test_docstring_example_2():\n    assert render({}) == 'nothing'\n")


def test_a_contracts_length_leaves_out_its_examples():
    docstring = ("Sum the pairs.\n\nEach pair counts once.\n\n>>> f([1, 2])\n3\n"
                 ">>> f([])\n0\n")
    assert description_lines(docstring) == 2
    assert description_lines(None) == 0


def test_a_star_import_of_a_common_module_is_spelled_out_as_the_names_the_code_uses():
    """The root's imports go inside its function, where Python forbids `import *`: refusing
    it cost HumanEval/156 all three tries, as the model wrote it every time."""
    text = ("```python\nfrom typing import *\nfrom math import *\n\n"
            "def halves(xs: List[int]) -> List[float]:\n    return [x / 2 for x in xs]\n\n"
            "def test_halves():\n    assert halves([2]) == [1.0]\n```")
    plan = parse_plan(text, "halves", max_children=0, require_tests=True)
    assert plan.imports == ("from typing import List",)


def test_a_star_import_of_another_module_is_refused():
    text = "```python\nfrom os.path import *\n\ndef double(x: int) -> int:\n    return 2 * x\n```"
    with pytest.raises(AnswerError, match=r"`from os.path import \*` is not allowed: import the "
                                          r"names you use"):
        parse_plan(text, "double", max_children=0, require_tests=False)


def test_code_whose_tests_cannot_run_scores_below_code_that_fails_them():
    failed = TestResult(cases=(TestCase("t.py::test_a", "failed"),))
    error = TestResult(cases=(TestCase("t.py", "error"),))
    assert score(error) < score(failed)
