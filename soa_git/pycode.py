"""Python source through tree-sitter: find skeletons, read and replace one function.

Everything public speaks `str` and character offsets; tree-sitter speaks bytes of UTF-8,
so every position goes through `_Source`, which converts.
"""

from __future__ import annotations

import ast
import inspect
import re
import threading
import warnings
from array import array
from dataclasses import dataclass
from itertools import accumulate, takewhile

import tree_sitter_python
from tree_sitter import Language, Node, Parser, Query, QueryCursor

from soa_git.errors import CodeSyntaxError, TargetError

_LANGUAGE = Language(tree_sitter_python.language())
_CALLS = Query(_LANGUAGE, "(call function: (identifier) @name)")
_IDENTIFIERS = Query(_LANGUAGE, "(identifier) @name")
_STRINGS = Query(_LANGUAGE, "(string) @string")
_IMPORTS = frozenset({"import_statement", "import_from_statement", "future_import_statement"})
_EXTRAS = frozenset({"comment", "line_continuation"})
_STRING_STATEMENTS = (["string"], ["concatenated_string"])
# A body written on the 'def' line has no indentation of its own to keep.
_BODY_INDENT = "    "
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
# CPython 3.11 counts nesting in one per-interpreter counter while it builds an AST, so two
# threads parsing at once (sibling agents do) can fail with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905): every parse in soa-git takes this lock.
_AST_LOCK = threading.Lock()


@dataclass(frozen=True)
class Function:
    """One top-level function definition, positions in characters of the module source."""

    name: str
    source: str
    signature: str
    docstring: str | None
    body: str
    start: int
    end: int
    line: int
    is_skeleton: bool


@dataclass(frozen=True)
class ModuleParts:
    """A module's top-level statements, sorted into imports, functions and the rest."""

    imports: list[str]
    functions: list[Function]
    other: list[str]


class _Source:
    """A module's UTF-8 bytes and syntax tree, and the way back from bytes to text."""

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8")
        self._ascii = len(self.data) == len(text)
        self._chars: array | None = None
        # A parser per source: parser objects must not be shared between threads.
        self.root = Parser(_LANGUAGE).parse(self.data).root_node

    def char(self, byte: int) -> int:
        """Constant time: decoding the prefix on every call made a file of n functions cost
        n squared (1,000 skeletons took a minute)."""
        if self._ascii:
            return byte
        if self._chars is None:
            # Characters before each byte offset: every byte but UTF-8 continuation bytes.
            self._chars = array("l", accumulate((b & 0xC0 != 0x80 for b in self.data),
                                                initial=0))
        return self._chars[byte]

    def slice(self, start: int, end: int) -> str:
        return self.data[start:end].decode("utf-8")

    def text_of(self, node: Node) -> str:
        return self.slice(node.start_byte, node.end_byte)

    def line_start(self, node: Node) -> int:
        return node.start_byte - node.start_point.column  # tree-sitter columns count bytes

    def indent_of(self, node: Node) -> str | None:
        """The whitespace before `node` on its line, None if code precedes it there."""
        prefix = self.slice(self.line_start(node), node.start_byte)
        return None if prefix.strip() else prefix


@dataclass(frozen=True)
class _Layout:
    """Where the parts of one function definition sit."""

    definition: Node  # the function_definition, under any decorators
    colon: Node  # the ':' that opens the body
    block: Node
    docstring: str | None
    docstring_node: Node | None
    head_end: int  # byte after the docstring and the comments on its last line
    rest: list[Node]  # block children after that head: the body proper
    indent: str | None  # the body's indentation, None when the body shares the 'def' line


def parse_error(source: str) -> str | None:
    """None if `source` parses, else "line L, column C: what is wrong" (1-based)."""
    return _python_error(source) or _tree_error(_Source(source))


def check_parses(source: str, what: str) -> None:
    """Raise CodeSyntaxError naming `what` if `source` does not parse."""
    _checked(source, what)


def functions(source: str) -> list[Function]:
    """The module's top-level function definitions, in file order."""
    src = _checked(source, "the source")
    return [_function(src, node) for node in _function_nodes(src)]


def find_function(source: str, name: str) -> Function:
    """The top-level function `name`."""
    src = _checked(source, "the source")
    return _function(src, _find(src, name))


def skeletons(source: str) -> list[Function]:
    """The top-level functions still waiting for an implementation."""
    return [fn for fn in functions(source) if fn.is_skeleton]


def called_names(code: str) -> set[str]:
    """Plain names called as `f(...)` anywhere in `code`; attribute calls are left out."""
    src = _checked(code, "the code")
    return {src.text_of(node) for node in QueryCursor(_CALLS).captures(src.root).get("name", [])}


def referenced_names(code: str) -> set[str]:
    """Every identifier in `code`: names called, passed, assigned or defined, and attributes."""
    src = _checked(code, "the code")
    found = QueryCursor(_IDENTIFIERS).captures(src.root).get("name", [])
    return {src.text_of(node) for node in found}


def replace_body(source: str, name: str, body: str) -> str:
    """`source` with the body of top-level function `name` replaced by `body` (dedented).

    Decorators, signature, docstring and every byte outside the old body stay as they were.
    """
    src = _checked(source, "the source")
    layout = _layout(src, _find(src, name))
    new_body = _LEADING_BLANK_LINES.sub("", body.rstrip())
    body_src = _checked(new_body, f"the new body of {name!r}")
    rows = _string_rows(body_src.root, 0, 0)
    start, end, text = _replacement(src, layout, new_body, rows)
    result = (src.data[:start] + text.encode("utf-8") + src.data[end:]).decode("utf-8")
    check_parses(result, f"the source with the new body of {name!r}")
    return result


def module_parts(source: str) -> ModuleParts:
    """Sort the module's top-level statements; comments belong to none of them."""
    src = _checked(source, "the source")
    parts = ModuleParts(imports=[], functions=[], other=[])
    for node in src.root.named_children:
        if node.type in _EXTRAS:
            continue
        if node.type in _IMPORTS:
            parts.imports.append(src.text_of(node))
        elif _is_function(node):
            parts.functions.append(_function(src, node))
        else:
            parts.other.append(src.text_of(node))
    return parts


def skeleton_text(fn: Function) -> str:
    """Signature, docstring and `...`: the form of a function shown to agents."""
    lines = [fn.signature]
    if fn.docstring is not None:
        lines.append(_BODY_INDENT + _docstring_literal(fn.docstring))
    lines.append(_BODY_INDENT + "...")
    return "\n".join(lines)


def parse_ast(source: str, mode: str = "exec") -> ast.AST:
    """`ast.parse`, safe to call from several threads at once."""
    with _AST_LOCK:
        return ast.parse(source, mode=mode)


def literal_eval(text: str) -> object:
    """`ast.literal_eval` of source text, safe to call from several threads at once."""
    return ast.literal_eval(parse_ast(text.lstrip(" \t"), mode="eval"))


def code_lines(text: str) -> int:
    """How much code an agent wrote: its non-blank lines."""
    return sum(1 for line in text.splitlines() if line.strip())


def _checked(source: str, what: str) -> _Source:
    src = _Source(source)
    error = _python_error(source) or _tree_error(src)
    if error is not None:
        raise CodeSyntaxError(f"{what} does not parse: {error}")
    return src


def _python_error(source: str) -> str | None:
    """Python's own verdict: tree-sitter accepts some code Python rejects, and Python's
    messages ("'(' was never closed") tell a model more than an ERROR node does."""
    try:
        with warnings.catch_warnings(action="ignore"):  # e.g. invalid escapes; never print
            parse_ast(source)
    except SyntaxError as exc:
        return f"line {exc.lineno}, column {exc.offset or 1}: {exc.msg}"
    except ValueError as exc:  # null bytes
        return str(exc)
    return None


def _tree_error(src: _Source) -> str | None:
    """The first ERROR or MISSING node, for code tree-sitter cannot read though Python can."""
    node = _first_error(src.root)
    if node is None:
        return None
    column = len(src.slice(src.line_start(node), node.start_byte)) + 1
    if node.is_missing:
        what = f"missing {node.type!r}"
    else:
        excerpt = src.text_of(node).split("\n")[0][:20]
        what = f"unexpected {excerpt!r}"
    return f"line {node.start_point.row + 1}, column {column}: {what}"


def _first_error(node: Node) -> Node | None:
    if node.is_error or node.is_missing:
        return node
    if not node.has_error:
        return None
    return next((found for child in node.children if (found := _first_error(child))), None)


def _definition(node: Node) -> Node:
    """The definition under any decorators."""
    if node.type == "decorated_definition":
        return node.child_by_field_name("definition") or node
    return node


def _is_function(node: Node) -> bool:
    return _definition(node).type == "function_definition"


def _function_nodes(src: _Source) -> list[Node]:
    return [node for node in src.root.named_children if _is_function(node)]


def _name(src: _Source, node: Node) -> str:
    return src.text_of(_definition(node).child_by_field_name("name"))


def _find(src: _Source, name: str) -> Node:
    # The last definition wins, as it does when Python runs the module.
    matches = [node for node in _function_nodes(src) if _name(src, node) == name]
    if not matches:
        raise TargetError(f"no top-level function named {name!r}")
    return matches[-1]


def _function(src: _Source, node: Node) -> Function:
    layout = _layout(src, node)
    return Function(
        name=_name(src, node),
        source=src.text_of(node),
        signature=src.slice(layout.definition.start_byte, layout.colon.end_byte),
        docstring=layout.docstring,
        body=_body(src, layout),
        start=src.char(node.start_byte),
        end=src.char(node.end_byte),
        line=layout.definition.start_point.row + 1,
        is_skeleton=_is_skeleton(layout),
    )


def _layout(src: _Source, node: Node) -> _Layout:
    definition = _definition(node)
    block = definition.child_by_field_name("body")
    children = block.named_children
    first = next(child for child in children if child.type not in _EXTRAS)
    docstring = _docstring(src, first)
    doc_node = first if docstring is not None else None
    head = list(takewhile(lambda child: _in_head(child, doc_node), children)) if doc_node else []
    return _Layout(
        definition=definition,
        colon=next(child for child in definition.children if child.type == ":"),
        block=block,
        docstring=docstring,
        docstring_node=doc_node,
        head_end=head[-1].end_byte if head else block.start_byte,
        rest=children[len(head):],
        indent=src.indent_of(first),
    )


def _in_head(child: Node, doc_node: Node) -> bool:
    """Comments before the docstring and after it on its last line go with it."""
    trailing = child.type == "comment" and child.start_point.row == doc_node.end_point.row
    return child.end_byte <= doc_node.end_byte or trailing


def _docstring(src: _Source, statement: Node) -> str | None:
    kinds = [child.type for child in statement.named_children]
    if statement.type != "expression_statement" or kinds not in _STRING_STATEMENTS:
        return None
    try:
        with warnings.catch_warnings(action="ignore"):
            value = literal_eval(src.text_of(statement))
    except (SyntaxError, ValueError):  # an f-string is no docstring
        return None
    return inspect.cleandoc(value) if isinstance(value, str) else None


def _is_skeleton(layout: _Layout) -> bool:
    statements = [node for node in layout.rest if node.type not in _EXTRAS]
    return not statements or (len(statements) == 1 and _is_placeholder(statements[0]))


def _is_placeholder(statement: Node) -> bool:
    """`...`, `pass`, `raise NotImplementedError` or `raise NotImplementedError(...)`."""
    children = statement.named_children
    if statement.type == "pass_statement":
        return True
    if statement.type == "expression_statement":
        return [child.type for child in children] == ["ellipsis"]
    if statement.type != "raise_statement" or len(children) != 1:
        return False
    raised = children[0]
    if raised.type == "call":
        raised = raised.child_by_field_name("function")
    return raised.type == "identifier" and raised.text == b"NotImplementedError"


def _body(src: _Source, layout: _Layout) -> str:
    if not layout.rest:
        return ""
    first = layout.rest[0]
    start = first.start_byte if src.indent_of(first) is None else src.line_start(first)
    rows = _string_rows(layout.block, start, first.start_point.row)
    return _reindent(src.slice(start, layout.block.end_byte), rows, layout.indent or "", "")


def _replacement(src: _Source, layout: _Layout, body: str, rows: set[int]) -> tuple[int, int, str]:
    """The byte span to replace and the text that replaces it."""
    end = layout.block.end_byte
    if layout.indent is None:  # body on the 'def' line: move it, docstring included, below
        new = _reindent(body, rows, "", _BODY_INDENT)
        doc = layout.docstring_node
        lines = ([_BODY_INDENT + src.text_of(doc)] if doc else []) + ([new] if new else [])
        return layout.colon.end_byte, end, "".join("\n" + line for line in lines)
    new = _reindent(body, rows, "", layout.indent)
    if layout.docstring_node is not None:
        return layout.head_end, end, "\n" + new if new else ""
    return src.line_start(layout.block), end, new


def _string_rows(root: Node, start: int, base_row: int) -> set[int]:
    """Rows, counted from `base_row`, that begin inside a string literal starting at or after
    byte `start`: re-indenting those would change the string's value."""
    strings = QueryCursor(_STRINGS).captures(root).get("string", [])
    return {
        row - base_row
        for string in strings
        if string.start_byte >= start
        for row in range(string.start_point.row + 1, string.end_point.row + 1)
    }


def _reindent(text: str, string_rows: set[int], old: str, new: str) -> str:
    """Swap indentation `old` for `new` on each line of code; lines inside strings stay."""
    lines = text.split("\n")
    return "\n".join(
        line if row in string_rows else _reindent_line(line, old, new)
        for row, line in enumerate(lines)
    )


def _reindent_line(line: str, old: str, new: str) -> str:
    return new + line.removeprefix(old) if line.strip() else ""


def _docstring_literal(doc: str) -> str:
    """`doc` as a triple-double-quoted literal whose value is `doc` again."""
    # Escaped so no run of quotes can close the literal early, nor merge with its end.
    text = re.sub(r'"(?=")', r'\\"', doc.replace("\\", "\\\\"))
    if text.endswith('"'):
        text = text[:-1] + '\\"'
    first, *more = text.split("\n")
    if not more:
        return f'"""{first}"""'
    indented = "\n".join(_BODY_INDENT + line if line else "" for line in more)
    return f'"""{first}\n{indented}\n{_BODY_INDENT}"""'
