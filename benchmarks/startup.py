"""How long `soa-git check` takes in a small repository with nothing staged: its start-up.

    python -m benchmarks.startup [--repeat 15] [--command check]

Runs the installed console script (beside this interpreter) REPEAT times in a fresh repository
and prints one JSON line: the median wall time, the median CPU time of the process and its
children (user + system, which a busy machine inflates less), and `-X importtime`'s total for
the modules the command imports (top-level imports' cumulative times).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    args = parser.parse_args()
    script = Path(sys.executable).parent / "soa-git"
    with tempfile.TemporaryDirectory() as folder:
        for command in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "x"]):
            subprocess.run(["git", "-C", folder, "-c", "user.name=b", "-c", "user.email=b@b",
                            *command], check=True)
        walls, cpus = [], []
        for _ in range(args.repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            subprocess.run([str(script), args.command], cwd=folder, check=True,
                           capture_output=True)
            walls.append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        # What the command imports, as it runs: the sum of the top-level imports' cumulative time.
        imports = subprocess.run([sys.executable, "-X", "importtime", "-c",
                                  "import sys; from soa_git.entry import main; "
                                  f"sys.argv = ['soa-git', '{args.command}']; main()"],
                                 capture_output=True, text=True, cwd=folder,
                                 env={**os.environ}).stderr.splitlines()
    cumulative = sum(int(line.split("|")[1]) for line in imports
                     if line.startswith("import time:") and line.split("|")[1].strip().isdigit()
                     and not line.split("|")[2].startswith("  "))
    print(json.dumps({"command": args.command, "repeat": args.repeat,
                      "wall_s": round(statistics.median(walls), 3),
                      "cpu_s": round(statistics.median(cpus), 3),
                      "imports_s": round(cumulative / 1e6, 3)}))


if __name__ == "__main__":
    main()
