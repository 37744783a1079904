"""How long `soa-git check` takes in a small repository: its start-up.

    python -m benchmarks.startup [--repeat 15] [--command check] [--staged]
                                 [--against OTHER/bin/soa-git]

Runs the installed console script (beside this interpreter) REPEAT times in a fresh repository
(with nothing staged, or with --staged one small module staged, as in an ordinary commit) and
prints one JSON line: the median wall time, the median CPU time of the process and its children
(user + system, which a busy machine inflates less), and the median of `-X importtime`'s total
for the modules the command imports (top-level imports' cumulative times).

With --against, another install's console script (say, one of main before a change) runs in
turn with this one, A B B A ..., so both see the same load; a line for each, then their ratio.

    python -m benchmarks.startup --ctrl-c [--repeat 15] [--until-ms 60]

instead sends SIGINT to `soa-git list` 0, 2, 4, ... ms after it started, REPEAT times each, and
counts what came out, with the exit status (-2: ended by the signal, which a shell shows as
130): soa-git's one line and 130 ("clean"), Python's KeyboardInterrupt traceback (the signal
came while Python itself started, before soa-git's first line ran), or nothing at all (so early
that Python had not yet set up its own handler: SIGINT's default action ends the process).
`clean_from_ms` is the first delay from which every interrupt was clean: the window soa-git
cannot close.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--command", default="check")
    parser.add_argument("--staged", action="store_true",
                        help="Stage a small module (no skeleton marked for soa-git) first.")
    parser.add_argument("--against", type=Path, metavar="SCRIPT",
                        help="Another install's soa-git console script, measured in turn.")
    parser.add_argument("--ctrl-c", action="store_true",
                        help="Measure what a Ctrl-C early in start-up shows, instead.")
    parser.add_argument("--until-ms", type=int, default=60)
    args = parser.parse_args()
    if args.ctrl_c:
        interrupts(Path(sys.executable).parent / "soa-git", args.repeat, args.until_ms)
        return
    scripts = [Path(sys.executable).parent / "soa-git"]
    if args.against:
        scripts.append(args.against)
    with tempfile.TemporaryDirectory() as folder:
        prepare(Path(folder), args.staged)
        samples: dict[Path, dict[str, list[float]]] = {
            s: {"wall_s": [], "cpu_s": [], "imports_s": []} for s in scripts}
        for round_ in range(args.repeat):
            for script in scripts if round_ % 2 == 0 else scripts[::-1]:
                wall, cpu = timed(script, args.command, folder)
                samples[script]["wall_s"].append(wall)
                samples[script]["cpu_s"].append(cpu)
                samples[script]["imports_s"].append(import_time(script, args.command, folder))
    medians = {s: {k: round(statistics.median(v), 3) for k, v in samples[s].items()}
               for s in scripts}
    for script in scripts:
        print(json.dumps({"script": str(script), "command": args.command, "repeat": args.repeat,
                          "staged": args.staged, **medians[script]}))
    if args.against:
        ours, theirs = (medians[s]["cpu_s"] for s in scripts)
        print(json.dumps({"cpu_ratio": round(ours / theirs, 2) if theirs else None}))


def interrupts(script: Path, repeat: int, until_ms: int) -> None:
    outcomes: dict[int, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as folder:
        prepare(Path(folder), staged=False)
        for _ in range(repeat):
            for delay in range(0, until_ms + 1, 2):
                process = subprocess.Popen([str(script), "list"], cwd=folder, text=True,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(delay / 1000)
                process.send_signal(signal.SIGINT)
                _, err = process.communicate()
                kind = ("clean" if (process.returncode, err) == (130, "interrupted\n") else
                        "finished_first" if process.returncode == 0 else
                        "python_traceback" if "KeyboardInterrupt" in err else
                        "killed_silently" if process.returncode == -signal.SIGINT and not err
                        else "other")
                counts = outcomes.setdefault(delay, {})
                key = f"{kind} (exit {process.returncode})"
                counts[key] = counts.get(key, 0) + 1
    unclean = [d for d, counts in outcomes.items()
               if any(not key.startswith(("clean", "finished_first")) for key in counts)]
    print(json.dumps({"script": str(script), "repeat": repeat,
                      "clean_from_ms": max(unclean) + 2 if unclean else 0,
                      "outcomes_by_delay_ms": outcomes}))


def prepare(folder: Path, staged: bool) -> None:
    def git(*command: str) -> None:
        subprocess.run(["git", "-C", str(folder), "-c", "user.name=b", "-c", "user.email=b@b",
                        *command], check=True)

    git("init", "-q", "-b", "main")
    git("commit", "-q", "--allow-empty", "-m", "x")
    if staged:
        (folder / "calc.py").write_text('def add(a, b):\n    """a + b"""\n    return a + b\n')
        git("add", "calc.py")


def timed(script: Path, command: str, folder: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the process and its children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run([str(script), command], cwd=folder, check=True, capture_output=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def import_time(script: Path, command: str, folder: str) -> float:
    """What the command imports as it runs: the sum of the top-level imports' cumulative time,
    under the script's own interpreter (the one beside it)."""
    lines = subprocess.run([str(script.parent / "python"), "-X", "importtime", "-c",
                            "import sys; from soa_git.entry import main; "
                            f"sys.argv = ['soa-git', '{command}']; main()"],
                           capture_output=True, text=True, cwd=folder).stderr.splitlines()
    fields = [line.split("|") for line in lines if line.startswith("import time:")]
    return sum(int(f[1]) for f in fields
               if f[1].strip().isdigit() and not f[2].startswith("  ")) / 1e6


if __name__ == "__main__":
    main()
