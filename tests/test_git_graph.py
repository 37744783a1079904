"""An expect test: the git history a small scripted run writes, as `git log --graph` shows it.

The shapes scenario with repairs (area wrong first, fmt too loose until its Mother comments),
one agent at a time so the graph is the same every time. Each commit shows its subject, its
branch, and in brackets its role, phase, round and tests as its trailers say. A change to how
runs are kept in git shows up here as a diff of this text; when the change is meant, paste the
new graph below.
"""

from __future__ import annotations

from soa_git.scripted import ScriptedServer

from .helpers.repos import git
from .helpers.shapes import fill, respond, shapes_repo

EXPECTED = """\
*   merge: accept fmt into area_report (soa/RUN/area_report) [mother, merge, 1, 1 passed]
|\\
| * modify: answer a comment on fmt (round 1) (soa/RUN/area_report.fmt) [child, modify, 1, 1 passed]
* | modify: revise area_report (round 1), comment to fmt [mother, modify, 1, 2 failed]
* | merge: accept fmt into area_report [mother, merge, 0, 1 passed]
|\\|
| * generate: implement fmt [child, generate, 0, 1 passed]
| * skeleton: fmt from area_report [child, generate, 0]
* |   merge: accept area into area_report [mother, merge, 0, 2 passed]
|\\ \\
| |/
|/|
| * modify: repair area (round 1) (soa/RUN/area_report.area) [child, modify, 1, 2 passed]
| * generate: implement area [child, generate, 0, 2 failed]
| * skeleton: area from area_report [child, generate, 0]
|/
* generate: split area_report into area, fmt [mother, generate, 0]
* start: run RUN on shapes/report.py::area_report [mother, start, 0]
* initial (main)
"""

FIELDS = ("%s%d", *(f"%(trailers:key={key},valueonly,separator=)"
                    for key in ("Soa-Role", "Soa-Phase", "Soa-Round", "Soa-Tests")))


def graph(repo, run: str) -> str:
    """`git log --graph` of the branches: each commit's subject and refs, then its role, phase,
    round and tests as its trailers say."""
    out = git(repo, "log", "--graph", "--topo-order", "--branches", "--decorate-refs=refs/heads/",
              "--format=" + "%x1f".join(FIELDS))
    lines = []
    for line in out.replace(run, "RUN").splitlines():
        text, *values = line.split("\x1f")
        values = [v for v in values if v]
        lines.append((f"{text} [{', '.join(values)}]" if values else text).rstrip())
    return "\n".join(lines) + "\n"


def test_a_small_run_writes_this_graph(tmp_path):
    repo = shapes_repo(tmp_path / "shapes", readme=False)
    with ScriptedServer(respond) as server:
        [summary] = fill(repo, server, jobs=1)
    assert summary.state == "done", summary.message
    assert graph(repo, summary.run) == EXPECTED
