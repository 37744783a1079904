"""Is one commit slower than another at scale? The scale benchmark's CPU, A/B, on a busy machine.

    sudo python -m benchmarks.scale_ab --before v0.1.0 --after HEAD \\
        --shapes 10x2,100x3,100x3x1000 --repeat 15 --out benchmarks/results/scale_ab.json

Each commit is checked out in a worktree of its own and runs its own `benchmarks.scale` (same
interpreter, same packages) for one shape at a time (`AGENTSxDEPTH[xFILES]`, latency 0, the
scripted model), the two commits back to back in alternating order, `--repeat` times. Wall time
on a shared machine says more about the neighbours than about the code, so what is compared is
CPU time (user + system):

- `cpu_s`: the whole process tree of the benchmark's run (the benchmark's setup and scripted
  model, which both commits share, the engine, git, the test runner and every test session), as
  a cgroup counts it (`cpu_group`): the same measure for both commits, whatever either's own
  accounting misses;
- `engine_cpu_s`: the engine's own process during the run (`soa_cpu_s` of the result);
- `sessions_cpu_s`: the test sessions, as the test runner reports them (pytest in its sandbox).

The summary gives, per shape, each commit's median and range, and the median of the paired
ratios after/before (each pair ran back to back) with a 95% interval for it (order statistics,
no assumption about the distribution) and its quartiles. Needs root for the cgroup.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cpu_group import CpuGroup

ROOT = Path(__file__).resolve().parents[1]


def parse_shape(text: str) -> dict:
    agents, depth, *files = (int(p) for p in text.split("x"))
    return {"agents": agents, "depth": depth, "files": files[0] if files else 10}


def run_one(checkout: Path, shape: dict, jobs: int, scratch: Path,
            pause_while: Path | None = None) -> dict:
    while pause_while and pause_while.exists():
        time.sleep(15)
    out = scratch / "result.json"
    group = CpuGroup.new(f"soa-scale-ab-{os.getpid()}-{time.monotonic_ns()}")
    if group is None:
        raise RuntimeError("no cgroup could be made for the run: run this as root")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", "--agents", str(shape["agents"]),
             "--depth", str(shape["depth"]), "--files", str(shape["files"]), "--latency", "0",
             "--jobs", str(jobs), "--out", str(out)],
            cwd=checkout, preexec_fn=group.join, capture_output=True, text=True)
        cpu = group.cpu_s()
    finally:
        group.remove()
    if proc.returncode != 0:
        raise RuntimeError(f"the benchmark failed in {checkout}: {proc.stderr[-2000:]}")
    [result] = json.loads(out.read_text())["results"]
    if "skipped" in result or result["state"] != "done":
        raise RuntimeError(f"the run did not finish in {checkout}: {result}")
    return {"cpu_s": round(cpu, 3), "engine_cpu_s": result["soa_cpu_s"],
            "sessions_cpu_s": result["seconds"].get("test_sessions_cpu", 0.0),
            "wall_s": result["wall_s"]}


def summarize(runs: list[dict]) -> dict:
    """Per commit: median and range of each measure; the paired after/before ratios."""
    out: dict = {}
    for key in runs[0]["before"]:
        entry: dict = {}
        for side in ("before", "after"):
            values = [r[side][key] for r in runs]
            entry[side] = {"median": round(statistics.median(values), 3),
                           "min": min(values), "max": max(values)}
        ratios = sorted(r["after"][key] / r["before"][key] for r in runs)
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        low, high = median_interval(len(ratios))
        entry["ratio_median"] = round(statistics.median(ratios), 3)
        entry["ratio_median_95"] = [round(ratios[low], 3), round(ratios[high], 3)]
        entry["ratio_quartiles"] = [round(quartiles[0], 3), round(quartiles[2], 3)]
        entry["ratio_range"] = [round(ratios[0], 3), round(ratios[-1], 3)]
        out[key] = entry
    return out


def median_interval(n: int) -> tuple[int, int]:
    """Indexes into n sorted values that bound their median with at least 95% confidence,
    whatever their distribution (order statistics: the count below the median is binomial)."""
    below, k = 0.0, 0
    while k < n // 2 and below + math.comb(n, k) / 2 ** n <= 0.025:
        below += math.comb(n, k) / 2 ** n
        k += 1
    return max(k - 1, 0), min(n - k, n - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_ab",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a commit, tag or branch")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--shapes", default="10x2,100x3", help="AGENTSxDEPTH[xFILES],...")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/scale_ab.json")
    parser.add_argument("--pause-while", type=Path,
                        help="before each run, wait while this file exists (a quiet period)")
    args = parser.parse_args(argv)

    revs = {side: subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
            for side, rev in (("before", args.before), ("after", args.after))}
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    results = {s: [] for s in args.shapes.split(",")}
    scratch = Path(tempfile.mkdtemp(prefix="soa-scale-ab-"))
    checkouts = {side: scratch / side for side in revs}
    try:
        for side, rev in revs.items():
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(checkouts[side]), rev],
                           cwd=ROOT, check=True)
        for i in range(args.repeat):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for name, shape in zip(results, shapes):
                pair = {side: run_one(checkouts[side], shape, args.jobs, scratch, args.pause_while)
                        for side in order}
                results[name].append(pair)
                print(f"{name} #{i + 1}: " + ", ".join(
                    f"{side} cpu {pair[side]['cpu_s']:.2f} s (engine "
                    f"{pair[side]['engine_cpu_s']:.2f}) wall {pair[side]['wall_s']:.2f} s"
                    for side in ("before", "after")), flush=True)
                _write(Path(args.out), args, revs, results)
    finally:
        for path in checkouts.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                           capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    for name, summary in _write(Path(args.out), args, revs, results).items():
        print(f"{name}: " + "; ".join(
            f"{key} after/before {s['ratio_median']:.3f} (95% {s['ratio_median_95'][0]:.3f}"
            f"-{s['ratio_median_95'][1]:.3f})" for key, s in summary.items()))
    return 0


def _write(out: Path, args: argparse.Namespace, revs: dict, results: dict) -> dict:
    summaries = {name: summarize(runs) for name, runs in results.items() if runs}
    data = {
        "command": "python -m benchmarks.scale_ab " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load": os.getloadavg()},
        "before": revs["before"], "after": revs["after"], "jobs": args.jobs,
        "summary": summaries, "runs": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)
    return summaries


if __name__ == "__main__":
    raise SystemExit(main())
