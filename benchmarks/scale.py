"""How soa-git scales with the number of agents, the depth of the tree and the size of the repo.

    python -m benchmarks.scale --agents 1,10,100,1000 --depth 1-4 --files 10,10000 \\
        --latency 0,1 --jobs 16 --out benchmarks/results/scale.json
    python -m benchmarks.scale --agents 1,10,100,1000 --depth 1,3 --files 10 --latency 0,1 \\
        --executor local,ray --ray-nodes 2 --out benchmarks/results/scale_ray.json

For every (files, agents, depth, latency) it builds a repository of that many files, starts a
scripted model on 127.0.0.1 that answers a generated decomposition of that shape (see
`scale_shape`), and runs the real engine in a fresh process (`scale_worker`) with a time limit.
It records, per configuration:

- `wall_s` against two floors: `floor_ideal_s` = levels x latency (siblings all in parallel)
  and `floor_jobs_s` = sum over levels of ceil(agents on the level / jobs) x latency, which is
  the best any schedule can do when at most `jobs` model calls are in flight;
- `overhead_ms_per_agent` = (wall - floor_jobs) / agents: what soa-git itself costs per agent
  (git, workspaces, the test harness, bookkeeping); at latency 0 that is simply wall / agents;
  `cpu_ms_per_agent` is the CPU behind it (soa-git, git and pytest processes, as a cgroup of
  the worker's own counts them when run as root: `tree_cpu_s`), which a busy machine does not
  inflate much, split into `test_sessions_cpu_ms_per_agent` (the forked pytest
  sessions that run each agent's tests) and `machinery_cpu_ms_per_agent` (all the rest);
- `before_first_call_s` and `after_last_call_s`: the wall time before the first model call and
  after the last one ends (start-up, and the final merges and tests);
- peak memory of the engine's process and of its largest subprocess, peak live workspaces;
- git subprocesses by subcommand, and thread-seconds in workspaces, tests, commits, merges, notes.

A configuration that does not finish within `--limit` seconds is killed and recorded as skipped
with the reason. With `--repeat N` each configuration runs N times and the run with the median
wall time is recorded, with every run's wall time and overhead beside it (`runs`). Before each
run the page cache is written back (`os.sync()`), so the fresh clone's files and the last run's
writes are not written back while the run is measured.
Results go to JSON, with a PNG plot beside it.

`--executor local,ray` measures each configuration with each executor, back to back. For `ray`
the benchmark starts a Ray cluster of `--ray-nodes` nodes on this machine (`ray_cluster`), or
uses the running one at `--ray-address`, and the engine connects to it before its clock starts
(`executor_connect_s`). The test sessions then run in the nodes' processes, which are not the
engine's children: their CPU comes back with each test result (`test_sessions_cpu`), the nodes'
actors' own CPU is `node_actor_cpu_s` (with the model calls they made), and both are in
`cpu_ms_per_agent`. `runs_by_node`, `retried` and `bytes_shipped` say where the tests ran,
`placements` the node the run was placed on and `calls_by_node` where its model calls went out
from (`calls_from`: `nodes`, or `here` for `ray-here`, the ray executor with the model calls
made by the engine itself, `model_calls = "here"`), to measure what sending them from the nodes
changes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from soa_git.scripted import ScriptedServer

from . import scale_shape
from .cpu_group import CpuGroup
from .scale_plot import plot

ROOT = Path(__file__).resolve().parents[1]


def _ints(text: str) -> list[int]:
    values: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            values.extend(range(int(lo), int(hi) + 1))
        else:
            values.append(int(part))
    return values


def _floats(text: str) -> list[float]:
    return [float(p) for p in text.split(",")]


def configurations(agents: list[int], depths: list[int], files: list[int],
                   latencies: list[float], executors: tuple[str, ...] = ("local",)) -> list[dict]:
    """Every distinct shape: one agent is depth 1 whatever was asked; depth 1 has one agent.
    Each shape once per executor, one after the other."""
    seen, out = set(), []
    for f in files:
        for lat in latencies:
            for n in agents:
                for d in depths:
                    if (n == 1) != (d == 1):
                        continue
                    key = (f, n, d, lat)
                    if key not in seen:
                        seen.add(key)
                        out.extend({"files": f, "agents": n, "depth": d, "latency_s": lat,
                                    **_executor(e)} for e in executors)
    return out


def _executor(name: str) -> dict:
    """A configuration's executor: `local`, `ray` (model calls made from the nodes) or `ray-here`
    (the ray executor with its model calls made here, `model_calls = "here"`)."""
    if name == "local":
        return {}
    if name == "ray-here":
        return {"executor": "ray", "calls_from": "here"}
    if name == "ray":
        return {"executor": "ray", "calls_from": "nodes"}
    raise SystemExit(f"unknown executor {name!r}: local, ray or ray-here")


def floors(levels: list[int], latency: float, jobs: int) -> tuple[float, float]:
    ideal = len(levels) * latency
    bounded = sum(math.ceil(n / jobs) for n in levels) * latency
    return ideal, bounded


def measure_one(config: dict, *, jobs: int, limit_s: float, templates: dict[int, Path],
                scratch: Path, profile: bool = False, ray_address: str | None = None) -> dict:
    shape = scale_shape.build_shape(config["agents"], config["depth"])
    ideal, bounded = floors(shape.levels, config["latency_s"], jobs)
    record = {**config, "jobs": jobs, "levels": shape.levels, "max_children": shape.max_children,
              "floor_ideal_s": ideal, "floor_jobs_s": bounded}
    if config["files"] not in templates:
        templates[config["files"]] = scale_shape.make_template(
            scratch / f"template-{config['files']}", config["files"])
    repo = scale_shape.clone(templates[config["files"]],
                             Path(tempfile.mkdtemp(dir=scratch)) / "repo")
    # The clone's files (and the last run's) written back now, not while this run is measured.
    os.sync()
    responder = scale_shape.Responder(shape, config["latency_s"])
    # The worker's whole process tree, test runner and sessions included (root only).
    group = CpuGroup.new(f"soa-scale-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with ScriptedServer(responder) as server:
            spec = {"repo": str(repo), "base_url": server.base_url, "depth": config["depth"],
                    "max_children": shape.max_children, "jobs": jobs,
                    "target": scale_shape.TARGET, "function": scale_shape.ROOT_FUNCTION,
                    "profile": profile, "executor": config.get("executor", "local"),
                    "calls_from": config.get("calls_from", "nodes"),
                    "ray_address": ray_address, "cpu_group": group and str(group.path)}
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.scale_worker",
                                     json.dumps(spec)],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, text=True,
                                    preexec_fn=group.join if group else None)
            try:
                out, err = proc.communicate(timeout=limit_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                return {**record,
                        "skipped": f"did not finish within the {limit_s:g} s limit "
                                   f"({responder.calls} of {shape.agents} model calls made)"}
        if proc.returncode != 0:
            return {**record, "skipped": "the run failed: "
                                         f"{err.strip().splitlines()[-1:] or proc.returncode}"}
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        if group:
            group.remove()
        shutil.rmtree(repo.parent, ignore_errors=True)
    n = config["agents"]
    result.update(_timeline(responder.spans, result.pop("started_at"), result["wall_s"]))
    result.update({
        "model_calls": responder.calls, "most_calls_in_flight": responder.most,
        "overhead_ms_per_agent": round(1000 * (result["wall_s"] - bounded) / n, 1),
        "wall_over_floor": round(result["wall_s"] / bounded, 3) if bounded else None,
        # CPU (soa-git's process + git + pytest) per agent: what the wall time would be per
        # agent on one free core, whatever else the machine is doing.
        "cpu_ms_per_agent": round(1000 * _cpu_s(result) / n, 1),
        # Of that, the pytest sessions themselves (each agent's tests in a fresh sandboxed
        # process: pytest's own start-up, collection and the tests) and everything else.
        "test_sessions_cpu_ms_per_agent":
            round(1000 * result["seconds"].get("test_sessions_cpu", 0) / n, 1),
        "machinery_cpu_ms_per_agent":
            round(1000 * (_cpu_s(result) - result["seconds"].get("test_sessions_cpu", 0)) / n, 1),
        "git_calls_per_agent": round(result["git_calls"] / n, 1),
        "tokens_per_agent": round(result.get("tokens", 0) / n),
        "git_ms_per_agent": round(1000 * result["git_seconds"] / n, 1),
        "tests_ms_per_agent": round(1000 * result["seconds"].get("tests", 0) / n, 1),
        # Workspaces are handed from agent to agent, so moving one is as much its cost as
        # filling a new one.
        "workspace_ms_per_agent": round(1000 * sum(result["seconds"].get(key, 0) for key in (
            "workspace_fill", "workspace_sync")) / n, 1),
    })
    return {**record, **result}


def _cpu_s(result: dict) -> float:
    """The run's CPU: the engine, its children (git, the local test runner and its sessions), and
    on Ray the nodes' test sessions and actors, which are no children of the engine. Without a
    cgroup (not root), the engine and the children it reaped: the sandboxed runner and its
    sessions are missing then."""
    cpu = result.get("tree_cpu_s")
    if cpu is None:
        cpu = result["soa_cpu_s"] + result["children_cpu_s"]
    if result.get("executor") == "ray":
        cpu += result["seconds"].get("test_sessions_cpu", 0) + result["node_actor_cpu_s"]
    return cpu


def measure(config: dict, repeat: int, **options) -> dict:
    """The run with the median wall time of `repeat` runs, and every run's wall and overhead."""
    runs = []
    for _ in range(repeat):
        runs.append(measure_one(config, **options))
        if "skipped" in runs[-1]:
            return runs[-1]
    runs.sort(key=lambda r: r["wall_s"])
    chosen = runs[(len(runs) - 1) // 2]
    if repeat > 1:
        chosen["runs"] = [{key: r[key] for key in ("wall_s", "overhead_ms_per_agent",
                                                   "cpu_ms_per_agent")} for r in runs]
    return chosen


def _timeline(spans: list[tuple[float, float]], started_at: float, wall: float) -> dict:
    """Where the wall time went around the model calls: before the first, after the last."""
    if not spans:
        return {}
    first = min(s for s, _ in spans) - started_at
    last = max(e for _, e in spans) - started_at
    return {"before_first_call_s": round(first, 3), "after_last_call_s": round(wall - last, 3)}


def _line(r: dict) -> str:
    where = r.get("executor", "local") + ("-here" if r.get("calls_from") == "here" else "")
    head = (f"{where:>8} files={r['files']:>5} agents={r['agents']:>4} "
            f"depth={r['depth']} latency={r['latency_s']:g}s")
    if "skipped" in r:
        return f"{head}: skipped: {r['skipped']}"
    spread = ""
    if "runs" in r:
        overheads = [run["overhead_ms_per_agent"] for run in r["runs"]]
        spread = f" [{min(overheads):.0f}-{max(overheads):.0f} over {len(overheads)} runs]"
    return (f"{head}: {r['state']}, wall {r['wall_s']:.2f}s (floor {r['floor_jobs_s']:.0f}s), "
            f"overhead {r['overhead_ms_per_agent']:.0f} ms/agent{spread} "
            f"(cpu {r['cpu_ms_per_agent']:.0f}: "
            f"pytest {r['test_sessions_cpu_ms_per_agent']:.0f}, "
            f"rest {r['machinery_cpu_ms_per_agent']:.0f}), git {r['git_calls_per_agent']:.0f} "
            f"calls/agent, rss {r['peak_rss_mb']:.0f} MB, workspaces {r['peak_workspaces']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,10,100,1000")
    parser.add_argument("--depth", default="1-4")
    parser.add_argument("--files", default="10,10000")
    parser.add_argument("--latency", default="0,1")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds per configuration")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per configuration; the median one is recorded")
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    parser.add_argument("--label", default="", help="a name for this set of results")
    parser.add_argument("--profile", action="store_true",
                        help="add a cProfile top list (main thread)")
    parser.add_argument("--executor", default="local",
                        help="local, ray, ray-here, or several (local,ray,ray-here): where "
                        "agents' tests run and model calls go out from (ray-here: tests on the "
                        "cluster, model calls from the engine)")
    parser.add_argument("--ray-nodes", type=int, default=2,
                        help="nodes of the Ray cluster started on this machine (head included)")
    parser.add_argument("--ray-address",
                        help="measure on this running cluster instead of starting one")
    args = parser.parse_args(argv)

    executors = tuple(args.executor.split(","))
    configs = configurations(_ints(args.agents), _ints(args.depth), _ints(args.files),
                             _floats(args.latency), executors)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    templates: dict[int, Path] = {}
    started = time.time()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="soa-scale-"))
        ray_address = args.ray_address
        if any(e.startswith("ray") for e in executors) and ray_address is None:
            from .ray_cluster import LocalCluster
            # Its drivers (the workers) find it through the environment it sets.
            ray_address = stack.enter_context(LocalCluster(workers=args.ray_nodes - 1)).address
        for config in configs:
            r = measure(config, max(1, args.repeat), jobs=args.jobs, limit_s=args.limit,
                        templates=templates, scratch=Path(tmp), profile=args.profile,
                        ray_address=ray_address)
            results.append(r)
            print(_line(r), flush=True)
            _write(out, args, results, started)
    png = plot(results, out.with_suffix(".png"))
    _write(out, args, results, started, png)
    print(f"wrote {out}" + (f" and {png}" if png else ""))
    return 0


def _write(out: Path, args: argparse.Namespace, results: list[dict], started: float,
           png: Path | None = None) -> None:
    data = {
        "label": args.label,
        "command": "python -m benchmarks.scale " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "git": subprocess.run(["git", "--version"], capture_output=True,
                                          text=True).stdout.strip()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "jobs": args.jobs,
        "executors": args.executor,
        "ray_nodes": args.ray_nodes if "ray" in args.executor and not args.ray_address else None,
        "limit_s": args.limit,
        "repeat": args.repeat,
        "plot": str(png) if png else None,
        "results": results,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    raise SystemExit(main())
