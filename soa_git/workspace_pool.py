"""The run's workspaces: folders handed from agent to agent, so that a run holds no more of them
than it has agents working at once, and moving one to another agent's commit writes only what
differs."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Sequence

from .gitrepo import GitRepo
from .node import Node


class WorkspacePool:
    def __init__(self, repo: GitRepo, run_id: str, folders: Sequence[str]):
        self.repo = repo
        self.run_id = run_id
        self.folders = folders      # what a workspace holds: see layout.workspace_folders
        self._spare: list[Path] = []
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)

    def take(self, node: Node) -> Path:
        """The agent's workspace, holding its branch's tip: one another agent gave back (the
        last one, most likely a sibling's, so little differs), else a new one."""
        workspace = node.workspace
        if workspace.path is None:
            with self._lock:
                path = (self._spare.pop() if self._spare
                        else self.repo.workspace(self.run_id, str(next(self._numbers))))
            tip = self.repo.branch_sha(node.branch.name)
            assert tip is not None
            self.repo.check_out(tip, self.folders, path)
            workspace.path, workspace.held = path, tip
        return workspace.path

    def sync(self, node: Node) -> None:
        """Bring the workspace to the branch's tip after a merge moved it: only what changed."""
        tip = self.repo.branch_sha(node.branch.name)
        workspace = node.workspace
        if workspace.path is not None and tip is not None and tip != workspace.held:
            self.repo.check_out(tip, self.folders, workspace.path)
            workspace.held = tip

    def give_back(self, node: Node) -> None:
        workspace = node.workspace
        if workspace.path is not None:
            with self._lock:
                self._spare.append(workspace.path)
            workspace.path = workspace.held = None

    def write(self, node: Node, files: dict[str, str]) -> None:
        """The agent's files into its workspace, for its tests; its next commit takes them."""
        workspace = node.workspace
        assert workspace.path is not None
        workspace.written = files
        for path, text in files.items():
            target = workspace.path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
