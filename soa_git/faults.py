"""Crash points for recovery tests: `SOA_GIT_KILL_AT=<point>:<n>` kills this process with
SIGKILL the n-th time it reaches <point>, so a test can stop a real run at an exact step
(after a model answered, while tests run, between a commit and its branch update, ...) rather
than at a lucky moment; `<point>:<n>:INT` sends SIGINT instead, as Ctrl-C does. Unset, reaching
a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "SOA_GIT_KILL_AT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def reached(point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    nth, _, kind = rest.partition(":")
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        if _counts[point] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGINT if kind == "INT" else signal.SIGKILL)
