"""Where agents' tests run: the executor seam between the organizer and the sandboxed test run.

The organizer keeps every git write and ref transaction (one writer per repository); what it hands
an executor is one test run: a workspace folder and the test files in it. `local` runs them here
with the forked, warmed runner of `testing`; `ray` ships the workspace's files to a node of a Ray
cluster and runs the same `testing.run_tests` there (see ray_executor.py). Both return the same
TestResult, so nothing above this seam knows where a test ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from . import testing
from .config import Settings
from .errors import ConfigError
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
