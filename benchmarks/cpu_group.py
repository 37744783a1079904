"""The CPU time of a whole process tree, as a cgroup of its own counts it.

`getrusage(RUSAGE_CHILDREN)` counts a child only once its parent has waited for it, and only up
a chain of parents that all wait: the test runner runs inside bwrap's PID namespace, whose
processes reach the benchmark's worker that way no more (their CPU was simply missing). A cgroup
counts every process that was ever in it, however it ended. Making one needs root (cgroup v1's
cpuacct, else cgroup v2's cpu.stat); without, `CpuGroup.new` gives None.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpuacct")
V2 = Path("/sys/fs/cgroup")


class CpuGroup:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def new(cls, name: str) -> CpuGroup | None:
        try:
            path = (V1 if V1.is_dir() else V2) / name
            path.mkdir()
        except OSError:
            return None
        return cls(path)

    def join(self) -> None:
        """Move this process into the group: whatever it starts from now on is counted. (In a
        child before it runs the measured program: `Popen(preexec_fn=group.join)`.)"""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_s(self) -> float:
        """User and system CPU of every process that has been in the group."""
        if (self.path / "cpuacct.usage").exists():
            return int((self.path / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6

    def remove(self) -> None:
        """Kill whatever of the tree outlived the measurement, then remove the group."""
        for _ in range(50):
            pids = (self.path / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        self.path.rmdir()
