"""Run an agent's unit tests (generated code) with pytest, in the sandbox.

Each run is a session of the warmed runner (soa_git/pytest_runner.py), which lives inside
bubblewrap (soa_git/sandbox.py): the tests see only the read-only system, the Python installation,
their workspace, a scratch folder and a private /tmp, have no network, run in a PID namespace of
their own (nothing they start outlives the run) under time, memory, file-size and process limits,
with an environment built from scratch, so no secret reaches generated code. Nothing is written
into the workspace by the harness: the JUnit report, the pytest config and HOME all live in the
scratch folder, removed afterwards. Without a working sandbox generated code does not run,
unless the caller passes sandboxed=False (the user's explicit, loud opt-out).
"""

from __future__ import annotations

import atexit
import json
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
from dataclasses import dataclass, replace
from pathlib import Path

from . import faults, sandbox

OUTPUT_LIMIT = 4000
DETAILS_LIMIT = 4000
FILE_SIZE_LIMIT = 64 * 1024 * 1024
_TRUNCATED = "[...]"
MASK = "[secret]"
_RUNNER_SCRIPT = Path(__file__).with_name("pytest_runner.py")
# The exit code of a session whose sandbox could not be built (pytest_runner._SANDBOX_FAILED).
_SANDBOX_FAILED = 71


class _Launch:
    """One test run the runner forked: its request id and pid, and its exit code and CPU
    seconds once the runner reaped it."""

    def __init__(self, request_id: int) -> None:
        self.id = request_id
        self.pid: int | None = None
        self.returncode: int | None = None
        self.cpu_s = 0.0
        self.started = threading.Event()
        self.done = threading.Event()


class _Runner:
    """The client side of one runner process; safe for many threads."""

    def __init__(self, sandboxed: bool) -> None:
        self.sandboxed = sandboxed
        box = sandbox.find() if sandboxed else None
        self._home = tempfile.mkdtemp(prefix="soa-runner-")
        atexit.register(shutil.rmtree, self._home, ignore_errors=True)
        home = Path(self._home)
        root = home / "root"
        root.mkdir()
        config = {"sandbox": sandboxed, "root": str(root), "system": sandbox.system_paths(),
                  "python": sandbox.python_paths(), "private": sandbox.private_paths(),
                  "accounts": sandbox.accounts(), "cgroup": box.cgroup if box else "",
                  "nproc": sandbox.PROCESS_LIMIT}
        python = [sys.executable, str(_RUNNER_SCRIPT), json.dumps(_warm_up_args(home)),
                  json.dumps(config)]
        self._proc = subprocess.Popen(
            box.runner_command(python) if box else python, cwd=self._home,
            env=_sandbox_env(home, ()), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self._lock = threading.Lock()
        self._next = 0
        self._runs: dict[int, _Launch] = {}
        self._ready = threading.Event()
        self._problem = ""
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
        if not self._ready.wait(120):
            raise OSError("the test runner did not start")
        if self._problem:
            raise sandbox.unavailable(self._problem)
        with self._lock:
            self._next += 1
            run = self._runs[self._next] = _Launch(self._next)
            self._send({"id": run.id, **request})
        if not run.started.wait(30) or run.pid is None:
            raise OSError("the test runner did not start the tests")
        return run

    def kill(self, run: _Launch) -> None:
        """Kill a run and all it started (its sandbox's PID 1, or its process group)."""
        with self._lock:
            if not run.done.is_set():
                try:
                    self._send({"kill": run.id})
                except OSError:
                    pass  # the runner is gone, and its runs with it

    def _send(self, message: dict) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps(message) + "\n").encode())
            self._proc.stdin.flush()
        except ValueError:
            raise OSError("the test runner was stopped") from None

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            if "ready" in message:
                self._problem = "" if message["ready"] else message["error"]
                self._ready.set()
                continue
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
        if not self._ready.is_set():
            self._problem = "the test runner exited while starting"
            self._ready.set()
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


_runners: dict[bool, _Runner] = {}
_runner_lock = threading.Lock()


def start_runner(sandboxed: bool = True) -> None:
    """Start the test runner now, so its warm-up overlaps whatever comes before the first test
    (the runner also starts by itself at the first test). Raises SandboxUnavailable at once
    when `sandboxed` and no sandbox can be had."""
    _the_runner(sandboxed)


def stop_runner() -> None:
    """Stop the test runners (they also stop by themselves when this process exits)."""
    with _runner_lock:
        runners = list(_runners.values())
        _runners.clear()
    for runner in runners:
        runner.stop()


def _forget(runner: _Runner) -> None:
    """Stop a runner that failed, unless another thread already replaced it."""
    with _runner_lock:
        if _runners.get(runner.sandboxed) is runner:
            del _runners[runner.sandboxed]
    runner.stop()


def _the_runner(sandboxed: bool) -> _Runner:
    with _runner_lock:
        runner = _runners.get(sandboxed)
        if runner is None or not runner.alive:
            runner = _runners[sandboxed] = _Runner(sandboxed)
        return runner


@atexit.register
def _remove_cgroup() -> None:
    if sandbox.find.cache_info().currsize:
        try:
            folder = sandbox.find().cgroup
        except sandbox.SandboxUnavailable:
            return
        stop_runner()
        if folder:
            sandbox.remove_cgroup(folder)


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

    def masked(self, secrets: Sequence[str]) -> TestResult:
        """This result with every secret value in its texts replaced by MASK: what generated
        code printed must not carry a secret into prompts, notes, transcripts or reports, even
        if the sandbox somehow let it read one."""
        if not secrets:
            return self
        cases = tuple(replace(case, message=_mask(case.message, secrets),
                              details=_mask(case.details, secrets)) for case in self.cases)
        return replace(self, cases=cases, output=_mask(self.output, secrets))

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
    writable: bool = True,
    sandboxed: bool = True,
) -> TestResult:
    """Run `test_files` (relative to `workspace`) with pytest in the sandbox and parse the result.

    `python_path` entries are put on PYTHONPATH (and shown read-only in the sandbox); the
    workspace itself is importable because pytest runs as `python -m pytest` with the workspace
    as cwd. The tests may write their workspace only if `writable`. `sandboxed=False` is the
    user's opt-out: the tests then run with limits and a clean environment, but no sandbox.
    Raises SandboxUnavailable when `sandboxed` and no sandbox can be had.
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
        env = _sandbox_env(home, python_path)
        # Output goes to a file, not a pipe: a straggler holding a pipe open would
        # otherwise keep us waiting after pytest itself has exited.
        # A repository as the workspace (`soa-git check`): its .git may hold credentials (a
        # token in a remote's URL), hooks and soa-git's files; tests never need it.
        masked = [str(workspace / ".git")] if (workspace / ".git").exists() else []
        request = {"cwd": str(workspace), "writable": writable, "scratch": [str(scratch)],
                   "masked": masked,
                   "tmp_mb": memory_mb, "limits": _limits(timeout_s, memory_mb),
                   "args": _pytest_args(files, xml=xml_path, rootdir=workspace, ini=ini),
                   "log": str(log_path), "env": env,
                   "path": [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]}
        runner = _the_runner(sandboxed)
        try:
            run = runner.launch(request)
        except OSError:
            # The runner died between runs (someone killed it): a new one, once.
            _forget(runner)
            runner = _the_runner(sandboxed)
            run = runner.launch(request)
        faults.reached("test")
        timed_out = False
        try:
            timed_out = not run.done.wait(timeout_s)
        finally:
            if not run.done.is_set():
                runner.kill(run)
            run.done.wait()
        if sandboxed and writable:
            sandbox.clear_set_id(workspace)
        returncode = run.returncode if run.returncode is not None else -signal.SIGKILL
        # The CPU limit fires as SIGXCPU; to the caller that is a timeout too.
        timed_out = timed_out or returncode == -signal.SIGXCPU
        output = _read_tail(log_path, OUTPUT_LIMIT)
        if returncode == _SANDBOX_FAILED and sandboxed:
            raise sandbox.unavailable(output.strip() or "the sandbox failed")
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
# "debugging" stays: pytest's unittest support reads its options, so without it every
# unittest.TestCase test fails with "no option named 'trace'".
_UNUSED_PLUGINS = ("cacheprovider", "pastebin", "doctest", "stepwise", "setuponly",
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
        # Failed asserts in full (the runner's plugin drops `==`'s diff): no "use -vv" cut-offs.
        "-o", "verbosity_assertions=2",
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
    return [_within_current(which, soft, hard) for which, soft, hard in wanted]


def _within_current(which: int, soft: int, hard: int) -> tuple[int, int, int]:
    """Never above the current hard limit: only root may raise a hard limit."""
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    return which, soft, hard


def _mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def _read_tail(path: Path, limit: int) -> str:
    """The last `limit` characters of a file that may be as large as FILE_SIZE_LIMIT (or
    nothing, when the run was killed before it opened the file)."""
    if not path.exists():
        return ""
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
    """The end of the case's traceback, whose `E` lines hold the whole message; the message
    when there is no traceback."""
    if not case.details:
        return _head(f"{case.name} ({case.outcome}): {case.message}", limit)
    head = _head(f"{case.name} ({case.outcome})", limit)
    room = limit - len(head) - 1
    if room <= len(_TRUNCATED):
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
