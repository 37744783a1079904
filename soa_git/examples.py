"""The examples in a function's docstring, as unit tests no agent writes or may change.

A docstring's examples are the one statement of the contract that comes from its author, not
from a model: `>>> f(1)` with its output on the next line, and the one-line forms docstrings
also use (`f(1) == 2`, `f(1) => 2`, `f(1) ➞ 2`, `f(1) -> 2`). An example becomes a test only
when it is a call of the function on literal values with a literal result, so the test cannot
fail for any reason but the function's answer.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import re

_BUILTINS = frozenset(dir(builtins))
_ARROWS = r"(?:==>|=>|➞|→|->|==|=|should return|returns|gives)"
_FLOAT_TOLERANCE = "1e-6"
_EXAMPLE_PREFIX = "test_docstring_example_"


def example_tests(name: str, docstring: str | None) -> tuple[str, ...]:
    """`def test_docstring_example_N(): assert ...` for each usable example of `name`."""
    if not docstring:
        return ()
    found: list[tuple[str, object]] = []
    for call, want in [*_doctest_examples(docstring), *_one_line_examples(name, docstring)]:
        usable = _usable(name, call, want)
        if usable is not None and usable not in found:
            found.append(usable)
    return tuple(_test(number, call, value)
                 for number, (call, value) in enumerate(found, start=1))


def score(result) -> tuple[int, int]:
    """How good a test result is: the docstring's examples passed first, then all tests passed.

    Generated tests can be wrong; the examples cannot, so a rewrite that trades an example for a
    generated test scores worse.
    """
    examples = sum(1 for case in result.cases
                   if case.outcome == "passed" and _EXAMPLE_PREFIX in case.name)
    return examples, result.passed


def is_example_test(test: str) -> bool:
    return test.lstrip().startswith("def " + _EXAMPLE_PREFIX)


def contradicts(test: str, examples: tuple[str, ...]) -> bool:
    """True if `test` asserts a result for a call that a docstring example answers otherwise."""
    expected = dict(_assertions(t) for t in examples if _assertions(t) is not None)
    for node in _asserts(test):
        pair = _pair(node)
        if pair is not None and pair[0] in expected and pair[1] != expected[pair[0]]:
            return True
    return False


def _doctest_examples(docstring: str) -> list[tuple[str, str]]:
    try:
        examples = doctest.DocTestParser().get_examples(docstring)
    except ValueError:
        return []
    # Prose right under an example reads as part of its output: then its first line is the output.
    return [(e.source.strip(), want) for e in examples if e.want.strip()
            for want in dict.fromkeys([e.want.strip(), e.want.strip().splitlines()[0]])]


def _one_line_examples(name: str, docstring: str) -> list[tuple[str, str]]:
    pattern = re.compile(r"^\s*(?:>>>\s*)?(?P<call>" + re.escape(name) + r"\(.*\))\s*" + _ARROWS
                         + r"\s*(?P<want>.+?)\s*$", re.M)
    return [(m["call"], m["want"].rstrip(".,;")) for m in pattern.finditer(docstring)]


def _usable(name: str, call: str, want: str) -> tuple[str, object] | None:
    """(the call, normalised; the expected value) or None if the example is not a plain call."""
    try:
        tree = ast.parse(call, mode="eval")
        value = ast.literal_eval(want)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return None
    body = tree.body
    if not (isinstance(body, ast.Call) and isinstance(body.func, ast.Name)
            and body.func.id == name):
        return None
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if loaded - {name} - _BUILTINS:
        return None
    return ast.unparse(body), value


def _test(number: int, call: str, value: object) -> str:
    if isinstance(value, float):
        check = f"abs({call} - {value!r}) < {_FLOAT_TOLERANCE}"
    else:
        check = f"{call} == {value!r}"
    return f"def {_EXAMPLE_PREFIX}{number}():\n    assert {check}\n"


def _asserts(test: str) -> list[ast.Assert]:
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return []
    return [node for node in ast.walk(tree) if isinstance(node, ast.Assert)]


def _pair(node: ast.Assert) -> tuple[str, object] | None:
    """(call, expected value) of `assert CALL == LITERAL` (either side), else None."""
    test = node.test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return None
    for call, want in ((test.left, test.comparators[0]), (test.comparators[0], test.left)):
        if isinstance(call, ast.Call):
            try:
                return ast.unparse(call), ast.literal_eval(want)
            except ValueError:
                continue
    return None


def _assertions(test: str) -> tuple[str, object] | None:
    """(call, value) that one example test asserts; a float example compares by tolerance."""
    for node in _asserts(test):
        pair = _pair(node)
        if pair is not None:
            return pair
        compare = node.test
        if (isinstance(compare, ast.Compare) and isinstance(compare.left, ast.Call)
                and isinstance(compare.left.func, ast.Name) and compare.left.func.id == "abs"
                and isinstance(compare.left.args[0], ast.BinOp)):
            difference = compare.left.args[0]
            if isinstance(difference.left, ast.Call):
                try:
                    return ast.unparse(difference.left), ast.literal_eval(difference.right)
                except ValueError:
                    return None
    return None
