"""pipeline: load sales records from CSV text, summarize them, render a text report."""

from pipeline.records import load_records, read_records, records_for_city
from pipeline.report import render_report, write_report
from pipeline.stats import summarize, top_cities

__version__ = "0.1.0"

__all__ = [
    "load_records",
    "read_records",
    "records_for_city",
    "render_report",
    "run",
    "summarize",
    "top_cities",
    "write_report",
]


def run(text: str) -> str:
    """Return the text report for the CSV ``text``: load, summarize, render."""
    return render_report(summarize(load_records(text)))
