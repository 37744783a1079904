"""The live view: clipped to the terminal, plain where it must be, and it says what happens."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from soa_git.cli import LiveView
from soa_git.commands.run import run
from soa_git.llm import Notice
from soa_git.summary import AgentView

from .helpers.shapes import KEY, shapes_script

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def view(path: str, state: str = "thinking", tests: str = "no tests ran") -> AgentView:
    return AgentView(run="20261202-000000-abcd", path=path, role="child",
                     function=path.rpartition(".")[2], file="f.py", test_file="t.py",
                     branch="b", state=state, tests=tests, passed=0, rounds=0, lines=0,
                     tokens=1234, error=None)


def terminal(width: int = 40, height: int = 4) -> tuple[io.StringIO, Console]:
    out = io.StringIO()
    return out, Console(file=out, force_terminal=True, width=width, height=height)


def a_tall_wide_run(live: LiveView) -> None:
    live(view("a_root_function_with_a_rather_long_name"))
    for i in range(30):
        live(view(f"a_root_function_with_a_rather_long_name.child_number_{i}_with_a_long_name"))
    live.close()


def test_a_tree_taller_and_wider_than_the_terminal_is_clipped_to_it():
    """Frames piled up in scrollback in a 4-row pane; wrapped lines stayed behind at 40 columns."""
    out, console = terminal()
    a_tall_wide_run(LiveView(console))
    text = out.getvalue()
    frames = [ESCAPES.sub("", f).replace("\r", "") for f in re.split(r"\x1b\[2K", text)]
    assert max(frame.count("\n") for frame in frames) <= 3   # 4 rows
    assert max(len(line) for frame in frames for line in frame.split("\n")) <= 40
    assert "child_number_0" in text


def test_a_dumb_terminal_gets_plain_lines_once_each(monkeypatch):
    """TERM=dumb still got cursor codes."""
    monkeypatch.setenv("TERM", "dumb")
    out, console = terminal()
    live = LiveView(console)
    for event in [view("f"), view("f", "testing"), view("f", "tested", "3 failed"),
                  view("f", "tested", "3 failed"), view("f", "failed", "3 failed")]:
        live(event)
    live.close()
    # Each change once; no stale "testing (no tests ran)" before the real result.
    assert ESCAPES.sub("", out.getvalue()).splitlines() == [
        "f [child] thinking", "f [child] testing", "f [child] tested (3 failed)",
        "f [child] failed (3 failed)"]
    assert "\x1b[" not in out.getvalue().replace("\x1b[0m", "")


@pytest.mark.parametrize("no_color", [False, True])
def test_no_color_is_honoured(monkeypatch, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    out, console = terminal(width=80, height=10)
    live = LiveView(console)
    live(view("f", "passed", "3 passed"))
    live.close()
    coloured = re.search(r"\x1b\[[0-9;]*3[0-7]m", out.getvalue())
    assert (coloured is None) == no_color


def test_the_live_tree_shows_time_tokens_and_notices():
    out, console = terminal(width=160, height=10)
    live = LiveView(console)
    live(view("f"))
    live(Notice("f", "endpoint answered 500 Internal Server Error, retry 2/5 in 4 s"))
    frame = ESCAPES.sub("", out.getvalue())
    live.close()
    assert "1,234 tokens" in frame and re.search(r"\d+ s ", frame)
    assert "retry 2/5 in 4 s" in frame


def test_a_mother_shows_as_mother_from_the_start_and_retries_are_told(shapes, serve):  # noqa: F811
    """The root showed as `child` until her first merge; against an endpoint answering 500,
    `thinking` stayed up with no notice."""
    script = shapes_script()
    script[0]["replies"] = [{"status": 500, "headers": {"Retry-After": "0"}},
                            *script[0]["replies"]]
    events: list = []
    [summary] = run("shapes/report.py::area_report", cwd=shapes,
                    flags={"base_url": serve(script).base_url}, environ=KEY,
                    on_event=events.append)
    assert summary.state == "done"
    root = [e for e in events if isinstance(e, AgentView) and e.path == "area_report"]
    assert root[0].role == "mother" and root[0].state == "thinking"
    notices = [e for e in events if isinstance(e, Notice)]
    assert [(n.agent, n.text) for n in notices] == [
        ("area_report", "endpoint answered 500 Internal Server Error, retry 2/5 in 0 s")]
    assert all(e.seconds >= 0 for e in events if isinstance(e, AgentView))
