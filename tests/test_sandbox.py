"""The sandbox around generated code: each escape a test could try, tried and contained."""

from __future__ import annotations

import os
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest

from soa_git import sandbox, testing
from soa_git.testing import TestResult, run_tests

PLANTED = "sk-planted-sandbox-7c1e"


def _run(workspace: Path, body: str, **kwargs: object) -> TestResult:
    (workspace / "test_escape.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return run_tests(workspace, ["test_escape.py"], **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "repo" / ".git" / "soa" / "work" / "agent"
    path.mkdir(parents=True)
    return path


def test_nothing_outside_the_workspace_is_visible_or_writable(
        workspace: Path, tmp_path: Path) -> None:
    user_file = tmp_path / "repo" / "precious.py"
    user_file.write_text("KEEP = 1\n")
    outside = tmp_path / "outside.txt"
    result = _run(workspace, f"""
        import os, pathlib, pytest

        def test_the_repository_is_not_there():
            assert not os.path.exists({str(user_file)!r})
            assert not os.path.exists({str(tmp_path / "repo" / ".git" / "config")!r})

        def test_writes_outside_fail():
            for path in ("/usr/planted", "/etc/planted", "/planted", "/dev/planted",
                         "/proc/planted"):
                with pytest.raises(OSError):
                    pathlib.Path(path).write_text("x")

        def test_the_hosts_tmp_is_not_written():
            # This /tmp is the sandbox's own: the files land there, not on the host.
            pathlib.Path({str(outside)!r}).write_text("x")
            pathlib.Path({str(workspace.parent / "sibling.txt")!r}).write_text("x")

        def test_the_workspace_and_tmp_are_writable():
            pathlib.Path("made_by_test.txt").write_text("x")
            pathlib.Path("/tmp/scratch").write_text("x")

        def test_no_home_of_the_user():
            assert not os.path.exists("/root/.bashrc") and not os.path.exists("/home")
    """)
    assert result.ok, result.feedback()
    assert user_file.read_text() == "KEEP = 1\n"
    assert not outside.exists() and not (workspace.parent / "sibling.txt").exists()
    assert (workspace / "made_by_test.txt").exists()


def test_the_hosts_secrets_are_hidden(workspace: Path) -> None:
    shown = {pattern.split("/")[0].rstrip("*") for pattern in sandbox.ETC_SHOWN}
    if not Path("/etc/shadow").exists():
        pytest.skip("no /etc/shadow on this host to hide")
    result = _run(workspace, f"""
        import os, pytest

        def test_etc_holds_only_what_programs_need():
            for name in os.listdir("/etc"):
                assert name in ("passwd", "group") or name.startswith(tuple({sorted(shown)!r})), name
            for secret in ("shadow", "gshadow", "ssh", "ssl/private", "sudoers", "machine-id",
                           "pip.conf", "gitconfig", "npmrc"):
                assert not os.path.lexists("/etc/" + secret), secret

        def test_no_other_account():
            users = [line.split(":")[0] for line in open("/etc/passwd")]
            assert set(users) <= {{"root", "nobody", {os.environ.get("USER", "root")!r}}}, users

        def test_homes_hold_nothing_but_python():
            python = {sandbox.python_paths()!r}
            for top in ("/root", "/home"):
                for folder, dirs, files in os.walk(top):
                    inside = any(folder == p or folder.startswith(p + "/") for p in python)
                    assert inside or not files, (folder, files)
                    dirs[:] = [d for d in dirs if not inside]

        def test_kernel_settings_cannot_be_opened_for_writing():
            # Opened only, never written: on failure this must not change the host.
            for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches",
                         "/proc/sysrq-trigger"):
                with pytest.raises(OSError):
                    os.close(os.open(path, os.O_WRONLY))
    """)
    assert result.ok, result.feedback()


def test_a_python_path_holding_a_home_is_not_shown(
        workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "lib").mkdir(parents=True)
    (home / ".netrc").write_text("machine example.com password planted\n")
    (home / "lib" / "helper.py").write_text("X = 1\n")
    monkeypatch.setenv("HOME", str(home))
    testing.stop_runner()  # the runner reads the home when it starts
    try:
        result = _run(workspace, f"""
            import os

            def test_the_home_is_not_there():
                assert not os.path.exists({str(home / ".netrc")!r})

            def test_what_it_holds_may_be():
                assert os.path.exists({str(home / "lib" / "helper.py")!r})
        """, python_path=[home, home / "lib"])
    finally:
        testing.stop_runner()
    assert result.ok, result.feedback()


@pytest.mark.parametrize("worktree", [False, True])
def test_a_repositorys_git_is_not_shown(tmp_path: Path, worktree: bool) -> None:
    """`soa-git check` runs tests with the repository as the workspace, read-only; in a linked
    worktree .git is a file naming the real one."""
    repo = tmp_path / "repo"
    repo.mkdir()
    config = f"[remote]\n\turl = https://x:{PLANTED}@example.com\n"
    if worktree:
        (repo / ".git").write_text(f"gitdir: {config}")
    else:
        (repo / ".git").mkdir()
        (repo / ".git" / "config").write_text(config)
    result = _run(repo, f"""
        import os

        def test_git_is_empty():
            if {worktree}:
                assert open(".git").read() == ""
            else:
                assert os.listdir(".git") == []
            assert os.path.exists("test_escape.py")
    """, writable=False)
    assert result.ok, result.feedback()
    assert PLANTED not in result.output


def test_no_set_uid_file_is_left_on_the_host(workspace: Path) -> None:
    result = _run(workspace, """
        import os, shutil

        def test_plant():
            for name, mode in (("suid", 0o4755), ("sgid", 0o2755)):
                shutil.copy("/bin/true", name)
                os.chmod(name, mode)
                assert os.stat(name).st_mode & 0o7777 == mode
    """)
    assert result.ok, result.feedback()
    # Inside, the mount is nosuid; outside, the bits are gone.
    for name in ("suid", "sgid"):
        assert (workspace / name).stat().st_mode & 0o7777 == 0o755, name


def test_a_read_only_workspace_cannot_be_written(workspace: Path) -> None:
    result = _run(workspace, """
        import pytest

        def test_write():
            with pytest.raises(OSError):
                open("new.txt", "w")
    """, writable=False)
    assert result.ok, result.feedback()
    assert not (workspace / "new.txt").exists()


def test_proc_shows_only_the_run_and_no_secret(workspace: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    testing.stop_runner()  # a runner started now inherits nothing of this environment either
    result = _run(workspace, f"""
        import os

        def test_proc():
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
            assert max(pids) < 50, pids
            for pid in pids:
                try:
                    data = open(f"/proc/{{pid}}/environ", "rb").read()
                except OSError:
                    continue
                assert {PLANTED!r}.encode() not in data
            assert {PLANTED!r} not in str(os.environ)
    """)
    assert result.ok, result.feedback()


def test_no_network_not_even_loopback(workspace: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    reached = []

    def knock() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not reached:
            try:
                socket.create_connection(("127.0.0.1", free), timeout=0.2).close()
                reached.append(free)
            except OSError:
                time.sleep(0.05)

    knocking = threading.Thread(target=knock, daemon=True)
    knocking.start()
    try:
        result = _run(workspace, f"""
            import socket, time, pytest

            def test_connect_to_the_host():
                with pytest.raises(OSError):
                    socket.create_connection(("127.0.0.1", {port}), timeout=2)

            def test_outside():
                with pytest.raises(OSError):
                    socket.create_connection(("1.1.1.1", 53), timeout=2)

            def test_listen():
                server = socket.socket()
                server.bind(("127.0.0.1", {free}))
                server.listen()
                open("/tmp/listening", "w").close()
                time.sleep(1.5)
        """)
        assert result.ok, result.feedback()
        assert not reached, "a socket listening in the sandbox was reachable from outside"
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_processes_are_limited(workspace: Path) -> None:
    result = _run(workspace, f"""
        import os, time

        def test_fork_many():
            started = 0
            try:
                for _ in range({sandbox.PROCESS_LIMIT + 100}):
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(30)
                        os._exit(0)
                    started += 1
            except OSError:
                pass
            assert started < {sandbox.PROCESS_LIMIT}, started
    """, timeout_s=30)
    assert result.ok, result.feedback()


def test_without_a_sandbox_generated_code_does_not_run(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    testing.stop_runner()
    sandbox.find.cache_clear()
    monkeypatch.setattr(sandbox, "candidates", lambda: [])
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match="--no-sandbox"):
            _run(workspace, "def test_x():\n    open('ran', 'w')\n")
        assert not (workspace / "ran").exists()
        # The user's explicit opt-out runs it (with limits and a clean environment only).
        assert _run(workspace, "def test_x():\n    pass\n", sandboxed=False).ok
    finally:
        testing.stop_runner()
        sandbox.find.cache_clear()
