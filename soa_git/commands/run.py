"""`soa-git run`: grow an agent tree for one skeleton, or for every skeleton in a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import config, history
from ..errors import ConfigError, TargetError
from ..gitrepo import GitRepo
from ..llm import ChatModel, ReplayModel, TokenLedger
from ..organizer import AgentView, Organizer, RunSummary, Target, find_targets


REPLAY = "replay:"


def split_target(spec: str) -> tuple[str, str | None]:
    """`path.py::func` -> (path, func); `path.py` -> (path, None)."""
    path, _, function = spec.partition("::")
    if not path.endswith(".py"):
        raise TargetError(f"{path} is not a Python file "
                          "(expected path/to/file.py or file.py::function)")
    return path, function or None


def open_model(settings: config.Settings, ledger: TokenLedger, environ: Mapping[str, str],
               repo: GitRepo) -> ChatModel:
    """The endpoint of the settings; or, for `replay:RUN`, that run's recorded answers."""
    if settings.model.startswith(REPLAY):
        recorded = history.load_run(repo, settings.model.removeprefix(REPLAY))
        return ReplayModel(recorded.run, {a.path: history.transcript(a) for a in recorded.agents},
                           ledger)
    key = settings.api_key(environ)
    if key is None:
        raise ConfigError(f"no API key: set the environment variable {settings.api_key_env} "
                          "(a local server that needs no key accepts any value)")
    # Imported here, not at the top: `openai` takes longer to import than the rest of soa-git,
    # and only commands that call a model need it.
    from ..openai_chat import OpenAIChat
    return OpenAIChat(model=settings.model, base_url=settings.base_url, api_key=key, ledger=ledger,
                      max_concurrency=settings.jobs, timeout_s=settings.request_timeout,
                      temperature=settings.temperature)


def run(spec: str, *, cwd: Path, flags: Mapping[str, Any],
        on_event: Callable[[AgentView], None] = lambda view: None,
        environ: Mapping[str, str] | None = None) -> list[RunSummary]:
    environ = os.environ if environ is None else environ
    repo = GitRepo.open(cwd)
    settings = config.resolve(repo.root, flags, environ)
    path, function = split_target(spec)
    # Every target is checked before the first run starts, so bad input changes nothing.
    found = targets(repo, (cwd / path).resolve(), function)
    return run_targets(repo, settings, found, environ, on_event)


def targets(repo: GitRepo, file: Path, function: str | None) -> list[Target]:
    """`function` of `file`, or all of the file's skeletons."""
    return find_targets(repo, file, [function] if function else None)


def budgeted_model(settings: config.Settings, environ: Mapping[str, str],
                   repo: GitRepo) -> tuple[TokenLedger, ChatModel]:
    """The token ledger holding the settings' budgets, and the model that charges it."""
    ledger = TokenLedger(settings.run_token_budget, settings.agent_token_budget)
    return ledger, open_model(settings, ledger, environ, repo)


def run_targets(repo: GitRepo, settings: config.Settings, targets: list[Target],
                environ: Mapping[str, str],
                on_event: Callable[[AgentView], None]) -> list[RunSummary]:
    """One run per target, in order, sharing the model and its budgets."""
    ledger, model = budgeted_model(settings, environ, repo)
    return [Organizer(repo, settings, model, ledger, on_event).run(target) for target in targets]
