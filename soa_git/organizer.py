"""The run: grows the agent tree, schedules agents in parallel, runs the phases, merges.

Generation is top-down. A run's start commit is written before its first model call, so every
run that spent a model call is a run: unusable answers, Ctrl-C and kills included, it is listed,
its transcript kept and `resume` knows it; an endpoint that never answered leaves nothing. Each
agent then
works on its own branch in its own workspace; children run in parallel threads; a Mother merges a
child only after the child's tests pass. Modification is bottom-up: leaves repair themselves from
test feedback, Mothers revise their own code and comment on the children they implicate.
"""

from __future__ import annotations

import itertools
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

from . import answers, examples, failures, layout, pycode, runformat
from .agents import Agent, ChildStatus, Plan, Step, parse_plan, parse_revision, prose
from .config import Settings
from .errors import AnswerError, BudgetExhausted, ModelError
from .gitrepo import Author, GitRepo, MergeConflict
from .llm import ChatModel, TokenLedger, Usage
from .executor import LOCAL, Executor
from .targets import Target
from .testing import TestResult

NOT_RUN = TestResult(cases=())
# Up to this many siblings, a child sees all their skeletons; beyond, only those it names.
SHOWN_SIBLINGS = 8


@dataclass(frozen=True)
class AgentView:
    """What the outside world sees of one agent, live and at the end."""

    run: str
    path: str
    role: str
    function: str
    file: str
    test_file: str
    branch: str
    state: str
    tests: str
    passed: int
    rounds: int
    lines: int
    tokens: int
    error: str | None
    why: str | None = None      # a failed agent's error, or its tests' first failure
    seconds: float = 0.0        # since it started working (until it finished)


@dataclass(frozen=True)
class RunSummary:
    run: str
    target: Target
    branch: str
    base: str
    state: str              # done | failed | stopped
    message: str
    agents: tuple[AgentView, ...]
    depth: int              # levels in the tree, as max_depth counts them
    lines: int
    tests_passed: int
    usage: Usage
    seconds: float


@dataclass(frozen=True)
class Recording:
    """What resume needs of a run, as history reads it from git."""

    run: str
    target: Target
    base: str
    steps: dict[str, tuple[dict, ...]]   # agent path -> its step records, oldest first


@dataclass
class Node:
    """One agent's live state in this run."""

    path: str
    skeleton: pycode.Function
    files: layout.AgentFiles
    branch: str
    agent: Agent
    parent: Node | None = None
    role: str = "child"
    state: str = "waiting"
    result: TestResult = NOT_RUN
    rounds: int = 0
    children: list[Node] = field(default_factory=list)
    imports: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    body: str = ""
    tests: list[str] = field(default_factory=list)
    test_imports: list[str] = field(default_factory=list)
    workspace: Path | None = None
    held: str | None = None            # the commit whose files the workspace holds
    written: dict[str, str] = field(default_factory=dict)  # its files as last written
    sources: tuple[tuple, str, str] | None = None          # see Organizer._sources
    merging: threading.Lock = field(default_factory=threading.Lock)  # one merge into it at a time
    # The Mother's commit that wrote her children's skeletons: where every child branches from,
    # whatever siblings were merged since (they are not the child's to carry).
    split: str | None = None
    merged_tip: str | None = None
    # Where its branch last met its Mother's: the commit of hers it started from, or its own tip
    # she last merged; what the next merge is computed from (unknown after a resume).
    fork: str | None = None
    generated: bool = False            # its first answer is committed
    best_round: int = 0                # the round whose code the branch holds (0: the first)
    pending_comment: str | None = None  # a Mother's comment not answered yet (resume)
    error: str | None = None
    began: float | None = None         # monotonic time of its first state after waiting
    ended: float | None = None

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1


class Organizer:
    def __init__(self, repo: GitRepo, settings: Settings, model: ChatModel, ledger: TokenLedger,
                 on_event: Callable[[AgentView], None] = lambda view: None,
                 executor: Executor = LOCAL):
        self.repo = repo
        self.executor = executor
        self.settings = settings
        # Masked in every test result, whatever generated code managed to print.
        self._secrets = settings.secret_values()
        self.model = model
        self.ledger = ledger
        self.on_event = on_event
        self.run_id = runformat.new_run_id()
        self._test_slots = threading.BoundedSemaphore(settings.jobs)
        # Agents working at once. A Mother gives her slot back while she waits for her children,
        # so slots never run out. Four times `jobs`: when a round of answers comes back and those
        # agents test and commit, enough others must already be waiting for the model to keep all
        # `jobs` model slots busy (an agent waiting for its answer holds no workspace yet).
        self._work_slots = threading.BoundedSemaphore(4 * settings.jobs)
        self._holds_slot = threading.local()
        # Workspaces given back by agents whose work is done, for the next agent to take.
        self._spare: list[Path] = []
        self._spare_lock = threading.Lock()
        self._workspace_numbers = itertools.count(1)
        self._halt: str | None = None       # why the whole run stops early
        self._lock = threading.Lock()
        self.nodes: list[Node] = []

    # ---- preparing -------------------------------------------------------------------------

    def _node(self, path: str, skeleton: pycode.Function, parent: Node | None,
              callees: tuple[str, ...] = (), caller: str = "") -> Node:
        root_files = parent.files if parent else None
        files = layout.files_for(
            path, self.target_.file,
            root_files.import_root if root_files else layout.import_root(
                self.target_.file, lambda p: self.repo.file_exists(self.base, p)),
            is_root=parent is None)
        mother = (0 if parent is None else parent.depth + 1) + 1 < self.settings.max_depth
        agent = Agent(path, skeleton, self.model, callees=callees, caller=caller,
                      max_children=self.settings.max_children,
                      max_tokens=(self.settings.mother_max_tokens if mother
                                  else self.settings.child_max_tokens))
        node = Node(path=path, skeleton=skeleton, files=files, agent=agent, parent=parent,
                    branch=runformat.branch(self.run_id, path))
        # Asked as a Mother from the start; a child if her answer implements it herself.
        node.role = "mother" if self._may_split(node) else "child"
        with self._lock:
            self.nodes.append(node)
        return node

    # ---- the run ---------------------------------------------------------------------------

    def run(self, target: Target) -> RunSummary:
        started = time.monotonic()
        root = self._begin(target, self.repo.head())
        # Before the lock, so that a kill leaves no lock without a run.
        notes = self.repo.ref_sha(runformat.NOTES_REF)
        start = self.repo.start_branch(
            root.branch, self.base, author=self._author(root),
            subject=runformat.start_subject(self.run_id, self._target_text()),
            trailers=self._trailers(root, "start", Usage()),
            note=runformat.note_line(runformat.start_record(root.path, self._recorded_settings())))
        self.repo.lock_run(self.run_id)
        try:
            self.executor.start()
            return self._complete(root, lambda: self._first(root), started)
        except ModelError:
            # The endpoint never answered and nothing was spent: as if no run had started.
            self.repo.take_back_start(root.branch, start, notes)
            raise
        finally:
            self.repo.unlock_run(self.run_id)

    def _first(self, root: Node) -> None:
        self._start(root)
        if self._halt and not root.generated and self.ledger.total.total == 0:
            raise ModelError(self._halt)

    def resume(self, recording: Recording) -> RunSummary:
        """Continue a run from the last committed step of each agent.

        Each agent's state is rebuilt by reading its recorded answers again through the same
        parsers that accepted them, so no finished step costs a model call.
        """
        started = time.monotonic()
        self.run_id = recording.run
        self.repo.lock_run(self.run_id)
        try:
            # What a killed process left behind: its workspaces and any git lock on its branches.
            self.repo.remove_workspaces(self.run_id)
            self.repo.clear_stale_locks(self.run_id)
            self.executor.start()
            root = self._begin(recording.target, recording.base)
            self._restore(root, recording)
            return self._complete(root, lambda: self._continue(root), started)
        finally:
            self.repo.unlock_run(self.run_id)

    def _recorded_settings(self) -> dict:
        """The run's settings as a reviewer needs them; the key's variable name, never a value."""
        return {f.name: getattr(self.settings, f.name) for f in fields(self.settings)}

    def _begin(self, target: Target, base: str) -> Node:
        self.target_ = target
        self.base = base
        self.original = self.repo.read_file(base, target.file) or ""
        root = self._node(target.function, pycode.find_function(self.original, target.function),
                          None)
        root.tests = list(root.agent.examples)
        import_root = root.files.import_root
        self.checkout = layout.workspace_folders(
            target.file, import_root, self.repo.subfolders(base, import_root),
            lambda folders, files: self.repo.import_lines(base, folders, files))
        return root

    def _complete(self, root: Node, work: Callable[[], None], started: float) -> RunSummary:
        try:
            work()
        finally:
            for node in self.nodes:
                self._release(node)
            self.repo.remove_workspaces(self.run_id)
        return self._finish(root, time.monotonic() - started)

    def _finish(self, root: Node, seconds: float) -> RunSummary:
        """The end record on the root's tip is how history tells a finished run from a killed
        one."""
        summary = self._summary(root, seconds)
        self._note(self.repo.branch_sha(root.branch), runformat.end_record(
            root.path, state=summary.state, message=summary.message,
            usage=summary.usage.record(), seconds=seconds))
        return summary

    # ---- generation: one agent's first answer, and everything after it ---------------------

    def _start(self, node: Node) -> None:
        """Branch, the skeleton commit (children only), the first answer; each skipped if done."""
        try:
            mother = node.parent
            if mother is not None:
                node.fork = mother.split or self.repo.branch_sha(mother.branch) or self.base
                self.repo.commit_files(
                    node.branch, self._files(node), start=node.fork,
                    subject=runformat.skeleton_subject(node.skeleton.name, mother.path),
                    body=runformat.SKELETON_BODY,
                    trailers=self._trailers(node, "generate", Usage()),
                    author=self._author(node), allowed_paths=self._owned(node))
            if self._halted(node):
                self._retire(node)
                return
            self._set(node, "thinking")
            step, plan = node.agent.generate(split=self._may_split(node), tests=tuple(node.tests))
        except (AnswerError, ModelError, BudgetExhausted) as exc:
            self._fail(node, exc)
            self._retire(node)
            return
        self._develop(node, step, plan)

    def _develop(self, node: Node, step: Step, plan: Plan) -> None:
        with self._workspace(node):
            self._adopt_plan(node, plan)
            self._write(node)
            if node.children:
                self._commit(node, step, phase="generate", subject=runformat.split_subject(
                    node.skeleton.name, (c.skeleton.name for c in node.children)), tested=False)
                node.split = node.held
                self._set(node, "waiting")  # for her children
            else:
                self._test(node)
                self._commit(node, step, phase="generate",
                             subject=runformat.implement_subject(node.skeleton.name))
            self._carry_on(node)
        self._settle(node)

    def _adopt_plan(self, node: Node, plan: Plan) -> None:
        """A first answer: the agent's code and tests, and for a Mother her children."""
        node.role = "mother" if plan.children else "child"
        if plan.children:
            self._adopt_children(node, plan)
        self._adopt(node, plan, adopt_tests=True)
        node.generated = True

    def _continue(self, node: Node) -> None:
        """Carry an agent on from whatever its branch already holds."""
        if not node.generated:
            self._start(node)
            return
        with self._workspace(node):
            self._carry_on(node)
        self._settle(node)

    def _carry_on(self, node: Node) -> None:
        """Children first (in parallel), then merging and the modification phase."""
        if node.children:
            self._in_parallel(self._continue_and_merge,
                              [c for c in node.children if not self._merged(c)])
            self._merge_and_test(node)
            self._answer_comments(node, {c.skeleton.name: c.pending_comment
                                         for c in node.children if c.pending_comment})
            self._modify_mother(node)
        else:
            if node.result is NOT_RUN:
                self._test(node)
            self._repair(node)

    def _adopt_children(self, mother: Node, plan: Plan) -> None:
        """One child agent per skeleton in the Mother's answer; siblings see each other's skeletons.

        With many siblings, a child sees only those its own skeleton names: otherwise every
        child's prompt would grow with the number of its siblings, and a wide tree's tokens with
        the square of its width.
        """
        texts = {c.name: pycode.skeleton_text(c) for c in plan.children}
        for skeleton in plan.children:
            if len(plan.children) <= SHOWN_SIBLINGS + 1:
                siblings = tuple(texts[c.name] for c in plan.children if c is not skeleton)
            else:
                named = set(re.findall(r"[A-Za-z_]\w*", texts[skeleton.name]))
                siblings = tuple(texts[c.name] for c in plan.children
                                 if c is not skeleton and c.name in named)
            child = self._node(f"{mother.path}.{skeleton.name}", skeleton, mother, callees=siblings,
                               caller=plan.function.source)
            child.tests = [*child.agent.examples, *plan.tests.get(skeleton.name, ())]
            child.test_imports = list(plan.imports)
            mother.children.append(child)

    def _in_parallel(self, work: Callable[[Node], None], nodes: list[Node]) -> None:
        if not nodes:
            return

        def in_slot(node: Node) -> None:
            with self._work_slots:
                self._holds_slot.value = True
                try:
                    work(node)
                finally:
                    self._holds_slot.value = False

        held = getattr(self._holds_slot, "value", False)
        if held:
            self._work_slots.release()
        try:
            # At most `jobs` siblings at once: model calls and test runs are bounded by jobs
            # anyway, and a working agent holds a workspace: more threads would only hold more disk.
            with ThreadPoolExecutor(max_workers=min(len(nodes), self.settings.jobs)) as pool:
                for future in [pool.submit(in_slot, node) for node in nodes]:
                    future.result()
        finally:
            if held:
                self._work_slots.acquire()

    def _may_split(self, node: Node) -> bool:
        """max_depth counts levels, as in the paper: 2 is a Mother over Children."""
        return node.depth + 1 < self.settings.max_depth

    def _merged(self, node: Node) -> bool:
        return node.merged_tip is not None and node.merged_tip == self.repo.branch_sha(node.branch)

    # ---- resuming: an agent's state read back from its recorded steps ----------------------

    def _restore(self, node: Node, recording: Recording) -> None:
        for record in recording.steps.get(node.path, ()):
            task = record["task"]
            if task == runformat.ERROR:  # unusable answers: they changed nothing
                continue
            answer = runformat.answer(record)
            sent: dict[str, str] = {}
            if task in ("decompose", "implement"):
                self._adopt_plan(node, parse_plan(
                    answer, node.skeleton.name, require_tests=False,
                    max_children=sys.maxsize if task == "decompose" else 0,
                    examples=node.agent.examples))
            elif task == "repair" and "kept_round" in record:
                node.agent.discarded(record["attempt_tests"], str(record.get("tests")))
            elif task == "repair":
                self._adopt(node, parse_plan(answer, node.skeleton.name, max_children=0,
                                             require_tests=False), adopt_tests=False)
                node.best_round = int(record.get("round", node.rounds))
            elif task == "revise":
                revision = parse_revision(answer, node.skeleton.name,
                                          {c.skeleton.name for c in node.children})
                sent = revision.comments
                if revision.plan:
                    self._adopt(node, revision.plan, adopt_tests=False)
                for child in node.children:
                    child.pending_comment = revision.comments.get(child.skeleton.name,
                                                                  child.pending_comment)
            if node.pending_comment and record.get("comment") == node.pending_comment:
                node.pending_comment = None
            node.rounds = int(record.get("round", node.rounds))
            node.agent.remember(tests=str(record.get("tests")), reflection=prose(answer),
                                received=record.get("comment"), sent=sent)
        mother_tip = self.repo.branch_sha(node.branch)
        for child in node.children:
            self._restore(child, recording)
            tip = self.repo.branch_sha(child.branch)
            if child.generated and tip and mother_tip and self.repo.is_ancestor(tip, mother_tip):
                child.merged_tip = tip

    # ---- modification phase ----------------------------------------------------------------

    def _repair(self, node: Node, comment: str | None = None) -> None:
        """Reflexion-style self-repair: reflect on the failures, rewrite, test; bounded by rounds.

        A Mother's comment opens a new series of rounds, even for an agent whose tests pass.
        """
        limit = (node.rounds + self.settings.repair_rounds if comment
                 else self.settings.repair_rounds)
        while node.rounds < limit:
            if (node.result.ok and comment is None) or self._halted(node):
                return
            self._set(node, "repairing")
            try:
                step, plan = node.agent.repair(self._code(node), node.result, comment=comment)
            except (AnswerError, ModelError, BudgetExhausted) as exc:
                self._fail(node, exc)
                return
            node.rounds += 1
            best = (node.imports, node.extra, node.body, node.result)
            self._adopt(node, plan, adopt_tests=False)
            self._write(node)
            self._test(node)
            kept = None
            record: dict = {"comment": comment} if comment else {}
            if comment is None and examples.score(node.result) < examples.score(best[3]):
                # A worse rewrite is remembered (the note keeps its answer) but never replaces
                # the better code on the branch: the commit holds the best attempt's files.
                kept = node.best_round
                record = {"kept_round": kept, "attempt_tests": node.result.summary()}
                node.agent.discarded(node.result.summary(), best[3].summary())
                node.imports, node.extra, node.body, node.result = best
                self._write(node)
            else:
                node.best_round = node.rounds
            self._commit(node, step, phase="modify",
                         subject=runformat.repair_subject(node.skeleton.name, node.rounds,
                                                          answering=comment is not None,
                                                          kept=kept),
                         body=runformat.received_body(comment) if comment else "",
                         record=record)
            node.pending_comment = comment = None

    def _modify_mother(self, node: Node) -> None:
        while node.rounds < self.settings.repair_rounds:
            if node.result.ok or self._halted(node):
                return
            self._set(node, "revising")
            statuses = tuple(ChildStatus(c.skeleton.name, pycode.skeleton_text(c.skeleton),
                                         c.result.summary() if c.merged_tip
                                         else f"{c.state}: {c.result.summary()}")
                             for c in node.children)
            try:
                step, revision = node.agent.revise(self._code(node), node.result, statuses)
            except (AnswerError, ModelError, BudgetExhausted) as exc:
                self._fail(node, exc)
                return
            node.rounds += 1
            if revision.plan:
                self._adopt(node, revision.plan, adopt_tests=False)
                self._write(node)
            self._test(node)
            self._commit(node, step, phase="modify",
                         subject=runformat.revise_subject(node.skeleton.name, node.rounds,
                                                          revision.comments),
                         body=runformat.sent_body(revision.comments))
            self._answer_comments(node, revision.comments)

    def _answer_comments(self, mother: Node, comments: dict[str, str]) -> None:
        """The commented children rewrite in parallel; whoever then passes is merged again."""
        commented = [c for c in mother.children if c.skeleton.name in comments]

        def answer(child: Node) -> None:
            with self._workspace(child):
                self._repair(child, comments[child.skeleton.name])
            self._settle(child)

        self._in_parallel(answer, commented)
        if commented:
            self._merge_and_test(mother)

    # ---- merging ---------------------------------------------------------------------------

    def _continue_and_merge(self, child: Node) -> None:
        """A child's work, then its merge as soon as it passes, while its siblings still work:
        the Mother is left only the merges of the last to finish."""
        self._continue(child)
        self._merge_if_passing(child)

    def _merge_if_passing(self, child: Node) -> None:
        """Merge the child's newest work into its Mother if it passes and is not merged yet."""
        mother = child.parent
        assert mother is not None
        tip = self.repo.branch_sha(child.branch)
        if child.result.ok and tip is not None and tip != child.merged_tip:
            with mother.merging:
                self._accept(mother, child, tip)

    def _merge_and_test(self, mother: Node) -> None:
        """Merge every child whose newest work passes and is not merged yet, then test the whole."""
        self._set(mother, "merging")
        for child in mother.children:
            self._merge_if_passing(child)
        self._sync(mother)
        self._test(mother)
        self._note(self.repo.branch_sha(mother.branch),
                   runformat.test_record(mother.path, mother.result.summary(),
                                         failures.reason(mother.result)))

    def _accept(self, mother: Node, child: Node, tip: str) -> None:
        """A --no-ff merge of the child's `tip`; on a conflict the child first redoes its work
        on the new base, and its new tip is merged."""
        def merge(tip: str) -> str:
            return self.repo.merge(
                mother.branch, child.branch, author=self._author(mother),
                subject=runformat.merge_subject(child.skeleton.name, mother.skeleton.name),
                trailers=self._trailers(mother, "merge", Usage(), tests=child.result.summary()),
                note=runformat.note_line(runformat.merge_record(
                    mother.path, child.path, tip, child.result.summary())),
                base=child.fork)

        try:
            merge(tip)
        except MergeConflict as conflict:
            with self._workspace(child):
                self.repo.catch_up(child.branch, mother.branch,
                                   (child.files.module, child.files.tests),
                                   subject=runformat.redo_subject(child.skeleton.name,
                                                                  mother.skeleton.name),
                                   trailers=self._trailers(child, "modify", Usage()),
                                   author=self._author(child))
                # Its history now holds hers since its fork: git finds the merge base.
                child.fork = None
                self._sync(child)
                self._test(child)
            tip = self.repo.branch_sha(child.branch)
            self._note(tip, runformat.test_record(child.path, child.result.summary(),
                                                  failures.reason(child.result)))
            if not child.result.ok:
                child.error = (f"{conflict}; on the new base its tests fail "
                               f"({child.result.summary()})")
                self._set(child, "failed")
                return
            merge(tip)
        child.merged_tip = child.fork = tip

    # ---- one agent's files, tests and commits ----------------------------------------------

    def _adopt(self, node: Node, plan: Plan, *, adopt_tests: bool) -> None:
        """Take an answer's code (and, in a first answer, its tests) as the agent's own.

        A rewrite that still calls a helper it did not write again keeps that helper.
        """
        written = set(answers.defined_names(plan.extra))
        called = pycode.called_names("\n\n".join([plan.function.source, *plan.extra]))
        kept = tuple(e for e in node.extra
                     if (set(answers.defined_names([e])) & called) - written)
        node.imports = tuple(dict.fromkeys([*plan.imports, *(node.imports if kept else ())]))
        node.extra, node.body = kept + plan.extra, plan.function.body
        if adopt_tests:
            own = plan.tests.get(node.skeleton.name, ())
            if own:
                node.tests.extend(own)
                node.test_imports.extend(plan.imports)

    def _owned(self, node: Node) -> tuple[str, str]:
        return node.files.module, node.files.tests

    def _child_imports(self, node: Node) -> list[str]:
        return layout.child_imports((c.skeleton.name, c.files) for c in node.children)

    def _own_source(self, node: Node) -> str:
        return self._sources(node)[0]

    def _sources(self, node: Node) -> tuple[str, str]:
        """(the agent's file as its code stands, its own code): made again only when its code
        changed, since every event shows the code's size."""
        key = (tuple(node.imports), tuple(node.extra), node.body, len(node.children))
        if node.sources is None or node.sources[0] != key:
            imports = [*node.imports, *self._child_imports(node)]
            if node.parent is None:
                source = layout.root_source(self.original, node.skeleton.name,
                                            node.body or "...", imports, node.extra)
                own = pycode.find_function(source, node.skeleton.name).source
                code = "\n\n\n".join([own, *(e.strip("\n") for e in node.extra)])
            else:
                source = code = layout.module_source(node.path, node.skeleton, node.body, imports,
                                                     node.extra)
            node.sources = (key, source, code)
        return node.sources[1], node.sources[2]

    def _files(self, node: Node) -> dict[str, str]:
        """The agent's files as its code and tests stand: path -> text."""
        source = self._own_source(node)
        pycode.check_parses(source, node.files.module)
        files = {node.files.module: source}
        if node.tests:
            files[node.files.tests] = layout.test_source(node.skeleton.name, node.files, node.tests,
                                                         node.test_imports,
                                                         answers.defined_names(node.extra))
        return files

    def _write(self, node: Node) -> None:
        """The agent's files into its workspace, for its tests; its next commit takes them."""
        assert node.workspace is not None
        node.written = self._files(node)
        for path, text in node.written.items():
            target = node.workspace / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")

    def _code(self, node: Node) -> str:
        """The agent's own code: its module, or for the root its function in the user's file."""
        return self._sources(node)[1]

    def _test(self, node: Node) -> None:
        if not node.tests or node.workspace is None:
            node.result = NOT_RUN
            return
        self._set(node, "testing")
        with self._test_slots:
            node.result = self.executor.run_tests(
                node.workspace, [node.files.tests],
                python_path=[node.workspace / node.files.import_root],
                timeout_s=self.settings.test_timeout,
                memory_mb=self.settings.test_memory_mb).masked(self._secrets)
        self._set(node, "tested")

    def _author(self, node: Node) -> Author:
        return Author(name=runformat.author_name(node.path),
                      email=runformat.author_email(node.path))

    def _target_text(self) -> str:
        return runformat.target(self.target_.file, self.target_.function)

    def _trailers(self, node: Node, phase: str, usage: Usage, tests: str | None = None,
                  model: str | None = None) -> dict[str, str]:
        """`model` is the name the server answered with, when a model call made this commit."""
        return runformat.CommitTrailers(
            run=self.run_id, agent=node.path, role=node.role, phase=phase, round=node.rounds,
            model=model or self.model.name, tokens=usage.total, estimated=usage.estimated,
            parent=node.parent.path if node.parent else None,
            target=None if node.parent else self._target_text(), tests=tests).write()

    def _commit(self, node: Node, step: Step, *, phase: str, subject: str, body: str = "",
                tested: bool = True, record: dict | None = None) -> None:
        """Every model step is a commit, even one that changed nothing: it is part of the memory.

        Its transcript note is written before the branch moves, so resume always finds it.
        """
        tests = node.result.summary() if tested else None
        note = runformat.note_line(runformat.step_record(
            agent=node.path, task=step.task, phase=phase, round=node.rounds, model=step.model,
            tests=tests, usage=step.usage.record(), messages=step.messages,
            failure=failures.reason(node.result) if tested else None, **(record or {})))
        node.held = self.repo.commit_files(
            node.branch, node.written, subject=subject,
            body=runformat.step_body(step.reflection, body),
            trailers=self._trailers(node, phase, step.usage, tests, step.model),
            author=self._author(node), allowed_paths=self._owned(node), allow_empty=True, note=note)

    def _note(self, sha: str | None, record: dict) -> None:
        """Notes are JSON lines, so a step that changed nothing still joins its commit's note."""
        if sha is None:
            return
        self.repo.append_note(sha, runformat.note_line(record))

    @contextmanager
    def _workspace(self, node: Node) -> Iterator[Path]:
        """The agent's workspace: a folder another agent gave back (the last one, most likely a
        sibling's, so little differs), else a new one."""
        if node.workspace is None:
            with self._spare_lock:
                path = (self._spare.pop() if self._spare
                        else self.repo.workspace(self.run_id, str(next(self._workspace_numbers))))
            tip = self.repo.branch_sha(node.branch)
            assert tip is not None
            self.repo.check_out(tip, self.checkout, path)
            node.workspace, node.held = path, tip
        yield node.workspace

    def _sync(self, node: Node) -> None:
        """Bring the workspace to the branch's tip after a merge moved it: only what changed."""
        tip = self.repo.branch_sha(node.branch)
        if node.workspace is not None and tip is not None and tip != node.held:
            self.repo.check_out(tip, self.checkout, node.workspace)
            node.held = tip

    def _retire(self, node: Node) -> None:
        """A child whose work is done gives its workspace back for the next agent to take (a
        Mother's comment or a conflict makes it take one again): a run holds no more workspaces
        than it has agents working at once."""
        if node.parent is not None:
            self._release(node)

    def _release(self, node: Node) -> None:
        if node.workspace is not None:
            with self._spare_lock:
                self._spare.append(node.workspace)
            node.workspace = node.held = None

    # ---- state and events ------------------------------------------------------------------

    def _settle(self, node: Node) -> None:
        """An agent's work is done: its final state, and its workspace given back."""
        self._set(node, "passed" if node.result.ok else node.state if node.error else "failed")
        self._retire(node)

    def _fail(self, node: Node, exc: Exception) -> None:
        node.error = str(exc)
        step = getattr(exc, "step", None)
        # The unusable answers, for the transcript: they cost tokens, and they are the why.
        answers = {} if not isinstance(step, Step) else dict(
            asked=step.task, phase="modify" if node.generated else "generate", round=node.rounds,
            model=step.model, usage=step.usage.record(), messages=list(step.messages))
        self._note(self.repo.branch_sha(node.branch),
                   runformat.error_record(node.path, node.error, **answers))
        if isinstance(exc, (BudgetExhausted, ModelError)):
            with self._lock:
                self._halt = self._halt or str(exc)
            self._set(node, "stopped")
        else:
            self._set(node, "failed")

    def _halted(self, node: Node) -> bool:
        if self._halt and node.state not in ("passed", "failed"):
            self._set(node, "stopped")
        return self._halt is not None

    def _set(self, node: Node, state: str) -> None:
        node.state = state
        now = time.monotonic()
        if node.began is None and state != "waiting":
            node.began = now
        node.ended = now if state in ("passed", "failed", "stopped") else None
        self.on_event(self._view(node))

    def _view(self, node: Node) -> AgentView:
        source = self._code(node) if node.body else ""
        return AgentView(run=self.run_id, path=node.path, role=node.role,
                         function=node.skeleton.name, file=node.files.module,
                         test_file=node.files.tests, branch=node.branch, state=node.state,
                         tests=node.result.summary(), passed=node.result.passed,
                         rounds=node.rounds, lines=pycode.code_lines(source),
                         tokens=self.ledger.for_agent(node.path).total, error=node.error,
                         why=self._why(node),
                         seconds=((node.ended or time.monotonic()) - node.began
                                  if node.began is not None else 0.0))

    def _why(self, node: Node) -> str | None:
        if node.error:
            return node.error
        return failures.reason(node.result) if node.state == "failed" else None

    def _summary(self, root: Node, seconds: float) -> RunSummary:
        views = tuple(self._view(n) for n in sorted(self.nodes, key=lambda n: n.path))
        if self._halt:
            state, message = "stopped", f"the run stopped early: {self._halt}"
        elif root.result.ok:
            state, message = "done", f"all tests pass; review the branch {root.branch}"
        elif root.error:
            state, message = "failed", root.error
        else:
            why = failures.reason(root.result)
            state, message = "failed", (f"{root.skeleton.name} still fails its tests "
                                        f"({root.result.summary()})" + (f": {why}" if why else ""))
        return RunSummary(run=self.run_id, target=self.target_, branch=root.branch, base=self.base,
                          state=state, message=message, agents=views,
                          depth=1 + max(n.depth for n in self.nodes),
                          lines=sum(v.lines for v in views),
                          tests_passed=sum(v.passed for v in views), usage=self.ledger.total,
                          seconds=seconds)
