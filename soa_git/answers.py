"""Reading a model's answer: its prose, its Python, and the parts of that Python.

One reader serves soa-git's agents and the benchmark's single-agent baselines, so every
strategy is judged by the same reading of the same text. Small models answer loosely (code
without a fence, a fence left open, the code split over several blocks, a block of example
output among them), so the Python is found forgivingly; what it must contain is checked by
the caller.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from dataclasses import dataclass

from . import pycode
from .errors import AnswerError

FENCE = re.compile(r"^[ \t]*```[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)(?:^[ \t]*```[ \t]*$|\Z)",
                   re.S | re.M)
PYTHON_INFOS = {"", "python", "py", "python3"}
# Where Python starts in an answer that has no fence at all.
_CODE_START = re.compile(r"^(?:def |async def |class |import |from |@)", re.M)
_BUILTINS = frozenset(dir(builtins))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block; an unclosed last fence still counts."""
    return [(m["info"].strip().lower(), m["body"]) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The answer without its code blocks."""
    return FENCE.sub("", text).strip()


def python_source(text: str) -> str:
    """The Python of an answer.

    The ```python blocks joined; if they do not parse together, the blocks that parse on their
    own (a block of prose or printed output is left out), and of a last block cut off before its
    fence closed (an answer that ran into its token limit, often in an endless test) the lines
    up to where it stops parsing; with no fence at all, the text from the first line that starts
    Python (`def`, `import`, ...) to the last line that keeps it parsing.
    """
    blocks = [body for info, body in code_blocks(text) if info in PYTHON_INFOS]
    if blocks:
        joined = "\n\n".join(blocks)
        error = pycode.parse_error(joined)
        if error is None:
            return joined
        parsing = [b for b in blocks if b.strip() and pycode.parse_error(b) is None]
        if not text.rstrip().endswith("```") and pycode.parse_error(blocks[-1]) is not None:
            parsing += [cut for cut in [_parsing_start(blocks[-1])] if cut]
        if parsing:
            return "\n\n".join(parsing)
        raise AnswerError(f"the Python code does not parse ({error})")
    start = _CODE_START.search(text)
    found = _parsing_start(text[start.start():]) if start else None
    if found is None:
        raise AnswerError("the answer has no ```python block")
    return found


def _parsing_start(source: str) -> str | None:
    """The longest run of `source`'s first lines that parses, if any of it does."""
    lines = source.splitlines()
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        if candidate.strip() and pycode.parse_error(candidate) is None:
            return candidate
    return None


@dataclass(frozen=True)
class Code:
    """A model's module sorted out around the one function it must implement."""

    function: pycode.Function
    imports: tuple[str, ...]
    helpers: tuple[pycode.Function, ...]    # other functions with a body
    skeletons: tuple[pycode.Function, ...]  # other functions with only a placeholder body
    tests: tuple[pycode.Function, ...]      # `def test_...`
    other: tuple[str, ...]                  # constants and classes, in order

    @property
    def kept(self) -> tuple[str, ...]:
        """Module-level code kept beside the function: constants and classes, then helpers."""
        return self.other + tuple(h.source for h in self.helpers)


def read_code(text: str, function: str) -> Code:
    """The answer's Python sorted into `function`, its helpers, skeletons and tests.

    Statements that only run something when the module is imported (a main guard, prints,
    calls, bare asserts and strings) are left out: they belong to no function. So are helpers
    that neither the function nor the classes and constants beside it use, directly or
    through another helper, and the tests that use them: dead code, whose tests say nothing of
    the function and could only fail its right code.
    """
    parts = pycode.module_parts(python_source(text))
    own = [f for f in parts.functions if f.name == function]
    if not own:
        raise AnswerError(f"the code has no function named `{function}`")
    if own[-1].is_skeleton:
        raise AnswerError(f"`{function}` has no implementation, only a placeholder body")
    tests = [f for f in parts.functions if f.name.startswith("test_")]
    rest = [f for f in parts.functions if f.name != function and not f.name.startswith("test_")]
    latest = {f.name: f for f in rest}      # a name defined twice: the last definition counts
    other = tuple(s for s in parts.other if is_definition(s))
    helpers = [f for f in latest.values() if not f.is_skeleton]
    live = set(reachable([own[-1].source, *other], [h.source for h in helpers]))
    dead = {h.name for h in helpers if h.source not in live}
    return Code(function=own[-1], imports=tuple(parts.imports),
                helpers=tuple(h for h in helpers if h.source in live),
                skeletons=tuple(f for f in latest.values() if f.is_skeleton),
                tests=tuple(t for t in tests if not pycode.referenced_names(t.source) & dead),
                other=other)


def reachable(sources: list[str], definitions: list[str]) -> tuple[str, ...]:
    """The `definitions` (module-level statements) that `sources` use, directly or through
    other definitions, in their order."""
    names = [set(defined_names([d])) for d in definitions]
    used = pycode.referenced_names("\n\n".join(sources))
    found: set[int] = set()
    while True:
        new = [i for i, defined in enumerate(names) if i not in found and defined & used]
        if not new:
            return tuple(d for i, d in enumerate(definitions) if i in found)
        found.update(new)
        used |= pycode.referenced_names("\n\n".join(definitions[i] for i in new))


def is_definition(statement: str) -> bool:
    """False for a top-level statement that only runs something: a call, a print, an assert."""
    if statement.startswith("if __name__"):
        return False
    try:
        tree = pycode.parse_ast(statement)
    except SyntaxError:
        return True
    return not all(isinstance(node, (ast.Expr, ast.Assert)) for node in tree.body)


def _parsed(sources: tuple[str, ...] | list[str]) -> list[ast.Module]:
    """The statements that parse; one that does not defines and imports nothing."""
    trees = []
    for source in sources:
        try:
            trees.append(pycode.parse_ast(source))
        except SyntaxError:
            continue
    return trees


def defined_names(sources: tuple[str, ...] | list[str]) -> list[str]:
    """The module-level names a list of statements defines (functions, classes, variables)."""
    names: list[str] = []
    for node in (node for tree in _parsed(sources) for node in tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.extend(t.id for t in targets if isinstance(t, ast.Name))
    return list(dict.fromkeys(names))


def imported_modules(imports: tuple[str, ...] | list[str]) -> list[str]:
    """The top-level modules that import statements name (`os` for `import os.path`); relative
    imports name none."""
    modules: list[str] = []
    for node in (node for tree in _parsed(imports) for node in ast.walk(tree)):
        if isinstance(node, ast.Import):
            modules.extend(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module.split(".")[0])
    return list(dict.fromkeys(modules))


# Modules whose `from M import *` is written out as the names the code uses: common standard
# modules that import without side effects (importing whatever a model names could run one).
_STAR_SPELLED_OUT = frozenset({"typing", "math", "collections", "itertools", "functools", "re",
                               "string", "statistics", "heapq", "bisect", "operator", "fractions"})


def _star_import(statement: str) -> ast.ImportFrom | None:
    """The `from m import *` that `statement` is, if it is one."""
    for node in (node for tree in _parsed([statement]) for node in ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return node
    return None


def is_star_import(statement: str) -> bool:
    """`from m import *`."""
    return _star_import(statement) is not None


def spelled_out(imports: tuple[str, ...], sources: list[str]) -> tuple[str, ...]:
    """`imports` with `from typing import *` (and the like, of `_STAR_SPELLED_OUT`) written out
    as the names `sources` use from that module; dropped if they use none. Other star imports
    stay as they are. Small models write them; inside the root's function Python forbids them."""
    used = {node.id for tree in _parsed(sources) for node in ast.walk(tree)
            if isinstance(node, ast.Name)}
    kept = []
    for statement in imports:
        star = _star_import(statement)
        module = star.module if star is not None and star.level == 0 else None
        if module not in _STAR_SPELLED_OUT:
            kept.append(statement)
            continue
        loaded = importlib.import_module(module)
        public = getattr(loaded, "__all__", None) or [n for n in dir(loaded) if n[:1] != "_"]
        names = sorted(used & set(public))
        if names:
            kept.append(f"from {module} import {', '.join(names)}")
    return tuple(kept)


def unknown_calls(test: str, known: set[str]) -> set[str]:
    """Names `test` calls that neither it, `known`, nor the builtins define.

    Such a test can only fail with a NameError, whatever the code under test does.
    """
    try:
        tree = pycode.parse_ast(test)
    except SyntaxError:
        return set()
    local = {node.id for node in ast.walk(tree)
             if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    local |= {node.name for node in ast.walk(tree)
              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                   ast.Lambda)) and hasattr(node, "name")}
    local |= {a.arg for node in ast.walk(tree) if isinstance(node, ast.arguments)
              for a in [*node.posonlyargs, *node.args, *node.kwonlyargs,
                        *([node.vararg] if node.vararg else []),
                        *([node.kwarg] if node.kwarg else [])]}
    local |= {(alias.asname or alias.name).split(".")[0] for node in ast.walk(tree)
              if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    called = {node.func.id for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    return called - local - known - _BUILTINS
