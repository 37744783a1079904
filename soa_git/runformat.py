"""The run format: how a run is written into git, and read back. Nothing else writes or parses it.

A run is kept as branches `soa/<run>/<agent path>`, commits whose subjects name the step, whose
bodies hold the agent's reflection and the comments it answered or sent, whose trailers
(`Soa-Run`, `Soa-Agent`, ...) say who made it and how it went, and notes of JSON lines (one
record per step: the exact model messages, token usage, test result). Agents' test files start
with a header that `soa-git check` finds them by. Every writer and every reader of these is a
function here, so the two sides cannot drift apart; tests/test_runformat.py pins the round trip.
This module runs nothing and imports nothing of soa-git's.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Mapping

# ---- runs and branches -----------------------------------------------------------------------

BRANCH_FOLDER = "soa/"
NOTES_REF = "refs/notes/soa"
RUN_ID = re.compile(r"(\d{8}-\d{6})-[0-9a-f]+")


def new_run_id() -> str:
    """The run's UTC start time to the second, and four hex digits against a clash."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def run_started(run: str) -> datetime | None:
    """When a run started, read from its id (None for an id soa-git did not make)."""
    match = RUN_ID.fullmatch(run)
    if match is None:
        return None
    return datetime.strptime(match[1], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)


def is_run_id(text: str) -> bool:
    return RUN_ID.fullmatch(text) is not None


def branch(run: str, agent_path: str) -> str:
    return f"{BRANCH_FOLDER}{run}/{agent_path}"


def run_branches(run: str) -> str:
    """The folder of a run's branches, for listing them."""
    return f"{BRANCH_FOLDER}{run}/"


def parse_branch(name: str) -> tuple[str, str] | None:
    """(run, agent path) of a run's branch; None for any other name."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == BRANCH_FOLDER.rstrip("/") and all(parts):
        return parts[1], parts[2]
    return None


def fetch_refspecs(run: str) -> tuple[str, str]:
    """What a reviewer fetches to read a run: its branches and the notes."""
    return (f"+refs/heads/{BRANCH_FOLDER}{run}/*:refs/heads/{BRANCH_FOLDER}{run}/*",
            f"+{NOTES_REF}:{NOTES_REF}")


def push_refspecs(run: str) -> list[str]:
    return [f"refs/heads/{BRANCH_FOLDER}{run}/*:refs/heads/{BRANCH_FOLDER}{run}/*"]


# ---- authors ---------------------------------------------------------------------------------


def author_name(agent_path: str) -> str:
    return f"soa agent {agent_path}"


def author_email(agent_path: str) -> str:
    return f"{agent_path}@soa-git.invalid"


# ---- trailers --------------------------------------------------------------------------------

TRAILER_KEYS = ("Soa-Run", "Soa-Agent", "Soa-Role", "Soa-Parent", "Soa-Phase", "Soa-Round",
                "Soa-Tests", "Soa-Model", "Soa-Tokens", "Soa-Target")
# One line of trailers per commit, unambiguous however values look: read by parse_trailers.
TRAILERS_FORMAT = "%(trailers:only,unfold,separator=%x1e,key_value_separator=%x1f)"
_TRAILER_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


@dataclass(frozen=True)
class CommitTrailers:
    """The trailers of an agent's commit. Every agent but the root has a `parent`; the root's
    commits carry the run's `target` (`file.py::function`) instead. `tests` is set when the
    commit was tested (a merge: the child's result)."""

    run: str
    agent: str
    role: str                   # mother | child
    phase: str                  # start | generate | modify | merge
    round: int
    model: str | None          # the name the server answered with
    tokens: int
    estimated: bool = False     # the server sent no usage
    parent: str | None = None
    target: str | None = None
    tests: str | None = None

    def write(self) -> dict[str, str]:
        found = {"Soa-Run": self.run, "Soa-Agent": self.agent, "Soa-Role": self.role,
                 "Soa-Phase": self.phase, "Soa-Round": str(self.round),
                 "Soa-Model": self.model or "",
                 "Soa-Tokens": str(self.tokens) + (" (estimated)" if self.estimated else "")}
        if self.parent:
            found["Soa-Parent"] = self.parent
        else:
            found["Soa-Target"] = self.target or ""
        if self.tests is not None:
            found["Soa-Tests"] = self.tests
        return found

    @classmethod
    def read(cls, trailers: Mapping[str, str]) -> CommitTrailers:
        """Whatever a commit has; missing trailers read as empty (a commit not soa-git's)."""
        tokens = trailers.get("Soa-Tokens", "")
        return cls(run=trailers.get("Soa-Run", ""), agent=trailers.get("Soa-Agent", ""),
                   role=trailers.get("Soa-Role", ""), phase=trailers.get("Soa-Phase", ""),
                   round=leading_int(trailers.get("Soa-Round")), model=trailers.get("Soa-Model"),
                   tokens=leading_int(tokens), estimated=tokens.endswith("(estimated)"),
                   parent=trailers.get("Soa-Parent"), target=trailers.get("Soa-Target"),
                   tests=trailers.get("Soa-Tests"))


def target(file: str, function: str) -> str:
    return f"{file}::{function}"


def run_marker(run: str | None) -> str:
    """Text every commit of `run` holds (of any run, for None): what `git log --grep`-like
    filters look for."""
    return f"Soa-Run: {run}" if run else "Soa-Run: "


def message(subject: str, body: str, trailers: Mapping[str, str]) -> str:
    """Subject, body and trailers in git's layout; the trailers are the last paragraph."""
    subject = " ".join(subject.split())
    if not subject:
        raise ValueError("a commit needs a subject")
    parts = [subject]
    if body.strip():
        parts.append(body.strip("\n").rstrip())
    keys = [k for k in TRAILER_KEYS if k in trailers]
    keys += [k for k in trailers if k not in TRAILER_KEYS]
    for key in keys:
        if not _TRAILER_KEY.fullmatch(key):
            raise ValueError(f"invalid trailer key {key!r}")
    if keys:
        # A trailer is one line: git's parser would otherwise stop reading the block.
        parts.append("\n".join(f"{k}: {' '.join(trailers[k].split())}" for k in keys))
    return "\n\n".join(parts) + "\n"


def parse_trailers(raw: str) -> dict[str, str]:
    """The trailers printed with TRAILERS_FORMAT."""
    return dict(t.split("\x1f", 1) for t in raw.split("\x1e") if "\x1f" in t)


def strip_trailers(body: str, trailers: Mapping[str, str]) -> str:
    """The body without its last paragraph when git read that paragraph as the trailers."""
    body = body.strip()
    if trailers:
        body = body.rpartition("\n\n")[0].strip()
    return body


def leading_int(value: object) -> int:
    """The leading number of a trailer (`Soa-Tokens: 120 (estimated)` -> 120), else 0."""
    match = re.match(r"\s*(\d+)", str(value or ""))
    return int(match[1]) if match else 0


_COUNT = re.compile(r"(\d+) (passed|failed|errors?)")


def test_counts(tests: str | None) -> dict[str, int]:
    """The counts of a test summary as `Soa-Tests` records it (`3 passed, 1 failed`)."""
    counts = {"passed": 0, "failed": 0, "errors": 0}
    for number, what in _COUNT.findall(tests or ""):
        counts["errors" if what.startswith("error") else what] += int(number)
    return counts


# ---- subjects and bodies ---------------------------------------------------------------------
# Each kind of commit has its own subject; `kind` reads it back.

SKELETON_BODY = "The signature, docstring and unit tests written by the Mother agent."
_COMMENT_FROM = "Comment from the Mother agent:\n"
_COMMENTS_TO = ", comment to "


def start_subject(run: str, target: str) -> str:
    return f"start: run {run} on {target}"


def skeleton_subject(function: str, mother: str) -> str:
    return f"skeleton: {function} from {mother}"


def split_subject(function: str, children: Iterable[str]) -> str:
    return f"generate: split {function} into " + ", ".join(children)


def implement_subject(function: str) -> str:
    return f"generate: implement {function}"


def repair_subject(function: str, round: int, *, answering: bool, kept: int | None = None,
                   unusable: bool = False, fresh: bool = False) -> str:
    """`kept`: the earlier round whose code the commit keeps, because this one scored worse or,
    `unusable`, gave no usable answer; `fresh`: the round asked for a new implementation."""
    why = "answer a comment on" if answering else "implement" if fresh else "repair"
    worse = "the answers were unusable" if unusable else "this attempt scored worse"
    return (f"modify: {why} {function}{' afresh' if fresh else ''} (round {round})"
            + (f": kept round {kept}, {worse}" if kept is not None else ""))


def revise_subject(function: str, round: int, commented: Iterable[str]) -> str:
    commented = list(commented)
    return (f"modify: revise {function} (round {round})"
            + (_COMMENTS_TO + ", ".join(commented) if commented else ""))


def redo_subject(child: str, mother: str) -> str:
    return f"modify: redo {child} on the new base of {mother}"


def merge_subject(child: str, mother: str) -> str:
    return f"merge: accept {child} into {mother}"


_KINDS = (("start:", "start"), ("skeleton:", "skeleton"),
          ("generate: split", "split"), ("generate: implement", "implement"),
          ("modify: repair", "repair"), ("modify: implement", "afresh"),
          ("modify: answer", "answer"), ("modify: revise", "revise"),
          ("modify: redo", "redo"), ("merge:", "merge"))


def kind(subject: str, phase: str) -> str:
    """start | skeleton | implement | split | repair | afresh | answer | revise | redo | merge,
    read from a subject; else the commit's phase."""
    for prefix, found in _KINDS:
        if subject.startswith(prefix):
            return found
    return phase or "commit"


def received_body(comment: str) -> str:
    """The body part of a commit that answers a Mother's comment."""
    return f"{_COMMENT_FROM}{comment}"


def sent_body(comments: Mapping[str, str]) -> str:
    """The body part of a Mother's revision that comments on children (name -> comment)."""
    return "\n\n".join(f"Comment to {name}:\n{text}" for name, text in comments.items())


def step_body(reflection: str, body: str) -> str:
    """A model step's commit body: its reflection, then what `received_body`/`sent_body` made."""
    return "\n\n".join(part for part in (reflection.strip(), body) if part)


def read_body(subject: str, body: str) -> tuple[str, str | None, dict[str, str]]:
    """(reflection, comment received, comments sent) from a commit's subject and body."""
    comment = None
    at = _paragraph(body, _COMMENT_FROM)
    if at is not None:
        body, comment = body[:at], body[at + len(_COMMENT_FROM):].strip()
    sent: dict[str, str] = {}
    _, _, names = subject.partition(_COMMENTS_TO)
    markers = sorted((found, name) for name in filter(None, (n.strip() for n in names.split(",")))
                     if (found := _paragraph(body, f"Comment to {name}:\n")) is not None)
    for i, (at, name) in enumerate(markers):
        end = markers[i + 1][0] if i + 1 < len(markers) else len(body)
        sent[name] = body[at + len(f"Comment to {name}:\n"):end].strip()
    if markers:
        body = body[:markers[0][0]]
    return body.strip(), comment, sent


def _paragraph(body: str, marker: str) -> int | None:
    """Where `marker` starts a paragraph of `body`, if it does."""
    if body.startswith(marker):
        return 0
    found = body.find(f"\n\n{marker}")
    return None if found < 0 else found + 2


# ---- notes -----------------------------------------------------------------------------------
# A note is JSON lines, one record per thing that happened at its commit, so a step that changed
# nothing still joins its commit's note. Records carry `agent` and `task`: a model step's task
# is the agent's (decompose, implement, repair, revise); soa-git's own are these.

START, END, TEST, MERGE, ERROR = "start", "end", "test", "merge", "error"


def note_line(record: Mapping) -> str:
    return json.dumps(record, ensure_ascii=False)


def start_record(agent: str, settings: Mapping) -> dict:
    """The note on a run's first commit: its settings (the key's variable name, never a value)."""
    return {"agent": agent, "task": START, "settings": dict(settings)}


def step_record(*, agent: str, task: str, phase: str, round: int, model: str,
                tests: str | None, usage: Mapping, messages: Iterable, **extra) -> dict:
    """A model step: the exact messages, and what `resume` needs to rebuild the agent."""
    return {"agent": agent, "task": task, "phase": phase, "round": round, "model": model,
            "tests": tests, "usage": dict(usage), **extra, "messages": list(messages)}


def test_record(agent: str, tests: str, failure: str | None = None) -> dict:
    """A Mother's own test result after merging (or a child's after catching up), and its
    first failure."""
    return {"agent": agent, "task": TEST, "tests": tests, "failure": failure}


def merge_record(agent: str, child: str, child_tip: str, tests: str) -> dict:
    return {"agent": agent, "task": MERGE, "child": child, "child_tip": child_tip, "tests": tests}


def error_record(agent: str, error: str, **step) -> dict:
    """An agent's step failed; `step`: the step's fields as in `step_record` (its `task` kept as
    `asked`) when it has answers, which makes it a step of the transcript."""
    return {"agent": agent, "task": ERROR, "error": error, **step}


def end_record(agent: str, *, state: str, message: str, usage: Mapping, seconds: float) -> dict:
    """On the root's tip when the run ends: how history tells a finished run from a killed one."""
    return {"agent": agent, "task": END, "state": state, "message": message,
            "usage": dict(usage), "seconds": round(seconds, 3)}


def read_note(text: str) -> list[dict]:
    """The note's records; a line that is not a JSON object (a person's own note) is skipped."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def is_step(record: Mapping) -> bool:
    """A model step's record (it holds the messages), as opposed to soa-git's own."""
    return "messages" in record


def answer(record: Mapping) -> str:
    """The model's answer in a step's record."""
    return record["messages"][-1]["content"]


def own_test_result(records: Iterable[Mapping], agent: str) -> str | None:
    """The newest `test` record of `agent` among a commit's records."""
    results = [r.get("tests") for r in records if r.get("task") == TEST and r.get("agent") == agent]
    return str(results[-1]) if results and results[-1] is not None else None


def merged_child(records: Iterable[Mapping]) -> str | None:
    return next((r.get("child") for r in records if r.get("task") == MERGE), None)


def run_end(records: Iterable[Mapping]) -> dict | None:
    return next((dict(r) for r in records if r.get("task") == END), None)


# ---- files -----------------------------------------------------------------------------------
# An agent's module and test file say who wrote them in their first line; `soa-git check`
# finds an agent from its test file's header alone.

_TEST_HEADER = re.compile(r'\A\s*"""Unit tests of `(\w+)`, kept by soa-git\.')
_TEST_IMPORT = re.compile(r"^from\s+([\w.]+)\s+import\s+([\w, ]+)$", re.MULTILINE)


def module_header(function: str, agent_path: str) -> str:
    return f'"""`{function}`, written by soa-git agent {agent_path}."""\n'


def test_header(function: str) -> str:
    return f'"""Unit tests of `{function}`, kept by soa-git."""\n'


def tested_function(test_file_text: str) -> str | None:
    """The function a test file soa-git wrote is about; None for any other file."""
    found = _TEST_HEADER.match(test_file_text)
    return found.group(1) if found else None


def test_import(module: str, names: Iterable[str]) -> str:
    """The line of an agent's test file that imports its function (and helpers) from its module."""
    return f"from {module} import {', '.join(names)}"


def tested_module(test_file_text: str, function: str) -> str | None:
    """The dotted module a test file soa-git wrote imports `function` from (its last such
    import)."""
    modules = [m.group(1) for m in _TEST_IMPORT.finditer(test_file_text)
               if function in (n.strip() for n in m.group(2).split(","))]
    return modules[-1] if modules else None
