"""How long `soa-git run FILE` takes to find a file's skeletons, before its first model call.

    python -m benchmarks.skeletons --counts 1000,2000,10000 [--limit 600]

For each count it writes a file of that many skeletons into a fresh repository, commits it, and
times `soa_git.targets.find_targets` (read the file at HEAD, check it parses, find every skeleton
and check each is one): everything `soa-git run FILE` does before its first run starts. A count
whose measurement would pass `--limit` seconds is stopped and recorded as such. Prints one JSON
line per count.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import tempfile
import time
from pathlib import Path


def skeleton_file(count: int) -> str:
    # Non-ASCII text: character offsets then differ from byte offsets, the slow case.
    functions = [f'def f{i}(x: int) -> int:\n    """Return x plus {i}; ünïcödé."""\n    ...\n'
                 for i in range(count)]
    return '"""Many skeletons."""\n\n\n' + "\n\n".join(functions)


def _measure(count: int, out) -> None:
    from soa_git.gitrepo import GitRepo
    from soa_git.targets import find_targets

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "many.py").write_text(skeleton_file(count), encoding="utf-8")
        for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                     ["-c", "user.name=b", "-c", "user.email=b@example.com", "commit", "-qm", "x"]):
            subprocess.run(["git", "-C", folder, *args], check=True)
        repo = GitRepo.open(root)
        started = time.perf_counter()
        found = find_targets(repo, root / "many.py", None)
        out.put({"skeletons": count, "found": len(found),
                 "seconds": round(time.perf_counter() - started, 3)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,2000,10000")
    parser.add_argument("--limit", type=float, default=600.0)
    args = parser.parse_args()
    for count in (int(c) for c in args.counts.split(",")):
        out: multiprocessing.Queue = multiprocessing.Queue()
        worker = multiprocessing.Process(target=_measure, args=(count, out))
        worker.start()
        worker.join(args.limit)
        if worker.is_alive():
            worker.kill()
            print(json.dumps({"skeletons": count, "stopped_after_s": args.limit}), flush=True)
        else:
            print(json.dumps(out.get()), flush=True)


if __name__ == "__main__":
    main()
