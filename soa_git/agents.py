"""Mother and Child agents: build prompts, parse answers, decide to split or implement.

An agent talks to the model and nothing else: it never runs git or tests. The organizer hands
it code and test results and takes back parsed plans, each with the exact transcript of the
step (the `Step`) so that it can be kept as a git note.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from string import Template

from . import answers, pycode
from .errors import AnswerError, CodeSyntaxError
from .examples import contradicts, example_tests, is_example_test
from .llm import ChatModel, Usage
from .testing import TestResult

MAX_REFLECTION = 1200


def prompt(name: str, **values: object) -> str:
    text = resources.files("soa_git.prompts").joinpath(f"{name}.md").read_text(encoding="utf-8")
    return Template(text).substitute({k: str(v) for k, v in values.items()})


@dataclass(frozen=True)
class Plan:
    """The usable part of an answer: code for the agent's own function, and what it spawns."""

    imports: tuple[str, ...]
    function: pycode.Function
    extra: tuple[str, ...] = ()            # module-level code the agent keeps beside its function
    children: tuple[pycode.Function, ...] = ()
    tests: dict[str, tuple[str, ...]] = field(default_factory=dict)   # function name -> tests


@dataclass(frozen=True)
class Revision:
    plan: Plan | None
    comments: dict[str, str]


@dataclass(frozen=True)
class Step:
    """One exchange with the model, retries included: what the transcript note records.

    Every user message is a whole prompt on its own: a retry restates the task and the one
    requirement the rejected answer missed, and is sent without the rejected answer.
    """

    task: str
    messages: tuple[dict[str, str], ...]
    usage: Usage
    model: str
    reflection: str


class MissingTests(AnswerError):
    """An answer whose code is usable but that tests too little: `plan` is its code, with the
    tests it did write."""

    def __init__(self, message: str, plan: Plan) -> None:
        super().__init__(message)
        self.plan = plan


class UnusableAnswers(AnswerError):
    """A step whose every answer was unusable; `step` keeps them for the run's transcript,
    `reason` says what the last one lacked, and `plan` is its code if it lacked only tests."""

    def __init__(self, message: str, step: Step, reason: str, plan: Plan | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.reason = reason
        self.plan = plan


@dataclass(frozen=True)
class ChildStatus:
    name: str
    skeleton: str
    tests: str


def prose(text: str) -> str:
    """The answer without its code blocks: the agent's reflection."""
    return answers.prose(text)[:MAX_REFLECTION]


def any_module(module: str) -> bool:
    """The default answer to "may generated code import `module`?" where nobody asks."""
    return True


def _test_owner(test: pycode.Function, own: str, children: set[str]) -> str:
    """A test belongs to the first helper it calls, else to the agent's own function."""
    called = pycode.called_names(test.source)
    for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", test.source):
        if name in children and name in called:
            return name
    return own


def parse_plan(text: str, function: str, *, max_children: int, require_tests: bool,
               examples: tuple[str, ...] = (),
               importable: Callable[[str], bool] = any_module) -> Plan:
    """Read an answer that must implement `function`; skeletons in it become child agents.

    `max_children` of 0 means the agent may not spawn children. Tests are kept per owner; a test
    that calls a name the answer does not define, or that a docstring example contradicts
    (`examples`: the function's own example tests, and each child's from its skeleton), is
    dropped: it could only fail right code. A function whose docstring has examples needs no
    written tests. Code that imports a module `importable` denies is refused: no repair of it
    could pass where its tests run.
    """
    code = answers.read_code(text, function)
    missing = [m for m in answers.imported_modules(code.imports) if not importable(m)]
    if missing:
        raise AnswerError(", ".join(f"`{m}`" for m in missing) + " cannot be imported here: use "
                          "only the Python standard library and this project's own modules")
    imports = answers.spelled_out(code.imports, [code.function.source, *code.kept,
                                                 *(test.source for test in code.tests)])
    starred = [i for i in imports if answers.is_star_import(i)]
    if starred:
        # The root's imports go inside its function, where Python forbids `import *`.
        raise AnswerError(f"`{starred[0].strip()}` is not allowed: import the names you use")
    used = pycode.called_names(code.function.source)
    for helper in code.helpers:
        used |= pycode.called_names(helper.source)
    children = tuple(f for f in code.skeletons if f.name in used)
    if children and max_children == 0:
        raise AnswerError("you may not hand work to helpers here: implement "
                          + ", ".join(f"`{c.name}`" for c in children) + " inside your own code")
    if len(children) > max_children > 0:
        raise AnswerError(f"split into at most {max_children} helpers, not {len(children)}")
    names = {c.name for c in children}
    known = {function, *names, *answers.defined_names([*code.kept, *imports])}
    fixed = {function: examples, **{c.name: example_tests(c.name, c.docstring) for c in children}}
    by_owner: dict[str, list[str]] = {}
    for test in code.tests:
        owner = _test_owner(test, function, names)
        unusable = (answers.unknown_calls(test.source, known)
                    or contradicts(test.source, fixed[owner]))
        if not unusable:
            by_owner.setdefault(owner, []).append(test.source)
    missing = [n for n in sorted(names) if n not in by_owner and not fixed[n]]
    if require_tests and function not in by_owner and not examples:
        missing.insert(0, function)
    plan = Plan(imports=imports, function=code.function, extra=code.kept, children=children,
                tests={k: tuple(v) for k, v in by_owner.items()})
    if missing:
        raise MissingTests("write unit tests (`def test_...`) for "
                           + ", ".join(f"`{n}`" for n in missing), plan)
    return plan


def parse_revision(text: str, function: str, children: set[str],
                   importable: Callable[[str], bool] = any_module) -> Revision:
    comments = {info.split(None, 1)[1].strip("` "): body.strip()
                for info, body in answers.code_blocks(text)
                if info.startswith("comment ") and len(info.split(None, 1)) == 2}
    unknown = sorted(set(comments) - children)
    if unknown:
        raise AnswerError(f"there is no child named {', '.join(unknown)}; your children are "
                          + ", ".join(sorted(children)))
    blocks = answers.code_blocks(text)
    has_code = not blocks or any(info in answers.PYTHON_INFOS for info, _ in blocks)
    plan = (parse_plan(text, function, max_children=0, require_tests=False,
                       importable=importable) if has_code else None)
    if plan is None and not comments:
        raise AnswerError("give corrected code, a ```comment NAME block, or both")
    return Revision(plan=plan, comments=comments)


class Agent:
    """The model-facing side of one agent; its memory is the list of its earlier attempts."""

    def __init__(self, path: str, skeleton: pycode.Function, model: ChatModel, *,
                 callees: tuple[str, ...] = (), caller: str = "", max_children: int = 5,
                 answer_retries: int = 2, max_tokens: int | None = None,
                 importable: Callable[[str], bool] = any_module):
        self.path = path
        self.skeleton = skeleton
        self.model = model
        self.callees = callees
        self.caller = caller      # the Mother's function that calls this one, as she wrote it
        self.max_children = max_children
        self.answer_retries = answer_retries
        self.max_tokens = max_tokens
        self.importable = importable    # may its code import this module?
        self.memory: list[str] = []
        # The docstring's examples as tests: written by soa-git, never by a model.
        self.examples = example_tests(skeleton.name, skeleton.docstring)

    @property
    def function(self) -> str:
        return self.skeleton.name

    def _callees_text(self) -> str:
        """The functions around this one: its caller (how its result is used) and its callees."""
        caller = ("\nIt is called by your Mother agent's function:\n\n```python\n"
                  + self.caller.strip("\n") + "\n```\n") if self.caller else ""
        if not self.callees:
            return caller
        return (caller + "\nIt may call these functions, owned by other agents:\n\n```python\n"
                + "\n\n".join(self.callees) + "\n```\n")

    def _memory_text(self) -> str:
        if not self.memory:
            return ""
        return "\nYour earlier attempts, oldest first:\n" + "\n".join(
            f"- {entry}" for entry in self.memory[-6:]) + "\n"

    def _ask(self, task: str, user: str, parse):
        """Ask, and while the answer is unusable ask again: the same task with the one thing
        the last answer got wrong, never the rejected answer itself (a small model shown its
        own bad answer tends to repeat it, and the prompt grows with every try)."""
        system = {"role": "system", "content": prompt("system")}
        messages = [system, {"role": "user", "content": user}]
        sent = messages
        usage = Usage()
        tries = 0
        while True:
            reply = self.model.complete(sent, agent=self.path, max_tokens=self.max_tokens)
            usage = usage + reply.usage
            tries += 1
            messages.append({"role": "assistant", "content": reply.text})
            try:
                parsed = parse(reply.text)
            except (AnswerError, CodeSyntaxError) as exc:
                if tries > self.answer_retries:
                    raise UnusableAnswers(
                        f"agent {self.path}: the model's answers could not be used after {tries} "
                        f"tries: {exc}", Step(task=task, messages=tuple(messages), usage=usage,
                                              model=reply.model, reflection=""),
                        str(exc), exc.plan if isinstance(exc, MissingTests) else None) from None
                retry = {"role": "user", "content": prompt(
                    "format_error", agent=self.path, error=exc,
                    task=user.split("\n", 1)[1].strip() if "\n" in user else user)}
                messages.append(retry)
                sent = [system, retry]
                continue
            step = Step(task=task, messages=tuple(messages), usage=usage, model=reply.model,
                        reflection=prose(reply.text))
            return step, parsed

    def _values(self, tests: tuple[str, ...]) -> dict[str, str]:
        shown = (("\nIts unit tests:\n\n```python\n" + "\n\n".join(tests) + "\n```\n") if tests
                 else "")
        return dict(agent=self.path, function=self.function, callees=self._callees_text(),
                    skeleton=pycode.skeleton_text(self.skeleton), tests=shown)

    def generate(self, *, split: bool, tests: tuple[str, ...] = ()) -> tuple[Step, Plan]:
        """A Mother (split) decomposes or implements; a Child implements.

        An agent whose Mother gave it no tests (the root) must write its own; the tests made
        from its docstring's examples do not count as given.
        """
        written = tuple(t for t in tests if not is_example_test(t))
        values = self._values(tests)
        if split:
            own_tests = ("at least two for `" + self.function + "`") if not written else \
                "more for `" + self.function + "` only if its tests above miss a case"
            user = prompt("decompose", max_children=self.max_children, own_tests=own_tests,
                          **values)
            limit = self.max_children
        else:
            write = "" if written else (
                " After it, in the same block, write at least three unit tests as plain pytest"
                f" functions `def test_...():` calling `{self.function}`.")
            user = prompt("implement", write_tests=write, fresh="", **values)
            limit = 0
        return self._ask("decompose" if split else "implement", user, lambda text: parse_plan(
            text, self.function, max_children=limit, require_tests=not written,
            examples=self.examples, importable=self.importable))

    def afresh(self, tests: tuple[str, ...], result: TestResult, attempt: int
               ) -> tuple[Step, Plan]:
        """A new implementation from scratch instead of a fix of the last one: small models
        often repeat a wrong idea when shown it, and a new sample of the task may not. Its tests
        stay those already kept."""
        fresh = (f"\nEarlier implementations of it failed their tests (the best: "
                 f"{result.summary()}). Write a new one from scratch, with a different approach "
                 f"(fresh attempt {attempt}).\n")
        user = prompt("implement", write_tests="", fresh=fresh, **self._values(tests))
        step, plan = self._ask("afresh", user, lambda text: parse_plan(
            text, self.function, max_children=0, require_tests=False, examples=self.examples,
            importable=self.importable))
        self.remember(tests=result.summary(), reflection=step.reflection)
        return step, plan

    def remember(self, *, tests: str, reflection: str, received: str | None = None,
                 sent: dict[str, str] | None = None) -> None:
        """One attempt in memory: a live step calls this, and so does resume for a recorded one."""
        if received:
            self.memory.append(f"your Mother commented: {received}")
        comments = "; ".join(f"to {k}: {v[:120]}" for k, v in (sent or {}).items())
        self.memory.append(f"tests {tests}; you reflected: {reflection[:300]}"
                           + (f"; you commented {comments}" if comments else ""))

    def discarded(self, attempt: str, best: str) -> None:
        """A rewrite scored worse than the code it replaced and was set aside."""
        self.memory.append(f"a rewrite scored worse (tests {attempt}, against {best}) and was "
                           "discarded; you are shown the better code again")

    def repair(self, code: str, result: TestResult, *,
               comment: str | None = None) -> tuple[Step, Plan]:
        shown = f"\nYour Mother agent asks for this change:\n\n{comment}\n" if comment else ""
        user = prompt("repair", agent=self.path, function=self.function, code=code,
                      summary=result.summary(), feedback=result.feedback(), comment=shown,
                      memory=self._memory_text())
        step, plan = self._ask("repair", user, lambda text: parse_plan(
            text, self.function, max_children=0, require_tests=False,
            importable=self.importable))
        self.remember(tests=result.summary(), reflection=step.reflection, received=comment)
        return step, plan

    def unusable(self, reason: str) -> None:
        """A round whose answers could not be used: the next round's prompt says so, so it is
        not the same prompt again (the server's fixed seed would give the same answer)."""
        self.memory.append(f"your answer could not be used ({reason}); this time answer with "
                           "one ```python block holding the whole function")

    def revise(self, code: str, result: TestResult,
               children: tuple[ChildStatus, ...]) -> tuple[Step, Revision]:
        listed = "\n".join(f"- `{c.name}` (tests: {c.tests})\n\n```python\n{c.skeleton}\n```"
                           for c in children)
        user = prompt("revise", agent=self.path, function=self.function, code=code,
                      summary=result.summary(), feedback=result.feedback(), children=listed,
                      memory=self._memory_text())
        names = {c.name for c in children}
        step, revision = self._ask("revise", user,
                                   lambda text: parse_revision(text, self.function, names,
                                                               self.importable))
        self.remember(tests=result.summary(), reflection=step.reflection, sent=revision.comments)
        return step, revision
