"""`soa-git run`: grow an agent tree for one skeleton, for every skeleton in a file, or for every
skeleton in several files or a directory (`parallel_runs` of them at once)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .. import config, history, local_model, pycode
from ..errors import ConfigError, TargetError
from ..executor import Executor, open_executor
from ..gitrepo import GitRepo
from ..llm import ChatModel, Metered, Notice, ReplayModel, TokenLedger
from ..organizer import Organizer
from ..summary import AgentView, RunSummary
from ..targets import Target, committed_source, find_targets
from ..weights import ProgressCallback, quiet


REPLAY = "replay:"
LOCAL_TIMEOUT_S = 3600.0


def split_target(spec: str) -> tuple[str, str | None]:
    """`path.py::func` -> (path, func); `path.py` -> (path, None)."""
    path, _, function = spec.partition("::")
    if not path.endswith(".py"):
        raise TargetError(f"{path} is not a Python file "
                          "(expected path/to/file.py or file.py::function)")
    return path, function or None


def open_model(settings: config.Settings, ledger: TokenLedger, environ: Mapping[str, str],
               repo: GitRepo, on_notice: Callable[[Notice], None] = lambda notice: None,
               ) -> ChatModel:
    """The endpoint of the settings; or, for `replay:RUN`, that run's recorded answers."""
    if settings.model.startswith(REPLAY):
        recorded = history.load_run(repo, settings.model.removeprefix(REPLAY))
        return ReplayModel(recorded.run, {a.path: history.transcript(a) for a in recorded.agents},
                           ledger)
    if local_model.is_local(settings.model):
        raise ConfigError(f"the model '{settings.model}' is served by soa-git itself: start it "
                          "with soa-git serve and give its base URL")
    key = settings.api_key(environ)
    if key is None:
        raise ConfigError(f"no API key: set the environment variable {settings.api_key_env} "
                          "(a local server that needs no key accepts any value)")
    return _chat(settings, ledger, settings.base_url, key, settings.model, on_notice=on_notice)


def _chat(settings: config.Settings, ledger: TokenLedger, base_url: str, key: str,
          model: str, timeout_s: float | None = None,
          on_notice: Callable[[Notice], None] = lambda notice: None) -> ChatModel:
    # Imported here, not at the top: `openai` takes longer to import than the rest of soa-git,
    # and only commands that call a model need it.
    from ..openai_chat import OpenAIChat
    return OpenAIChat(model=model, base_url=base_url, api_key=key, ledger=ledger,
                      max_concurrency=settings.jobs,
                      timeout_s=timeout_s or settings.request_timeout,
                      temperature=settings.temperature, max_tokens=settings.child_max_tokens,
                      on_notice=on_notice)


def run(specs: str | Sequence[str], *, cwd: Path, flags: Mapping[str, Any],
        on_event: Callable[[AgentView | Notice], None] = lambda view: None,
        environ: Mapping[str, str] | None = None,
        on_progress: ProgressCallback = quiet) -> list[RunSummary]:
    environ = os.environ if environ is None else environ
    repo = GitRepo.open(cwd)
    settings = config.resolve(repo.root, flags, environ)
    # Every target is checked before the first run starts, so bad input changes nothing.
    targets: list[Target] = []
    for spec in [specs] if isinstance(specs, str) else specs:
        targets.extend(t for t in targets_of(repo, cwd, spec) if t not in targets)
    return run_targets(repo, settings, targets, environ, on_event, on_progress=on_progress)


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


@contextmanager
def budgeted_model(settings: config.Settings, environ: Mapping[str, str], repo: GitRepo,
                   on_progress: ProgressCallback = quiet, budgets: bool = True,
                   on_notice: Callable[[Notice], None] = lambda notice: None,
                   ) -> Iterator[tuple[TokenLedger, ChatModel]]:
    """The token ledger holding the settings' budgets (none: `budgets` False), and the model
    that charges it; a local model (`--model local`) is served for the block's duration, one
    slot per job."""
    ledger = (TokenLedger(settings.run_token_budget, settings.agent_token_budget) if budgets
              else TokenLedger())
    if not local_model.is_local(settings.model):
        yield ledger, open_model(settings, ledger, environ, repo, on_notice)
        return
    with local_model.serving(settings.model, slots=settings.jobs, environ=environ,
                             on_progress=on_progress) as served:
        # Our own server decodes a few tokens a second on a laptop's CPU: a long answer takes
        # minutes, and retrying it on a timeout would only start it over.
        yield ledger, _chat(settings, ledger, served.base_url, served.api_key, served.model,
                            timeout_s=max(settings.request_timeout, LOCAL_TIMEOUT_S),
                            on_notice=on_notice)


def ships_calls(settings: config.Settings) -> bool:
    """Whether a run's model calls go out from where it is placed: not for soa-git's own local
    model, which is served on this machine for this command alone."""
    return settings.model_calls == "nodes" and not local_model.is_local(settings.model)


def run_targets(repo: GitRepo, settings: config.Settings, targets: list[Target],
                environ: Mapping[str, str], on_event: Callable[[AgentView | Notice], None],
                executor: Executor | None = None,
                on_progress: ProgressCallback = quiet) -> list[RunSummary]:
    """One run per target, `parallel_runs` at once, sharing the model and the executor, each
    placed by the executor (on a Ray cluster: on a node, whose model calls it makes); each run
    with budgets and a token count of its own (one ledger shared by a file's runs reported
    each run's tokens as the sum of all before it, and spent the budgets of all). The executor
    is opened first: a cluster that cannot be reached stops the command before any branch is
    written."""
    opened = executor is None
    executor = open_executor(settings) if executor is None else executor
    try:
        # The event callback takes an agent's views and its model call's notices alike.
        with budgeted_model(settings, environ, repo, on_progress, budgets=False,
                            on_notice=on_event) as (_, model):

            def one(target: Target) -> RunSummary:
                ledger = TokenLedger(settings.run_token_budget, settings.agent_token_budget)
                with executor.placed(model, ships_calls(settings)) as (placed, placed_model):
                    return Organizer(repo, settings, Metered(placed_model, ledger), ledger,
                                     on_event, placed).run(target)

            if settings.parallel_runs == 1 or len(targets) == 1:
                return [one(target) for target in targets]
            # Each run is its own threads and branches; git stays in this process, one writer.
            with ThreadPoolExecutor(max_workers=min(settings.parallel_runs, len(targets)),
                                    thread_name_prefix="soa-run") as pool:
                return list(pool.map(one, targets))
    finally:
        if opened:
            executor.close()
