"""Plain-text rendering of a sales summary."""

import os
from pathlib import Path


def render_report(summary: dict) -> str:
    r"""Render ``summary`` (a dict as returned by ``summarize``) as a text report.

    The report is exactly these lines, in this order:

    1. ``Sales report``
    2. ``============`` (twelve ``=``)
    3. ``Records: <count>`` (the integer, as ``str()`` writes it)
    4. ``Total: <total>``
    5. ``Mean: <mean>``
    6. ``Median: <median>``
    7. ``By city:``
    8. one line per city in ``summary["by_city"]``: two spaces, the city, ``": "``,
       its total; ordered by total, largest first, ties broken by city name A to Z.
       If ``by_city`` is empty, the single line ``  (none)`` (two spaces) instead.

    Every number except the count is written with two decimals and a comma as
    thousands separator, i.e. ``format(x, ",.2f")``: ``1234.5`` -> ``1,234.50``,
    ``-3`` -> ``-3.00``. A value of None (the mean or median of no records) is
    written ``n/a``. Lines are joined with ``\n`` and the report ends with one
    ``\n``: no blank lines, no trailing spaces. ``summary`` is not modified.

    >>> summary = {"count": 3, "total": 1260.5, "mean": 420.17, "median": 250.0,
    ...            "by_city": {"Lyon": 250.0, "Paris": 1010.5}}
    >>> print(render_report(summary), end="")
    Sales report
    ============
    Records: 3
    Total: 1,260.50
    Mean: 420.17
    Median: 250.00
    By city:
      Paris: 1,010.50
      Lyon: 250.00
    >>> empty = {"count": 0, "total": 0.0, "mean": None, "median": None, "by_city": {}}
    >>> render_report(empty)
    'Sales report\n============\nRecords: 0\nTotal: 0.00\nMean: n/a\nMedian: n/a\nBy city:\n  (none)\n'
    """
    ...


def write_report(summary: dict, path: str | os.PathLike) -> None:
    """Write the rendered report for ``summary`` to ``path`` (UTF-8)."""
    Path(path).write_text(render_report(summary), encoding="utf-8")
