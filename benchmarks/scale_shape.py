"""The simulated workload of the scale benchmark: a tree of a known shape, the repository it runs
in, and a scripted model that answers every step of that tree instantly or after a fixed latency.

Shape: level 0 is the root; the `agents - 1` other agents are spread over levels 1..depth-1 in a
geometric progression (level k holds about r**k agents, r chosen so the levels add up), each level's
agents dealt round-robin to the agents of the level above. So 10 agents at depth 4 is 1+2+3+4,
1000 at depth 3 is 1+31+968. Every function is `f(x: int) -> int`; a leaf returns `x + 1`, a
Mother the sum of her helpers, so f(0) is the number of leaves under f and every test passes at
the first try: each agent costs exactly one model call, which makes the critical path exact.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TARGET = "app/core.py"
ROOT_FUNCTION = "total"
_GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


def level_counts(agents: int, depth: int) -> list[int]:
    """Agents per level, the root's level first; sums to `agents`, `depth` levels when possible."""
    if agents < 1 or depth < 1:
        raise ValueError("agents and depth must be at least 1")
    levels = min(depth, agents)
    if levels == 1:
        return [1]
    rest = agents - 1
    lo, hi = 1.0, float(rest)
    for _ in range(100):
        r = (lo + hi) / 2
        if sum(r ** k for k in range(1, levels)) < rest:
            lo = r
        else:
            hi = r
    counts = [max(1, round(r ** k)) for k in range(1, levels)]
    counts[-1] = rest - sum(counts[:-1])
    while counts[-1] < 1:            # rounding overshot: take from the widest inner level
        widest = max(range(len(counts) - 1), key=lambda i: counts[i])
        counts[widest] -= 1
        counts[-1] += 1
    return [1, *counts]


@dataclass
class Shape:
    agents: int
    depth: int
    levels: list[int]
    children: dict[str, list[str]] = field(default_factory=dict)   # agent path -> child names
    leaves: dict[str, int] = field(default_factory=dict)           # agent path -> leaves under it

    @property
    def max_children(self) -> int:
        return max([len(c) for c in self.children.values()] + [1])

    @property
    def levels_with_calls(self) -> int:
        return len(self.levels)


def build_shape(agents: int, depth: int) -> Shape:
    levels = level_counts(agents, depth)
    shape = Shape(agents=agents, depth=depth, levels=levels)
    previous = [ROOT_FUNCTION]
    shape.children[ROOT_FUNCTION] = []
    for level, count in enumerate(levels[1:], start=1):
        current = []
        for i in range(count):
            parent = previous[i % len(previous)]
            name = f"f{level}_{i}"
            path = f"{parent}.{name}"
            shape.children[parent].append(name)
            shape.children[path] = []
            current.append(path)
        previous = current

    def count_leaves(path: str) -> int:
        kids = shape.children[path]
        shape.leaves[path] = 1 if not kids else sum(count_leaves(f"{path}.{k}") for k in kids)
        return shape.leaves[path]

    count_leaves(ROOT_FUNCTION)
    return shape


def _skeleton(name: str) -> str:
    return (f'def {name}(x: int) -> int:\n    """The sum of its helpers at x (a leaf: x + 1).\n\n'
            f'    >>> {name}(0) >= 1\n    True\n    """\n    ...\n')


def root_skeleton() -> str:
    return _skeleton(ROOT_FUNCTION)


def answer(shape: Shape, task: str, path: str) -> str:
    """The scripted model's answer to `soa-git task: <task> <path>`."""
    name = path.rsplit(".", 1)[-1]
    kids = shape.children[path]
    own_test = f"\n\ndef test_{name}_at_zero():\n    assert {name}(0) == {shape.leaves[path]}\n" \
        if path == ROOT_FUNCTION else ""
    if task == "decompose" and kids:
        body = " + ".join(f"{k}(x)" for k in kids)
        helpers = "\n\n".join(_skeleton(k) for k in kids)
        tests = "\n\n".join(f"def test_{k}():\n    assert {k}(0) == {shape.leaves[f'{path}.{k}']}\n"
                            for k in kids)
        return (f"Split into {len(kids)} helpers.\n\n```python\n"
                f"def {name}(x: int) -> int:\n    return {body}\n\n\n"
                f"{helpers}\n\n{tests}{own_test}```\n")
    return f"Direct.\n\n```python\ndef {name}(x: int) -> int:\n    return x + 1\n{own_test}```\n"


class Responder:
    """Answers each request after `latency_s`; counts calls and the most in flight at once."""

    def __init__(self, shape: Shape, latency_s: float):
        self.shape = shape
        self.latency_s = latency_s
        self.calls = 0
        self.in_flight = 0
        self.most = 0
        self.spans: list[tuple[float, float]] = []   # (start, end) of each call, epoch seconds
        self._lock = threading.Lock()

    def __call__(self, request: dict) -> str:
        first = request["messages"][-1]["content"].splitlines()[0]
        task, path = first.removeprefix("soa-git task: ").split(" ", 1)
        start = time.time()
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            if self.latency_s:
                time.sleep(self.latency_s)
            return answer(self.shape, task, path)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.spans.append((start, time.time()))


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(repo), **_GIT_ENV})


def make_template(path: Path, files: int) -> Path:
    """A repository of `files` files: the target package `app/` (2 files) and generated modules
    `lib/pkgNN/modNNNN.py` (100 per folder) for the rest; one commit."""
    path.mkdir(parents=True)
    (path / "app").mkdir()
    (path / "app" / "__init__.py").write_text("")
    (path / TARGET).write_text(root_skeleton())
    for i in range(max(0, files - 2)):
        folder = path / "lib" / f"pkg{i // 100:03d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"mod{i:05d}.py").write_text(
            f'"""Generated module {i}."""\n\n\ndef value_{i}() -> int:\n    return {i}\n')
    _git(path, "init", "-q", "-b", "main")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", f"{files} files")
    return path


def clone(template: Path, path: Path) -> Path:
    """A fresh copy of the template for one measurement (objects hardlinked, files checked out)."""
    subprocess.run(["git", "clone", "-q", "--local", str(template), str(path)], check=True,
                   capture_output=True, env={"PATH": "/usr/bin:/bin", "HOME": str(template)})
    return path
