"""The scale benchmark's plot: overhead per agent, git calls per agent and peak memory against
the number of agents, one line per (executor, files, depth, latency).

Uses matplotlib (Agg) when it is installed; otherwise a small built-in PNG writer draws the same
three log-x panels without text (the JSON beside it holds the numbers and the legend).
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

PANELS = (("overhead_ms_per_agent", "soa-git overhead per agent (ms)"),
          ("cpu_ms_per_agent", "CPU per agent, all processes (ms)"),
          ("git_calls_per_agent", "git subprocesses per agent"),
          ("peak_rss_mb", "peak RSS of the engine (MB)"))
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _executor(r: dict) -> str:
    """Lines of the local executor keep their old names; others are named by their executor."""
    if r.get("executor", "local") == "local":
        return ""
    return f"{r['executor']}" + (" (calls here)" if r.get("calls_from") == "here" else "") + ": "


def series(results: list[dict]) -> dict[str, list[dict]]:
    lines: dict[str, list[dict]] = {}
    for r in results:
        if "skipped" in r:
            continue
        key = f"{_executor(r)}{r['files']} files, depth {r['depth']}, latency {r['latency_s']:g}s"
        lines.setdefault(key, []).append(r)
    # Depth 1 (one agent) starts every line of its (executor, files, latency).
    for r in results:
        if "skipped" not in r and r["agents"] == 1:
            for key, points in lines.items():
                if key.startswith(f"{_executor(r)}{r['files']} files,") \
                        and key.endswith(f"latency {r['latency_s']:g}s") and r not in points:
                    points.append(r)
    return {k: sorted(v, key=lambda r: r["agents"]) for k, v in lines.items()}


def plot(results: list[dict], path: Path) -> Path | None:
    lines = series(results)
    if not lines:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plain_png(lines, path)
        return path
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.5 * len(PANELS), 4.5))
    for ax, (field, title) in zip(axes, PANELS):
        for key, points in lines.items():
            shown = [p for p in points if p.get(field) is not None]
            ax.plot([p["agents"] for p in shown], [p[field] for p in shown], marker="o", label=key)
        ax.set_xscale("log")
        ax.set_xlabel("agents")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plain_png(lines: dict[str, list[dict]], path: Path, w: int = 360, h: int = 280) -> None:
    """Three panels side by side, log-x axes, one coloured polyline per series."""
    width = w * len(PANELS)
    pixels = bytearray(b"\xff" * (width * h * 3))

    def put(x: int, y: int, colour: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < h:
            i = (y * width + x) * 3
            pixels[i:i + 3] = bytes(colour)

    def segment(x0: float, y0: float, x1: float, y1: float, colour) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0), 1))
        for s in range(steps + 1):
            t = s / steps
            for dx in (0, 1):
                put(int(x0 + (x1 - x0) * t) + dx, int(y0 + (y1 - y0) * t), colour)

    all_agents = [p["agents"] for pts in lines.values() for p in pts]
    lo_x, hi_x = math.log10(min(all_agents)), math.log10(max(all_agents)) or 1
    for panel, (field, _) in enumerate(PANELS):
        left, top, right, bottom = panel * w + 30, 15, panel * w + w - 10, h - 25
        segment(left, bottom, right, bottom, (0, 0, 0))
        segment(left, top, left, bottom, (0, 0, 0))
        values = [p[field] for pts in lines.values() for p in pts if p.get(field) is not None]
        top_y = max(values + [1e-9]) * 1.1
        for n, points in enumerate(lines.values()):
            colour = COLOURS[n % len(COLOURS)]
            xy = [(left + (right - left) * ((math.log10(p["agents"]) - lo_x)
                                            / ((hi_x - lo_x) or 1)),
                   bottom - (bottom - top) * max(0.0, p[field]) / top_y)
                  for p in points if p.get(field) is not None]
            for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
                segment(x0, y0, x1, y1, colour)
            for x, y in xy:
                for dx in range(-2, 3):
                    for dy in range(-2, 3):
                        put(int(x) + dx, int(y) + dy, colour)
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3]) for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


if __name__ == "__main__":
    import json
    import sys

    for name in sys.argv[1:]:
        source = Path(name)
        print(plot(json.loads(source.read_text())["results"], source.with_suffix(".png")))
