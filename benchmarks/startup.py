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

    python -m benchmarks.startup --ctrl-c [--repeat 15] [--until-ms 60] [--script SCRIPT]

instead sends SIGINT to `soa-git list` (or SCRIPT's) 0, 2, 4, ... ms after it started, REPEAT
times each, and counts what came out, with the exit status (-2: ended by the signal, which a
shell shows as 130): soa-git's one line and 130 ("clean"), Python's KeyboardInterrupt traceback
(the signal came after Python had set up its own handler, before soa-git's), or nothing at all
(so early that Python had not yet set up its own handler: SIGINT's default action ends the
process). `clean_from_ms` is the first delay from which every interrupt was clean. Sleeping
overshoots on a busy machine, so the delays are lower bounds; the window itself is measured
exactly too: `handler_window_ms`, the time from Python's SIGINT handler to soa-git's (the two
rt_sigaction calls, timed by strace; null without it), and `window_imports_ms`, what Python
imports in between (`-X importtime`: `site`, with every .pth file of the environment, and the
console script's own imports), medians of REPEAT runs. `at_file_opens` needs no clock at all:
strace delivers the SIGINT as the process opens its k-th file, for each k up to the first file
opened after soa-git's handler, and the outcomes are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
    parser.add_argument("--script", type=Path,
                        help="With --ctrl-c: this console script instead of the one beside "
                             "this interpreter (say, of a `pip install .` next to an -e one).")
    args = parser.parse_args()
    if args.ctrl_c:
        interrupts(args.script or Path(sys.executable).parent / "soa-git", args.repeat,
                   args.until_ms)
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
                key = outcome(process.returncode, err)
                counts = outcomes.setdefault(delay, {})
                counts[key] = counts.get(key, 0) + 1
        windows = [w for w in (handler_window(script, folder) for _ in range(repeat)) if w]
        at_opens = at_file_opens(script, folder)
        imports = [window_imports(script, folder) for _ in range(repeat)]
    unclean = [d for d, counts in outcomes.items()
               if any(not key.startswith(("clean", "finished_first")) for key in counts)]
    tracebacks = {d: sum(n for key, n in counts.items() if key.startswith("python_traceback"))
                  for d, counts in outcomes.items()}
    print(json.dumps({
        "script": str(script), "repeat": repeat,
        "clean_from_ms": max(unclean) + 2 if unclean else 0,
        "tracebacks": sum(tracebacks.values()),
        "handler_window_ms": {"median": round(statistics.median(windows), 1),
                              "max": round(max(windows), 1)} if windows else None,
        "window_imports_ms": {name: round(statistics.median(i.get(name, 0) for i in imports), 1)
                              for name in dict.fromkeys(n for i in imports for n in i)},
        "at_file_opens": at_opens,
        "tracebacks_by_delay_ms": tracebacks,
        "outcomes_by_delay_ms": outcomes}))


def outcome(returncode: int, err: str) -> str:
    # A traceback with exit 0: Python's start-up caught the KeyboardInterrupt (it does while it
    # checks whether the script is a zip file) and soa-git ran on.
    kind = ("clean" if (returncode, err) == (130, "interrupted\n") else
            "python_traceback" if "KeyboardInterrupt" in err else
            "finished_first" if returncode == 0 else
            "killed_silently" if returncode == -signal.SIGINT and not err else "other")
    return f"{kind} (exit {returncode})"


def at_file_opens(script: Path, folder: str) -> dict | None:
    """The same without a clock: strace delivers SIGINT as the process opens its k-th file, for
    every k up to the first file opened after soa-git's handler, so the outcome of a Ctrl-C at
    each step of Python's start-up is exact whatever the load (strace's exit status is the
    process's). None without strace."""
    strace = shutil.which("strace")
    if not strace:
        return None
    with tempfile.TemporaryDirectory() as traces:
        log = Path(traces) / "trace"
        subprocess.run([strace, "-qq", "-e", "trace=openat,rt_sigaction", "-o", str(log),
                        str(script), "list"], cwd=folder, check=True, capture_output=True)
        opened, python_handler, ours = opens_and_handlers(log.read_text())
    counts: dict[str, int] = {}
    for k in range(1, ours + 2):
        done = subprocess.run([strace, "-qq", "-o", os.devnull, "-e", "trace=openat", "-e",
                               f"inject=openat:signal=SIGINT:when={k}", str(script), "list"],
                              cwd=folder, capture_output=True, text=True)
        key = outcome(done.returncode, done.stderr)
        counts[key] = counts.get(key, 0) + 1
    return {"opened_before_python_handler": python_handler,
            "opened_between_the_handlers": ours - python_handler,
            "last_opened_before_ours": opened[ours - 1], "outcomes": counts}


def opens_and_handlers(trace: str) -> tuple[list[str], int, int]:
    """From `strace -e trace=openat,rt_sigaction` lines of one process: the files it opened, in
    order, and how many it had opened when Python installed its SIGINT handler and when
    soa-git installed its own."""
    opened: list[str] = []
    handlers: list[int] = []
    for line in trace.splitlines():
        if line.startswith("openat("):
            opened.append(line.split('"')[1])
        elif line.startswith("rt_sigaction(SIGINT, {"):
            handlers.append(len(opened))
    return opened, handlers[0], handlers[1]


def handler_window(script: Path, folder: str) -> float | None:
    """Milliseconds from Python's SIGINT handler to soa-git's, in one `soa-git list`: the times
    strace gives the two rt_sigaction calls that install them (Python's own calls first only
    ask, with no new action). None without strace."""
    strace = shutil.which("strace")
    if not strace:
        return None
    with tempfile.TemporaryDirectory() as traces:
        log = Path(traces) / "trace"
        # -f with --seccomp-bpf stops the process at rt_sigaction calls only, not at every call.
        subprocess.run([strace, "-f", "--seccomp-bpf", "-qq", "-ttt", "-e", "trace=rt_sigaction",
                        "-o", str(log), str(script), "list"],
                       cwd=folder, check=True, capture_output=True)
        return sigint_window(log.read_text())


def sigint_window(trace: str) -> float | None:
    """The milliseconds between the first two SIGINT handlers the first process installed, in
    `strace -f -ttt` lines ("PID SECONDS rt_sigaction(SIGINT, {sa_handler=...")."""
    installs = [line.split() for line in trace.splitlines() if "rt_sigaction(SIGINT, {" in line]
    first = [float(fields[1]) for fields in installs if fields[0] == installs[0][0]][:2]
    return round((first[1] - first[0]) * 1000, 3) if len(first) == 2 else None


def window_imports(script: Path, folder: str) -> dict[str, float]:
    """What the console script imports between Python's SIGINT handler (`_signal`) and soa-git's
    (after soa_git.entry): each top-level import's cumulative milliseconds."""
    lines = subprocess.run([str(script.parent / "python"), "-X", "importtime", str(script),
                            "list"], capture_output=True, text=True, cwd=folder).stderr
    found: dict[str, float] = {}
    started = False
    for fields in (line.split("|") for line in lines.splitlines()
                   if line.startswith("import time:") and line.count("|") == 2):
        name = fields[2].strip()
        if fields[2].startswith("  ") or not fields[1].strip().isdigit():
            continue
        if started:
            found[name] = int(fields[1]) / 1000
        started = started or name == "_signal"
        if name == "soa_git.entry":
            break
    return found


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
