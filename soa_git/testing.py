"""Run an agent's unit tests (generated code) with pytest in a sandboxed subprocess.

The tests run in the agent's workspace, in their own process group, under resource limits and
with an environment built from scratch, so no secret reaches generated code. Nothing is written
into the workspace: the JUnit report, the pytest config and HOME all live in a temporary
directory that is removed afterwards.
"""

from __future__ import annotations

import json
import atexit
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import faults

OUTPUT_LIMIT = 4000
DETAILS_LIMIT = 4000
FILE_SIZE_LIMIT = 64 * 1024 * 1024
# Tasks (processes and threads) the tests may start on top of what the user already runs.
NPROC_HEADROOM = 256
_TRUNCATED = "[...]"

# The test runner: one process per soa-git process, started from a sandbox environment with pytest
# already imported, that forks one child per test run. The child gets its own session (process
# group), the limits, an environment built from scratch, /dev/null as stdin and the log file as
# stdout and stderr, then runs pytest in the workspace: what `python -m pytest` would do, without
# paying for an interpreter and pytest's imports on every run. The runner only forks, reaps and
# reports exit codes; it never runs generated code itself. The limits are set in the forked child
# before pytest starts, so they bind pytest and all it starts; Popen(preexec_fn=...) could
# deadlock instead, because the organizer calls from many threads. When soa-git goes away (its pipe
# closes), the runner kills what is still running and exits.
_RUNNER = r"""
import gc, json, os, resource, select, signal, sys, tempfile
import pytest

# One run of a trivial test here imports all that a real run needs (pytest imports most of its
# modules lazily); then everything is frozen: shared with every forked run, never scanned by
# the collector in the children (pytest collects at exit), so they neither import it again nor
# copy its pages by touching it.
with open("test_warm_up.py", "w") as f:
    f.write("def test_warm_up():\n    assert True\n")
saved = os.dup(1)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
pytest.main(json.loads(sys.argv[1]))
sys.stdout.flush()
os.dup2(saved, 1)
os.close(saved)
os.close(null)
sys.modules.pop("test_warm_up", None)
gc.collect()
gc.freeze()
wake_r, wake_w = os.pipe()
os.set_blocking(wake_r, False)
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
children = {}


def reply(message):
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data):]


def child(request):
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.close(wake_r)
    os.close(wake_w)
    os.setsid()
    # Generated code runs at a lower priority than soa-git and the user's own work.
    os.nice(10)
    for which, soft, hard in request["limits"]:
        resource.setrlimit(which, (soft, hard))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, 256)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None
    # As for `python -m pytest`: the working directory first, then PYTHONPATH.
    sys.path[0:1] = ["", *request["path"]]
    sys.argv = ["pytest", *request["args"]]
    code = pytest.main(request["args"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def reap():
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply({"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status),
               "cpu": usage.ru_utime + usage.ru_stime})


pending = b""
while True:
    try:
        ready = select.select([0, wake_r], [], [])[0]
    except InterruptedError:
        continue
    if wake_r in ready:
        try:
            while os.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass
    reap()
    if 0 in ready:
        chunk = os.read(0, 65536)
        if not chunk:
            for pid in children:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            os._exit(0)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    child(request)
                finally:
                    os._exit(70)
            children[pid] = request["id"]
            reply({"id": request["id"], "pid": pid})
"""


class _Launch:
    """One test run the runner forked: its pid, and its exit code and CPU seconds once the
    runner reaped it."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.returncode: int | None = None
        self.cpu_s = 0.0
        self.started = threading.Event()
        self.done = threading.Event()


class _Runner:
    """The client side of the runner process; safe for many threads."""

    def __init__(self) -> None:
        self._home = tempfile.mkdtemp(prefix="soa-runner-")
        atexit.register(shutil.rmtree, self._home, ignore_errors=True)
        script = Path(self._home) / "soa_test_runner.py"
        script.write_text(_RUNNER, encoding="utf-8")
        self._proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(_warm_up_args(Path(self._home)))],
            cwd=self._home,
            env=_sandbox_env(Path(self._home), ()), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self._lock = threading.Lock()
        self._next = 0
        self._runs: dict[int, _Launch] = {}
        self._reader = threading.Thread(target=self._read, name="soa-test-runner", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Close the runner's pipe: it kills what still runs and exits; wait for it."""
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()
        self._reader.join(5)

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def launch(self, request: dict) -> _Launch:
        run = _Launch()
        with self._lock:
            self._next += 1
            self._runs[self._next] = run
            line = json.dumps({"id": self._next, **request}) + "\n"
            assert self._proc.stdin is not None
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        if not run.started.wait(30) or run.pid is None:
            raise OSError("the test runner did not start the tests")
        return run

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            with self._lock:
                run = self._runs.get(message["id"])
            if run is None:
                continue
            if "pid" in message:
                run.pid = message["pid"]
                run.started.set()
            else:
                run.returncode = message["exit"]
                run.cpu_s = message["cpu"]
                with self._lock:
                    self._runs.pop(message["id"], None)
                run.done.set()
        # The runner is gone: nobody will report on what it ran.
        with self._lock:
            stranded, self._runs = list(self._runs.values()), {}
        for run in stranded:
            run.returncode = run.returncode if run.returncode is not None else -signal.SIGKILL
            run.started.set()
            run.done.set()


def _warm_up_args(home: Path) -> list[str]:
    ini = home / "pytest.ini"
    ini.write_text("[pytest]\n", encoding="utf-8")
    return _pytest_args(["test_warm_up.py"], xml=home / "warm-up.xml", rootdir=home, ini=ini)


_runner: _Runner | None = None
_runner_lock = threading.Lock()


def start_runner() -> None:
    """Start the test runner now, so its warm-up overlaps whatever comes before the first test
    (the runner also starts by itself at the first test)."""
    _the_runner()


def stop_runner() -> None:
    """Stop the test runner (it also stops by itself when this process exits)."""
    global _runner
    with _runner_lock:
        runner, _runner = _runner, None
    if runner is not None:
        runner.stop()


def _the_runner() -> _Runner:
    global _runner
    with _runner_lock:
        if _runner is None or not _runner.alive:
            _runner = _Runner()
        return _runner


@dataclass(frozen=True)
class TestCase:
    """One JUnit testcase: a test, or a collection error of one test module."""

    __test__ = False  # not a pytest test class, despite its name

    name: str
    outcome: str  # "passed" | "failed" | "error" | "skipped"
    message: str = ""
    details: str = ""


@dataclass(frozen=True)
class TestResult:
    """The outcome of one pytest run; `timeout_s` is the wall limit the run had, `cpu_s` the
    CPU time the run's process used (what the tests themselves cost, apart from soa-git)."""

    __test__ = False

    cases: tuple[TestCase, ...]
    timed_out: bool = False
    output: str = ""
    timeout_s: float = 0.0
    cpu_s: float = 0.0

    def _count(self, outcome: str) -> int:
        return sum(1 for case in self.cases if case.outcome == outcome)

    @property
    def passed(self) -> int:
        return self._count("passed")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def errors(self) -> int:
        return self._count("error")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def ok(self) -> bool:
        """At least one test passed, none failed or errored, and the run finished in time."""
        return self.passed > 0 and not self.failed and not self.errors and not self.timed_out

    def summary(self) -> str:
        """pytest-style counts, e.g. "4 passed, 1 failed", as used in the Soa-Tests trailer."""
        counts = [
            (self.passed, "passed"),
            (self.failed, "failed"),
            (self.errors, "error" if self.errors == 1 else "errors"),
            (self.skipped, "skipped"),
        ]
        parts = [f"{count} {label}" for count, label in counts if count]
        if not parts:
            parts = ["no tests ran"]
        if self.timed_out:
            parts.append(f"timed out after {self.timeout_s:g}s")
        return ", ".join(parts)

    def feedback(self, limit: int = 3000) -> str:
        """Text for the model: the summary, then each failing case, else the output tail.

        The budget is shared evenly between failing cases so that one huge traceback cannot
        hide the others; within a case the end of the traceback is kept, where the error is.
        """
        head = self.summary()
        bad = [case for case in self.cases if case.outcome in ("failed", "error")]
        if bad:
            share = max(0, (limit - len(head)) // len(bad) - 2)
            blocks = [_case_block(case, share) for case in bad]
        elif not self.cases and self.output:
            blocks = [_tail(self.output, max(0, limit - len(head) - 2))]
        else:
            blocks = []
        return _head("\n\n".join([head, *blocks]), limit)


def run_tests(
    workspace: Path,
    test_files: Sequence[str],
    *,
    python_path: Sequence[Path] = (),
    timeout_s: float = 60.0,
    memory_mb: int = 1024,
) -> TestResult:
    """Run `test_files` (relative to `workspace`) with pytest in a sandbox and parse the result.

    `python_path` entries are put on PYTHONPATH; the workspace itself is importable because
    pytest runs as `python -m pytest` with the workspace as cwd.
    """
    workspace = workspace.resolve()
    files = _checked_test_files(test_files)
    with tempfile.TemporaryDirectory(prefix="soa-tests-", ignore_cleanup_errors=True) as tmp:
        scratch = Path(tmp)
        home = scratch / "home"
        home.mkdir()
        ini = scratch / "pytest.ini"
        ini.write_text("[pytest]\n", encoding="utf-8")
        xml_path = scratch / "junit.xml"
        log_path = scratch / "output.log"
        limits = _limits(timeout_s, memory_mb)
        env = _sandbox_env(home, python_path)
        # Output goes to a file, not a pipe: a straggler holding a pipe open would
        # otherwise keep us waiting after pytest itself has exited.
        request = {"cwd": str(workspace), "limits": limits,
                   "args": _pytest_args(files, xml=xml_path, rootdir=workspace, ini=ini),
                   "log": str(log_path), "env": env,
                   "path": [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]}
        try:
            run = _the_runner().launch(request)
        except OSError:
            # The runner died between runs (someone killed it): a new one, once.
            stop_runner()
            run = _the_runner().launch(request)
        assert run.pid is not None
        faults.reached("test")
        timed_out = False
        try:
            timed_out = not run.done.wait(timeout_s)
        finally:
            # Kill the whole group: on timeout or interrupt everything, after a normal exit
            # any background process a test left behind.
            _kill_group(run.pid)
            run.done.wait()
        returncode = run.returncode if run.returncode is not None else -signal.SIGKILL
        # The CPU limit fires as SIGXCPU; to the caller that is a timeout too.
        timed_out = timed_out or returncode == -signal.SIGXCPU
        output = _read_tail(log_path, OUTPUT_LIMIT)
        cases = _parse_junit(xml_path, files)
        if cases is None and not timed_out:
            # Without a report the output may say nothing (os._exit, a crash): say how it ended.
            output += "\n" + _how_it_ended(returncode)
    return TestResult(
        cases=cases or (),
        timed_out=timed_out,
        output=_tail(output, OUTPUT_LIMIT),
        timeout_s=timeout_s,
        cpu_s=run.cpu_s,
    )


# pytest's own plugins that agent tests do not need: each one loaded costs every run time (a
# third of a run, together), and none changes what a plain test function or TestCase does.
_UNUSED_PLUGINS = ("cacheprovider", "pastebin", "doctest", "stepwise", "debugging", "setuponly",
                   "setupplan", "python_path", "faulthandler", "unraisableexception",
                   "threadexception", "subtests")


def _pytest_args(files: Sequence[str], *, xml: Path, rootdir: Path, ini: Path) -> list[str]:
    return [
        *files, "-q",
        "--junitxml", str(xml),
        *(a for name in _UNUSED_PLUGINS for a in ("-p", f"no:{name}")),
        # Isolate from the user's conftest.py, pytest.ini/pyproject addopts and plugins.
        "--noconftest",
        "--import-mode=importlib",
        "--rootdir", str(rootdir),
        "-c", str(ini),
        "-o", "console_output_style=classic",
        # One broken test module should not hide the results of the others.
        "--continue-on-collection-errors",
    ]


def _checked_test_files(test_files: Sequence[str]) -> list[str]:
    """Relative paths inside the workspace, none of which pytest could read as an option."""
    if not test_files:
        # pytest without paths would collect the whole workspace.
        raise ValueError("no test files given")
    files = []
    for name in test_files:
        path = Path(name)
        if path.is_absolute() or ".." in path.parts or name.startswith("-"):
            raise ValueError(f"test file {name!r} is not a relative path inside the workspace")
        files.append(path.as_posix())
    return files


def _sandbox_env(home: Path, python_path: Sequence[Path]) -> dict[str, str]:
    """A whitelist built from scratch: nothing else from os.environ (API keys, tokens)."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        # Installed pytest plugins could add options or write files; agent tests need none.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in python_path)
    return env


def _limits(timeout_s: float, memory_mb: int) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for the sandbox; hard limits so tests cannot raise them again."""
    # A little above the wall limit, so the wall timeout normally fires first; it still
    # stops a busy loop that outlives us (e.g. if soa-git itself is killed).
    cpu_s = math.ceil(timeout_s) + 1
    wanted = [
        (resource.RLIMIT_AS, memory_mb * 1024 * 1024, memory_mb * 1024 * 1024),
        (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),
        (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT, FILE_SIZE_LIMIT),
        # A crash (or SIGXCPU) would otherwise drop a core file into the workspace.
        (resource.RLIMIT_CORE, 0, 0),
    ]
    nproc = _nproc_limit()
    if nproc is not None:
        wanted.append((resource.RLIMIT_NPROC, nproc, nproc))
    return [_within_current(which, soft, hard) for which, soft, hard in wanted]


def _within_current(which: int, soft: int, hard: int) -> tuple[int, int, int]:
    """Never above the current hard limit: only root may raise a hard limit."""
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    return which, soft, hard


def _nproc_limit() -> int | None:
    """An RLIMIT_NPROC that leaves the tests NPROC_HEADROOM tasks, or None if meaningless.

    RLIMIT_NPROC is checked against all tasks of the user, not just the sandbox's, so a fixed
    value would either be useless or break a busy user; hence the current count plus headroom.
    Root (CAP_SYS_RESOURCE) ignores the limit, and without /proc we cannot count.
    """
    if os.geteuid() == 0:
        return None
    uid = os.getuid()
    tasks = 0
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                tasks += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue  # the process exited while we counted
    return tasks + NPROC_HEADROOM


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is already empty


def _read_tail(path: Path, limit: int) -> str:
    """The last `limit` characters of a file that may be as large as FILE_SIZE_LIMIT."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        # UTF-8 needs at most 4 bytes per character.
        f.seek(max(0, size - 4 * limit))
        return _tail(f.read().decode("utf-8", errors="replace"), limit)


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        reason = signal.strsignal(-returncode) or f"signal {-returncode}"
        return f"pytest was killed without writing a report: {reason}"
    return f"pytest exited with code {returncode} without writing a report"


def _parse_junit(xml_path: Path, test_files: Sequence[str]) -> tuple[TestCase, ...] | None:
    """The testcases of pytest's JUnit report, or None if it did not write a whole report."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return None
    return tuple(_case(element, test_files) for element in root.iter("testcase"))


def _case(element: ET.Element, test_files: Sequence[str]) -> TestCase:
    name = _node_id(element.get("classname", ""), element.get("name", ""), test_files)
    # pytest writes a failing teardown as its own testcase, so each has at most one of these.
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        child = element.find(tag)
        if child is not None:
            return TestCase(
                name=name,
                outcome=outcome,
                message=child.get("message", ""),
                details=_tail(child.text or "", DETAILS_LIMIT),
            )
    return TestCase(name=name, outcome="passed")


def _node_id(classname: str, name: str, test_files: Sequence[str]) -> str:
    """Turn JUnit's dotted classname back into a pytest node id like "tests/test_x.py::test_a".

    JUnit replaces "/" with "." and drops ".py"; the test files we passed tell which prefix
    was the path. A collection error has an empty classname and the module as its name.
    """
    key = classname or name
    best = ""
    for path in test_files:
        module = path.removesuffix(".py").replace("/", ".")
        matches = key == module or key.startswith(module + ".")
        if path.endswith(".py") and matches and len(path) > len(best):
            best = path
    if not best:
        return f"{classname}::{name}" if classname else name
    if not classname:
        return best
    # Whatever follows the module (and its ".") is the nesting of test classes.
    inner = classname[len(best) - len(".py") + 1:].replace(".", "::")
    return "::".join(part for part in (best, inner, name) if part)


def _case_block(case: TestCase, limit: int) -> str:
    head = _head(f"{case.name} ({case.outcome}): {case.message}", limit)
    room = limit - len(head) - 1
    if room <= len(_TRUNCATED) or not case.details:
        return head
    return f"{head}\n{_tail(case.details, room)}"


def _head(text: str, limit: int) -> str:
    """At most `limit` characters, keeping the beginning."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(_TRUNCATED))] + _TRUNCATED[:limit]


def _tail(text: str, limit: int) -> str:
    """At most `limit` characters, keeping the end."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(_TRUNCATED))
    return _TRUNCATED[:limit] + (text[-keep:] if keep else "")
