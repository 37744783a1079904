"""The warmed pytest runner: one process per soa-git process that forks one session per test run.

soa_git.testing starts this file as a script (never imported: it needs only the standard library
and pytest, and its directory must not stay on the sessions' sys.path), inside bubblewrap unless
the user opted out. It imports pytest once, runs a trivial test so that pytest's lazily imported
modules are loaded, freezes all of it for the garbage collector, then reads one JSON request per
line on stdin and forks a session for each: what `python -m pytest` would do, without paying for
an interpreter and pytest's imports on every run (about 30-60 ms of CPU per run instead of 300).

A sandboxed session (see `_enter_sandbox`) is PID 1 of its own PID namespace, with its own mount,
network, IPC and UTS namespaces, under a root that holds only the read-only system (of /etc,
the entries soa_git.sandbox lists, and passwd and group written anew), the Python installation,
the workspace, the run's scratch folder, a private /tmp and a read-only /proc; it drops every
capability before it forks the process that runs pytest. When it exits, the kernel kills
whatever the tests left behind. The runner itself only forks, reaps and reports exit codes; it
never runs generated code. When soa-git goes away (stdin closes), it kills every session and exits.

Replies (one JSON line each): {"id", "pid"} when a session started, {"id", "exit", "cpu"} when it
ended; a session killed by signal N reports exit -N.
"""

import ctypes
import ctypes.util
import gc
import json
import os
import platform
import resource
import select
import signal
import sys
import tempfile

import pytest

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# statvfs reports mount flags with the values of MS_*, except relatime.
_ST_RELATIME = 4096
_LOCKED_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# Test runs may use these devices; nothing else of /dev exists in the sandbox.
_DEVICES = ("null", "zero", "full", "random", "urandom")
_EXIT_SIGNALLED = 128
_SANDBOX_FAILED = 71

# Each value of a failed `==` is shown up to this many characters.
REPR_LIMIT = 400

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None):
    _check(_libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                       ctypes.c_ulong(flags), data and data.encode()), f"mount {target}")


def _mount_flags(path):
    """The flags of the mount holding `path` that an unprivileged remount must keep."""
    flags = os.statvfs(path).f_flag
    return (flags & _LOCKED_FLAGS) | (MS_RELATIME if flags & _ST_RELATIME else 0)


def _bind(source, target, writable):
    """Bind `source` at `target` (created), read-only unless `writable`, never set-uid."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND)
    flags = _mount_flags(source) | MS_NOSUID | (0 if writable else MS_RDONLY)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | flags)


def _drop_capabilities():
    """No capability left, none to regain by exec (empty bounding set), no set-uid gain."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _nested(path, parents):
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def _enter_sandbox(request, config):
    """Make this process (PID 1 of a fresh PID namespace) a sandbox holding only what the
    request needs, then drop every privilege."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = config["root"]
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    workspace = request["cwd"]
    size = f"size={request['tmp_mb']}m,mode=1777"
    mounts = [("/tmp", "tmpfs", size), ("/dev", "dev", None), ("/proc", "proc", None),
              (workspace, "rw" if request["writable"] else "ro", None),
              *((path, "rw", None) for path in request["scratch"]),
              # Inside the workspace, what the tests must not read (a repository's .git).
              *((path, "mask", None) for path in request.get("masked", ()))]
    taken = [workspace, *request["scratch"]]
    for path in config["system"]:
        if os.path.islink(path):
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            os.symlink(os.readlink(path), root + path)
        elif os.path.exists(path):
            mounts.append((path, "ro", None))
            taken.append(path)
    hidden = [workspace, *config["private"]]
    for path in (*config["python"], *request["path"]):
        # Never a folder that holds the workspace (it would show the user's repository) or a
        # home, nor one inside something already mounted.
        if os.path.exists(path) and not any(_nested(h, [path]) for h in hidden) \
                and not _nested(path, taken):
            mounts.append((path, "ro", None))
            taken.append(path)
    # Parents before children: a workspace under /tmp goes on top of the private /tmp.
    for path, kind, data in sorted(mounts, key=lambda m: m[0].rstrip("/").split("/")):
        target = root + path
        if kind == "tmpfs":
            os.makedirs(target, exist_ok=True)
            _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, data)
        elif kind == "dev":
            _make_dev(target)
        elif kind == "mask":
            if os.path.isdir(target):
                _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=0")
            else:
                _bind("/dev/null", target, False)
        elif kind == "proc":
            # Read-only: as root, /proc/sys (kernel.core_pattern: a program the kernel runs
            # as root) and /proc/sysrq-trigger are writable without any capability.
            os.makedirs(target, exist_ok=True)
            _mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
        else:
            _bind(path, target, kind == "rw")
    os.makedirs(root + "/etc", exist_ok=True)
    for name, text in config["accounts"].items():
        with open(f"{root}/etc/{name}", "w") as f:
            f.write(text)
    if request["cgroup"]:
        with open(os.path.join(request["cgroup"], "cgroup.procs"), "w") as f:
            f.write("0")
    old = root + "/.old-root"
    os.mkdir(old)
    os.chdir(root)
    _check(_libc.syscall(_PIVOT_ROOT[platform.machine()], b".", b".old-root"), "pivot_root")
    _check(_libc.umount2(b"/.old-root", MNT_DETACH), "umount old root")
    os.rmdir("/.old-root")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/")
    _drop_capabilities()


def _make_dev(target):
    os.makedirs(target, exist_ok=True)
    _mount("tmpfs", target, "tmpfs", MS_NOSUID, "mode=0755")
    for name in _DEVICES:
        _bind(f"/dev/{name}", f"{target}/{name}", True)
    for name, link in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                       ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(link, f"{target}/{name}")
    os.mkdir(f"{target}/shm")
    _mount("tmpfs", f"{target}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    _mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)


class _WholeValues:
    """A failed `==` shows both values whole, without pytest's abbreviations and diff: who reads
    the failure is a model repairing the code, which needs the value the code gave."""

    @staticmethod
    def pytest_assertrepr_compare(op, left, right):
        if op != "==":
            return None
        try:
            return [f"{_bounded_repr(left)} == {_bounded_repr(right)}"]
        except Exception:  # a repr that fails: pytest's own explanation copes with it
            return None


def _bounded_repr(value):
    text = repr(value)
    if len(text) <= REPR_LIMIT:
        return text
    half = REPR_LIMIT // 2
    return f"{text[:half]} ... {text[-half:]}"


def _run_pytest(request):
    """In the forked process that becomes pytest: limits, files, environment; never returns."""
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
    os.closerange(3, 1024)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None
    # As for `python -m pytest`: the working directory first, then PYTHONPATH.
    sys.path[0:1] = ["", *request["path"]]
    sys.argv = ["pytest", *request["args"]]
    code = pytest.main(request["args"], plugins=[_WholeValues()])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def _in_new_pid_namespace(request, config, problems):
    """Fork the sandbox's PID 1 into a new PID namespace; end as it ends (its exit code, or
    128 + the signal that killed it). Killed, take PID 1, and so the whole sandbox, along."""
    try:
        _check(_libc.unshare(CLONE_NEWPID), "unshare pid")
    except OSError as exc:
        _failed(request, problems, exc)
    pid = os.fork()
    if pid == 0:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _sandbox_init(request, config, problems)
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        os._exit(_EXIT_SIGNALLED + os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


def _failed(request, problems, exc):
    if problems is None:
        problems = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(problems, f"{exc}\n".encode())
    os._exit(_SANDBOX_FAILED)


def _sandbox_init(request, config, problems=None):
    """PID 1 of the sandbox: build it, fork pytest, reap. Why a sandbox could not be built goes
    to `problems` (a file descriptor), else to the run's log."""
    try:
        _enter_sandbox(request, config)
    except OSError as exc:
        _failed(request, problems, exc)
    if request.get("self_test"):
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        _run_pytest(request)
    # PID 1 reaps whatever is orphaned until pytest ends; its exit then kills the rest.
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(70)
        if done == pid:
            break
    if os.WIFSIGNALED(status):
        os._exit(_EXIT_SIGNALLED + os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


def _exit_code(status, sandboxed):
    code = os.waitstatus_to_exitcode(status)
    if sandboxed and _EXIT_SIGNALLED < code < _EXIT_SIGNALLED + 65:
        return _EXIT_SIGNALLED - code
    return code


def _nproc_limit(headroom):
    """An RLIMIT_NPROC that leaves the tests `headroom` tasks, or None where it cannot hold.

    The kernel counts RLIMIT_NPROC over all tasks of the user in this user namespace (all that
    this runner's /proc shows, when bubblewrap gave it a user namespace), so the limit is the
    current count plus the headroom. It never binds root: there the sandbox uses a cgroup.
    """
    if os.geteuid() == 0:
        return None
    uid = os.getuid()
    tasks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                tasks += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue  # the process exited while we counted
    return tasks + headroom


def _warm_up(args):
    # One run of a trivial test here imports all that a real run needs (pytest imports most of
    # its modules lazily); then everything is frozen: shared with every forked run, never
    # scanned by the collector in the children (pytest collects at exit), so they neither
    # import it again nor copy its pages by touching it.
    with open("test_warm_up.py", "w") as f:
        f.write("def test_warm_up():\n    assert True\n")
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    pytest.main(args, plugins=[_WholeValues()])
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)
    os.close(null)
    sys.modules.pop("test_warm_up", None)
    gc.collect()
    gc.freeze()


class _Runner:
    def __init__(self, config):
        self.config = config
        self.children = {}   # pid -> (request id, cgroup folder or None)
        self.name = os.urandom(4).hex()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def self_test(self, home):
        """Build one empty sandbox and say whether that worked: {"ready": true} or
        {"ready": false, "error": why}, the first line the runner writes."""
        if not self.config["sandbox"]:
            return self.reply({"ready": True})
        request = {"cwd": home, "writable": False, "scratch": [], "path": [], "tmp_mb": 1,
                   "cgroup": None, "self_test": True}
        problems_r, problems_w = os.pipe()
        pid = self._fork(request, problems_w)
        os.close(problems_w)
        why = os.read(problems_r, 4096).decode(errors="replace").strip()
        status = os.waitpid(pid, 0)[1]
        if status == 0:
            return self.reply({"ready": True})
        self.reply({"ready": False, "error": why or f"exit status {status}"})

    def reply(self, message):
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(1, data):]

    def start(self, request):
        sys.stdout.flush()
        cgroup = self._cgroup(request)
        request = {**request, "cgroup": cgroup}
        nproc = _nproc_limit(self.config["nproc"])
        if nproc is not None:
            request["limits"] = [*request["limits"], [resource.RLIMIT_NPROC, nproc, nproc]]
        pid = self._fork(request)
        self.children[pid] = (request["id"], cgroup)
        self.reply({"id": request["id"], "pid": pid})

    def _fork(self, request, problems=None):
        """Fork the session: pytest itself, or, sandboxed, the process that makes its PID
        namespace. (The runner cannot make that namespace itself: it could not come back to its
        own, whose user namespace bwrap keeps for itself when it runs unprivileged.)"""
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(self.wake_r)
                os.close(self.wake_w)
                if self.config["sandbox"]:
                    _in_new_pid_namespace(request, self.config, problems)
                _run_pytest(request)
            finally:
                os._exit(70)
        return pid

    def _cgroup(self, request):
        """A pids cgroup for the session when the runner has one to give (root: RLIMIT_NPROC
        does not bind root, a cgroup's pids.max does)."""
        parent = self.config["cgroup"]
        if not parent:
            return None
        # Named for this runner too: a runner stopped before it could remove a session's
        # folder leaves it behind, and the next runner of this soa-git counts from 1 again.
        path = os.path.join(parent, f"session-{self.name}-{request['id']}")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(self.config["nproc"]))
        return path

    def kill(self, request_id):
        for pid, (rid, _) in self.children.items():
            if rid == request_id:
                self._kill(pid)

    def _kill(self, pid):
        try:
            # A sandbox dies with its PID 1; unsandboxed, pytest leads its process group.
            if self.config["sandbox"]:
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    def reap(self):
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            request_id, cgroup = self.children.pop(pid)
            if not self.config["sandbox"]:
                # Whatever a passing test left running in its group goes too.
                self._kill(pid)
            if cgroup:
                try:
                    os.rmdir(cgroup)
                except OSError:
                    pass
            self.reply({"id": request_id, "exit": _exit_code(status, self.config["sandbox"]),
                        "cpu": usage.ru_utime + usage.ru_stime})

    def serve(self):
        pending = b""
        while True:
            try:
                ready = select.select([0, self.wake_r], [], [])[0]
            except InterruptedError:
                continue
            if self.wake_r in ready:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            self.reap()
            if 0 not in ready:
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                for pid in self.children:
                    self._kill(pid)
                os._exit(0)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                if "kill" in request:
                    self.kill(request["kill"])
                    continue
                try:
                    self.start(request)
                except OSError as exc:
                    # Not this runner's end: the run ends as a sandbox that could not be built.
                    with open(request["log"], "w") as log:
                        log.write(f"{exc}\n")
                    self.reply({"id": request["id"], "pid": 0})
                    self.reply({"id": request["id"], "exit": _SANDBOX_FAILED, "cpu": 0.0})


def main():
    warm_up_args, config = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    _warm_up(warm_up_args)
    runner = _Runner(config)
    runner.self_test(os.getcwd())
    runner.serve()


if __name__ == "__main__":
    main()
