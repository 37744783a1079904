"""The `ray` executor: runs placed on the nodes of a Ray cluster, their agents' test runs and
model calls made there.

One `NodeRunner` actor per node holds that node's warmed test runner (testing's forked runner,
started in the actor's process) and a client of the model endpoint. Each run is placed on the
node with the fewest runs for its CPUs: its model calls go out from that node, and its test runs
go there too while the node has a free CPU, else to the least busy node. A test run ships the
workspace's files, which the node writes into a fresh folder before it calls the same
`testing.run_tests` the local executor calls, sandbox included, and returns its TestResult.
Files travel by content: the coordinator remembers which blobs each node already holds and sends
only the others, so an agent's repair round ships its two changed files, not its whole
workspace. soa-git's own code travels with the connection (Ray's runtime_env `py_modules`), so a
node runs exactly the coordinator's version.

A node that dies (or stops answering) costs only the test runs and model calls it held: they run
again on another node, and its runs are placed again. A test run is a pure function of the files
shipped, so its retry gives the same result and the run the same tree. Git never leaves the
coordinator: every commit and ref transaction is written there, one writer per repository.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import soa_git

from . import testing
from .errors import ClusterError, ModelError
from .llm import ChatModel, Notice, Reply, TokenLedger
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
# soa-git's package as it ships to the nodes (its caches stay here).
RUNTIME_ENV = {"py_modules": [soa_git], "excludes": ["__pycache__", "*.pyc"]}


class NodeRunner:
    """Runs test runs on one node (a Ray actor; threaded, so runs overlap)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        _remove_stale_homes()
        self._home = tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-")
        # One client per endpoint; each call's notices (retries) are gathered for its caller.
        self._chats: dict[tuple, Any] = {}
        self._notices = threading.local()
        # The warm-up overlaps the first test run's shipping.
        testing.start_runner()

    def ready(self) -> tuple[str, str]:
        """This node's id, and where its soa-git was imported from."""
        import ray
        return ray.get_runtime_context().get_node_id(), soa_git.__file__

    def complete(self, endpoint: dict[str, Any], messages: list[dict[str, str]], agent: str,
                 max_tokens: int | None) -> tuple[Reply | ModelError, list[Notice]]:
        """One model call made from this node: the reply, or the ModelError that ended it, with
        the notices it went through."""
        from .openai_chat import OpenAIChat
        key = tuple(sorted(endpoint.items()))
        with self._lock:
            chat = self._chats.get(key)
            if chat is None:
                # The caller's ledger keeps the budgets; this one only satisfies the client.
                chat = self._chats[key] = OpenAIChat(**endpoint, ledger=TokenLedger(),
                                                     on_notice=self._notice)
        self._notices.seen = []
        try:
            return chat.complete(messages, agent=agent, max_tokens=max_tokens), self._notices.seen
        except ModelError as exc:
            return exc, self._notices.seen

    def _notice(self, notice: Notice) -> None:
        self._notices.seen.append(notice)

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
    def __init__(self, node_id: str, actor: Any, slots: int, host: str) -> None:
        self.id = node_id
        self.actor = actor
        self.slots = slots
        self.host = host
        self.busy = 0
        self.runs = 0
        self.blobs: set[str] = set()


class PlacedRun:
    """One run as placed on a node: the executor its organizer uses (its test runs go to its node
    while that node has a free CPU) and the node its model calls go out from."""

    def __init__(self, executor: RayExecutor) -> None:
        self._executor = executor
        self.node = executor._place_run()

    def start(self, **options: Any) -> None:
        self._executor.start(**options)

    def run_tests(self, workspace: Path, test_files: Sequence[str], **options: Any) -> TestResult:
        return self._executor._run_tests(workspace, test_files, self, **options)

    def close(self) -> None:
        """The executor closes with the command, not with each run."""

    def current(self) -> _Node:
        """Its node, or, when that node was lost, the node it is placed on again."""
        return self._executor._replace_run(self)


class NodeModel:
    """A ChatModel whose calls go out from its run's node (the endpoint's client is `model`'s,
    opened again there); the answer comes back here, where it becomes a commit. A node that
    cannot reach the endpoint (one on this machine's loopback, for a node elsewhere) leaves the
    call to `model` itself. At most `slots` calls are in flight from all runs together."""

    def __init__(self, executor: RayExecutor, run: PlacedRun, model: Any,
                 slots: threading.BoundedSemaphore) -> None:
        self.name = model.name
        self._executor = executor
        self._run = run
        self._model = model
        self._slots = slots

    def complete(self, messages: list[dict[str, str]], *, agent: str,
                 max_tokens: int | None = None) -> Reply:
        executor, model = self._executor, self._model
        # The budgets live in the ledgers here: checked before the call, as the client here does.
        model.ledger.check(agent)
        with self._slots:
            while True:
                node = self._run.current()
                if not executor.reaches(node, model.endpoint["base_url"]):
                    return model.complete(messages, agent=agent, max_tokens=max_tokens)
                ref = node.actor.complete.remote(model.endpoint, messages, agent, max_tokens)
                try:
                    answer, notices = executor._ray.get(ref, timeout=executor.call_limit_s(model))
                except executor.lost_errors():
                    executor._drop(node)
                    with executor._lock:
                        executor.calls_retried += 1
                    continue
                with executor._lock:
                    executor.calls_by_node[node.id] = executor.calls_by_node.get(node.id, 0) + 1
                for notice in notices:
                    model.on_notice(notice)
                if isinstance(answer, ModelError):
                    raise answer
                # As the client here would have: the command's own ledger sees every call.
                model.ledger.record(agent, answer.usage)
                return answer


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
        self._call_slots: dict[int, threading.BoundedSemaphore] = {}
        # What it did, for the benchmark and the tests: test runs that ran again after their
        # node was lost, test runs per node, blob bytes shipped; the node each run was placed on
        # (in order, a run placed again after its node was lost counting again), model calls
        # per node and those made again; and where each node's soa-git came from.
        self.retried = 0
        self.runs_by_node: dict[str, int] = {}
        self.bytes_sent = 0
        self.placements: list[str] = []
        self.calls_by_node: dict[str, int] = {}
        self.calls_retried = 0
        self.code_on_node: dict[str, str] = {}
        self._here = ray.util.get_node_ip_address()

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
            # Every node runs the coordinator's own soa-git, shipped with the connection.
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=False, ignore_reinit_error=True, runtime_env=RUNTIME_ENV)
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
        return self._run_tests(workspace, test_files, None, **options)

    @contextmanager
    def placed(self, model: ChatModel, ship_calls: bool) -> Iterator[tuple[PlacedRun, ChatModel]]:
        """A run placed on a node: the executor for its organizer, and its model, whose calls go
        out from that node when `ship_calls` and the model is an endpoint's client."""
        run = PlacedRun(self)
        try:
            if ship_calls and hasattr(model, "endpoint"):
                with self._lock:
                    slots = self._call_slots.setdefault(
                        id(model), threading.BoundedSemaphore(model.endpoint["max_concurrency"]))
                model = NodeModel(self, run, model, slots)
            yield run, model
        finally:
            with self._lock:
                run.node.runs -= 1

    def _run_tests(self, workspace: Path, test_files: Sequence[str], run: PlacedRun | None,
                   **options: Any) -> TestResult:
        workspace = workspace.resolve()
        python_path = [_inside(workspace, Path(p)) for p in options.pop("python_path", ())]
        timeout_s = float(options.get("timeout_s", 60.0))
        files, blobs = self._snapshots.take(workspace)
        while True:
            node = self._pick(run.current() if run else None)
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
            except self.lost_errors():
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

    def lost_errors(self) -> tuple[type[BaseException], ...]:
        """What a call to a node that died or stopped answering raises."""
        exceptions = self._ray.exceptions
        return (exceptions.RayActorError, exceptions.GetTimeoutError,
                exceptions.ActorUnschedulableError)

    def call_limit_s(self, model: Any) -> float:
        """How long a model call made on a node may take before the node is taken for lost."""
        from .openai_chat import CALL_DEADLINE_TIMEOUTS
        return CALL_DEADLINE_TIMEOUTS * float(model.endpoint["timeout_s"]) + ANSWER_GRACE_S

    def reaches(self, node: _Node, base_url: str) -> bool:
        """Whether `node` can reach the endpoint: any node for a host name or address of the
        network, only a node of this machine for a loopback one."""
        host = urlsplit(base_url).hostname or ""
        loopback = host == "localhost" or host.startswith("127.") or host == "::1"
        return not loopback or node.host == self._here

    def _pick(self, preferred: _Node | None = None) -> _Node:
        """`preferred` while it has a free slot, else the node with the lowest share of its
        slots busy; nodes that joined are taken in."""
        with self._lock:
            if not self._nodes or time.monotonic() - self._placed > REFRESH_S:
                self._place_actors(required=not self._nodes)
            if (preferred is not None and preferred.id in self._nodes
                    and preferred.busy < preferred.slots):
                node = preferred
            else:
                node = min(self._nodes.values(), key=lambda n: (n.busy / n.slots, -n.slots))
            node.busy += 1
            return node

    def _place_run(self) -> _Node:
        """The node with the fewest runs for its slots; a run placed there counts on it."""
        with self._lock:
            if not self._nodes:
                self._place_actors()
            node = min(self._nodes.values(), key=lambda n: (n.runs / n.slots, n.busy / n.slots,
                                                            -n.slots))
            node.runs += 1
            self.placements.append(node.id)
            return node

    def _replace_run(self, run: PlacedRun) -> _Node:
        """The run's node while it lives; else the run is placed again."""
        with self._lock:
            if run.node.id in self._nodes:
                return run.node
        node = self._place_run()
        with self._lock:
            run.node = node
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
            fresh.append((node_id, actor, cpus, info["NodeManagerAddress"]))
        problems = []
        for node_id, actor, cpus, host in fresh:
            try:
                _, code = ray.get(actor.ready.remote(), timeout=60)
            except ray.exceptions.RayError as exc:
                self._lost.add(node_id)
                problems.append(f"node {node_id[:12]} at {host}: {_first_line(exc)}")
                continue
            self.code_on_node[node_id] = code
            self._nodes[node_id] = _Node(node_id, actor, cpus, host)
        if required and not self._nodes:
            raise ClusterError(f"the Ray cluster at {self.address} has no live node with a CPU "
                               "left to run tests" + "".join(f"; {p}" for p in problems[:1]))


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
