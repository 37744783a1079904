"""The command line: parse, call one function, render. No logic of its own."""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import click

from . import config, entry, render
from .errors import SoaError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from .llm import Notice
    from .summary import AgentView, RunSummary
    from .weights import Progress


def _lazy(module: str, name: str) -> Callable:
    """soa_git.commands.<module>.<name>, imported when first called: each command imports only
    what it uses (the commit gate, `soa-git check`, runs at every commit)."""
    def call(*args, **kwargs):
        function = getattr(importlib.import_module(f"soa_git.commands.{module}"), name)
        return function(*args, **kwargs)
    return call


accept_command = _lazy("accept", "accept")
check_command = _lazy("check", "check")
clean_command = _lazy("clean", "clean")
demo_command = _lazy("demo", "demo")
fill_command = _lazy("hooks", "fill")
install_hook = _lazy("hooks", "install_hook")
init_command = _lazy("init", "init")
list_runs = _lazy("list", "list_runs")
log_command = _lazy("log", "log")
pr_command = _lazy("pr", "pr")
pr_head_command = _lazy("pr_head", "pr_head")
push_command = _lazy("push", "push")
build_report = _lazy("report", "build")
resume_command = _lazy("resume", "resume")
run_command = _lazy("run", "run")
serve_command = _lazy("serve", "serve")
show_command = _lazy("show", "show")
transcript_command = _lazy("transcript", "transcript")
tree_command = _lazy("tree", "tree")
trust_command = _lazy("trust", "trust")


def error_boundary(command: Callable) -> Callable:
    """A SoaError becomes one line; anything else too, with the traceback saved to a log file."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SoaError as exc:
            raise click.ClickException(str(exc)) from None
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None
        except Exception as exc:  # noqa: BLE001 - the boundary catches what we did not foresee
            import tempfile  # here, not at start-up: `soa-git check` runs at every commit
            import traceback

            with tempfile.NamedTemporaryFile("w", prefix="soa-git-error-", suffix=".log",
                                             delete=False) as log:
                traceback.print_exc(file=log)
            raise click.ClickException(f"internal error: {exc!r} "
                                       f"(traceback in {log.name})") from None

    return wrapper


class LiveView:
    """The runs' agents as they work. On a terminal, rich draws the tree in place under the
    run's elapsed time and token rate, redrawn twice a second (a local model may think for
    minutes between events), clipped to the terminal's height and width, so no frame or
    wrapped line is left in scrollback; it honours NO_COLOR, and a TERM=dumb terminal gets
    plain lines instead. Elsewhere, one plain line per change, each printed once."""

    def __init__(self, console: Console | None = None):
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console(stderr=True, highlight=False)
        self.views: dict[str, tuple[AgentView, float]] = {}   # path -> (view, when it came)
        self.notices: dict[str, str] = {}
        self.printed: dict[str, str] = {}
        self.started = time.monotonic()
        # Reentrant: an event redraws at once, and drawing reads the views under the lock.
        self.lock = threading.RLock()
        self.live: Live | None = None
        if self.console.is_terminal and not self.console.is_dumb_terminal:
            self.live = Live(get_renderable=self._render, console=self.console,
                             refresh_per_second=2, transient=True, redirect_stdout=False,
                             redirect_stderr=False, vertical_overflow="ellipsis")

    def __call__(self, event: AgentView | Notice) -> None:
        from .llm import Notice  # only commands that draw a live view need the model layer

        with self.lock:
            if isinstance(event, Notice):
                self.notices[event.agent] = event.text
                self._plain(event.agent, f"{event.agent}: {event.text}")
            else:
                self._view(event)
            if self.live is not None:
                if not self.live.is_started:
                    self.live.start()
                self.live.refresh()

    def _view(self, view: AgentView) -> None:
        if "." not in view.path:
            entry.runs[view.run] = view.state in render.FINAL_STATES
        if any(v.run != view.run for v, _ in self.views.values()):
            self.views.clear()
            self.started = time.monotonic()
        self.views[view.path] = (view, time.monotonic())
        self.notices.pop(view.path, None)
        self._plain(view.path, render.event_line(view))

    def _plain(self, key: str, line: str) -> None:
        if self.live is None and self.printed.get(key) != line:
            self.printed[key] = line
            self.console.print(line, markup=False, soft_wrap=True)

    def _render(self) -> Text:
        from rich.text import Text

        with self.lock:
            if not self.views:
                return Text("")
            now = time.monotonic()
            views = [replace(view, seconds=view.seconds + (
                         0 if view.state in render.FINAL_STATES else now - when))
                     for view, when in self.views.values()]
            lines = [render.live_header(views, now - self.started),
                     *render.tree_lines(views, live=True, notices=self.notices)]
        text = Text("\n".join(lines), no_wrap=True, overflow="ellipsis")
        text.highlight_words(["passed"], "green")
        text.highlight_words(["failed", "stopped"], "red")
        return text

    def close(self) -> None:
        """The summary replaces the live tree. Rich draws a last frame, uncropped, when it
        stops: it is drawn empty, or a tall tree would pile up in a short terminal's
        scrollback."""
        if self.live is not None and self.live.is_started:
            with self.lock:
                self.views.clear()
            self.live.stop()


class ProgressLine:
    """A local model getting ready: one line redrawn in place on a terminal, a line per stage
    elsewhere."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown: tuple[str, int] = ("", -1)

    def __call__(self, progress: Progress) -> None:
        percent = progress.done * 100 // progress.total if progress.total else -1
        stage_changed = progress.stage != self.shown[0]
        if (progress.stage, percent) == self.shown or not (
                self.tty or stage_changed or percent == 100):
            return
        self.shown = (progress.stage, percent)
        amount = f": {percent}% of {progress.total / 1e6:,.0f} MB" if percent >= 0 else ""
        line = f"{progress.stage} {progress.detail}{amount}"
        if not self.tty:
            click.echo(line, file=self.stream)
            return
        done = progress.stage == "ready"
        click.echo(f"\r\x1b[2K{line}", file=self.stream, nl=done)


@contextmanager
def live_view() -> Iterator[LiveView]:
    live = LiveView()
    try:
        yield live
    finally:
        live.close()


def print_summaries(summaries: list[RunSummary], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(render.summaries_json(summaries), indent=2))
    else:
        for summary in summaries:
            click.echo("\n".join(render.summary_lines(summary)))
    if any(s.state != "done" for s in summaries):
        sys.exit(1)


def _print(as_json: bool, data: Callable[[], dict], lines: Callable[[], list[str]]) -> None:
    click.echo(json.dumps(data(), indent=2, ensure_ascii=False) if as_json else "\n".join(lines()))


def _settings_flags(flags: dict) -> dict:
    """The settings among a command's options (FLAG_NAMES), for config.resolve."""
    return {k: flags[k] for k in FLAG_NAMES}


def _run_flags(flags: dict) -> dict:
    """_settings_flags for a command that runs generated code; says so loudly if unsandboxed."""
    chosen = _settings_flags(flags)
    if config.user_sandbox(chosen, os.environ) == "off":
        click.secho(UNSANDBOXED, err=True, fg="red", bold=True)
    return chosen


UNSANDBOXED = ("WARNING: the sandbox is off (--no-sandbox or sandbox = \"off\"): generated code "
               "runs with your permissions and can read and change your files, keys and network")


def model_options(command: Callable) -> Callable:
    """The settings that are flags (config.FLAG_SETTINGS), as options of `command`."""
    kinds = {"int": int, "float": float, "str": None}
    for setting in reversed(config.FLAG_SETTINGS):
        if setting.switch is not None:
            option = click.option(*setting.flags, setting.name, flag_value=setting.switch,
                                  default=None, help=setting.help)
        else:
            kind = click.Choice(setting.choices) if setting.choices else kinds[setting.kind]
            option = click.option(*setting.flags, type=kind, help=setting.help)
        command = option(command)
    return command


FLAG_NAMES = tuple(setting.name for setting in config.FLAG_SETTINGS)


@click.group()
@click.version_option(package_name="soa-git")
def main() -> None:
    """Self-Organized Agents that write Python functions as git history."""
    # Also when started as `python -c "from soa_git.cli import main; main()"`, not the script.
    entry.install()


@main.command()
@model_options
@click.option("--hooks", is_flag=True,
              help="Also install a plain git pre-commit hook that runs `soa-git check`.")
@error_boundary
def init(hooks: bool, **flags) -> None:
    """Write soa-git's configuration for this repository."""
    if hooks:
        install_hook(Path.cwd(), check_only=True)
    path, written = init_command(Path.cwd(), _settings_flags(flags))
    click.echo(f"{'wrote' if written else 'kept the existing'} configuration in {path}")
    if hooks:
        hook, changed = install_hook(Path.cwd())
        click.echo(f"{'installed' if changed else 'kept'} the pre-commit hook {hook}")


@main.command()
@error_boundary
def trust() -> None:
    """Let this repository's configuration choose the model endpoint and the variable that holds
    the key, as it does now (asked again whenever they change)."""
    path, chosen = trust_command(Path.cwd())
    values = ", ".join(f"{k.replace('_', '-')} = {v!r}" for k, v in chosen.items())
    what = values or "it sets neither endpoint nor key variable"
    click.echo(f"trusted {path}: {what}")


@main.command()
@click.argument("targets", metavar="TARGET...", nargs=-1, required=True)
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@error_boundary
def run(targets: tuple[str, ...], as_json: bool, **flags) -> None:
    """Fill each TARGET (path/to/file.py::function, every skeleton in path/to/file.py, or in
    every committed file under a directory)."""
    with live_view() as live:
        summaries = run_command(targets, cwd=Path.cwd(), flags=_run_flags(flags),
                                on_event=live, on_progress=ProgressLine())
    print_summaries(summaries, as_json)


@main.command()
@click.argument("run_id", metavar="RUN")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@error_boundary
def resume(run_id: str, as_json: bool, **flags) -> None:
    """Continue RUN (killed or stopped) from the last committed step of each agent."""
    with live_view() as live:
        summary = resume_command(run_id, cwd=Path.cwd(), flags=_run_flags(flags),
                                 on_event=live, on_progress=ProgressLine())
    print_summaries([summary], as_json)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where to create the sample repository (default: a new temporary directory).")
@click.option("--scripted", is_flag=True,
              help="Canned answers from a scripted server: an instant look, no model.")
@click.option("--model", default="local", show_default=True,
              help="The local model: local, local:NAME or local:/path/to/model.gguf.")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
@error_boundary
def demo(directory: Path | None, scripted: bool, model: str, as_json: bool) -> None:
    """Run soa-git on a sample repository with a real model on this machine (no key, no
    network; minutes on two cores), or with --scripted answers in seconds."""
    with live_view() as live:
        repo, summaries = demo_command(directory, model="scripted" if scripted else model,
                                       on_event=live, on_progress=ProgressLine())
    click.echo(f"sample repository: {repo}", err=True)
    click.echo(f"look at it: git -C {repo} log --graph --all --oneline; "
               f"cd {repo} && soa-git report", err=True)
    print_summaries(summaries, as_json)


@main.command()
@click.option("--model", default="local", show_default=True,
              help="local, local:NAME or local:/path/to/model.gguf.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests decoded together (parallel slots).")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port on 127.0.0.1 (default: a free one).")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoint as one JSON line.")
@error_boundary
def serve(model: str, jobs: int, port: int, as_json: bool) -> None:
    """Serve the local model alone until Ctrl-C, so several commands share one loaded model."""

    def ready(endpoint) -> None:
        click.echo(json.dumps(render.serve_json(endpoint)) if as_json
                   else "\n".join(render.serve_lines(endpoint)))
        sys.stdout.flush()

    serve_command(model if ":" in model or model == "local" else f"local:{model}", slots=jobs,
                  port=port, on_ready=ready, on_progress=ProgressLine())


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--squash", is_flag=True, help="One ordinary commit instead of a merge commit.")
@error_boundary
def accept(run_id: str, squash: bool) -> None:
    """Merge finished run RUN's result into your current branch (your hooks run)."""
    done = accept_command(run_id, cwd=Path.cwd(), squash=squash)
    click.echo("\n".join(render.accept_lines(done)))


@main.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Every run that is not in use.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the result as JSON.")
@error_boundary
def clean(run_id: str | None, all_runs: bool, dry_run: bool, as_json: bool) -> None:
    """Remove run RUN's (or --all runs') branches, workspaces, notes and lock."""
    if (run_id is None) == (not all_runs):
        raise click.UsageError("give a RUN or --all" if run_id is None
                               else "give a RUN or --all, not both")
    plan = clean_command(run_id, cwd=Path.cwd(), all_runs=all_runs, dry_run=dry_run)
    _print(as_json, lambda: render.clean_json(plan), lambda: render.clean_lines(plan))
    if plan.kept:
        raise click.ClickException("kept " + "; ".join(f"run {run}: {why}"
                                                       for run, why in plan.kept))


# ---- reviewing runs: read back from git alone ---------------------------------------------


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@error_boundary
def list_command(as_json: bool) -> None:
    """The runs in this repository, newest first."""
    runs = list_runs(Path.cwd())
    _print(as_json, lambda: render.runs_json(runs), lambda: render.runs_lines(runs))


@main.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
@error_boundary
def tree(run_id: str | None, as_json: bool) -> None:
    """The agent tree of run RUN (default: the newest run)."""
    run = tree_command(Path.cwd(), run_id)
    _print(as_json, lambda: render.run_json(run), lambda: render.run_tree_lines(run))


@main.command()
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True, help="Print the attempts as JSON.")
@error_boundary
def log(agent: str, as_json: bool) -> None:
    """AGENT's attempts in order (AGENT: RUN/agent.path, or agent.path in the newest run)."""
    found = log_command(Path.cwd(), agent)
    _print(as_json, lambda: render.agent_log_json(found), lambda: render.agent_log_lines(found))


@main.command()
@click.argument("spec", metavar="RUN|AGENT")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@error_boundary
def show(spec: str, as_json: bool) -> None:
    """A run's summary and tree, or an agent's attempts and current code."""

    from .history import RunRecord

    shown = show_command(Path.cwd(), spec)
    if isinstance(shown, RunRecord):
        _print(as_json, lambda: render.run_show_json(shown),
               lambda: render.run_summary_lines(shown))
    else:
        _print(as_json, lambda: render.agent_show_json(shown),
               lambda: render.agent_show_lines(shown))


@main.command()
@click.argument("agent")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@error_boundary
def transcript(agent: str, as_json: bool) -> None:
    """The exact model messages of each of AGENT's steps, from the notes."""
    run, found, steps = transcript_command(Path.cwd(), agent)
    _print(as_json, lambda: render.transcript_json(run, found, steps),
           lambda: render.transcript_lines(run, found, steps))


# ---- publishing a run: report, push, pull request -------------------------------------------


@main.command("report")
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--format", "fmt", type=click.Choice(["markdown", "text", "json"]),
              default="text", show_default=True, help="Markdown is for a PR comment.")
@click.option("--remote", default="origin", show_default=True,
              help="The remote the fetch commands in the report name.")
@error_boundary
def report_run(run_id: str | None, fmt: str, remote: str) -> None:
    """A review of run RUN (default: the newest): tree, attempts, branches, diff stat."""
    built = build_report(Path.cwd(), run_id, remote=remote)
    if fmt == "markdown":
        click.echo(render.run_markdown(built), nl=False)
    else:
        _print(fmt == "json", lambda: render.report_json(built), lambda: render.report_lines(built))


@main.command()
@click.argument("run_id", metavar="RUN")
@click.argument("remote", default="origin", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print what was pushed as JSON.")
@error_boundary
def push(run_id: str, remote: str, as_json: bool) -> None:
    """Push RUN's branches and the notes (transcripts) to REMOTE (default: origin)."""
    done = push_command(Path.cwd(), run_id, remote)
    _print(as_json, lambda: render.push_json(done), lambda: render.push_lines(done))


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--repo", "github_repo", metavar="OWNER/NAME",
              help="The GitHub repository (default: from the remote's URL).")
@click.option("--base", help="The branch to merge into (default: your current branch).")
@click.option("--remote", default="origin", show_default=True, help="The remote the run is on.")
@click.option("--json", "as_json", is_flag=True, help="Print the pull request as JSON.")
@error_boundary
def pr(run_id: str, github_repo: str | None, base: str | None, remote: str,
       as_json: bool) -> None:
    """Open or update the pull request of RUN's root branch (token: GITHUB_TOKEN)."""
    built = build_report(Path.cwd(), run_id, remote=remote)
    done = pr_command(built, cwd=Path.cwd(), body=render.run_markdown, repo=github_repo,
                      base=base)
    _print(as_json, lambda: render.pull_json(done), lambda: render.pull_lines(done))


@main.command("pr-head")
@click.argument("number", type=int)
@click.option("--repo", "github_repo", metavar="OWNER/NAME", required=True,
              help="The GitHub repository of the pull request.")
@click.option("--at", "at", metavar="TIME", required=True,
              help="When the comment was written, as GitHub gives it (2026-12-02T14:00:00Z).")
@click.option("--json", "as_json", is_flag=True, help="Print the head as JSON.")
@error_boundary
def pr_head(number: int, github_repo: str, at: str, as_json: bool) -> None:
    """The head of pull request NUMBER as it was at TIME; refused if it moved since (the
    `/soa run` workflow pins the reviewed commit with it; token: GITHUB_TOKEN)."""
    done = pr_head_command(github_repo, number, at)
    _print(as_json, lambda: render.pr_head_json(done), lambda: render.pr_head_lines(done))


# ---- hooks: the commit gate and the manual-stage fill ---------------------------------------


@main.command()
@click.argument("files", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@error_boundary
def check(files: tuple[str, ...], as_json: bool) -> None:
    """Fail when FILES (default: the staged Python files) break an accepted run's recorded tests
    or hold a skeleton marked `# soa-git: fill`. No model, no network."""
    result = check_command(list(files) or None, cwd=Path.cwd())
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    _print(as_json, lambda: render.check_json(result), lambda: render.check_lines(result))
    if not result.ok:
        sys.exit(1)


@main.command()
@click.argument("files", nargs=-1)
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
@error_boundary
def fill(files: tuple[str, ...], as_json: bool, **flags) -> None:
    """Run soa-git on the skeletons marked `# soa-git: fill` in FILES (default: the staged Python
    files), as staged; each result waits on a run branch. Your commit is never changed."""
    with live_view() as live:
        _, summaries = fill_command(list(files) or None, cwd=Path.cwd(),
                                    flags=_run_flags(flags), on_event=live,
                                    on_progress=ProgressLine())
    if not summaries and not as_json:
        click.echo("no skeleton marked for soa-git (`# soa-git: fill`) in the files given; "
                   "nothing to fill")
        return
    print_summaries(summaries, as_json)
