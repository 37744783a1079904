"""Why something failed, in one line: a test run's first failure, shown where a state is shown
(the commit gate, `show`, `tree`, `log`, `report`)."""

from __future__ import annotations

from .testing import TestCase, TestResult

LIMIT = 160


def reason(result: TestResult) -> str | None:
    """The first failing test and its assertion, or the last line of output when no test ran
    (a collection error); None when nothing failed."""
    bad = [c for c in result.cases if c.outcome in ("failed", "error")]
    if bad:
        return _case_reason(bad[0])
    if not result.cases and result.output.strip():
        return one_line(result.output.strip().splitlines()[-1])
    return None


def describe(result: TestResult) -> str:
    """"3 passed", or "1 failed (test_x: assert 1 == 2)": the counts and the first failure."""
    why = reason(result)
    return f"{result.summary()} ({why})" if why else result.summary()


def _case_reason(case: TestCase) -> str:
    name = case.name.rsplit("::", 1)[-1] if "::" in case.name else case.name
    message = case.message.strip()
    if not message or message in ("collection failure", "failed on setup with"):
        errors = [line[1:].strip() for line in case.details.splitlines() if line.startswith("E ")]
        message = errors[-1] if errors else message
    return f"{name}: {one_line(message)}" if message else name


def one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= LIMIT else line[:LIMIT - 3] + "..."
