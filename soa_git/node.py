"""One agent's live state in a run, in four parts: its code and tests, its branch, its workspace,
and how far it has got. The organizer decides what happens to a node; this module only keeps it
and writes the agent's files from it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import answers, codegen, failures, layout, pycode
from .agents import Agent, Plan
from .testing import TestResult

NOT_RUN = TestResult(cases=())
FINAL_STATES = ("passed", "failed", "stopped")


@dataclass
class Code:
    """The agent's code and tests as they stand: what its files are written from."""

    imports: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()         # module-level code it keeps beside its function
    body: str = ""
    tests: list[str] = field(default_factory=list)
    test_imports: list[str] = field(default_factory=list)

    def adopt(self, plan: Plan, function: str, *, adopt_tests: bool) -> None:
        """Take an answer's code (and, in a first answer, its tests) as the agent's own.

        A rewrite keeps a helper it did not write again while its code, the agent's kept
        tests or another kept helper still use it: those tests never change, so a helper they
        test must stay.
        """
        written = set(answers.defined_names(plan.extra))
        earlier = [e for e in self.extra if set(answers.defined_names([e])) - written]
        kept = answers.reachable([plan.function.source, *plan.extra, *self.tests], earlier)
        self.imports = tuple(dict.fromkeys([*plan.imports, *(self.imports if kept else ())]))
        self.extra, self.body = kept + plan.extra, plan.function.body
        if adopt_tests:
            own = plan.tests.get(function, ())
            if own:
                self.tests.extend(own)
                self.test_imports.extend(plan.imports)


@dataclass
class Branch:
    """The agent's branch, and where it stands against its Mother's."""

    name: str
    # The Mother's commit that wrote her children's skeletons: where every child branches from,
    # whatever siblings were merged since (they are not the child's to carry).
    split: str | None = None
    # Where its branch last met its Mother's: the commit of hers it started from, or its own tip
    # she last merged; what the next merge is computed from (unknown after a resume).
    fork: str | None = None
    merged_tip: str | None = None
    merging: threading.Lock = field(default_factory=threading.Lock)  # one merge into it at a time


@dataclass
class Workspace:
    """The folder the agent works in, while it holds one."""

    path: Path | None = None
    held: str | None = None                # the commit whose files the folder holds
    written: dict[str, str] = field(default_factory=dict)  # the agent's files as last written


@dataclass
class Progress:
    """How far the agent has got, and how its tests last went."""

    state: str = "waiting"
    result: TestResult = NOT_RUN
    rounds: int = 0
    generated: bool = False            # its first answer is committed
    best_round: int = 0                # the round whose code the branch holds (0: the first)
    pending_comment: str | None = None  # a Mother's comment not answered yet (resume)
    error: str | None = None
    began: float | None = None         # monotonic time of its first state after waiting
    ended: float | None = None

    def enter(self, state: str) -> None:
        self.state = state
        now = time.monotonic()
        if self.began is None and state != "waiting":
            self.began = now
        self.ended = now if state in FINAL_STATES else None

    def seconds(self) -> float:
        """Since it started working (until it finished)."""
        if self.began is None:
            return 0.0
        return (self.ended or time.monotonic()) - self.began

    def why(self) -> str | None:
        """A failed agent's error, or its tests' first failure."""
        if self.error:
            return self.error
        return failures.reason(self.result) if self.state == "failed" else None


@dataclass
class Node:
    """One agent of the run: what it is, and its parts."""

    path: str
    skeleton: pycode.Function
    files: layout.AgentFiles
    agent: Agent
    branch: Branch
    parent: Node | None = None
    role: str = "child"
    children: list[Node] = field(default_factory=list)
    code: Code = field(default_factory=Code)
    workspace: Workspace = field(default_factory=Workspace)
    progress: Progress = field(default_factory=Progress)
    _sources: tuple[tuple, str, str] | None = field(default=None, repr=False)  # see sources()

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    @property
    def name(self) -> str:
        return self.skeleton.name

    def sources(self, original: str) -> tuple[str, str]:
        """(the agent's file as its code stands, its own code): made again only when its code
        changed, since every event shows the code's size. `original` is the user's file, which
        the root's function is written into."""
        code = self.code
        key = (tuple(code.imports), tuple(code.extra), code.body, len(self.children))
        if self._sources is None or self._sources[0] != key:
            imports = [*code.imports,
                       *codegen.child_imports((c.name, c.files) for c in self.children)]
            if self.parent is None:
                source = codegen.root_source(original, self.name, code.body or "...", imports,
                                             code.extra)
                own = pycode.find_function(source, self.name).source
                text = "\n\n\n".join([own, *(e.strip("\n") for e in code.extra)])
            else:
                source = text = codegen.module_source(self.path, self.skeleton, code.body,
                                                      imports, code.extra)
            self._sources = (key, source, text)
        return self._sources[1], self._sources[2]

    def own_code(self, original: str) -> str:
        """The agent's own code: its module, or for the root its function in the user's file."""
        return self.sources(original)[1]

    def file_texts(self, original: str) -> dict[str, str]:
        """The agent's files as its code and tests stand: path -> text."""
        source = self.sources(original)[0]
        pycode.check_parses(source, self.files.module)
        texts = {self.files.module: source}
        if self.code.tests:
            texts[self.files.tests] = codegen.test_source(
                self.name, self.files, self.code.tests, self.code.test_imports,
                answers.defined_names(self.code.extra))
        return texts

    def owned(self) -> tuple[str, str]:
        """The only paths the agent's commits may touch."""
        return self.files.module, self.files.tests
