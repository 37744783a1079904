"""What tests ask of the machine's process table."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):    # gone, or going while we read
        return False
    # A zombie is dead already; whether someone reaps it is not ours to decide.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def running(marker: str) -> list[int]:
    """The processes on this machine whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
