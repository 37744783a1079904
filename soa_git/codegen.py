"""The text of each agent's files: the user's file with the root's body in it, a child's
module, an agent's test file (where they live: `layout`).

The root agent's function is the only part of the user's file ever replaced, so its imports go
inside its body.
"""

from __future__ import annotations

from typing import Iterable

from . import answers, pycode, runformat
from .layout import AgentFiles

FUTURE = "from __future__ import annotations"


def _ordered_imports(imports: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(i.strip() for i in imports if i.strip()))
    return [FUTURE] + [i for i in unique if i != FUTURE]


def child_imports(children: Iterable[tuple[str, AgentFiles]]) -> list[str]:
    return [f"from {files.import_name} import {name}" for name, files in children]


def root_source(original: str, function: str, body: str, imports: Iterable[str],
                extra: Iterable[str] = ()) -> str:
    """The user's file with `function`'s body replaced; its imports go inside the body.

    Code the agent keeps beside its function (helpers, constants) goes right after the
    function at module level, with the imports it needs, where the agent's tests can import it;
    a name the file already defines keeps the user's definition.
    """
    local = [i for i in dict.fromkeys(imports) if i.strip() and not i.startswith("from __future__")]
    source = pycode.replace_body(original, function, "\n".join(local + [body]) if local else body)
    taken = set(answers.defined_names([original]))
    kept = [s.strip("\n") for s in extra if not taken & set(answers.defined_names([s]))]
    if not kept:
        return source
    end = pycode.find_function(source, function).end
    after = (["\n".join(local)] if local else []) + kept
    return source[:end] + "\n\n\n" + "\n\n\n".join(after) + source[end:]


def module_source(agent_path: str, skeleton: pycode.Function, body: str, imports: Iterable[str],
                  extra: Iterable[str] = ()) -> str:
    """A whole module for a non-root agent: its imports, kept helpers, and its function."""
    header = runformat.module_header(skeleton.name, agent_path)
    sections = ["\n".join(_ordered_imports(imports)), *extra, skeleton.source]
    text = header + "\n\n\n".join(s.strip("\n") for s in sections) + "\n"
    return pycode.replace_body(text, skeleton.name, body) if body else text


def test_source(function: str, files: AgentFiles, tests: Iterable[str],
                imports: Iterable[str], helpers: Iterable[str] = ()) -> str:
    """The agent's test file: its tests can call its function and every helper it keeps."""
    header = runformat.test_header(function)
    own = runformat.test_import(files.import_name, dict.fromkeys([function, *helpers]))
    lines = _ordered_imports([*imports, own])
    return header + "\n".join(lines) + "\n\n\n" + "\n\n\n".join(t.strip("\n") for t in tests) + "\n"
