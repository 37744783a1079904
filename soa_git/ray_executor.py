"""The `ray` executor: agents' test runs on the nodes of a Ray cluster.

One `NodeRunner` actor per node holds that node's warmed test runner (testing's forked runner,
started in the actor's process). A test run ships the workspace's files to the least busy node,
which writes them into a fresh folder and calls the same `testing.run_tests` the local executor
calls, sandbox included, and returns its TestResult. Files travel by content: the coordinator
remembers which blobs each node already holds and sends only the others, so an agent's repair
round ships its two changed files, not its whole workspace.

A node that dies (or stops answering) costs only the test runs it held: they run again on another
node. A test run is a pure function of the files shipped, so its retry gives the same result and
the run the same tree. Git never leaves the coordinator.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import testing
from .errors import ClusterError
# The same liveness test as for a run's lock: a process of this machine, by its id.
from .gitrepo.locks import _process_alive
from .testing import TestResult

# A node whose test run has not answered this long after the run's own time limit is taken for
# lost (a partitioned node never reports its death).
ANSWER_GRACE_S = 60.0
# Blobs a node keeps between test runs; past this it forgets them all and asks again.
NODE_BLOB_BYTES = 256 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
# A node runner's folder in the node's temporary directory: the prefix, then its process id.
HOME_PREFIX = "soa-node-"
# How often a busy executor looks for nodes that joined the cluster.
REFRESH_S = 10.0


class NodeRunner:
    """Runs test runs on one node (a Ray actor; threaded, so runs overlap)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        _remove_stale_homes()
        self._home = tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-")
        # The warm-up overlaps the first test run's shipping.
        testing.start_runner()

    def ready(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def run(self, files: Sequence[tuple[str, str]], blobs: dict[str, bytes],
            test_files: Sequence[str], python_path: Sequence[str],
            options: dict[str, Any]) -> TestResult | list[str]:
        """The test run of a workspace given as (path, blob id) pairs; or, when this node lacks
        some blobs (it restarted, or forgot them), their ids, for the caller to send."""
        with self._lock:
            if self._bytes > NODE_BLOB_BYTES:
                self._blobs.clear()
                self._bytes = 0
            for key, data in blobs.items():
                if key not in self._blobs:
                    self._blobs[key] = data
                    self._bytes += len(data)
            wanted = {key: self._blobs.get(key) for _, key in files}
        missing = sorted(key for key, data in wanted.items() if data is None)
        if missing:
            return missing
        folder = Path(tempfile.mkdtemp(dir=self._home))
        try:
            for path, key in files:
                target = folder / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wanted[key])  # type: ignore[arg-type]
            return testing.run_tests(folder, test_files,
                                     python_path=[folder / p for p in python_path], **options)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def cpu_s(self) -> float:
        """CPU seconds this actor's process has used (its threads; not the runner's forks)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def stop(self) -> None:
        testing.stop_runner()
        shutil.rmtree(self._home, ignore_errors=True)


def _remove_stale_homes() -> None:
    """The folders of runners whose process is gone (a node killed mid-run cannot clean up)."""
    top = Path(tempfile.gettempdir())
    for home in top.glob(f"{HOME_PREFIX}*-*"):
        pid = home.name.removeprefix(HOME_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid), socket.gethostname()):
            shutil.rmtree(home, ignore_errors=True)


class _Snapshots:
    """The files of workspace folders as (path, blob id), reading again only what changed.

    A file is known by its stat (inode, size, mtime, ctime), as git's index knows it; one written
    within the last second is read every time, since a rewrite in the same clock tick may not
    change its stat ("racily clean" in git's words).
    """

    RACY_S = 1.0

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int, int, int], str]] = {}
        self._lock = threading.Lock()

    def take(self, folder: Path) -> tuple[list[tuple[str, str]], dict[str, bytes]]:
        files: list[tuple[str, str]] = []
        blobs: dict[str, bytes] = {}
        now = time.time_ns()
        for top, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(top, name)
                st = os.lstat(full)
                # Regular files only: a link a test left would otherwise ship what it points at.
                if not stat.S_ISREG(st.st_mode):
                    continue
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                with self._lock:
                    seen = self._known.get(full)
                if seen is not None and seen[0] == stamp:
                    key = seen[1]
                else:
                    with open(full, "rb") as f:
                        data = f.read()
                    key = hashlib.blake2b(data, digest_size=20).hexdigest()
                    blobs[key] = data
                    if now - max(st.st_mtime_ns, st.st_ctime_ns) > self.RACY_S * 1e9:
                        with self._lock:
                            self._known[full] = (stamp, key)
                files.append((os.path.relpath(full, folder), key))
        return files, blobs

    def read(self, folder: Path, files: Sequence[tuple[str, str]],
             keys: Sequence[str]) -> dict[str, bytes]:
        """The blobs `keys` of a snapshot just taken of `folder`, read again."""
        wanted = set(keys)
        found = {}
        for path, key in files:
            if key in wanted and key not in found:
                found[key] = (folder / path).read_bytes()
        return found


class _Node:
    def __init__(self, node_id: str, actor: Any, slots: int) -> None:
        self.id = node_id
        self.actor = actor
        self.slots = slots
        self.busy = 0
        self.blobs: set[str] = set()


class RayExecutor:
    """Test runs spread over the nodes of a connected Ray cluster, least busy node first."""

    def __init__(self, address: str) -> None:
        import ray
        self._ray = ray
        self.address = address
        self._snapshots = _Snapshots()
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._lost: set[str] = set()
        self._placed = 0.0
        # What it did, for the benchmark and the tests: test runs that ran again after their
        # node was lost, test runs per node, and blob bytes shipped.
        self.retried = 0
        self.runs_by_node: dict[str, int] = {}
        self.bytes_sent = 0

    @classmethod
    def connect(cls, address: str) -> RayExecutor:
        """Connect to the cluster at `address` (host:port, ray://host:port, or auto): one sentence
        and nothing else if it cannot be reached."""
        try:
            import ray
        except ImportError:
            raise ClusterError("the ray executor needs Ray: pip install 'soa-git[ray]'") from None
        address = _bootstrap_address(address)
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=False, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: "
                               f"{_first_line(exc)}") from None
        executor = cls(address)
        try:
            executor.start()
        except ClusterError:
            ray.shutdown()
            raise
        return executor

    # ---- the seam --------------------------------------------------------------------------

    def start(self, **options: Any) -> None:
        """An actor on every live node, each warming its runner (the default one: a run that
        asks for another kind starts that on each node at its first test run)."""
        with self._lock:
            self._place_actors()

    def run_tests(self, workspace: Path, test_files: Sequence[str], **options: Any) -> TestResult:
        ray = self._ray
        workspace = workspace.resolve()
        python_path = [_inside(workspace, Path(p)) for p in options.pop("python_path", ())]
        timeout_s = float(options.get("timeout_s", 60.0))
        files, blobs = self._snapshots.take(workspace)
        while True:
            node = self._pick()
            try:
                answer = self._call(node, files, self._blobs_for(node, workspace, files, blobs),
                                    test_files, python_path, options, timeout_s)
                if isinstance(answer, list):
                    # The node forgot blobs it had (it dropped them to stay within its bound).
                    with self._lock:
                        node.blobs.difference_update(answer)
                    answer = self._call(node, files,
                                        self._blobs_for(node, workspace, files, blobs),
                                        test_files, python_path, options, timeout_s)
                if isinstance(answer, list):
                    raise ClusterError(f"node {node.id[:12]} keeps losing the files it is sent")
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                    ray.exceptions.ActorUnschedulableError):
                self._drop(node)
                with self._lock:
                    self.retried += 1
                continue
            finally:
                with self._lock:
                    node.busy -= 1
            with self._lock:
                node.blobs.update(key for _, key in files)
                self.runs_by_node[node.id] = self.runs_by_node.get(node.id, 0) + 1
            return answer

    def busy(self) -> dict[str, int]:
        """Test runs in flight per node in use (nodes lost are no longer listed)."""
        with self._lock:
            return {node.id: node.busy for node in self._nodes.values()}

    def node_cpu_s(self) -> float:
        """CPU seconds the live nodes' actors have used so far (what shipping and unpacking
        cost there; the test sessions' own CPU comes back in each TestResult)."""
        with self._lock:
            nodes = list(self._nodes.values())
        return sum(self._ray.get([node.actor.cpu_s.remote() for node in nodes]))

    def close(self) -> None:
        ray = self._ray
        with self._lock:
            nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            try:
                ray.get(node.actor.stop.remote(), timeout=10)
            except ray.exceptions.RayError:
                pass
            ray.kill(node.actor)
        ray.shutdown()

    # ---- nodes -----------------------------------------------------------------------------

    def _blobs_for(self, node: _Node, workspace: Path, files: Sequence[tuple[str, str]],
                   read: dict[str, bytes]) -> dict[str, bytes]:
        """The blobs of `files` that `node` does not hold yet: those just read, the others read
        again (a file unchanged since an earlier snapshot was not)."""
        with self._lock:
            needed = {key for _, key in files if key not in node.blobs}
        return {**{k: read[k] for k in needed if k in read},
                **self._snapshots.read(workspace, files, needed - read.keys())}

    def _call(self, node: _Node, files: Any, blobs: dict[str, bytes], test_files: Sequence[str],
              python_path: list[str], options: dict[str, Any], timeout_s: float) -> Any:
        with self._lock:
            self.bytes_sent += sum(len(data) for data in blobs.values())
        ref = node.actor.run.remote(files, blobs, list(test_files), python_path, options)
        return self._ray.get(ref, timeout=timeout_s + ANSWER_GRACE_S)

    def _pick(self) -> _Node:
        """The node with the lowest share of its slots busy; nodes that joined are taken in."""
        with self._lock:
            if not self._nodes or time.monotonic() - self._placed > REFRESH_S:
                self._place_actors(required=not self._nodes)
            node = min(self._nodes.values(), key=lambda n: (n.busy / n.slots, -n.slots))
            node.busy += 1
            return node

    def _drop(self, node: _Node) -> None:
        """A node that failed a call is not used again in this process (a restarted node comes
        back under a new id); the next pick places actors on any live node that lacks one."""
        with self._lock:
            self._lost.add(node.id)
            self._nodes.pop(node.id, None)
            self._place_actors(required=False)
        try:
            self._ray.kill(node.actor)
        except Exception:  # noqa: BLE001 - the actor's node is gone; nothing is left to kill
            pass

    def _place_actors(self, required: bool = True) -> None:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        remote = _remote_runner()
        self._placed = time.monotonic()
        fresh = []
        for info in ray.nodes():
            node_id = info["NodeID"]
            cpus = int(info.get("Resources", {}).get("CPU", 0))
            if not info["Alive"] or cpus < 1 or node_id in self._nodes or node_id in self._lost:
                continue
            actor = remote.options(
                # The runner's forks do the work; the actor only waits for them, so it takes no
                # CPU from Ray's accounting. Concurrency is bounded by the organizer's slots.
                num_cpus=0, max_concurrency=1000,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote()
            fresh.append((node_id, actor, cpus))
        for node_id, actor, cpus in fresh:
            try:
                ray.get(actor.ready.remote(), timeout=60)
            except ray.exceptions.RayError:
                self._lost.add(node_id)
                continue
            self._nodes[node_id] = _Node(node_id, actor, cpus)
        if required and not self._nodes:
            raise ClusterError(f"the Ray cluster at {self.address} has no live node with a CPU "
                               "left to run tests")


_runner_class: Any = None


def _remote_runner() -> Any:
    """NodeRunner as a Ray actor class, made once per process."""
    global _runner_class
    if _runner_class is None:
        import ray
        _runner_class = ray.remote(NodeRunner)
    return _runner_class


def _inside(workspace: Path, path: Path) -> str:
    """A path of the workspace as the node sees it: relative to the folder it writes."""
    try:
        return path.resolve().relative_to(workspace).as_posix()
    except ValueError:
        raise ValueError(f"{path} is outside the workspace {workspace}; the ray executor "
                         "ships only the workspace") from None


def _bootstrap_address(address: str) -> str:
    """`auto` as Ray itself resolves it (RAY_ADDRESS, else the cluster `ray start` last began
    on this machine), so that it can be checked like any address: a stale one would otherwise
    keep `ray.init` retrying for minutes."""
    if address != "auto":
        return address
    from ray._private.services import canonicalize_bootstrap_address
    try:
        found = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise ClusterError("no Ray cluster is running on this machine; start one with "
                           "`ray start --head`, or give its address with --ray-address")
    return found


def _check_reachable(address: str) -> None:
    """A plain TCP connect first: Ray itself retries an unreachable address for a long time."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        raise ClusterError(f"the Ray address {address!r} is not host:port, ray://host:port "
                           "or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: "
                           f"{exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")
