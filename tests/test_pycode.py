from __future__ import annotations

import ast
import threading

import pytest

from soa_git import pycode
from soa_git.errors import CodeSyntaxError, TargetError
from soa_git.pycode import (
    called_names,
    check_parses,
    find_function,
    functions,
    module_parts,
    parse_error,
    replace_body,
    skeleton_text,
    skeletons,
)

SOURCE = '''\
"""Tools: naïve café ☕, ünïcödé before the functions."""

import os

LIMIT = 3  # a constant ✓


@cache
@other(1, 2)
def decorated(a: int,
              b: str = "é",
              ) -> int:
    """Add things.

    Longer text, ✓.
    """
    total = a + len(b)
    return total


async def fetch(url):
    ...


# separator comment ✓

def only_doc():
    """Nothing but a docstring."""


def with_pass(x):
    pass


def raises_plain():
    raise NotImplementedError


def raises_call():
    """Doc."""
    raise NotImplementedError("later ✓")


def real(x):
    y = helper(x)
    return y


class Thing:
    def method(self):
        ...


if __name__ == "__main__":
    real(1)
'''


def by_name(source: str) -> dict[str, pycode.Function]:
    return {fn.name: fn for fn in functions(source)}


def test_functions_are_top_level_in_file_order() -> None:
    names = [fn.name for fn in functions(SOURCE)]
    assert names == [
        "decorated", "fetch", "only_doc", "with_pass", "raises_plain", "raises_call", "real"
    ]


def test_decorated_function_includes_decorators_and_multiline_signature() -> None:
    fn = by_name(SOURCE)["decorated"]
    assert fn.source.startswith("@cache\n@other(1, 2)\ndef decorated(")
    assert fn.source.endswith("return total")
    assert fn.signature == (
        'def decorated(a: int,\n              b: str = "é",\n              ) -> int:'
    )
    assert fn.docstring == "Add things.\n\nLonger text, ✓."
    assert fn.body == "total = a + len(b)\nreturn total"
    assert fn.line == SOURCE.splitlines().index("def decorated(a: int,") + 1
    assert not fn.is_skeleton


def test_offsets_are_characters_not_bytes() -> None:
    for fn in functions(SOURCE):
        assert SOURCE[fn.start:fn.end] == fn.source


def test_async_function() -> None:
    fn = by_name(SOURCE)["fetch"]
    assert fn.signature == "async def fetch(url):"
    assert fn.docstring is None
    assert fn.body == "..."
    assert fn.is_skeleton


@pytest.mark.parametrize(
    "name", ["fetch", "only_doc", "with_pass", "raises_plain", "raises_call"]
)
def test_skeleton_forms(name: str) -> None:
    assert by_name(SOURCE)[name].is_skeleton


def test_skeletons_lists_only_skeletons() -> None:
    assert [fn.name for fn in skeletons(SOURCE)] == [
        "fetch", "only_doc", "with_pass", "raises_plain", "raises_call"
    ]


@pytest.mark.parametrize(
    "body",
    [
        "return 1",
        "pass\n    return 1",
        "...\n    ...",
        "raise ValueError",
        "raise NotImplementedError from None",
        "raise other.NotImplementedError",
    ],
)
def test_not_skeletons(body: str) -> None:
    assert not functions(f"def f():\n    {body}\n")[0].is_skeleton


def test_docstring_only_function_has_empty_body() -> None:
    fn = by_name(SOURCE)["only_doc"]
    assert fn.docstring == "Nothing but a docstring."
    assert fn.body == ""


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("r'''A \\d+ pattern.'''", "A \\d+ pattern."),
        ("'single'", "single"),
        ("u'prefixed'", "prefixed"),
        ('"a" "b"', "ab"),
    ],
)
def test_docstring_literal_forms(literal: str, value: str) -> None:
    fn = functions(f"def f():\n    {literal}\n    return 1\n")[0]
    assert fn.docstring == value
    assert fn.body == "return 1"


@pytest.mark.parametrize("first", ["x = 'not a docstring'", "f'{x}'", "b'bytes'"])
def test_first_statement_not_a_string_means_no_docstring(first: str) -> None:
    fn = functions(f"def f(x):\n    {first}\n    return x\n")[0]
    assert fn.docstring is None
    assert fn.body == f"{first}\nreturn x"


def test_body_keeps_multiline_strings_verbatim() -> None:
    source = 'def f():\n    s = """\nflush left\n  two\n"""\n    return s\n'
    assert find_function(source, "f").body == 's = """\nflush left\n  two\n"""\nreturn s'


def test_nested_defs_and_methods_are_not_top_level() -> None:
    source = "def outer():\n    def inner():\n        ...\n    return inner\n"
    assert [fn.name for fn in functions(source)] == ["outer"]
    with pytest.raises(TargetError, match="no top-level function named 'method'"):
        find_function(SOURCE, "method")


def test_find_function() -> None:
    assert find_function(SOURCE, "real").body == "y = helper(x)\nreturn y"


def test_find_function_missing() -> None:
    with pytest.raises(TargetError, match="no top-level function named 'nope'"):
        find_function(SOURCE, "nope")


def test_functions_rejects_broken_source() -> None:
    with pytest.raises(CodeSyntaxError, match="the source does not parse: line 2"):
        functions("x = 1\ndef f(:\n    pass\n")


def test_called_names() -> None:
    code = (
        "@deco(1)\n"
        "def f(x):\n"
        "    y = helper(x) + obj.method(x)\n"
        "    z = [inner(i) for i in range(len(x))]\n"
        "    self.attr.call()\n"
        "    return outer(lambda: nested())(y)\n"
    )
    assert called_names(code) == {"deco", "helper", "inner", "range", "len", "outer", "nested"}


def test_called_names_of_a_module_and_no_calls() -> None:
    assert called_names("a = 1\n") == set()
    names = called_names(SOURCE)
    assert names >= {"helper", "real", "other", "len", "NotImplementedError"}
    assert "cache" not in names  # a bare decorator is not a call


def test_replace_body_is_byte_exact_outside_the_body() -> None:
    fn = find_function(SOURCE, "real")
    result = replace_body(SOURCE, "real", "value = compute(x) * 2\nreturn value\n")
    new_def = "def real(x):\n    value = compute(x) * 2\n    return value"
    expected = SOURCE[:fn.start] + new_def + SOURCE[fn.end:]
    assert result.encode("utf-8") == expected.encode("utf-8")


def test_replace_body_keeps_decorators_signature_and_docstring() -> None:
    result = replace_body(SOURCE, "decorated", "return a")
    fn = find_function(SOURCE, "decorated")
    head, _, _ = fn.source.partition("    total = a + len(b)")
    expected = SOURCE[:fn.start] + head + "    return a" + SOURCE[fn.end:]
    assert result == expected
    assert find_function(result, "decorated").docstring == fn.docstring


def test_replace_body_on_docstring_only_function() -> None:
    result = replace_body(SOURCE, "only_doc", "return 42")
    expected = SOURCE.replace(
        '    """Nothing but a docstring."""\n',
        '    """Nothing but a docstring."""\n    return 42\n',
    )
    assert result == expected


def test_replace_body_round_trips_its_own_body() -> None:
    for fn in functions(SOURCE):
        assert replace_body(SOURCE, fn.name, fn.body) == SOURCE


def test_replace_body_reindents_to_the_original_indentation() -> None:
    source = "x = 'é'\n\ndef f(a):\n  if a:\n    return 1\n  return 2\n\n# tail ✓\n"
    result = replace_body(source, "f", "for i in a:\n    print(i)\n\nreturn None")
    assert result == (
        "x = 'é'\n\ndef f(a):\n  for i in a:\n      print(i)\n\n  return None\n\n# tail ✓\n"
    )


def test_replace_body_leaves_multiline_string_contents_alone() -> None:
    body = 's = """\nflush left\n  two\n"""\nreturn s'
    result = replace_body("def f():\n    pass\n", "f", body)
    assert result == 'def f():\n    s = """\nflush left\n  two\n"""\n    return s\n'
    assert find_function(result, "f").body == body


def test_replace_body_of_one_line_function() -> None:
    source = "# ✓\ndef f(x): return x\nY = 1\n"
    assert replace_body(source, "f", "y = x\nreturn y") == (
        "# ✓\ndef f(x):\n    y = x\n    return y\nY = 1\n"
    )
    doc = 'def f(x): """Doc."""\n'
    assert replace_body(doc, "f", "return x") == 'def f(x):\n    """Doc."""\n    return x\n'


def test_replace_body_replaces_comments_of_the_old_body_only() -> None:
    source = (
        "def f():  # keep me\n"
        '    """Doc."""  # keep me too\n'
        "    # old comment\n"
        "    return 1\n"
        "    # old trailing comment\n"
        "\n"
        "# module comment\n"
    )
    assert replace_body(source, "f", "return 2") == (
        'def f():  # keep me\n    """Doc."""  # keep me too\n    return 2\n\n# module comment\n'
    )


def test_replace_body_rejects_a_body_that_does_not_parse() -> None:
    with pytest.raises(CodeSyntaxError, match="the new body of 'real' does not parse: line 1"):
        replace_body(SOURCE, "real", "return (")


def test_replace_body_rejects_an_indented_body() -> None:
    with pytest.raises(CodeSyntaxError, match="unexpected indent"):
        replace_body(SOURCE, "real", "x = 1\n    return x")


def test_replace_body_missing_function() -> None:
    with pytest.raises(TargetError, match="'ghost'"):
        replace_body(SOURCE, "ghost", "return 1")


def test_parse_error_none_for_valid_source() -> None:
    assert parse_error(SOURCE) is None
    assert parse_error("") is None


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f()\n    pass\n", "line 1, column 8: expected ':'"),
        ("x = 1\ny = f(1, 2\nz = 3\n", "line 2, column 6: '(' was never closed"),
        ("s = 'é'\nt = = 1\n", "line 2, column 5: invalid syntax"),
        ("def f():\nreturn 1\n", "line 2, column 1: expected an indented block"),
    ],
)
def test_parse_error_positions(source: str, expected: str) -> None:
    error = parse_error(source)
    assert error is not None and error.startswith(expected)


def test_parse_error_catches_what_tree_sitter_accepts() -> None:
    error = parse_error("print 'hello'\n")
    assert error is not None and error.startswith("line 1, column 1: ")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("é = = 1\n", "line 1, column 5: unexpected '='"),
        ("x = 1\ndef f(:\n    pass\n", "line 2, column 7: missing ')'"),
    ],
)
def test_tree_sitter_error_positions_count_characters(source: str, expected: str) -> None:
    assert pycode._tree_error(pycode._Source(source)) == expected


def test_parse_error_is_quiet_about_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_error("x = '\\d'\ny = 1if 1else 2\n") is None
    assert capsys.readouterr() == ("", "")


def test_check_parses() -> None:
    check_parses("x = 1\n", "the answer")
    with pytest.raises(CodeSyntaxError, match=r"^the answer does not parse: line 1, column 5"):
        check_parses("if x\n    pass\n", "the answer")


def test_module_parts() -> None:
    source = (
        "'''Doc.'''\n"
        "from __future__ import annotations\n"
        "# comment\n"
        "import os\n"
        "from sys import argv as a\n"
        "X = 1\n"
        "@dataclass\n"
        "class C:\n"
        "    pass\n"
        "@deco\n"
        "def f():\n"
        "    ...\n"
        "async def g():\n"
        "    return 1\n"
        "if __name__ == '__main__':\n"
        "    f()\n"
    )
    parts = module_parts(source)
    assert parts.imports == [
        "from __future__ import annotations", "import os", "from sys import argv as a"
    ]
    assert [fn.name for fn in parts.functions] == ["f", "g"]
    assert parts.functions[0].source == "@deco\ndef f():\n    ..."
    assert parts.other == [
        "'''Doc.'''",
        "X = 1",
        "@dataclass\nclass C:\n    pass",
        "if __name__ == '__main__':\n    f()",
    ]


def test_skeleton_text() -> None:
    fn = find_function(SOURCE, "decorated")
    text = skeleton_text(fn)
    assert text == (
        'def decorated(a: int,\n              b: str = "é",\n              ) -> int:\n'
        '    """Add things.\n\n    Longer text, ✓.\n    """\n'
        "    ..."
    )
    assert skeleton_text(find_function(SOURCE, "fetch")) == "async def fetch(url):\n    ..."
    assert skeleton_text(find_function(SOURCE, "with_pass")) == "def with_pass(x):\n    ..."


@pytest.mark.parametrize(
    "doc", ['Say "hi"', 'Quotes """ inside', "Back\\slash \\d", 'ends with ""', "One line."]
)
def test_skeleton_text_docstring_survives_a_round_trip(doc: str) -> None:
    source = f"def f():\n    {doc!r}\n    return 1\n"
    fn = find_function(source, "f")
    text = skeleton_text(fn)
    assert ast.get_docstring(ast.parse(text).body[0]) == doc
    assert find_function(text, "f").is_skeleton


class _Finalized:
    """Garbage whose finalizer runs Python code, so the collector can switch threads mid-parse."""

    def __del__(self):
        sum(range(50))


def test_parsing_from_several_threads_at_once_never_fails():
    # CPython 3.11 fails such parses with "AST constructor recursion depth mismatch"
    # (python/cpython#106905) when another thread parses meanwhile: sibling agents do.
    nested = "x = " + "[" * 40 + "1" + "]" * 40 + "\n" + "def f(a):\n    return {'k': [a, (a,)]}\n" * 20
    failures = []

    def parse_many():
        for _ in range(300):
            first, second = _Finalized(), _Finalized()
            first.other, second.other = second, first
            try:
                pycode.parse_ast(nested)
                pycode.literal_eval("[" * 30 + "1" + "]" * 30)
            except SystemError as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=parse_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
