"""Where each agent's code and tests live (their text: `codegen`).

The root agent owns one function inside the user's file. Every other agent owns a whole module
next to the target (`<target dir>/<agent path with . as __>.py`) and a test file under
`tests/soa/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable

TEST_DIR = "tests/soa"
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
