"""The run: grows the agent tree, schedules agents in parallel, runs the phases, merges.

Generation is top-down. A run's start commit is written before its first model call, so every
run that spent a model call is a run: unusable answers, Ctrl-C and kills included, it is listed,
its transcript kept and `resume` knows it; an endpoint that never answered leaves nothing. Each
agent then
works on its own branch in its own workspace; children run in parallel threads; a Mother merges a
child only after the child's tests pass. Modification is bottom-up: leaves repair themselves from
test feedback, Mothers revise their own code and comment on the children they implicate.

An agent's live state is a `Node` (node.py); what the run writes into git is the `Recorder`'s
(recorder.py), its workspaces the `WorkspacePool`'s (workspace_pool.py), and what the outside
sees of it `summary.py`'s.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Callable

from . import examples, layout, pycode, runformat, summary
from .agents import (Agent, ChildStatus, Plan, Step, UnusableAnswers, parse_plan,
                     parse_revision, prose)
from .config import Settings
from .errors import AnswerError, BudgetExhausted, ModelError
from .executor import LOCAL, Executor
from .gitrepo import GitRepo, MergeConflict
from .llm import ChatModel, TokenLedger
from .node import NOT_RUN, Branch, Node
from .recorder import Recorder
from .summary import AgentView, RunSummary
from .targets import Target
from .workspace_pool import WorkspacePool

# Up to this many siblings, a child sees all their skeletons; beyond, only those it names.
SHOWN_SIBLINGS = 8


@dataclass(frozen=True)
class Recording:
    """What resume needs of a run, as history reads it from git."""

    run: str
    target: Target
    base: str
    steps: dict[str, tuple[dict, ...]]   # agent path -> its step records, oldest first


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
        self._halt: str | None = None       # why the whole run stops early
        self._lock = threading.Lock()
        self.nodes: list[Node] = []
        self._modules: dict[str, bool] = {}     # module -> importable by generated code

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
                                  else self.settings.child_max_tokens),
                      importable=self._importable)
        node = Node(path=path, skeleton=skeleton, files=files, agent=agent, parent=parent,
                    branch=Branch(runformat.branch(self.run_id, path)))
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
        start = self.record.start(root, self.base, self._recorded_settings())
        self.repo.lock_run(self.run_id)
        try:
            self.executor.start()
            return self._complete(root, lambda: self._first(root), started)
        except ModelError:
            # The endpoint never answered and nothing was spent: as if no run had started.
            self.repo.take_back_start(root.branch.name, start, notes)
            raise
        finally:
            self.repo.unlock_run(self.run_id)

    def _first(self, root: Node) -> None:
        self._start(root)
        if self._halt and not root.progress.generated and self.ledger.total.total == 0:
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
        self.record = Recorder(self.repo, self.run_id, self.model.name, target)
        self.original = self.repo.read_file(base, target.file) or ""
        root = self._node(target.function, pycode.find_function(self.original, target.function),
                          None)
        root.code.tests = list(root.agent.examples)
        import_root = root.files.import_root
        self.workspaces = WorkspacePool(self.repo, self.run_id, layout.workspace_folders(
            target.file, import_root, self.repo.subfolders(base, import_root),
            lambda folders, files: self.repo.import_lines(base, folders, files)))
        return root

    def _importable(self, module: str) -> bool:
        """Whether generated code may import `module`: it is in the standard library, or
        installed where the agents' tests run (soa-git's own Python; unless the `imports`
        setting says stdlib), or one of the project's modules beside the target."""
        # A cache of the instance's own: functools.lru_cache on a method would keep every
        # Organizer, its repository and that one's `cat-file` process alive for good.
        if module not in self._modules:
            self._modules[module] = self._find_module(module)
        return self._modules[module]

    def _find_module(self, module: str) -> bool:
        if module in sys.stdlib_module_names:
            return True
        try:
            if self.settings.imports == "installed" and importlib.util.find_spec(module):
                return True
        except (ImportError, ValueError):   # a broken installed package: it cannot be imported
            return False
        root = self.nodes[0].files.import_root
        folder = f"{root}/{module}" if root else module
        return (module in self.repo.subfolders(self.base, root)
                or self.repo.file_exists(self.base, f"{folder}.py"))

    def _complete(self, root: Node, work: Callable[[], None], started: float) -> RunSummary:
        try:
            work()
        finally:
            for node in self.nodes:
                self.workspaces.give_back(node)
            self.repo.remove_workspaces(self.run_id)
        return self._finish(root, time.monotonic() - started)

    def _finish(self, root: Node, seconds: float) -> RunSummary:
        result = self._summary(root, seconds)
        self.record.end(root, state=result.state, message=result.message, usage=result.usage,
                        seconds=seconds)
        return result

    # ---- generation: one agent's first answer, and everything after it ---------------------

    def _start(self, node: Node) -> None:
        """Branch, the skeleton commit (children only), the first answer; each skipped if done."""
        try:
            mother = node.parent
            if mother is not None:
                node.branch.fork = (mother.branch.split or self.repo.branch_sha(mother.branch.name)
                                    or self.base)
                self.record.skeleton(node, self._files(node))
            if self._halted(node):
                self._retire(node)
                return
            self._set(node, "thinking")
            step, plan = node.agent.generate(split=self._may_split(node),
                                             tests=tuple(node.code.tests))
        except (AnswerError, ModelError, BudgetExhausted) as exc:
            if isinstance(exc, UnusableAnswers) and exc.plan and not exc.plan.children:
                self._keep_untested(node, exc)
            else:
                self._fail(node, exc)
            self._retire(node)
            return
        self._develop(node, step, plan)

    def _keep_untested(self, node: Node, exc: UnusableAnswers) -> None:
        """Answers with code but never a usable test, for a docstring without examples: there
        is nothing to judge the code by, so it goes on the branch untested (the user can read
        it; it is the model's work) and the agent fails, saying so."""
        self.workspaces.take(node)
        self._adopt_plan(node, exc.plan)
        self._write(node)
        self._commit(node, exc.step, phase="generate",
                     subject=runformat.implement_subject(node.name), tested=False)
        node.progress.error = f"{exc}; its code is on the branch, untested"
        self.record.error(node, None)
        self._set(node, "failed")

    def _develop(self, node: Node, step: Step, plan: Plan) -> None:
        self.workspaces.take(node)
        self._adopt_plan(node, plan)
        self._write(node)
        if node.children:
            self._commit(node, step, phase="generate", subject=runformat.split_subject(
                node.name, (c.name for c in node.children)), tested=False)
            node.branch.split = node.workspace.held
            self._set(node, "waiting")  # for her children
        else:
            self._test(node)
            self._commit(node, step, phase="generate",
                         subject=runformat.implement_subject(node.name))
        self._carry_on(node)
        self._settle(node)

    def _adopt_plan(self, node: Node, plan: Plan) -> None:
        """A first answer: the agent's code and tests, and for a Mother her children."""
        node.role = "mother" if plan.children else "child"
        if plan.children:
            self._adopt_children(node, plan)
        node.code.adopt(plan, node.name, adopt_tests=True)
        node.progress.generated = True

    def _continue(self, node: Node) -> None:
        """Carry an agent on from whatever its branch already holds."""
        if not node.progress.generated:
            self._start(node)
            return
        self.workspaces.take(node)
        self._carry_on(node)
        self._settle(node)

    def _carry_on(self, node: Node) -> None:
        """Children first (in parallel), then merging and the modification phase."""
        if node.children:
            # Merged children too: their tests run again, so a resumed run shows their true
            # state and results instead of leaving them `waiting` (a merged tip merges no more).
            self._in_parallel(self._continue_and_merge, node.children)
            self._merge_and_test(node)
            self._answer_comments(node, {c.name: c.progress.pending_comment
                                         for c in node.children if c.progress.pending_comment})
            self._modify_mother(node)
        else:
            if node.progress.result is NOT_RUN:
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
            child.code.tests = [*child.agent.examples, *plan.tests.get(skeleton.name, ())]
            child.code.test_imports = list(plan.imports)
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
        """max_depth counts levels, as in the paper: 2 is a Mother over Children. A short
        contract is not offered the split: a small model asked to choose, with the longer
        decompose prompt, writes worse code for a function it should have just written."""
        return (node.depth + 1 < self.settings.max_depth
                and examples.description_lines(node.skeleton.docstring)
                >= self.settings.split_min_lines)

    # ---- resuming: an agent's state read back from its recorded steps ----------------------

    def _restore(self, node: Node, recording: Recording) -> None:
        progress = node.progress
        for record in recording.steps.get(node.path, ()):
            task = record["task"]
            if task == runformat.ERROR:  # unusable answers: they changed nothing
                continue
            progress.rounds = int(record.get("round", progress.rounds))
            answer = runformat.answer(record)
            sent: dict[str, str] = {}
            if task in ("decompose", "implement"):
                self._adopt_plan(node, parse_plan(
                    answer, node.name, require_tests=False,
                    max_children=sys.maxsize if task == "decompose" else 0,
                    examples=node.agent.examples))
            elif task in ("repair", "afresh") and "unusable" in record:
                node.agent.unusable(record["unusable"])
                continue
            elif task in ("repair", "afresh") and "kept_round" in record:
                node.agent.discarded(record["attempt_tests"], str(record.get("tests")))
            elif task in ("repair", "afresh"):
                node.code.adopt(parse_plan(answer, node.name, max_children=0,
                                           require_tests=False), node.name, adopt_tests=False)
                progress.best_round = int(record.get("round", progress.rounds))
            elif task == "revise":
                revision = parse_revision(answer, node.name, {c.name for c in node.children})
                sent = revision.comments
                if revision.plan:
                    node.code.adopt(revision.plan, node.name, adopt_tests=False)
                for child in node.children:
                    child.progress.pending_comment = revision.comments.get(
                        child.name, child.progress.pending_comment)
            if progress.pending_comment and record.get("comment") == progress.pending_comment:
                progress.pending_comment = None
            node.agent.remember(tests=str(record.get("tests")), reflection=prose(answer),
                                received=record.get("comment"), sent=sent)
        mother_tip = self.repo.branch_sha(node.branch.name)
        for child in node.children:
            self._restore(child, recording)
            tip = self.repo.branch_sha(child.branch.name)
            if (child.progress.generated and tip and mother_tip
                    and self.repo.is_ancestor(tip, mother_tip)):
                child.branch.merged_tip = tip

    # ---- modification phase ----------------------------------------------------------------

    def _repair(self, node: Node, comment: str | None = None) -> None:
        """Reflexion-style self-repair: reflect on the failures, rewrite, test; bounded by rounds.

        A Mother's comment opens a new series of rounds, even for an agent whose tests pass.
        """
        progress = node.progress
        limit = (progress.rounds + self.settings.repair_rounds if comment
                 else self.settings.repair_rounds)
        while progress.rounds < limit:
            if (progress.result.ok and comment is None) or self._halted(node):
                return
            self._set(node, "repairing")
            unusable = None
            # The first rounds of an agent that implements its function itself may start afresh.
            fresh = (comment is None and not node.children
                     and progress.rounds < self.settings.fresh_rounds)
            try:
                step, plan = (node.agent.afresh(tuple(node.code.tests), progress.result,
                                                progress.rounds + 1) if fresh else
                              node.agent.repair(self._code(node), progress.result,
                                                comment=comment))
            except UnusableAnswers as exc:
                # Unusable answers cost their round, not the agent: the round is committed with
                # them, the code stays, and the next round asks again, knowing why.
                step, plan, unusable = exc.step, None, exc.reason
                node.agent.unusable(unusable)
            except (AnswerError, ModelError, BudgetExhausted) as exc:
                self._fail(node, exc)
                return
            progress.rounds += 1
            kept = None
            record: dict = {"comment": comment} if comment else {}
            if plan is None:
                kept = progress.best_round
                record = {**record, "kept_round": kept, "unusable": unusable}
            else:
                best_code, best_result = replace(node.code), progress.result
                node.code.adopt(plan, node.name, adopt_tests=False)
                self._write(node)
                self._test(node)
                if (comment is None
                        and examples.score(progress.result) < examples.score(best_result)):
                    # A worse rewrite is remembered (the note keeps its answer) but never
                    # replaces the better code on the branch: the commit holds the best
                    # attempt's files.
                    kept = progress.best_round
                    record = {"kept_round": kept, "attempt_tests": progress.result.summary()}
                    node.agent.discarded(progress.result.summary(), best_result.summary())
                    node.code, progress.result = best_code, best_result
                    self._write(node)
                else:
                    progress.best_round = progress.rounds
            self._commit(node, step, phase="modify",
                         subject=runformat.repair_subject(node.name, progress.rounds,
                                                          answering=comment is not None,
                                                          kept=kept, unusable=plan is None,
                                                          fresh=fresh),
                         body=runformat.received_body(comment) if comment else "",
                         record=record)
            progress.pending_comment = comment = None

    def _modify_mother(self, node: Node) -> None:
        progress = node.progress
        while progress.rounds < self.settings.repair_rounds:
            if progress.result.ok or self._halted(node):
                return
            self._set(node, "revising")
            statuses = tuple(ChildStatus(c.name, pycode.skeleton_text(c.skeleton),
                                         c.progress.result.summary() if c.branch.merged_tip
                                         else f"{c.progress.state}: {c.progress.result.summary()}")
                             for c in node.children)
            try:
                step, revision = node.agent.revise(self._code(node), progress.result, statuses)
            except (AnswerError, ModelError, BudgetExhausted) as exc:
                self._fail(node, exc)
                return
            progress.rounds += 1
            if revision.plan:
                node.code.adopt(revision.plan, node.name, adopt_tests=False)
                self._write(node)
            self._test(node)
            self._commit(node, step, phase="modify",
                         subject=runformat.revise_subject(node.name, progress.rounds,
                                                          revision.comments),
                         body=runformat.sent_body(revision.comments))
            self._answer_comments(node, revision.comments)

    def _answer_comments(self, mother: Node, comments: dict[str, str]) -> None:
        """The commented children rewrite in parallel; whoever then passes is merged again."""
        commented = [c for c in mother.children if c.name in comments]

        def answer(child: Node) -> None:
            self.workspaces.take(child)
            self._repair(child, comments[child.name])
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
        tip = self.repo.branch_sha(child.branch.name)
        if child.progress.result.ok and tip is not None and tip != child.branch.merged_tip:
            with mother.branch.merging:
                self._accept(mother, child, tip)

    def _merge_and_test(self, mother: Node) -> None:
        """Merge every child whose newest work passes and is not merged yet, then test the whole."""
        self._set(mother, "merging")
        for child in mother.children:
            self._merge_if_passing(child)
        self.workspaces.sync(mother)
        self._test(mother)
        self.record.tests(mother, self.repo.branch_sha(mother.branch.name))

    def _accept(self, mother: Node, child: Node, tip: str) -> None:
        """A --no-ff merge of the child's `tip`; on a conflict the child first redoes its work
        on the new base, and its new tip is merged."""
        try:
            self.record.merge(mother, child, tip)
        except MergeConflict as conflict:
            self.workspaces.take(child)
            self.record.catch_up(child, mother)
            # Its history now holds hers since its fork: git finds the merge base.
            child.branch.fork = None
            self.workspaces.sync(child)
            self._test(child)
            tip = self.repo.branch_sha(child.branch.name)
            self.record.tests(child, tip)
            result = child.progress.result
            if not result.ok:
                child.progress.error = (f"{conflict}; on the new base its tests fail "
                                        f"({result.summary()})")
                self._set(child, "failed")
                return
            self.record.merge(mother, child, tip)
        child.branch.merged_tip = child.branch.fork = tip

    # ---- one agent's files, tests and commits ----------------------------------------------

    def _files(self, node: Node) -> dict[str, str]:
        return node.file_texts(self.original)

    def _code(self, node: Node) -> str:
        return node.own_code(self.original)

    def _write(self, node: Node) -> None:
        self.workspaces.write(node, self._files(node))

    def _test(self, node: Node) -> None:
        workspace = node.workspace.path
        if not node.code.tests or workspace is None:
            node.progress.result = NOT_RUN
            return
        self._set(node, "testing")
        with self._test_slots:
            node.progress.result = self.executor.run_tests(
                workspace, [node.files.tests],
                python_path=[workspace / node.files.import_root],
                timeout_s=self.settings.test_timeout,
                memory_mb=self.settings.test_memory_mb).masked(self._secrets)
        self._set(node, "tested")

    def _commit(self, node: Node, step: Step, *, phase: str, subject: str, body: str = "",
                tested: bool = True, record: dict | None = None) -> None:
        """The step's commit of the files as last written; the workspace now holds it."""
        node.workspace.held = self.record.step(node, step, phase=phase, subject=subject,
                                               body=body, tested=tested, record=record)

    def _retire(self, node: Node) -> None:
        """A child whose work is done gives its workspace back for the next agent to take (a
        Mother's comment or a conflict makes it take one again): a run holds no more workspaces
        than it has agents working at once."""
        if node.parent is not None:
            self.workspaces.give_back(node)

    # ---- state and events ------------------------------------------------------------------

    def _settle(self, node: Node) -> None:
        """An agent's work is done: its final state, and its workspace given back."""
        progress = node.progress
        self._set(node, "passed" if progress.result.ok
                  else progress.state if progress.error else "failed")
        self._retire(node)

    def _fail(self, node: Node, exc: Exception) -> None:
        node.progress.error = str(exc)
        step = getattr(exc, "step", None)
        self.record.error(node, step if isinstance(step, Step) else None)
        if isinstance(exc, (BudgetExhausted, ModelError)):
            with self._lock:
                self._halt = self._halt or str(exc)
            self._set(node, "stopped")
        else:
            self._set(node, "failed")

    def _halted(self, node: Node) -> bool:
        if self._halt and node.progress.state not in ("passed", "failed"):
            self._set(node, "stopped")
        return self._halt is not None

    def _set(self, node: Node, state: str) -> None:
        node.progress.enter(state)
        self.on_event(self._view(node))

    def _view(self, node: Node) -> AgentView:
        return summary.view(self.run_id, node, self._code(node) if node.code.body else "",
                            self.ledger.for_agent(node.path).total)

    def _summary(self, root: Node, seconds: float) -> RunSummary:
        views = [self._view(n) for n in sorted(self.nodes, key=lambda n: n.path)]
        return summary.summarize(self.run_id, self.target_, self.base, root, views,
                                 depth=1 + max(n.depth for n in self.nodes), halt=self._halt,
                                 usage=self.ledger.total, seconds=seconds)
