"""The command line: parse, call one function, render. No logic of its own."""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Callable

import click

from . import report
from .commands.demo import demo as demo_command
from .commands.init import init as init_command
from .commands.run import run as run_command
from .errors import SoaError
from .organizer import AgentView, RunSummary


def error_boundary(command: Callable) -> Callable:
    """A SoaError becomes one line; anything else too, with the traceback saved to a log file."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SoaError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None
        except Exception as exc:  # noqa: BLE001 - the boundary exists to catch what we did not foresee
            with tempfile.NamedTemporaryFile("w", prefix="soa-git-error-", suffix=".log",
                                             delete=False) as log:
                traceback.print_exc(file=log)
            raise click.ClickException(f"internal error: {exc!r} (traceback in {log.name})") from None

    return wrapper


class LiveView:
    """The tree redrawn in place on a terminal; one plain line per change elsewhere."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.views: dict[str, AgentView] = {}
        self.drawn = 0
        self.lock = threading.Lock()

    def __call__(self, view: AgentView) -> None:
        with self.lock:
            if not self.tty:
                click.echo(report.event_line(view), file=self.stream)
                return
            if any(v.run != view.run for v in self.views.values()):
                self.views.clear()
            self.views[view.path] = view
            lines = [f"run {view.run}", *report.tree_lines(self.views.values())]
            click.echo(self._erase() + "\n".join(lines), file=self.stream)
            self.drawn = len(lines)

    def _erase(self) -> str:
        return "\x1b[F\x1b[2K" * self.drawn

    def close(self) -> None:
        """The summary replaces the live tree."""
        with self.lock:
            if self.tty and self.drawn:
                click.echo(self._erase(), file=self.stream, nl=False)
            self.drawn = 0


def render(summaries: list[RunSummary], as_json: bool) -> None:
    if as_json:
        data = [report.summary_json(s) for s in summaries]
        click.echo(json.dumps(data if len(data) > 1 else data[0], indent=2))
    else:
        for summary in summaries:
            click.echo("\n".join(report.summary_lines(summary)))
    if any(s.state != "done" for s in summaries):
        sys.exit(1)


def model_options(command: Callable) -> Callable:
    options = [
        click.option("--model", help="Model name, e.g. gpt-4o-mini."),
        click.option("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:11434/v1."),
        click.option("--api-key-env", help="Name of the environment variable that holds the key."),
        click.option("--max-depth", type=int, help="Levels in the agent tree (1: a single agent; 2: a Mother over Children)."),
        click.option("--max-children", type=int, help="Most sub-functions one Mother may spawn."),
        click.option("--repair-rounds", type=int, help="Repair rounds per agent."),
        click.option("--jobs", "-j", type=int, help="Agents working (model calls, tests) at once."),
        click.option("--test-timeout", type=float, help="Seconds one agent's test run may take."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


FLAG_NAMES = ("model", "base_url", "api_key_env", "max_depth", "max_children", "repair_rounds",
              "jobs", "test_timeout")


@click.group()
@click.version_option(package_name="soa-git")
def main() -> None:
    """Self-Organized Agents that write Python functions as git history."""


@main.command()
@model_options
@error_boundary
def init(**flags) -> None:
    """Write soa-git's configuration for this repository."""
    path, written = init_command(Path.cwd(), {k: flags[k] for k in FLAG_NAMES})
    click.echo(f"{'wrote' if written else 'kept the existing'} configuration in {path}")


@main.command()
@click.argument("target")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@error_boundary
def run(target: str, as_json: bool, **flags) -> None:
    """Fill TARGET (path/to/file.py::function, or every skeleton in path/to/file.py)."""
    live = LiveView()
    try:
        summaries = run_command(target, cwd=Path.cwd(), flags={k: flags[k] for k in FLAG_NAMES},
                                on_event=live)
    finally:
        live.close()
    render(summaries, as_json)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where to create the sample repository (default: a new temporary directory).")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
@error_boundary
def demo(directory: Path | None, as_json: bool) -> None:
    """Run soa-git on the sample repository against a SCRIPTED model on loopback (no API needed)."""
    live = LiveView()
    try:
        repo, summaries = demo_command(directory, on_event=live)
    finally:
        live.close()
    click.echo(f"sample repository: {repo}", err=True)
    render(summaries, as_json)
