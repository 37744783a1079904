"""Where each agent's code and tests live, and how their text is written out.

The root agent owns one function inside the user's file: only that function's body is ever
replaced, so its imports go inside the body. Every other agent owns a whole module next to the
target (`<target dir>/<agent path with . as __>.py`) and a test file under `tests/soa/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Iterable

from . import answers, pycode, runformat

TEST_DIR = "tests/soa"
FUTURE = "from __future__ import annotations"
# A line that starts an import: `from x...` or `import x, y.z as w`.
_IMPORTED = re.compile(r"^\s*(?:from\s+([A-Za-z_]\w*)|import\s+(.+))")


@dataclass(frozen=True)
class AgentFiles:
    module: str         # posix path from the repository root
    tests: str
    import_name: str    # dotted name the module is imported by
    import_root: str    # directory that must be on sys.path ('' is the repository root)


def _stem(agent_path: str) -> str:
    return agent_path.replace(".", "__")


def import_root(target: str, is_file: Callable[[str], bool]) -> str:
    """The nearest ancestor of `target` that is not a package: where imports resolve from."""
    folder = PurePosixPath(target).parent
    while str(folder) != "." and is_file(str(folder / "__init__.py")):
        folder = folder.parent
    return "" if str(folder) == "." else str(folder)


def _dotted(module: str, root: str) -> str:
    relative = PurePosixPath(module).relative_to(root) if root else PurePosixPath(module)
    return ".".join(relative.with_suffix("").parts)


def files_for(agent_path: str, target: str, root: str, *, is_root: bool) -> AgentFiles:
    module = target if is_root else str(PurePosixPath(target).parent / f"{_stem(agent_path)}.py")
    module = module.removeprefix("./")
    return AgentFiles(module=module, tests=f"{TEST_DIR}/test_{_stem(agent_path)}.py",
                      import_name=_dotted(module, root), import_root=root)


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


def workspace_folders(target: str, import_root: str, available: set[str],
                      import_lines: Callable[[list[str], list[str]], list[str]]) -> list[str]:
    """The folders an agent's workspace holds (the root's own files always, as in git's cone
    mode): the target's top package (where every agent's module lives), the agents' tests, and
    every folder of the import root that code in those imports, followed to a fixed point.

    `available` are the folders directly in the import root; `import_lines(folders, files)` the
    lines that start an import in the Python files under those folders and in those files.

    A full checkout of a large repository per agent costs more than all else an agent does;
    the tests of generated code need only what the code under test can import.
    """
    target_dir = PurePosixPath(target).parent
    root = PurePosixPath(import_root) if import_root else PurePosixPath(".")
    inner = target_dir.relative_to(root).parts if target_dir != root else ()
    own = str(root / inner[0]) if inner else (import_root or None)
    folders = {TEST_DIR} | ({own} if own else set())
    scanned: set[str] = set()
    files = [target]
    while True:
        fresh = sorted(f for f in folders - scanned if f != TEST_DIR)
        if not fresh and not files:
            return sorted(folders)
        scanned |= set(fresh)
        found = set()
        for line in import_lines(fresh, files):
            match = _IMPORTED.match(line)
            if match:
                names = [match[1]] if match[1] else [part.split()[0].split(".")[0]
                                                     for part in match[2].split(",")
                                                     if part.split()]
                found |= {n for n in names if n in available}
        files = []
        folders |= {str(root / name) if import_root else name for name in found}
