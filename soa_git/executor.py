"""Where runs do their work: the executor seam between the organizer and the places its agents'
test runs and model calls happen.

The organizer keeps every git write and ref transaction (one writer per repository). A command
places each run (`placed`), which gives the executor that run's organizer uses and the model its
agents ask; what the organizer then hands the executor is one test run: a workspace folder and
the test files in it. `local` runs them here with the forked, warmed runner of `testing`, and
leaves the model as it is; `ray` places the run on a node of a Ray cluster, makes its model calls
from there, and ships each test run's files to a node to run the same `testing.run_tests` (see
ray_executor.py). Both return the same TestResult and Reply, so nothing above this seam knows
where a test ran or where a call went out from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from . import testing
from .config import Settings
from .errors import ConfigError
from .llm import ChatModel
from .testing import TestResult

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    def start(self, **options: Any) -> None:
        """Get ready for the first test run (it may overlap the first model call); `options`
        are `testing.start_runner`'s."""

    def run_tests(self, workspace: Path, test_files: Sequence[str], **options: Any) -> TestResult:
        """`testing.run_tests(workspace, test_files, **options)`, wherever this executor runs it."""

    def close(self) -> None:
        """Let go of what `start` took; the executor may be started again afterwards."""

    def placed(self, model: ChatModel, ship_calls: bool,
               ) -> AbstractContextManager[tuple[Executor, ChatModel]]:
        """One run's place for its duration: the executor its organizer uses and the model its
        agents ask (`model`'s calls made where the run is placed, if `ship_calls`)."""


class LocalExecutor:
    """The forked runner of this process, in the sandbox unless the user opted out."""

    def __init__(self, sandboxed: bool = True) -> None:
        self.sandboxed = sandboxed

    def start(self, **options: Any) -> None:
        testing.start_runner(**{"sandboxed": self.sandboxed, **options})

    def run_tests(self, workspace: Path, test_files: Sequence[str], **options: Any) -> TestResult:
        return testing.run_tests(workspace, test_files, **{"sandboxed": self.sandboxed, **options})

    def close(self) -> None:
        """The runner stays up for the next run of this process; it stops when the process
        exits."""

    @contextmanager
    def placed(self, model: ChatModel, ship_calls: bool,
               ) -> Iterator[tuple[LocalExecutor, ChatModel]]:
        """Every run is here, and so are its model calls."""
        yield self, model


LOCAL = LocalExecutor()


def open_executor(settings: Settings) -> Executor:
    """The executor the settings name, connected and ready: a cluster that cannot be reached
    fails here, before a run writes anything."""
    if settings.executor == "local":
        return LOCAL if settings.sandboxed else LocalExecutor(sandboxed=False)
    if settings.executor != "ray":
        raise ConfigError(f"'executor' must be one of {', '.join(EXECUTORS)}, "
                          f"not {settings.executor!r}")
    # Imported only when asked for: Ray is an optional dependency and slow to import.
    from .ray_executor import RayExecutor
    return RayExecutor.connect(settings.ray_address or "auto")
