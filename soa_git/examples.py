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

from .pycode import literal_eval, parse_ast

_BUILTINS = frozenset(dir(builtins))
_ARROWS = r"(?:==>|=>|➞|→|->|==|=|should return|returns|gives)"
_FLOAT_TOLERANCE = "1e-6"
_EXAMPLE_PREFIX = "test_docstring_example_"


def example_tests(name: str, docstring: str | None) -> tuple[str, ...]:
    """`def test_docstring_example_N(): assert ...` for each usable example of `name`."""
    if not docstring:
        return ()
    found: list[tuple[str, ...]] = []
    for example in [*_doctest_examples(name, docstring), *_one_line_examples(name, docstring)]:
        if example not in found:
            found.append(example)
    return tuple(_test(number, lines) for number, lines in enumerate(found, start=1))


def score(result) -> tuple[int, int, int]:
    """How good a test result is: the docstring's examples passed first, then all tests passed,
    then the fewest errors.

    Generated tests can be wrong; the examples cannot, so a rewrite that trades an example for a
    generated test scores worse. Code whose tests cannot even run (a collection error) tells
    less than code that fails them.
    """
    examples = sum(1 for case in result.cases
                   if case.outcome == "passed" and _EXAMPLE_PREFIX in case.name)
    return examples, result.passed, -result.errors


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


def description_lines(docstring: str | None) -> int:
    """How long a contract is: the docstring's non-blank lines, its `>>>` examples and their
    outputs left out."""
    try:
        parts = doctest.DocTestParser().parse(docstring or "")
    except ValueError:
        parts = [docstring or ""]
    return sum(1 for part in parts if isinstance(part, str)
               for line in part.splitlines() if line.strip())


def _doctest_examples(name: str, docstring: str) -> list[tuple[str, ...]]:
    """`>>> CALL` with its output; `>>> x = LITERAL` lines before it are carried into the test,
    and `>>> print(CALL)` compares the text the call returns."""
    try:
        examples = doctest.DocTestParser().get_examples(docstring)
    except ValueError:
        return []
    given: dict[str, str] = {}       # name -> its assignment, from earlier examples
    found = []
    for example in examples:
        source, want = example.source.strip(), example.want
        assigned = _literal_assignment(source)
        if assigned:
            given[assigned] = ast.unparse(parse_ast(source))
            continue
        if not want.strip():
            continue
        printed = _printed(source)
        if printed is not None:
            call, end = printed
            expected: object = want if end == "" else want.removesuffix("\n")
            check = _check(name, call, expected, given)
        else:
            # Prose right under an example reads as part of its output: then its first line is.
            check = next((c for w in dict.fromkeys([want.strip(), want.strip().splitlines()[0]])
                          if (c := _check(name, source, _literal(w), given)) is not None), None)
        if check is not None:
            found.append(check)
    return found


def _one_line_examples(name: str, docstring: str) -> list[tuple[str, ...]]:
    pattern = re.compile(r"^\s*(?:>>>\s*)?(?P<call>" + re.escape(name) + r"\(.*\))\s*" + _ARROWS
                         + r"\s*(?P<want>.+?)\s*$", re.M)
    checks = (_check(name, m["call"], _literal(m["want"].rstrip(".,;")), {})
              for m in pattern.finditer(docstring))
    return [c for c in checks if c is not None]


_NO_VALUE = object()


def _literal(text: str) -> object:
    try:
        return literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return _NO_VALUE


def _literal_assignment(source: str) -> str | None:
    """The name `source` binds, if it is `name = LITERAL`."""
    try:
        tree = parse_ast(source)
    except SyntaxError:
        return None
    if (len(tree.body) == 1 and isinstance(tree.body[0], ast.Assign)
            and len(tree.body[0].targets) == 1 and isinstance(tree.body[0].targets[0], ast.Name)
            and _literal(ast.unparse(tree.body[0].value)) is not _NO_VALUE):
        return tree.body[0].targets[0].id
    return None


def _printed(source: str) -> tuple[str, str | None] | None:
    """(the printed expression, the `end` given or None) of `print(EXPR)` / `print(EXPR, end=S)`."""
    try:
        node = parse_ast(source, mode="eval").body
    except SyntaxError:
        return None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "print" and len(node.args) == 1):
        return None
    ends = [k for k in node.keywords if k.arg == "end"]
    if len(node.keywords) != len(ends) or (ends and _literal(ast.unparse(ends[0].value)) != ""):
        return None
    return ast.unparse(node.args[0]), ("" if ends else None)


def _check(name: str, call: str, value: object, given: dict[str, str]) -> tuple[str, ...] | None:
    """The lines of a test body, or None if the example is not a plain call of `name` on
    literals (and names bound to literals by earlier examples) with a literal result."""
    if value is _NO_VALUE:
        return None
    try:
        body = parse_ast(call, mode="eval").body
    except SyntaxError:
        return None
    if not (isinstance(body, ast.Call) and isinstance(body.func, ast.Name)
            and body.func.id == name):
        return None
    loaded = {n.id for n in ast.walk(body) if isinstance(n, ast.Name)} - {name} - _BUILTINS
    if loaded - set(given):
        return None
    text = ast.unparse(body)
    check = (f"abs({text} - {value!r}) < {_FLOAT_TOLERANCE}" if isinstance(value, float)
             else f"{text} == {value!r}")
    return (*(given[n] for n in sorted(loaded)), f"assert {check}")


def _test(number: int, lines: tuple[str, ...]) -> str:
    return f"def {_EXAMPLE_PREFIX}{number}():\n" + "".join(f"    {line}\n" for line in lines)


def _asserts(test: str) -> list[ast.Assert]:
    try:
        tree = parse_ast(test)
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
    """(call, value) that one example test asserts; a float example compares by tolerance.

    An example that names values bound before it asserts nothing comparable on its own.
    """
    nodes = _asserts(test)
    if test.count("\n    ") != 1:
        return None
    for node in nodes:
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
