"""What one remote test run costs in transport alone, on Ray and on Dask distributed.

    python -m benchmarks.executor_roundtrip --calls 300 \\
        --out benchmarks/results/executor_roundtrip.json

Both engines get a cluster of two worker processes on this machine (Ray: a head and a second node,
`ray_cluster`; Dask: a scheduler and two worker processes on 127.0.0.1). Each call sends what a
test run sends, a workspace's blobs (`--payload` bytes) and the file list, to a chosen node and
gets a small answer back; the node does no work, so what is timed is the engine: the call's
round trip, one at a time and `--concurrency` at once (as the organizer's test slots make them).
It also records how long the cluster took to start and connect, and the memory of its processes.
This is the measurement behind "why Ray, not Dask" in docs/ray.md; Dask is not a dependency of
soa-git (`pip install distributed` to run this).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def answer(blobs: dict[str, bytes], files: list[tuple[str, str]]) -> int:
    """The node's side: as small as a test result, as cheap as nothing."""
    return sum(len(data) for data in blobs.values()) + len(files)


class Node:
    def run(self, blobs: dict[str, bytes], files: list[tuple[str, str]]) -> int:
        return answer(blobs, files)


def payload(size: int) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    count = 4
    blobs = {f"{i:040x}": os.urandom(size // count) for i in range(count)}
    return blobs, [(f"pkg/mod{i}.py", key) for i, key in enumerate(blobs)]


def timed_calls(call, n: int, concurrency: int) -> dict:
    """Per-call latency (ms) of `n` calls made `concurrency` at a time, and calls per second."""
    def one(i: int) -> float:
        start = time.perf_counter()
        call(i)
        return 1000 * (time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = sorted(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    return {"median_ms": round(statistics.median(latencies), 2),
            "p90_ms": round(latencies[int(0.9 * (n - 1))], 2),
            "calls_per_s": round(n / wall, 1)}


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{entry}/statm").read_text().split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(status[1]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return round(total / 2 ** 20, 1)


def measure_ray(calls: int, concurrency: int, size: int) -> dict:
    from .ray_cluster import LocalCluster

    start = time.perf_counter()
    with LocalCluster(workers=1) as cluster:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            remote = ray.remote(Node)
            nodes = [remote.options(num_cpus=0, max_concurrency=1000,
                                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                                        n["NodeID"], soft=False)).remote()
                     for n in ray.nodes() if n["Alive"]]
            blobs, files = payload(size)
            ray.get([node.run.remote({}, []) for node in nodes])
            started_s = time.perf_counter() - start
            result = {"nodes": len(nodes), "start_s": round(started_s, 2),
                      "rss_mb": tree_rss_mb(os.getpid())}

            def call(i: int) -> int:
                return ray.get(nodes[i % len(nodes)].run.remote(blobs, files))

            call(0)
            result["one_at_a_time"] = timed_calls(call, calls, 1)
            result[f"{concurrency}_at_once"] = timed_calls(call, calls, concurrency)
            return result
        finally:
            ray.shutdown()


def measure_dask(calls: int, concurrency: int, size: int) -> dict:
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=concurrency, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        blobs, files = payload(size)
        client.gather([client.submit(answer, {}, [], workers=[w], pure=False)
                       for w in workers])
        result = {"nodes": len(workers), "start_s": round(time.perf_counter() - start, 2),
                  "rss_mb": tree_rss_mb(os.getpid())}

        def call(i: int) -> int:
            # A task pinned to a worker, as a test run is pinned to a node's runner.
            return client.submit(answer, blobs, files, workers=[workers[i % len(workers)]],
                                 pure=False).result()

        call(0)
        result["one_at_a_time"] = timed_calls(call, calls, 1)
        result[f"{concurrency}_at_once"] = timed_calls(call, calls, concurrency)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.executor_roundtrip",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--payload", type=int, default=8192, help="bytes shipped per call")
    parser.add_argument("--out", default="benchmarks/results/executor_roundtrip.json")
    args = parser.parse_args(argv)
    results = {}
    for name, measure in (("ray", measure_ray), ("dask", measure_dask)):
        results[name] = measure(args.calls, args.concurrency, args.payload)
        print(name, json.dumps(results[name]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python -m benchmarks.executor_roundtrip "
                                          + " ".join(sys.argv[1:] if argv is None else argv),
                               "calls": args.calls, "concurrency": args.concurrency,
                               "payload_bytes": args.payload, "results": results}, indent=1)
                   + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
