"""The three ways of solving a HumanEval problem: direct, reflexion, soa.

Each returns an `Outcome`: the completion to score plus what it cost. All three talk to the
same endpoint through soa-git's own `OpenAIChat` and `TokenLedger`, wrapped in `CountingModel`
to count calls. The model sees the problem's prompt (as a skeleton) and nothing else: the
hidden tests are only ever seen by the scorer.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from soa_git import answers, config, pycode
from soa_git.commands.run import open_model
from soa_git.errors import AnswerError, BudgetExhausted, CodeSyntaxError, ModelError, SoaError
from soa_git.gitrepo import GitRepo
from soa_git.llm import ChatModel, Reply, TokenLedger
from soa_git.openai_chat import OpenAIChat
from soa_git.organizer import Organizer
from soa_git.targets import find_target
from soa_git.testing import TestResult, run_tests

from . import humaneval_code as hc

STRATEGIES = ("direct", "reflexion", "soa")
EMPTY_ANSWER = "the model returned an empty answer"

SYSTEM = ("You are an expert Python programmer. Answer with a short explanation in prose and then "
          "Python in fenced ```python blocks. Keep the signature and the docstring of the function "
          "exactly as given. Use only the Python standard library.")

DIRECT = """humaneval task: direct {entry}

Complete this function:

```python
{skeleton}```

Answer with ONE ```python block holding the imports your code needs and the full implementation
of `{entry}` (same signature)."""

IMPLEMENT = DIRECT.replace("humaneval task: direct", "humaneval task: implement") + """ After it,
in the same block, write at least three unit tests as plain pytest functions `def test_...():`
with plain `assert`s calling `{entry}`, taken from the examples in the docstring and the cases it
describes."""

REPAIR = """humaneval task: repair {entry}

Your function `{entry}` fails its unit tests.

Your current code:

```python
{code}
```

The test results ({summary}):

```
{feedback}
```
{memory}
First reflect in two or three sentences: what is wrong and what you will change. Then answer with
ONE ```python block holding the imports you need and the corrected full implementation of
`{entry}` (same signature). Do not change the tests."""

REFORMAT = """humaneval task: reformat {entry}

{task}

An earlier answer to this task could not be used: {error}. Answer the task again and make sure
of exactly that."""


@dataclass(frozen=True)
class Config:
    """The budget knobs every strategy shares, and the endpoint."""

    model: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    max_depth: int = 2
    iterations: int = 5
    temperature: float | None = 0.2
    test_timeout: float = 30.0
    answer_retries: int = 2
    agent_jobs: int = 4
    request_timeout: float = 120.0
    max_tokens: int | None = None
    fresh_rounds: int = 0       # soa-git's fresh-rounds: repair rounds that start afresh
    split_min_lines: int = 0    # soa-git's split-min-lines: the shortest contract offered a split

    def fingerprint(self) -> dict[str, Any]:
        """What makes results comparable: a resumed benchmark must not mix other settings in.

        The endpoint's address is not part of it: a local server may come back on another port.
        """
        return {"model": self.model, "max_depth": self.max_depth,
                "iterations": self.iterations, "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                **{k: v for k, v in (("fresh_rounds", self.fresh_rounds),
                                     ("split_min_lines", self.split_min_lines)) if v}}


@dataclass
class Outcome:
    completion: str = ""
    model_calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0       # of the prompt tokens, those the server's prompt cache served
    completion_tokens: int = 0
    tokens_estimated: bool = False
    agents: int = 1
    depth: int = 1
    lines_total: int = 0
    agent_lines: list[dict] = field(default_factory=list)
    iterations: int = 0
    internal_tests: str = ""
    state: str = "done"          # done | failed (internal tests still fail) | stopped | error
    error: str | None = None
    run: str | None = None


class EndpointError(Exception):
    """The endpoint failed (unreachable, refused, kept failing): the problem is not recorded."""


class CountingModel:
    """A ChatModel that counts calls and remembers whether the endpoint itself failed."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0
        self.endpoint_error: str | None = None
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], *, agent: str,
                 max_tokens: int | None = None) -> Reply:
        with self._lock:
            self.calls += 1
        try:
            return self.inner.complete(messages, agent=agent, max_tokens=max_tokens)
        except ModelError as exc:
            if str(exc) != EMPTY_ANSWER:
                self.endpoint_error = str(exc)
            raise


def _chat(cfg: Config, environ: Mapping[str, str], ledger: TokenLedger) -> CountingModel:
    key = environ.get(cfg.api_key_env)
    if not key:
        raise hc.HarnessError(f"no API key: set the environment variable {cfg.api_key_env} "
                              "(a local server that needs no key accepts any value)")
    capped = {"max_tokens": cfg.max_tokens} if cfg.max_tokens else {}
    return CountingModel(OpenAIChat(model=cfg.model, base_url=cfg.base_url, api_key=key,
                                    ledger=ledger, max_concurrency=cfg.agent_jobs,
                                    timeout_s=cfg.request_timeout, temperature=cfg.temperature,
                                    **capped))


def _spent(outcome: Outcome, model: CountingModel, ledger: TokenLedger) -> Outcome:
    usage = ledger.total
    outcome.model_calls = model.calls
    outcome.prompt_tokens, outcome.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    outcome.cached_tokens = usage.cached_tokens
    outcome.tokens_estimated = usage.estimated
    return outcome


# ---- one agent: direct and reflexion --------------------------------------------------------

def _ask(model: CountingModel, cfg: Config, user: str, entry: str,
         parse: Callable[[str], Any]) -> tuple[str, Any]:
    """Ask, and re-ask as soa-git does while the answer is unusable: the task restated with the
    one thing the last answer got wrong, without that answer."""
    system = {"role": "system", "content": SYSTEM}
    messages = [system, {"role": "user", "content": user}]
    task = user.split("\n", 1)[1].strip()
    for attempt in range(cfg.answer_retries + 1):
        text = model.complete(messages, agent=entry).text
        try:
            return text, parse(text)
        except (AnswerError, CodeSyntaxError) as exc:
            if attempt == cfg.answer_retries:
                raise AnswerError(f"the model's answers could not be used after {attempt + 1} "
                                  f"tries: {exc}") from None
            messages = [system, {"role": "user",
                                 "content": REFORMAT.format(entry=entry, task=task, error=exc)}]
    raise AssertionError("unreachable")


def _parser(entry: str, *, need_tests: bool) -> Callable[[str], answers.Code]:
    def parse(text: str) -> answers.Code:
        code = answers.read_code(text, entry)
        if need_tests and not code.tests:
            raise AnswerError(f"write unit tests (`def test_...`) for `{entry}`")
        return code
    return parse


def _single_lines(problem: dict, code: answers.Code) -> tuple[int, list[dict]]:
    """Counted as soa-git counts its root agent: the function in the problem's file, docstring
    included, with what it keeps beside it."""
    entry = problem["entry_point"]
    filled = pycode.replace_body(hc.skeleton_source(problem), entry, code.function.body or "pass")
    lines = hc.code_lines(pycode.find_function(filled, entry).source) + \
        sum(hc.code_lines(t) for t in [*code.imports, *code.kept])
    return lines, [{"path": code.function.name, "role": "single", "lines": lines}]


def _endpoint_failed(model: CountingModel, exc: Exception) -> None:
    if model.endpoint_error is not None or isinstance(exc, ModelError) and str(exc) != EMPTY_ANSWER:
        raise EndpointError(model.endpoint_error or str(exc)) from None


def direct(problem: dict, cfg: Config, environ: Mapping[str, str]) -> Outcome:
    entry = problem["entry_point"]
    ledger = TokenLedger()
    model = _chat(cfg, environ, ledger)
    outcome = Outcome(agent_lines=[{"path": entry, "role": "single", "lines": 0}])
    try:
        _, code = _ask(model, cfg, DIRECT.format(entry=entry, skeleton=hc.skeleton_source(problem)),
                       entry, _parser(entry, need_tests=False))
    except (AnswerError, ModelError) as exc:
        _endpoint_failed(model, exc)
        outcome.state, outcome.error = "failed", str(exc)
        return _spent(outcome, model, ledger)
    outcome.completion = hc.completion_of_code(problem, code)
    outcome.lines_total, outcome.agent_lines = _single_lines(problem, code)
    return _spent(outcome, model, ledger)


def _internal_tests(problem: dict, code: answers.Code, completion: str,
                    timeout: float) -> TestResult:
    """The agent's own tests against exactly the program that will be scored, less hidden tests."""
    entry = problem["entry_point"]
    with tempfile.TemporaryDirectory(prefix="humaneval-reflexion-",
                                     ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        (folder / "solution.py").write_text(hc.program(problem, completion), encoding="utf-8")
        head = [*code.imports, "from solution import *", f"from solution import {entry}"]
        (folder / "test_solution.py").write_text(
            "\n".join(dict.fromkeys(head)) + "\n\n\n"
            + "\n\n\n".join(t.source for t in code.tests) + "\n",
            encoding="utf-8")
        return run_tests(folder, ["test_solution.py"], python_path=[folder], timeout_s=timeout)


def reflexion(problem: dict, cfg: Config, environ: Mapping[str, str]) -> Outcome:
    """One agent: implementation and its own tests, then reflect and rewrite while they fail.

    The tests are written once, with the first implementation, and kept; each repair sees the
    current code, the test feedback and its earlier reflections (Reflexion's memory).
    """
    entry = problem["entry_point"]
    ledger = TokenLedger()
    model = _chat(cfg, environ, ledger)
    outcome = Outcome(agent_lines=[{"path": entry, "role": "single", "lines": 0}])
    try:
        user = IMPLEMENT.format(entry=entry, skeleton=hc.skeleton_source(problem))
        _, code = _ask(model, cfg, user, entry, _parser(entry, need_tests=True))
    except (AnswerError, ModelError) as exc:
        _endpoint_failed(model, exc)
        outcome.state, outcome.error = "failed", str(exc)
        return _spent(outcome, model, ledger)
    tests = code.tests
    outcome.completion = hc.completion_of_code(problem, code)
    outcome.lines_total, outcome.agent_lines = _single_lines(problem, code)
    result = _internal_tests(problem, code, outcome.completion, cfg.test_timeout)
    memory: list[str] = []
    while not result.ok and outcome.iterations < cfg.iterations:
        shown = ("\nYour earlier attempts, oldest first:\n"
                 + "\n".join(f"- {m}" for m in memory[-6:]) + "\n") if memory else ""
        user = REPAIR.format(entry=entry, code=hc.source_of(code), summary=result.summary(),
                             feedback=result.feedback(), memory=shown)
        try:
            text, new = _ask(model, cfg, user, entry, _parser(entry, need_tests=False))
        except (AnswerError, ModelError) as exc:
            _endpoint_failed(model, exc)
            outcome.error = str(exc)
            break
        outcome.iterations += 1
        memory.append(f"tests {result.summary()}; you reflected: {answers.prose(text)[:300]}")
        code = replace(new, tests=tests)
        outcome.completion = hc.completion_of_code(problem, code)
        outcome.lines_total, outcome.agent_lines = _single_lines(problem, code)
        result = _internal_tests(problem, code, outcome.completion, cfg.test_timeout)
    outcome.internal_tests = result.summary()
    outcome.state = "done" if result.ok else "failed"
    return _spent(outcome, model, ledger)


# ---- soa: the real engine in a throwaway repository ------------------------------------------

def soa(problem: dict, cfg: Config, environ: Mapping[str, str], *,
        keep: Path | None = None) -> Outcome:
    """One soa-git run on the problem's skeleton, in a new git repository.

    This composes exactly what `soa_git.commands.run.run` does (open the repository, resolve
    the settings, find the target, a TokenLedger, `open_model`, `Organizer.run`), with one
    difference: the model is wrapped in CountingModel, because `run` offers no seam to count
    calls. The final code is read back from the run's root branch.
    """
    if not environ.get(cfg.api_key_env):
        raise hc.HarnessError(f"no API key: set the environment variable {cfg.api_key_env} "
                              "(a local server that needs no key accepts any value)")
    entry = problem["entry_point"]
    with tempfile.TemporaryDirectory(prefix="humaneval-soa-", ignore_cleanup_errors=True) as tmp:
        folder = keep if keep is not None else Path(tmp) / "repo"
        folder.mkdir(parents=True)
        (folder / "solution.py").write_text(hc.skeleton_source(problem), encoding="utf-8")
        GitRepo.create(folder, f"{problem['task_id']}: {entry}")
        repo = GitRepo.open(folder)
        flags = {"model": cfg.model, "base_url": cfg.base_url, "api_key_env": cfg.api_key_env,
                 "max_depth": cfg.max_depth, "repair_rounds": cfg.iterations,
                 "fresh_rounds": cfg.fresh_rounds, "split_min_lines": cfg.split_min_lines,
                 # HumanEval's problems need no package, and its scorer's guard breaks numpy's
                 # import, which the harness's own environment (matplotlib) has installed.
                 "imports": "stdlib",
                 "temperature": cfg.temperature, "jobs": cfg.agent_jobs,
                 "test_timeout": cfg.test_timeout, "request_timeout": cfg.request_timeout,
                 **({"mother_max_tokens": cfg.max_tokens, "child_max_tokens": cfg.max_tokens}
                    if cfg.max_tokens else {})}
        # Only the key's variable: the user's SOA_GIT_* settings must not change the benchmark.
        env = {cfg.api_key_env: environ[cfg.api_key_env]}
        settings = config.resolve(repo.root, flags, env)
        target = find_target(repo, folder / "solution.py", entry)
        ledger = TokenLedger(settings.run_token_budget, settings.agent_token_budget)
        model = CountingModel(open_model(settings, ledger, env, repo))
        outcome = Outcome()
        try:
            summary = Organizer(repo, settings, model, ledger).run(target)
        except (AnswerError, ModelError, BudgetExhausted, CodeSyntaxError) as exc:
            _endpoint_failed(model, exc)
            outcome.state, outcome.error = "failed", str(exc)
            outcome.agent_lines = [{"path": entry, "role": "child", "lines": 0}]
            return _spent(outcome, model, ledger)
        if model.endpoint_error is not None and summary.state != "done":
            raise EndpointError(model.endpoint_error)
        root_source = repo.read_file(summary.branch, target.file) or ""
        modules = {}
        for view in summary.agents:
            if view.file != target.file:
                text = repo.read_file(summary.branch, view.file)
                if text is not None:     # a child never merged is not part of the result
                    modules[Path(view.file).stem] = text
        outcome.completion = hc.soa_completion(problem, root_source, modules)
        outcome.run, outcome.state = summary.run, summary.state
        outcome.error = None if summary.state == "done" else summary.message
        outcome.agents, outcome.depth = len(summary.agents), summary.depth
        outcome.lines_total = summary.lines
        outcome.agent_lines = [{"path": v.path, "role": v.role, "lines": v.lines, "tests": v.tests,
                                "state": v.state, "merged": v.file == target.file or
                                Path(v.file).stem in modules} for v in summary.agents]
        root = next(v for v in summary.agents if v.file == target.file)
        outcome.internal_tests = root.tests
        outcome.iterations = max((v.rounds for v in summary.agents), default=0)
        return _spent(outcome, model, ledger)


def solve(strategy: str, problem: dict, cfg: Config, environ: Mapping[str, str], *,
          keep: Path | None = None) -> Outcome:
    if strategy == "direct":
        return direct(problem, cfg, environ)
    if strategy == "reflexion":
        return reflexion(problem, cfg, environ)
    if strategy == "soa":
        return soa(problem, cfg, environ, keep=keep)
    raise ValueError(f"unknown strategy {strategy!r}")


__all__ = ["Config", "CountingModel", "EndpointError", "Outcome", "STRATEGIES", "SoaError", "solve"]
