"""`soa-git check [FILES...]`: the fast commit gate. No model, no network, no git writes.

For each Python file given (default: the staged ones) it fails when

- the file is a module an accepted run wrote (an agent's module, or an agent's test file under
  tests/soa/) and that agent's recorded tests no longer pass on the file as it is now; or
- the file holds a skeleton marked for soa-git (`# soa-git: fill` on the line above the `def`,
  or a line `soa-git: fill` in its docstring) that is still unimplemented.

An agent is found from its test file alone: `tests/soa/test_*.py` files start with the header
soa-git writes ("Unit tests of `fn`, kept by soa-git.") and import `fn` from the agent's module.
The tests run as the agents ran them (soa_git.testing: a sandboxed pytest subprocess). Files
are checked as they are on disk: under the pre-commit framework that is the staged content,
because pre-commit stashes unstaged changes while hooks run.

It runs at every commit, so it imports what it needs when it needs it: tree-sitter only for a
file that holds the marker's words, the test runner only when some agent's tests are to run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterable, Sequence

from .. import config, layout, runformat
from ..errors import RepositoryError, SoaError, TargetError
from ..gitrepo import GitRepo

if TYPE_CHECKING:
    from .. import pycode
    from ..testing import TestResult

MARKER = "soa-git: fill"
# Both markers hold these words: a file without them has no marked skeleton.
_MARKER_WORDS = re.compile(r"soa-git:\s*fill")
_MARKER_COMMENT = re.compile(r"^\s*#\s*soa-git:\s*fill\b")
_MARKER_DOC = re.compile(r"^\s*soa-git:\s*fill\s*$", re.MULTILINE)
# Directories never searched for an agent's module.
_SKIP_DIRS = {".git", ".hg", ".tox", ".venv", "venv", "node_modules", "__pycache__", "build",
              "dist"}


@dataclass(frozen=True)
class AgentTests:
    """One agent as its test file records it."""

    function: str
    module: str          # dotted import name of the agent's module
    tests: str           # the test file, posix path from the repository root


@dataclass(frozen=True)
class Problem:
    file: str
    function: str
    kind: str            # "skeleton" (marked, unimplemented) or "tests" (its tests fail)
    message: str         # one line for the user
    tests: str = ""      # the test file, for kind "tests"
    result: str = ""     # the test summary, for kind "tests"


@dataclass(frozen=True)
class Tested:
    file: str
    function: str
    tests: str
    result: str          # e.g. "3 passed"
    ok: bool


@dataclass(frozen=True)
class CheckResult:
    files: tuple[str, ...]           # the Python files looked at
    tested: tuple[Tested, ...]
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()      # warnings that do not fail the check

    @property
    def ok(self) -> bool:
        return not self.problems


def is_marked(source: str, fn: pycode.Function) -> bool:
    """`# soa-git: fill` in the comment block right above the definition (or its decorators),
    or a line `soa-git: fill` in its docstring."""
    if fn.docstring and _MARKER_DOC.search(fn.docstring):
        return True
    # Line by line up from the definition: splitting all the text above it for every function
    # made a file of n skeletons cost n squared.
    end = source.rfind("\n", 0, fn.start)
    while end >= 0:
        start = source.rfind("\n", 0, end) + 1
        line = source[start:end]
        if not line.strip().startswith("#"):
            return False
        if _MARKER_COMMENT.match(line):
            return True
        end = start - 1
    return False


def marked_skeletons(source: str) -> list[pycode.Function]:
    """The skeletons of `source` marked for soa-git; none when the source does not parse."""
    if not _MARKER_WORDS.search(source):
        return []
    from .. import pycode

    try:
        found = pycode.functions(source)
    except SoaError:
        return []
    return [fn for fn in found if fn.is_skeleton and is_marked(source, fn)]


def recorded_agents(root: Path) -> list[AgentTests]:
    """Every agent whose test file is under tests/soa/, with the module it imports from."""
    folder = root / layout.TEST_DIR
    agents = []
    for path in sorted(folder.glob("test_*.py")) if folder.is_dir() else ():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        function = runformat.tested_function(text)
        if function is None:
            continue
        module = runformat.tested_module(text, function)
        if module:
            agents.append(AgentTests(function, module, path.relative_to(root).as_posix()))
    return agents


def dotted_name(root: Path, file: str) -> tuple[str, str]:
    """(import root, dotted module name) of `file`, by the same rule agents' files are laid out."""
    base = layout.import_root(file, lambda p: (root / p).is_file())
    relative = PurePosixPath(file).relative_to(base) if base else PurePosixPath(file)
    parts = list(relative.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return base, ".".join(parts)


def find_module(root: Path, module: str) -> str | None:
    """The file (posix, from the root) that `module` names, looking at the root, src/, then
    the rest of the tree."""
    tail = PurePosixPath(*module.split(".")).with_suffix(".py").as_posix()
    for prefix in ("", "src/"):
        if (root / prefix / tail).is_file() and dotted_name(root, prefix + tail)[1] == module:
            return prefix + tail
    name = tail.rsplit("/", 1)[-1]
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        if name in files:
            candidate = (Path(folder) / name).relative_to(root).as_posix()
            if candidate.endswith(tail) and dotted_name(root, candidate)[1] == module:
                return candidate
    return None


def staged_python_files(status: list[tuple[str, str]]) -> list[str]:
    """Python files added, copied, modified or renamed in the index (not deleted), from the
    repository's `user_status()`."""
    return sorted(path for code, path in status if code[0] in "AMRCT" and path.endswith(".py"))


def check(files: Sequence[str] | None, *, cwd: Path) -> CheckResult:
    repo = GitRepo.open(cwd, allow_empty=True)
    root = repo.root
    status = repo.user_status()
    if files is None:
        relative = staged_python_files(status)
    else:
        relative = [repo_relative(root, cwd, f) for f in files]
    relative = [f for f in dict.fromkeys(relative) if f.endswith(".py") and (root / f).is_file()]
    problems: list[Problem] = []
    for file in relative:
        source = (root / file).read_text(encoding="utf-8", errors="replace")
        marked = marked_skeletons(source)
        # `soa-git run` works from HEAD, where a file being committed may not be yet; `fill`
        # works from the staged files.
        committed = bool(marked) and _at_head(repo, file) == source
        for fn in marked:
            fix = (f"`soa-git run {file}::{fn.name}`" if committed
                   else f"`soa-git fill {file}`, which works from your staged files")
            problems.append(Problem(file, fn.name, "skeleton",
                                    f"{file}::{fn.name} is marked for soa-git but still a "
                                    f"skeleton; run {fix}"))
    wanted = _agents_to_test(root, relative)
    settings = config.resolve(root, {})
    tested = _run(root, wanted, settings)
    for entry in tested:
        if not entry.ok:
            missing = ("; a module the tests import is missing from this environment (under "
                       "pre-commit, add it to the hook's `additional_dependencies`)"
                       if "ModuleNotFoundError" in entry.result
                       or "No module named" in entry.result else "")
            problems.append(Problem(entry.file, entry.function, "tests",
                                    f"{entry.file}::{entry.function}: its tests {entry.tests} "
                                    f"fail: {entry.result}{missing}", entry.tests,
                                    entry.result))
    problems.sort(key=lambda p: (p.file, p.function, p.kind))
    notes = _unstaged_notes(status, relative + [t.tests for t in tested])
    return CheckResult(files=tuple(relative), tested=tuple(tested), problems=tuple(problems),
                       notes=tuple(notes))


def _at_head(repo: GitRepo, file: str) -> str | None:
    try:
        return repo.read_file(repo.head(), file)
    except RepositoryError:  # no commit yet
        return None


def repo_relative(root: Path, cwd: Path, file: str) -> str:
    path = (cwd / file).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise TargetError(f"{file} is outside the repository {root}") from None


def _agents_to_test(root: Path, files: Iterable[str]) -> dict[tuple[str, str, str], str]:
    """(module file, function, test file) -> import root, for each agent a file belongs to."""
    files = list(files)
    if not files:
        return {}
    agents = recorded_agents(root)
    wanted: dict[tuple[str, str, str], str] = {}
    modules = {file: dotted_name(root, file) for file in files}
    for agent in agents:
        for file, (base, module) in modules.items():
            if module == agent.module:
                wanted[(file, agent.function, agent.tests)] = base
        if agent.tests in modules:
            file = find_module(root, agent.module)
            if file is not None:
                wanted[(file, agent.function, agent.tests)] = dotted_name(root, file)[0]
            else:
                wanted[(agent.tests, agent.function, agent.tests)] = ""
    return wanted


def _run(root: Path, wanted: dict[tuple[str, str, str], str],
         settings: config.Settings) -> list[Tested]:
    """One sandboxed pytest per import root, all of its test files at once."""
    groups: dict[str, set[str]] = {}
    for (_, _, tests), base in wanted.items():
        groups.setdefault(base, set()).add(tests)
    if not groups:
        return []
    from concurrent.futures import ThreadPoolExecutor

    from .. import failures
    from ..testing import run_tests

    secrets = settings.secret_values()

    def one(base: str) -> tuple[str, TestResult]:
        # The repository itself is the workspace here: the tests may read it, never write it.
        return base, run_tests(root, sorted(groups[base]),
                               python_path=[root / base] if base else [],
                               timeout_s=settings.test_timeout, writable=False,
                               sandboxed=settings.sandboxed).masked(secrets)

    with ThreadPoolExecutor(max_workers=min(4, len(groups))) as pool:
        results = dict(pool.map(one, groups))
    tested = []
    for (file, function, tests), base in sorted(wanted.items()):
        result = _only(results[base], tests)
        tested.append(Tested(file, function, tests, failures.describe(result), result.ok))
    return tested


def _only(result: TestResult, tests: str) -> TestResult:
    cases = tuple(c for c in result.cases if c.name == tests or c.name.startswith(tests + "::"))
    return replace(result, cases=cases)


def _unstaged_notes(status: list[tuple[str, str]], files: Iterable[str]) -> list[str]:
    """The plain git hook checks the working tree: say so when it differs from the index."""
    wanted = set(files)
    return [f"checked the working-tree version of {path}, which has unstaged changes"
            for code, path in status if path in wanted and code[1] not in " ?"]
