"""Why a run failed is shown wherever its state is: the summary, tree, show, log, report."""

from __future__ import annotations

import json

from click.testing import CliRunner

from soa_git.cli import main

from .helpers.repos import make_repo

SKELETON = '''def area_report(width: float, height: float) -> str:
    """Describe a rectangle's area with two decimals, e.g. 'area: 6.00' for 2 by 3."""
    ...
'''

WRONG = '''It multiplies.

```python
def area_report(width: float, height: float) -> str:
    return "area: " + str(width + height)


def test_area_report():
    assert area_report(2, 3) == "area: 6.00"
```
'''


def test_a_failed_run_says_why_wherever_its_state_is_shown(tmp_path, serve, monkeypatch):
    """They said "still fails its tests (1 failed)" and "0 rounds", and no reason."""
    repo = make_repo(tmp_path / "shapes", {"shapes/__init__.py": "",
                                           "shapes/report.py": SKELETON})
    monkeypatch.chdir(repo)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server = serve([{"when": "area_report", "replies": [WRONG, WRONG]}])
    cli = CliRunner()
    done = cli.invoke(main, ["run", "shapes/report.py::area_report", "--max-depth", "1",
                             "--repair-rounds", "1", "--base-url", server.base_url])
    assert done.exit_code == 1, done.output
    why = "test_area_report: AssertionError: assert 'area: 5' == 'area: 6.00'"
    assert done.stdout.startswith("run ") and (
        f": failed: area_report still fails its tests (1 failed): {why}" in done.stdout)
    assert f"why area_report failed: {why}" in done.stdout
    run = done.stdout.split()[1].rstrip(":")
    for command in (["tree"], ["show", run], ["log", "area_report"], ["report"]):
        shown = cli.invoke(main, command)
        assert f"why area_report failed: {why}" in shown.stdout, (command, shown.stdout)
    markdown = cli.invoke(main, ["report", "--format", "markdown"]).stdout
    assert "**why `area_report` failed:** test\\_area\\_report: AssertionError" in markdown
    [agent] = json.loads(cli.invoke(main, ["tree", "--json"]).stdout)["agents"]
    assert agent["why"].startswith(why)
