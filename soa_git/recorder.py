"""What a run writes into git, agent by agent: its commits with their author and trailers, and the
note records beside them. The wording is runformat's; this module says which record goes where.
"""

from __future__ import annotations

from typing import Any

from . import failures, runformat
from .agents import Step
from .gitrepo import Author, GitRepo
from .llm import Usage
from .node import Node
from .targets import Target


class Recorder:
    def __init__(self, repo: GitRepo, run_id: str, model: str, target: Target):
        self.repo = repo
        self.run_id = run_id
        self.model = model          # the name asked for; a step's commit names the one answering
        self.target = runformat.target(target.file, target.function)

    def author(self, node: Node) -> Author:
        return Author(name=runformat.author_name(node.path),
                      email=runformat.author_email(node.path))

    def trailers(self, node: Node, phase: str, usage: Usage, tests: str | None = None,
                 model: str | None = None) -> dict[str, str]:
        """`model` is the name the server answered with, when a model call made this commit."""
        return runformat.CommitTrailers(
            run=self.run_id, agent=node.path, role=node.role, phase=phase,
            round=node.progress.rounds, model=model or self.model, tokens=usage.total,
            estimated=usage.estimated, parent=node.parent.path if node.parent else None,
            target=None if node.parent else self.target, tests=tests).write()

    def note(self, sha: str | None, record: dict) -> None:
        """Notes are JSON lines, so a step that changed nothing still joins its commit's note."""
        if sha is None:
            return
        self.repo.append_note(sha, runformat.note_line(record))

    def start(self, root: Node, base: str, settings: dict[str, Any]) -> str:
        """The run's first commit, on the root's new branch, with the settings it runs with."""
        return self.repo.start_branch(
            root.branch.name, base, author=self.author(root),
            subject=runformat.start_subject(self.run_id, self.target),
            trailers=self.trailers(root, "start", Usage()),
            note=runformat.note_line(runformat.start_record(root.path, settings)))

    def skeleton(self, node: Node, files: dict[str, str]) -> None:
        """A child's first commit: the skeleton its Mother wrote, on a branch from her fork."""
        assert node.parent is not None
        self.repo.commit_files(
            node.branch.name, files, start=node.branch.fork,
            subject=runformat.skeleton_subject(node.name, node.parent.path),
            body=runformat.SKELETON_BODY, trailers=self.trailers(node, "generate", Usage()),
            author=self.author(node), allowed_paths=node.owned())

    def step(self, node: Node, step: Step, *, phase: str, subject: str, body: str = "",
             tested: bool = True, record: dict | None = None) -> str | None:
        """Every model step is a commit of the files as last written, even one that changed
        nothing: it is part of the memory.

        Its transcript note is written before the branch moves, so resume always finds it.
        """
        result = node.progress.result
        tests = result.summary() if tested else None
        note = runformat.note_line(runformat.step_record(
            agent=node.path, task=step.task, phase=phase, round=node.progress.rounds,
            model=step.model, tests=tests, usage=step.usage.record(), messages=step.messages,
            failure=failures.reason(result) if tested else None, **(record or {})))
        return self.repo.commit_files(
            node.branch.name, node.workspace.written, subject=subject,
            body=runformat.step_body(step.reflection, body),
            trailers=self.trailers(node, phase, step.usage, tests, step.model),
            author=self.author(node), allowed_paths=node.owned(), allow_empty=True, note=note)

    def tests(self, node: Node, sha: str | None) -> None:
        """A test run that no step made (after merges) joins the note of `sha`."""
        self.note(sha, runformat.test_record(node.path, node.progress.result.summary(),
                                             failures.reason(node.progress.result)))

    def error(self, node: Node, step: Step | None) -> None:
        """An agent's error on its tip, with the unusable answers that caused it: they cost
        tokens, and they are the why."""
        progress = node.progress
        answers = {} if step is None else dict(
            asked=step.task, phase="modify" if progress.generated else "generate",
            round=progress.rounds, model=step.model, usage=step.usage.record(),
            messages=list(step.messages))
        self.note(self.repo.branch_sha(node.branch.name),
                  runformat.error_record(node.path, progress.error, **answers))

    def merge(self, mother: Node, child: Node, tip: str) -> str:
        """A --no-ff merge of the child's `tip` into its Mother's branch."""
        tests = child.progress.result.summary()
        return self.repo.merge(
            mother.branch.name, child.branch.name, author=self.author(mother),
            subject=runformat.merge_subject(child.name, mother.name),
            trailers=self.trailers(mother, "merge", Usage(), tests=tests),
            note=runformat.note_line(runformat.merge_record(mother.path, child.path, tip, tests)),
            base=child.branch.fork)

    def catch_up(self, child: Node, mother: Node) -> None:
        """The child's files on its Mother's tip, after their merge conflicted."""
        self.repo.catch_up(child.branch.name, mother.branch.name, child.owned(),
                           subject=runformat.redo_subject(child.name, mother.name),
                           trailers=self.trailers(child, "modify", Usage()),
                           author=self.author(child))

    def end(self, root: Node, *, state: str, message: str, usage: Usage, seconds: float) -> None:
        """The end record on the root's tip is how history tells a finished run from a killed
        one."""
        self.note(self.repo.branch_sha(root.branch.name), runformat.end_record(
            root.path, state=state, message=message, usage=usage.record(), seconds=seconds))
