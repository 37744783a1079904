"""The shapes scenario: a report about a rectangle's area that the scripted model splits into a
Mother (area_report) and two children (area, fmt). Most end-to-end tests run it, with answers
that pass at once or that need repairs, a Mother's comment and a revision.
"""

from __future__ import annotations

from pathlib import Path

from soa_git.commands.run import run
from soa_git.scripted import Script, ScriptedServer

from .repos import git, make_repo

KEY = {"OPENAI_API_KEY": "sk-test-key"}
TARGET = "shapes/report.py::area_report"

SHAPES_SKELETON = '''"""Reports about shapes."""

UNIT = "m2"


def area_report(width: float, height: float) -> str:
    """Describe a rectangle's area with two decimals.

    >>> area_report(2, 3)
    'area: 6.00'
    """
    ...


def untouched() -> int:
    return 42
'''

DECOMPOSE = '''I split the report into computing the area and formatting it.

```python
def area_report(width: float, height: float) -> str:
    return "area: " + fmt(area(width, height))


def area(width: float, height: float) -> float:
    """Area of a rectangle.

    >>> area(2, 3)
    6
    """
    ...


def fmt(value: float) -> str:
    """Format a number for a report.

    >>> isinstance(fmt(2), str)
    True
    """
    ...


def test_area():
    assert area(2, 3) == 6


def test_fmt():
    assert isinstance(fmt(2.5), str)


def test_area_report():
    assert area_report(2, 3) == "area: 6.00"
```
'''


def implementation(name: str, body: str, args: str = "width: float, height: float",
                   returns: str = "float") -> str:
    return f"Here it is.\n\n```python\ndef {name}({args}) -> {returns}:\n    {body}\n```\n"


AREA_WRONG = implementation("area", "return width + height")
AREA_RIGHT = implementation("area", "return width * height")
FMT_RIGHT = implementation("fmt", 'return f"{value:.2f}"', "value: float", "str")
FMT_LOOSE = implementation("fmt", "return str(value)", "value: float", "str")
REVISE = ("The report needs two decimals; fmt prints the plain number.\n\n"
          "```comment fmt\nFormat the value with exactly two decimals, e.g. 6 -> '6.00'.\n```\n")

# One answer per (task, agent), whatever the order or the number of times asked: area is wrong
# first and repaired, fmt too loose until its Mother comments. A resumed run that asks again for
# a step whose answer was lost gets the same answer.
ANSWERS = {
    "decompose area_report": DECOMPOSE,
    "implement area_report.area": AREA_WRONG,
    "repair area_report.area": f"Multiply, not add.\n\n{AREA_RIGHT}",
    "implement area_report.fmt": FMT_LOOSE,
    "revise area_report": REVISE,
    "repair area_report.fmt": f"Two decimals.\n\n{FMT_RIGHT}",
}


def shapes_script(area_first=AREA_RIGHT, fmt_first=FMT_RIGHT, extra=()) -> list[dict]:
    """Rules for the scripted server: the split, then each child's first answer."""
    return [
        {"when": r"^soa-git task: decompose area_report$", "replies": [DECOMPOSE]},
        {"when": r"^soa-git task: (decompose|implement) area_report[.]area$",
         "replies": [area_first]},
        {"when": r"^soa-git task: (decompose|implement) area_report[.]fmt$",
         "replies": [fmt_first]},
        *extra,
    ]


def respond(request: dict) -> str:
    """A responder answering from ANSWERS."""
    first = request["messages"][-1]["content"].splitlines()[0]
    return ANSWERS[first.removeprefix("soa-git task: ")]


def shapes_repo(path: Path, *, readme: bool = True) -> Path:
    files = {"shapes/__init__.py": "", "shapes/report.py": SHAPES_SKELETON}
    return make_repo(path, {**files, "README.md": "shapes\n"} if readme else files)


def fill(repo: Path, server, target: str = TARGET, **flags):
    """`soa-git run` of the scenario's target against `server`."""
    return run(target, cwd=repo, flags={"base_url": server.base_url, **flags}, environ=KEY)


def fill_scripted(repo: Path, rules: list[dict], target: str = TARGET, **flags):
    """`fill` against a scripted server that answers by `rules` and lives as long as the run."""
    with ScriptedServer(Script.from_json(rules)) as server:
        return fill(repo, server, target, **flags)


AGENT_FILES = ("shapes/report.py", "shapes/area_report__area.py", "shapes/area_report__fmt.py",
               "tests/soa/test_area_report.py", "tests/soa/test_area_report__area.py",
               "tests/soa/test_area_report__fmt.py")


def shape(repo: Path, run_id: str) -> dict:
    """The tree (agents and their roles) and the code the root branch ends with."""
    refs = git(repo, "for-each-ref", "--format=%(refname:short)",
               f"refs/heads/soa/{run_id}/").split()
    roles = {ref.split("/", 2)[2]: git(repo, "log", "-1",
                                       "--format=%(trailers:key=Soa-Role,valueonly)", ref).strip()
             for ref in refs}
    root = f"soa/{run_id}/area_report"
    return {"roles": roles,
            "files": {path: git(repo, "show", f"{root}:{path}") for path in AGENT_FILES}}
