"""A real Ray cluster of several nodes on this machine, for the Ray tests and the benchmark.

Each node is a raylet of its own (the head also runs the GCS), started by Ray's own
`ray.cluster_utils.Cluster`, as Ray's tests start theirs; a node can be killed alone, which is how
the tests take a worker node away mid-run. Everything stays on 127.0.0.1 and in a temporary
directory of its own (Ray's sockets, logs and its "current cluster" file), and `stop` ends every
process the cluster started.

Ray replaces a loopback node address with the machine's routable one unless multi-node clusters
are switched off for the OS; on Linux that switch only makes the address 127.0.0.1, which is what
a cluster confined to this machine wants. It must be set before `ray` is imported, and every
process that talks to the cluster (drivers included) needs it: `ENV` holds it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

# Ray's settings for a small cluster on this machine, applied to this process and inherited by
# every process of the cluster and every driver it starts.
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
OBJECT_STORE_BYTES = 100 * 1024 * 1024


class LocalCluster:
    """A head and `workers` more nodes, `cpus` logical CPUs each (the head `head_cpus`, if
    given: with 0 it runs no tests, so losing the workers loses every node that does)."""

    def __init__(self, workers: int = 1, cpus: int = 1, head_cpus: int | None = None) -> None:
        # Short: Ray's socket paths live under it and a socket path has at most 107 bytes.
        self.tmp = tempfile.mkdtemp(prefix="soaray-", dir="/tmp")
        self._saved = {key: os.environ.get(key) for key in (*ENV, "RAY_TMPDIR")}
        os.environ.update(ENV)
        os.environ["RAY_TMPDIR"] = self.tmp
        from ray.cluster_utils import Cluster
        self.cpus = cpus
        self._cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                                head_node_args={**self._node_args(),
                                                "num_cpus": cpus if head_cpus is None
                                                else head_cpus})
        self.workers: list[Any] = []
        try:
            for _ in range(workers):
                self.add_node()
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return self._cluster.address

    def env(self) -> dict[str, str]:
        """What a driver process needs to find and reach this cluster."""
        return {**ENV, "RAY_TMPDIR": self.tmp}

    def _node_args(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus, "object_store_memory": OBJECT_STORE_BYTES,
                "include_dashboard": False, "node_ip_address": "127.0.0.1"}

    def add_node(self) -> Any:
        node = self._cluster.add_node(**self._node_args())
        self.workers.append(node)
        # A node's processes are up before the cluster lists it alive: a driver that asked in
        # between saw one worker of two and put both runs on it.
        self._cluster.wait_for_nodes()
        return node

    def kill(self, node: Any) -> None:
        """Kill a worker node's processes at once (SIGKILL), as a crashed machine would go."""
        self._cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)
        self._cluster.wait_for_nodes()

    def stop(self) -> None:
        try:
            self._cluster.shutdown()
        finally:
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
