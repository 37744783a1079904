"""`soa-git resume`: continue a run that was killed or stopped, from what its branches hold."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import config, history
from ..errors import RepositoryError
from ..executor import open_executor
from ..gitrepo import GitRepo
from ..llm import Notice, Usage
from ..organizer import Organizer, Recording
from ..summary import AgentView, RunSummary
from ..targets import Target
from ..weights import ProgressCallback, quiet
from .run import budgeted_model, ships_calls

RESUMABLE = {"interrupted", "stopped"}


def recording(record: history.RunRecord) -> Recording:
    """Each agent's own step records, oldest first, from the notes on its commits."""
    file, _, function = record.target.partition("::")
    steps = {agent.path: tuple(history.transcript(agent)) for agent in record.agents}
    return Recording(run=record.run, target=Target(file, function), base=record.base, steps=steps)


def resume(run: str, *, cwd: Path, flags: Mapping[str, Any],
           on_event: Callable[[AgentView | Notice], None] = lambda view: None,
           environ: Mapping[str, str] | None = None,
           on_progress: ProgressCallback = quiet) -> RunSummary:
    environ = os.environ if environ is None else environ
    repo = GitRepo.open(cwd)
    settings = config.resolve(repo.root, flags, environ)
    record = history.load_run(repo, run)
    if record.state not in RESUMABLE:
        raise RepositoryError(f"run {run} is {record.state}, so there is nothing to resume"
                              + ("" if record.state == "running" else f" ({record.message})"))
    executor = open_executor(settings)
    try:
        with budgeted_model(settings, environ, repo, on_progress,
                            on_notice=on_event) as (ledger, model):
            # What the run spent before, so that its total and its budgets count the whole run.
            for agent in record.agents:
                for step in history.transcript(agent):
                    ledger.record(agent.path, Usage.from_record(step.get("usage") or {}))
            with executor.placed(model, ships_calls(settings)) as (placed, placed_model):
                return Organizer(repo, settings, placed_model, ledger, on_event,
                                 placed).resume(recording(record))
    finally:
        executor.close()
