"""What the sandbox adds to one test run: CPU and wall time, sandboxed and not, side by side.

    python -m benchmarks.sandbox_cost [--runs 40] [--rounds 3]

Each round starts a fresh runner per mode, waits for its warm-up, times `--runs` runs of one
trivial passing test, and stops the runner; the rounds alternate the modes, so a machine shared
with other work slows both alike (compare the ratio, not the absolute numbers, there). CPU is what
the runner's process tree used during the runs (its warm-up before them is not counted), plus
this process's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from soa_git import testing


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process, the children it reaped, and its live descendants."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    tree, total = {pid}, 0
    for child in sorted(stats):
        if stats[child][0] in tree:
            tree.add(child)
    for member in tree:
        total += stats.get(member, (0, 0))[1]
    return total / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_round(workspace: Path, runs: int, sandboxed: bool) -> dict:
    """Per-run CPU (ms) and wall (ms) of `runs` runs with a fresh runner."""
    testing.stop_runner()
    testing.start_runner(sandboxed)
    testing.run_tests(workspace, ["test_one.py"], sandboxed=sandboxed)  # waits for the warm-up
    runner = testing._runners[sandboxed]._proc.pid
    cpu, own = _tree_cpu(runner), _self_cpu()
    start = time.perf_counter()
    for _ in range(runs):
        assert testing.run_tests(workspace, ["test_one.py"], sandboxed=sandboxed).ok
    wall = time.perf_counter() - start
    cpu, own = _tree_cpu(runner) - cpu, _self_cpu() - own
    testing.stop_runner()
    return {"cpu_ms": 1000 * (cpu + own) / runs, "runner_cpu_ms": 1000 * cpu / runs,
            "wall_ms": 1000 * wall / runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        (workspace / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
        rounds: dict[str, list[dict]] = {"sandboxed": [], "unsandboxed": []}
        for _ in range(args.rounds):
            for mode in rounds:
                rounds[mode].append(one_round(workspace, args.runs, mode == "sandboxed"))
    keys = ("cpu_ms", "runner_cpu_ms", "wall_ms")
    result = {mode: {key: round(statistics.median(r[key] for r in runs), 1) for key in keys}
              for mode, runs in rounds.items()}
    result["ratio_cpu"] = round(result["sandboxed"]["cpu_ms"]
                                / result["unsandboxed"]["cpu_ms"], 2)
    result["ratio_wall"] = round(result["sandboxed"]["wall_ms"]
                                 / result["unsandboxed"]["wall_ms"], 2)
    print(json.dumps({"runs": args.runs, "rounds": args.rounds, **result}, indent=2))


if __name__ == "__main__":
    main()
