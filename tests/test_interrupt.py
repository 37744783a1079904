"""Ctrl-C: exit code 130 and one line, no traceback, at any moment; start-up included."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import soa_git
from benchmarks.startup import opens_and_handlers
from soa_git import history
from soa_git.gitrepo import GitRepo

from .helpers.repos import make_repo
from .helpers.shapes import SHAPES_SKELETON

SCRIPT = Path(sys.executable).parent / "soa-git"
STRACE = shutil.which("strace")


def started(args: list[str], cwd: Path, extra: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.Popen([str(SCRIPT), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "OPENAI_API_KEY": "k", **(extra or {})})


def interrupted(process: subprocess.Popen) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.splitlines()[-1].startswith("interrupted"), err
    return out, err


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_ctrl_c_while_starting_up(tmp_path):
    """A KeyboardInterrupt traceback came out while soa-git imported its commands. The signal
    arrives at the first thing soa-git does (before Python's own start-up ends, Python answers
    it alone)."""
    process = started(["list"], tmp_path, {"SOA_GIT_KILL_AT": "startup:1:INT"})
    out, err = process.communicate(timeout=30)
    assert (process.returncode, out, err) == (130, "", "interrupted\n")


@pytest.mark.skipif(not SCRIPT.exists() or not STRACE, reason="needs the console script and strace")
def test_ctrl_c_at_each_step_of_start_up_from_soa_gits_first_line(tmp_path):
    """The signal comes as the real console script opens its k-th file: strace delivers it
    there, so the moment is exact rather than a lucky sleep. From the first file opened after
    soa-git's handler to the end of `soa-git list`'s start-up and beyond: one line and 130 at
    every step. Before it, a Ctrl-C meets Python's own start-up (docs/commands.md), in which
    the only files of soa-git's are soa_git/__init__.py and soa_git/entry.py."""
    repo = make_repo(tmp_path / "repo", {"README": "x\n"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}

    def traced(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(STRACE), "-qq", *options, str(SCRIPT), "list"], cwd=repo,
                              env=env, capture_output=True, text=True, timeout=60)

    # The first run writes what Python caches, so that every later one opens the same files.
    if "strace:" in traced("-o", os.devnull).stderr:
        pytest.skip("strace cannot trace here")
    log = tmp_path / "trace"
    assert traced("-o", str(log), "-e", "trace=openat,rt_sigaction").returncode == 0
    opened, python_handler, ours = opens_and_handlers(log.read_text())
    of_soa_git = [Path(f) for f in opened[:ours] if "/soa_git/" in f or f.endswith("/soa_git")]
    assert {f.name.partition(".")[0] for f in of_soa_git} <= {
        "soa_git", "__pycache__", "__init__", "entry"}, of_soa_git
    assert 0 < python_handler < ours < len(opened)
    step = max(1, (len(opened) - ours) // 10)
    for k in range(ours + 1, len(opened) * 9 // 10, step):
        done = traced("-o", os.devnull, "-e", "trace=openat",
                      "-e", f"inject=openat:signal=SIGINT:when={k}")
        assert (done.returncode, done.stdout, done.stderr) == (130, "", "interrupted\n"), (
            k, opened[k - 1], done.stderr)


def test_the_handler_is_installed_before_anything_else_is_imported():
    """Before soa-git's handler, a Ctrl-C shows Python's traceback: what runs before it is
    Python's own start-up, the console script's `import re, sys`, and soa_git.entry, which
    loads nothing but `signal` (its `from __future__` import loaded one more module)."""
    code = ("import os, re, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "before = set(sys.modules)\n"
            "import soa_git.entry\n"
            "print(' '.join(sorted(set(sys.modules) - before)))")
    package_parent = Path(soa_git.__file__).parent.parent
    done = subprocess.run([sys.executable, "-S", "-c", code, str(package_parent)],
                          capture_output=True, text=True, check=True)
    assert set(done.stdout.split()) <= {"soa_git", "soa_git.entry", "signal"}, done.stdout


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_ctrl_c_while_an_agent_thinks_names_the_run_to_resume(tmp_path, serve):
    """Threads kept the process alive until the model answered, then a traceback; the run was
    unknown to resume."""
    repo = make_repo(tmp_path / "shapes", {"shapes/__init__.py": "",
                                           "shapes/report.py": SHAPES_SKELETON})

    def slow(request):
        time.sleep(20)
        return "too late"

    server = serve(slow)
    process = started(["run", "shapes/report.py", "--base-url", server.base_url], repo)
    assert process.stderr is not None
    seen = ""
    while "thinking" not in seen:
        line = process.stderr.readline()
        assert line, "the run ended before its first model call"
        seen += line
    began = time.monotonic()
    _, err = interrupted(process)
    assert time.monotonic() - began < 10
    [run] = history.list_runs(GitRepo.open(repo))
    assert run.state == "interrupted"
    assert err.splitlines()[-1] == (f"interrupted; `soa-git resume {run.run}` continues run "
                                    f"{run.run}")
