"""One measurement of the scale benchmark, in a process of its own (so peak memory is its own).

`python -m benchmarks.scale_worker '<json>'` runs the real engine (`soa_git.commands.run.run`) on
a prepared repository against a model server that the parent process runs, and prints one JSON
object: wall time, the run's summary, peak memory, and where the time went. The breakdown comes
from soa-git's own seams, so it counts what soa-git does, not what the model does: the git
layer's metrics hook (`soa_git.gitrepo.metrics`: every git subprocess by subcommand, object
reads and writes in process, workspaces filled and synced, commits, merges and notes) and the
test harness (the executor's `run_tests`). Those are thread-seconds: with parallel agents they
add up to more than the wall time.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import resource
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from .cpu_group import CpuGroup


class Meter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def add(self, key: str, seconds: float, n: int = 1) -> None:
        with self.lock:
            self.calls[key] += n
            self.seconds[key] += seconds

    def timed(self, key: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - start)
        wrapper.__wrapped__ = fn
        return wrapper


def instrument(meter: Meter, ray: bool = False) -> None:
    """The git layer reports to the meter through its metrics hook; the test harness is timed
    where the organizer calls it, the executor."""
    from soa_git import executor
    from soa_git.gitrepo import metrics

    metrics.use(meter.add)
    executors = [executor.LocalExecutor]
    if ray:
        from soa_git import ray_executor
        # A run's organizer calls its PlacedRun, which hands each test run to its executor.
        executors.append(ray_executor.PlacedRun)
    for cls in executors:
        run_tests = meter.timed("tests", cls.run_tests)

        def counted_run_tests(self, *args, run_tests=run_tests, **kwargs):
            result = run_tests(self, *args, **kwargs)
            meter.add("test_sessions_cpu", result.cpu_s)
            return result

        cls.run_tests = counted_run_tests


def measure(spec: dict) -> dict:
    from soa_git.commands.run import run
    # A run imports the endpoint client when it opens the model; its imports (0.4 s) are start-up,
    # not part of what the run costs, so they are done before the clock starts.
    import soa_git.openai_chat  # noqa: F401

    meter = Meter()
    on_ray = spec.get("executor", "local") == "ray"
    instrument(meter, ray=on_ray)
    repo = Path(spec["repo"])
    # Connecting to the cluster (and starting a runner on each node) is the command's start-up,
    # as the imports are: timed apart, before the clock starts.
    connect_s = 0.0
    if on_ray:
        from soa_git.commands import run as run_module
        from soa_git.ray_executor import RayExecutor
        connect_start = time.perf_counter()
        executor = RayExecutor.connect(spec["ray_address"])
        connect_s = time.perf_counter() - connect_start
        opened = run_module.open_executor
        run_module.open_executor = lambda settings: executor
        node_cpu = [executor.node_cpu_s()]
        close = executor.close

        def measured_close() -> None:
            node_cpu.append(executor.node_cpu_s())
            close()

        executor.close = measured_close
    flags = {"base_url": spec["base_url"], "max_depth": spec["depth"],
             "max_children": spec["max_children"], "jobs": spec["jobs"],
             "request_timeout": 600, "test_timeout": 120,
             "model_calls": spec.get("calls_from", "nodes"),
             # The budgets are a user's brake, not part of what is measured.
             "run_token_budget": 10 ** 12, "agent_token_budget": 10 ** 12}
    profile = cProfile.Profile() if spec.get("profile") else None
    # The parent put this process in a cgroup of its own (when it could): every process of the
    # tree is counted there, however it ends.
    group = CpuGroup(spec["cpu_group"]) if spec.get("cpu_group") else None
    tree_start = group.cpu_s() if group else 0.0
    started_at = time.time()
    start = time.perf_counter()
    cpu_start = time.process_time()
    if profile:
        profile.enable()
    [summary] = run(f"{spec['target']}::{spec['function']}", cwd=repo, flags=flags,
                    environ={"OPENAI_API_KEY": "bench", "PATH": "/usr/bin:/bin"})
    if profile:
        profile.disable()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    nodes = {}
    if on_ray:
        run_module.open_executor = opened
        nodes = {"runs_by_node": dict(executor.runs_by_node), "retried": executor.retried,
                 "bytes_shipped": executor.bytes_sent, "placements": executor.placements,
                 "calls_by_node": dict(executor.calls_by_node),
                 "node_actor_cpu_s": round(node_cpu[-1] - node_cpu[0], 3)}
    # The test runner's children are counted in RUSAGE_CHILDREN once the runner is reaped.
    from soa_git import testing
    if hasattr(testing, "stop_runner"):
        testing.stop_runner()
    tree_cpu = round(group.cpu_s() - tree_start, 3) if group else None
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "state": summary.state,
        "message": summary.message,
        "agents_run": len(summary.agents),
        "tree_depth": summary.depth,
        "passed_agents": sum(1 for a in summary.agents if a.state == "passed"),
        "tokens": summary.usage.total,
        "wall_s": round(wall, 3),
        "started_at": started_at,
        "soa_cpu_s": round(cpu, 3),
        "children_cpu_s": round(children_usage.ru_utime + children_usage.ru_stime, 3),
        "tree_cpu_s": tree_cpu,
        "peak_rss_mb": round(self_usage.ru_maxrss / 1024, 1),
        "peak_child_rss_mb": round(children_usage.ru_maxrss / 1024, 1),
        # Every workspace is a new folder filled once, and stays until the run ends.
        "peak_workspaces": meter.calls["workspace_fill"],
        "calls": dict(sorted(meter.calls.items())),
        "seconds": {k: round(v, 3) for k, v in sorted(meter.seconds.items())},
        "executor": spec.get("executor", "local"),
        "executor_connect_s": round(connect_s, 3),
        **nodes,
        "git_calls": sum(n for k, n in meter.calls.items() if k.startswith("git:")),
        "git_seconds": round(sum(v for k, v in meter.seconds.items() if k.startswith("git:")), 3),
    }
    if profile:
        stats = pstats.Stats(profile)
        stats.sort_stats("cumulative")
        rows = []
        for (file, line, fn), (cc, nc, tt, ct, _) in stats.stats.items():
            if "soa_git" in file:
                rows.append((ct, f"{Path(file).name}:{line}:{fn}", nc))
        result["profile_top"] = [{"fn": f, "cum_s": round(c, 3), "calls": n}
                                 for c, f, n in sorted(rows, reverse=True)[:25]]
    return result


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
