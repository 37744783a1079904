"""How the ray executor ships a workspace: by content, regular files only, each file read again
when it may have changed; and a node that lost blobs asks for them. No cluster needed: the node's
side runs here, in this process."""

from __future__ import annotations

import os
import time
from pathlib import Path

from soa_git.ray_executor import NodeRunner, _Snapshots

TEST = "from calc import double\n\n\ndef test_double():\n    assert double(2) == 4\n"


def workspace(path: Path, body: str = "return 2 * x") -> Path:
    (path / "calc").mkdir(parents=True)
    (path / "calc" / "__init__.py").write_text(f"def double(x):\n    {body}\n")
    (path / "test_calc.py").write_text(TEST)
    return path


def test_a_snapshot_holds_regular_files_only_and_never_follows_a_link(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the coordinator's own file")
    folder = workspace(tmp_path / "ws")
    (folder / "leak.txt").symlink_to(secret)
    (folder / "calc" / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(folder / "calc" / "fifo")
    files, blobs = _Snapshots().take(folder)
    assert sorted(path for path, _ in files) == ["calc/__init__.py", "test_calc.py"]
    assert not any(b"coordinator" in data for data in blobs.values())


def test_a_file_rewritten_in_place_is_read_again(tmp_path):
    folder = workspace(tmp_path / "ws")
    snapshots = _Snapshots()
    files, _ = snapshots.take(folder)
    # Same size, same inode, same mtime: its change time still tells.
    module = folder / "calc" / "__init__.py"
    stat = module.stat()
    module.write_text(module.read_text().replace("2 * x", "x + x"))
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again, blobs = snapshots.take(folder)
    assert dict(again)["calc/__init__.py"] != dict(files)["calc/__init__.py"]
    assert b"x + x" in blobs[dict(again)["calc/__init__.py"]]


def test_an_old_unchanged_file_is_not_read_again(tmp_path):
    folder = workspace(tmp_path / "ws")
    snapshots = _Snapshots()
    # Past the window in which a rewrite might leave a file's stat as it was.
    time.sleep(snapshots.RACY_S + 0.1)
    first, blobs = snapshots.take(folder)
    assert len(blobs) == 2
    second, blobs = snapshots.take(folder)
    assert second == first and blobs == {}


def test_a_node_runner_removes_the_folders_of_runners_that_are_gone(tmp_path, monkeypatch):
    import subprocess
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"soa-node-{gone.pid}-abc"
    (stale / "run").mkdir(parents=True)
    alive = tmp_path / f"soa-node-{os.getpid()}-def"
    alive.mkdir()
    node = NodeRunner()
    try:
        assert not stale.exists() and alive.exists()
    finally:
        node.stop()


def test_a_node_runs_the_shipped_files_and_asks_for_blobs_it_lacks(tmp_path):
    folder = workspace(tmp_path / "ws")
    files, blobs = _Snapshots().take(folder)
    node = NodeRunner()
    try:
        # A node that never saw these blobs names them all.
        assert sorted(node.run(files, {}, ["test_calc.py"], ["."], {})) == sorted(blobs)
        result = node.run(files, blobs, ["test_calc.py"], ["."], {"timeout_s": 30})
        assert result.ok, result.feedback()
        # Known now: the files alone are enough.
        assert node.run(files, {}, ["test_calc.py"], ["."], {"timeout_s": 30}).ok
        broken = workspace(tmp_path / "broken", body="return x")
        files, more = _Snapshots().take(broken)
        missing = node.run(files, {}, ["test_calc.py"], ["."], {})
        assert missing == [key for path, key in files if path == "calc/__init__.py"]
        result = node.run(files, more, ["test_calc.py"], ["."], {"timeout_s": 30})
        assert result.failed == 1
    finally:
        node.stop()
    # Nothing of the runs is left on the node.
    assert not Path(node._home).exists()
