"""Where the git layer's time goes: a seam for the scale benchmark, off unless a meter is set.

The layer reports what it does under fixed names: `git:<subcommand>` for each git process,
`workspace_fill` and `workspace_sync`, `commit_files`, `merge`, `start_branch`, `append_note`,
`ref_writes` (each note or branch move asked for), `object_reads` and `object_writes` in
process, and `notes_commit_object_writes` for the objects written inside a notes commit. A meter
is called with the name and the seconds it took, from whichever thread did it.
"""

from __future__ import annotations

import functools
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

Meter = Callable[[str, float], None]
F = TypeVar("F", bound=Callable)

_meter: Meter | None = None
_inside = threading.local()


def use(meter: Meter | None) -> None:
    """Report to `meter` from now on (None: stop reporting)."""
    global _meter
    _meter = meter


@contextmanager
def measure(name: str) -> Iterator[None]:
    meter = _meter
    if meter is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        meter(name, time.perf_counter() - start)
        scope = getattr(_inside, "name", None)
        if scope is not None and name == "object_writes":
            meter(f"{scope}_object_writes", 0.0)


def measured(name: str) -> Callable[[F], F]:
    """A function (or method) measured under `name` each time it is called."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if _meter is None:
                return fn(*args, **kwargs)
            with measure(name):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


@contextmanager
def inside(scope: str) -> Iterator[None]:
    """Objects written in this thread meanwhile are also reported as `<scope>_object_writes`."""
    _inside.name = scope
    try:
        yield
    finally:
        _inside.name = None
