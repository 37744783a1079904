"""`soa-git run`: grow an agent tree for one skeleton, for every skeleton in a file, or for every
skeleton in several files or a directory (`parallel_runs` of them at once)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import config, history, pycode
from ..errors import ConfigError, TargetError
from ..executor import Executor, open_executor
from ..gitrepo import GitRepo
from ..llm import ChatModel, ReplayModel, TokenLedger
from ..organizer import (AgentView, Organizer, RunSummary, Target, committed_source,
                         find_targets)


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


def run(specs: str | Sequence[str], *, cwd: Path, flags: Mapping[str, Any],
        on_event: Callable[[AgentView], None] = lambda view: None,
        environ: Mapping[str, str] | None = None) -> list[RunSummary]:
    environ = os.environ if environ is None else environ
    repo = GitRepo.open(cwd)
    settings = config.resolve(repo.root, flags, environ)
    # Every target is checked before the first run starts, so bad input changes nothing.
    targets: list[Target] = []
    for spec in [specs] if isinstance(specs, str) else specs:
        targets.extend(t for t in targets_of(repo, cwd, spec) if t not in targets)
    return run_targets(repo, settings, targets, environ, on_event)


def targets_of(repo: GitRepo, cwd: Path, spec: str) -> list[Target]:
    """The targets a command-line argument names: one skeleton, every skeleton of a file, or
    every skeleton of the committed Python files under a directory."""
    folder = (cwd / spec).resolve()
    if "::" not in spec and folder.is_dir():
        if not folder.is_relative_to(repo.root.resolve()):
            raise TargetError(f"{spec} is outside the repository {repo.root}")
        head = repo.head()
        files = [file for file in sorted(folder.rglob("*.py"))
                 if not any(part.startswith(".") for part in file.relative_to(folder).parts)
                 and repo.file_exists(head, file.relative_to(repo.root.resolve()).as_posix())]
        # A file without skeletons is passed over here; named alone, it is an error.
        targets = []
        for file in files:
            names = [f.name for f in pycode.functions(committed_source(repo, file)[1])
                     if f.is_skeleton]
            if names:
                targets += find_targets(repo, file, list(dict.fromkeys(names)))
        if not targets:
            raise TargetError(f"{spec} holds no committed Python file with a skeleton")
        return targets
    path, function = split_target(spec)
    return find_targets(repo, (cwd / path).resolve(), [function] if function else None)


def budgeted_model(settings: config.Settings, environ: Mapping[str, str],
                   repo: GitRepo) -> tuple[TokenLedger, ChatModel]:
    """The token ledger holding the settings' budgets, and the model that charges it."""
    ledger = TokenLedger(settings.run_token_budget, settings.agent_token_budget)
    return ledger, open_model(settings, ledger, environ, repo)


def run_targets(repo: GitRepo, settings: config.Settings, targets: list[Target],
                environ: Mapping[str, str], on_event: Callable[[AgentView], None],
                executor: Executor | None = None) -> list[RunSummary]:
    """One run per target, `parallel_runs` at once, sharing the model, its budgets and the
    executor. The executor is opened first: a cluster that cannot be reached stops the command
    before any branch is written."""
    opened = executor is None
    executor = open_executor(settings) if executor is None else executor
    try:
        ledger, model = budgeted_model(settings, environ, repo)

        def one(target: Target) -> RunSummary:
            return Organizer(repo, settings, model, ledger, on_event, executor).run(target)

        if settings.parallel_runs == 1 or len(targets) == 1:
            return [one(target) for target in targets]
        # Each run is its own threads and branches; git stays in this process, one writer.
        with ThreadPoolExecutor(max_workers=min(settings.parallel_runs, len(targets)),
                                thread_name_prefix="soa-run") as pool:
            return list(pool.map(one, targets))
    finally:
        if opened:
            executor.close()
