"""Run locks: `.git/soa/locks/<run>.lock` names the process working on a run (pid, host, start),
so a second process refuses the run while the holder lives and takes over when it died.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import RepositoryError
from .core import LOCK_ATTEMPTS, Core, guard_hook


class RunLocked(RepositoryError):
    """A live process holds the run's lock."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started: str
    alive: bool


class Locks(Core):
    """Taking, reading and releasing run locks."""

    def lock_run(self, run: str) -> None:
        """Take the run's lock file, replacing one whose holder died; RunLocked if it lives."""
        guard_hook()
        path = self._lock_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        for _ in range(LOCK_ATTEMPTS):
            try:
                with open(path, "x", encoding="utf-8") as handle:
                    handle.write(record)
                return
            except FileExistsError:
                holder = self.run_lock_holder(run)
                if holder is not None and holder.alive:
                    raise RunLocked(f"run {run} is in use by process {holder.pid} on {holder.host} "
                                    "since " + holder.started) from None
                # Renaming is atomic: of two processes replacing a dead holder, one wins.
                try:
                    os.rename(path, path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}"))
                except FileNotFoundError:
                    pass
                for stale in path.parent.glob(f"{path.name}.stale-*"):
                    stale.unlink(missing_ok=True)
        raise RunLocked(f"run {run} is in use by another process")

    def unlock_run(self, run: str) -> None:
        path = self._lock_path(run)
        holder = self.run_lock_holder(run)
        if holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname():
            path.unlink(missing_ok=True)

    def run_lock_holder(self, run: str) -> LockHolder | None:
        """Who holds the run's lock, and whether that process still lives (None: nobody)."""
        try:
            data = json.loads(self._lock_path(run).read_text(encoding="utf-8"))
            pid, host, started = int(data["pid"]), str(data["host"]), str(data["started"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # A holder killed while writing its record leaves a torn file: it is not alive.
            return LockHolder(pid=0, host="", started="", alive=False)
        return LockHolder(pid=pid, host=host, started=started, alive=_process_alive(pid, host))

    def run_lock_file(self, run: str) -> Path | None:
        path = self._lock_path(run)
        return path if path.exists() else None

    def clear_stale_locks(self, run: str) -> list[Path]:
        """Remove git lock files a killed process left on this run's branches.

        Only the holder of the run's lock calls this, so no live process can own them.
        """
        stale = [p for p in (self.git_dir / "refs" / "heads" / "soa" / run).rglob("*.lock")]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def _lock_path(self, run: str) -> Path:
        return self._soa_dir / "locks" / f"{run}.lock"


def _process_alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True    # another machine sharing this .git: its processes cannot be checked
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
