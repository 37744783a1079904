"""Runs and agents read back from git alone: branch names, commit trailers and notes.

Nothing here is cached or kept beside the repository, so a fresh clone that fetched
`refs/heads/soa/*` and `refs/notes/soa` reads exactly what the machine that ran the agents reads.
Loading runs costs a fixed number of git calls whatever their size: one `for-each-ref` for the
branches, one `git log` (with trailers and notes) over all of their commits, and one
`cat-file --batch` for the agents' files at their tips.

An agent's own commits are the first-parent chain back from its branch tip while the commits
carry its `Soa-Agent` and `Soa-Run`: a Mother's merges and a child's catch-up merges keep the
agent's previous commit as first parent, and the chain ends at the commit it branched from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Callable

from . import layout, pycode, runformat
from .errors import SoaError, TargetError
from .gitrepo import BranchTip, GitRepo, LockHolder, LoggedCommit

# What `list` prints for no runs, and what `tree`, `show` and the rest say when they need one.
NO_RUNS = "no soa-git runs here yet; start one with `soa-git run path/to/file.py::function`"


class RunNotFound(SoaError):
    """No run of that name in this repository."""


# ---- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitRecord:
    sha: str
    parents: tuple[str, ...]
    subject: str
    body: str                       # without the trailers
    author: str
    date: str                       # author date, ISO 8601
    trailers: dict[str, str]
    notes: tuple[dict, ...]         # the JSON lines of its note under refs/notes/soa

    @cached_property
    def soa(self) -> runformat.CommitTrailers:
        return runformat.CommitTrailers.read(self.trailers)

    @property
    def agent(self) -> str:
        return self.soa.agent

    @property
    def phase(self) -> str:
        return self.soa.phase

    @property
    def round(self) -> int:
        return self.soa.round

    @property
    def tests(self) -> str | None:
        return self.soa.tests

    @property
    def tokens(self) -> int:
        return self.soa.tokens

    @property
    def is_merge(self) -> bool:
        return len(self.parents) > 1


@dataclass(frozen=True)
class AgentRecord:
    run: str
    path: str
    branch: str
    tip: str
    role: str                       # mother | child
    function: str
    parent: str | None
    file: str
    test_file: str
    commits: tuple[CommitRecord, ...]   # its own commits, oldest first
    rounds: int
    tests: str | None               # its newest test result
    lines: int                      # non-blank lines of its own code at its tip
    tokens: int                     # its committed steps and its unusable answers
    state: str                      # passed | failed | pending
    why: str | None = None          # failed: the error of its last step, or its first failing test

    @property
    def passed(self) -> int:
        return runformat.test_counts(self.tests)["passed"]


@dataclass(frozen=True)
class RunRecord:
    run: str
    target: str                     # path/file.py::function
    base: str
    root: str                       # the root agent's path
    branch: str
    state: str                      # done | failed | stopped | running | interrupted
    message: str
    agents: tuple[AgentRecord, ...]     # parents before children, siblings by name
    started: str
    updated: str
    tokens: int
    tests_passed: int
    depth: int

    def agent(self, path: str) -> AgentRecord | None:
        return next((a for a in self.agents if a.path == path), None)


@dataclass(frozen=True)
class Attempt:
    """One of an agent's commits, as `soa-git log` shows it."""

    number: int
    commit: CommitRecord
    previous: str                   # the commit `diff` compares with
    kind: str       # start | skeleton | implement | split | repair | answer | revise | redo | merge
    tests: str | None               # the agent's own result at this commit
    child_tests: str | None         # a merge: the result of the child it accepted
    merged: str | None              # a merge: the child's agent path
    reflection: str
    comment: str | None             # the Mother's comment this attempt answers
    comments_sent: dict[str, str] = field(default_factory=dict)   # child name -> comment
    diff: str = ""


@dataclass(frozen=True)
class AgentLog:
    """An agent's attempts in its run; `show` adds its code and tests at its tip."""

    run: RunRecord
    agent: AgentRecord
    attempts: tuple[Attempt, ...]
    code: str | None = None
    test_code: str | None = None


# ---- reading runs ----------------------------------------------------------------------------


def run_ids(repo: GitRepo) -> list[str]:
    """Every run with a branch in this repository, newest first."""
    return list(_runs(repo))


def list_runs(repo: GitRepo) -> list[RunRecord]:
    """Every run, newest first."""
    return _load(repo, _runs(repo))


def load_run(repo: GitRepo, run: str) -> RunRecord:
    runs = _runs(repo)
    if run not in runs:
        raise _no_run(run, runs)
    return _load(repo, {run: runs[run]})[0]


def newest_run(repo: GitRepo) -> RunRecord:
    runs = _runs(repo)
    if not runs:
        raise _no_run(None, runs)
    newest = next(iter(runs))
    return _load(repo, {newest: runs[newest]})[0]


def find_agent(repo: GitRepo, spec: str) -> tuple[RunRecord, AgentRecord]:
    """`RUN/agent.path` (or the branch `soa/RUN/agent.path`), or `agent.path` in the newest run
    that has that agent."""
    spec = spec.strip()
    if spec.startswith(runformat.BRANCH_FOLDER) and spec.count("/") == 2:
        spec = spec.removeprefix(runformat.BRANCH_FOLDER)
    runs = _runs(repo)
    if "/" in spec:
        run, _, path = spec.partition("/")
        if run not in runs:
            raise _no_run(run, runs)
        if path not in runs[run]:
            raise TargetError(f"run {run} has no agent named {path!r}; its agents are "
                              f"{', '.join(sorted(runs[run], key=_path_key))}")
    else:
        if not runs:
            raise _no_run(None, runs)
        run, path = next(((r, spec) for r, tips in runs.items() if spec in tips), (None, spec))
        if run is None:
            near = sorted({p for tips in runs.values() for p in tips
                           if p.endswith(f".{spec}") or p.split(".")[0] == spec}, key=_path_key)
            hint = (f"did you mean {' or '.join(near[:3])}?" if near
                    else "`soa-git tree RUN` shows a run's agents")
            raise TargetError(f"no run here has an agent named {spec!r}; {hint}")
    record = _load(repo, {run: runs[run]})[0]
    agent = record.agent(path)
    assert agent is not None
    return record, agent


def transcript(agent: AgentRecord) -> list[dict]:
    """The step records (the exact model messages) of the agent's commits, oldest first; each
    as stored in the note, plus the `commit` and `subject` it belongs to."""
    return [{**record, "commit": commit.sha, "subject": commit.subject}
            for commit in agent.commits for record in commit.notes
            if runformat.is_step(record) and record.get("agent", agent.path) == agent.path]


def attempts(repo: GitRepo, agent: AgentRecord) -> list[Attempt]:
    """Each of the agent's commits with the diff of its own files against its previous one."""
    result = []
    tests: str | None = None
    for number, commit in enumerate(agent.commits, start=1):
        previous = (result[-1].commit.sha if result
                    else commit.parents[0] if commit.parents else "")
        merged = runformat.merged_child(commit.notes)
        if not commit.is_merge and commit.tests is not None:
            tests = commit.tests
        tests = runformat.own_test_result(commit.notes, agent.path) or tests
        reflection, comment, sent = runformat.read_body(commit.subject, commit.body)
        diff = repo.diff(previous, commit.sha, (agent.file, agent.test_file)) if previous else ""
        result.append(Attempt(number=number, commit=commit, previous=previous,
                              kind=runformat.kind(commit.subject, commit.phase),
                              tests=tests, child_tests=commit.tests if commit.is_merge else None,
                              merged=merged, reflection=reflection, comment=comment,
                              comments_sent=sent, diff=diff))
    return result


def agent_log(repo: GitRepo, spec: str, *, with_code: bool = False) -> AgentLog:
    run, agent = find_agent(repo, spec)
    code, test_code = agent_code(repo, agent) if with_code else (None, None)
    return AgentLog(run=run, agent=agent, attempts=tuple(attempts(repo, agent)), code=code,
                    test_code=test_code)


def agent_code(repo: GitRepo, agent: AgentRecord) -> tuple[str | None, str | None]:
    """(its own code, its tests) at its tip: the function alone for the root, else the module."""
    if not agent.file:
        return None, None
    source, tests = repo.read_blobs([(agent.tip, agent.file), (agent.tip, agent.test_file)])
    return _own_code(source, agent.function, is_root=agent.parent is None), tests


# ---- building records ------------------------------------------------------------------------


def _runs(repo: GitRepo) -> dict[str, dict[str, BranchTip]]:
    """run -> agent path -> branch tip, newest run first: one for-each-ref."""
    runs: dict[str, dict[str, BranchTip]] = {}
    for tip in repo.branch_tips(runformat.BRANCH_FOLDER):
        found = runformat.parse_branch(tip.branch)
        if found:
            runs.setdefault(found[0], {})[found[1]] = tip

    def newest(run: str) -> tuple:
        # The id starts with its UTC start time to the second; the tips break a tie.
        started = runformat.run_started(run)
        return (started.timestamp() if started else 0.0,
                max(_timestamp(t.date) for t in runs[run].values()), run)

    return {run: runs[run] for run in sorted(runs, key=newest, reverse=True)}


def _no_run(run: str | None, runs: dict) -> RunNotFound:
    if not runs:
        return RunNotFound(NO_RUNS)
    return RunNotFound(f"no run named {run} here; `soa-git list` shows the runs")


def _load(repo: GitRepo, runs: dict[str, dict[str, BranchTip]]) -> list[RunRecord]:
    """Records of `runs` (in their order) from one git log and one cat-file call."""
    tips = [tip.sha for agents in runs.values() for tip in agents.values()]
    only = runformat.run_marker(next(iter(runs)) if len(runs) == 1 else None)
    by_sha = {c.sha: _commit_record(c) for c in repo.commits(tips, containing=only)}
    drafts = [_Draft(run, agents, by_sha) for run, agents in runs.items()]
    wanted = [(agent.tip.sha, agent.file)
              for draft in drafts for agent in draft.agents if agent.file]
    texts = iter(repo.read_blobs(wanted))
    sources = {(tip, file): next(texts) for tip, file in wanted}
    return [draft.finish(lambda tip, file: sources.get((tip, file)), repo.run_lock_holder)
            for draft in drafts]


@dataclass
class _AgentDraft:
    path: str
    tip: BranchTip
    commits: list[CommitRecord]
    file: str = ""
    test_file: str = ""


class _Draft:
    """One run between reading its commits and reading its agents' files."""

    def __init__(self, run: str, tips: dict[str, BranchTip], by_sha: dict[str, CommitRecord]):
        self.run = run
        self.agents = [_AgentDraft(path, tip, _own_chain(run, path, tip.sha, by_sha))
                       for path, tip in sorted(tips.items(), key=lambda item: _path_key(item[0]))]
        roots = [a for a in self.agents if "." not in a.path]
        self.root = roots[0].path if roots else self.agents[0].path.split(".")[0]
        root = roots[0] if roots else None
        self.root_commits = root.commits if root else []
        self.root_tip = root.tip.sha if root else ""
        self.target = next((c.soa.target for a in self.agents for c in a.commits
                            if c.soa.target is not None), "")
        target_file = self.target.rpartition("::")[0]
        if target_file:
            for agent in self.agents:
                files = layout.files_for(agent.path, target_file, "",
                                         is_root=agent.path == self.root)
                agent.file, agent.test_file = files.module, files.tests

    def finish(self, source: Callable[[str, str], str | None],
               lock_holder: Callable[[str], LockHolder | None]) -> RunRecord:
        agents = tuple(self._agent(a, source(a.tip.sha, a.file) if a.file else None)
                       for a in self.agents)
        tip = self.root_commits[-1] if self.root_commits else None
        end = runformat.run_end(tip.notes if tip and tip.sha == self.root_tip else ())
        state, message = _outcome(end, lock_holder(self.run))
        usage = end.get("usage") if end else None
        # The end record counts every model call, also those of answers that were never committed.
        tokens = (runformat.leading_int(usage.get("prompt_tokens"))
                  + runformat.leading_int(usage.get("completion_tokens"))
                  if isinstance(usage, dict) else sum(a.tokens for a in agents))
        dates = sorted((c.date for a in self.agents for c in a.commits), key=_timestamp)
        began = runformat.run_started(self.run)
        started = began.isoformat() if began else _utc(dates[0]) if dates else ""
        first = self.root_commits[0] if self.root_commits else None
        return RunRecord(
            run=self.run, target=self.target,
            base=first.parents[0] if first and first.parents else self.root_tip,
            root=self.root, branch=runformat.branch(self.run, self.root), state=state,
            message=message, agents=agents, started=started,
            updated=_utc(dates[-1]) if dates else started, tokens=tokens,
            tests_passed=sum(a.passed for a in agents),
            depth=1 + max((a.path.count(".") for a in agents), default=0))

    def _agent(self, draft: _AgentDraft, source: str | None) -> AgentRecord:
        commits = tuple(draft.commits)
        tests: str | None = None
        for commit in commits:
            if not commit.is_merge and commit.tests is not None:
                tests = commit.tests
            tests = runformat.own_test_result(commit.notes, draft.path) or tests
        parent = next((c.soa.parent for c in commits if c.soa.parent is not None),
                      draft.path.rpartition(".")[0] or None)
        function = draft.path.rpartition(".")[2]
        code = _own_code(source, function, is_root=parent is None)
        own = [r for c in commits for r in c.notes if r.get("agent", draft.path) == draft.path]
        # An error on its tip is how its work ended; steps that failed also spent tokens.
        errors = [r for r in (commits[-1].notes if commits else ())
                  if r.get("task") == "error" and r.get("agent") == draft.path]
        failure = next((r["failure"] for r in reversed(own) if "failure" in r), None)
        state = "failed" if errors else _state(tests)
        why = str(errors[-1].get("error")) if errors else failure if state == "failed" else None
        return AgentRecord(
            run=self.run, path=draft.path, branch=runformat.branch(self.run, draft.path),
            tip=draft.tip.sha, role=(commits[-1].soa.role if commits else "") or "child",
            function=function, parent=parent, file=draft.file, test_file=draft.test_file,
            commits=commits, rounds=max((c.round for c in commits), default=0), tests=tests,
            lines=pycode.code_lines(code) if code else 0,
            tokens=sum(c.tokens for c in commits) + sum(
                sum(runformat.leading_int(r["usage"].get(k))
                    for k in ("prompt_tokens", "completion_tokens"))
                for r in own if r.get("task") == "error" and isinstance(r.get("usage"), dict)),
            state=state, why=why)


def _outcome(end: dict | None, holder: LockHolder | None) -> tuple[str, str]:
    """(state, message): a live lock holder is running it (also when it resumes a run that had
    ended `stopped`); else the end record on the root's tip says how it ended; else it died."""
    if holder is not None and holder.alive:
        return "running", f"running in process {holder.pid} on {holder.host} since {holder.started}"
    if end is not None:
        return str(end.get("state", "")), str(end.get("message", ""))
    return "interrupted", ("the run ended before it finished (its process is gone); "
                           "its work so far is on its branches")


def _own_chain(run: str, path: str, tip: str,
               by_sha: dict[str, CommitRecord]) -> list[CommitRecord]:
    """The agent's own commits, oldest first: first parents from its tip while they are its own."""
    chain = []
    commit = by_sha.get(tip)
    while commit is not None and commit.agent == path and commit.soa.run == run:
        chain.append(commit)
        commit = by_sha.get(commit.parents[0]) if commit.parents else None
    return chain[::-1]


def _commit_record(commit: LoggedCommit) -> CommitRecord:
    return CommitRecord(sha=commit.sha, parents=commit.parents, subject=commit.subject,
                        body=commit.body, author=commit.author.name, date=commit.date,
                        trailers=commit.trailers,
                        notes=tuple(runformat.read_note(commit.note or "")))


def _own_code(source: str | None, function: str, *, is_root: bool) -> str | None:
    """The root owns one function of the user's file; every other agent its whole module."""
    if source is None or not is_root:
        return source
    try:
        return pycode.find_function(source, function).source
    except SoaError:
        return None


def _state(tests: str | None) -> str:
    counts = runformat.test_counts(tests)
    if counts["failed"] or counts["errors"] or "timed out" in (tests or ""):
        return "failed"
    return "passed" if counts["passed"] else "pending"


def _path_key(path: str) -> list[str]:
    """Parents before children, siblings by name."""
    return path.split(".")


def _timestamp(date: str) -> float:
    try:
        return datetime.fromisoformat(date).timestamp()
    except ValueError:
        return 0.0


def _utc(date: str) -> str:
    try:
        return datetime.fromisoformat(date).astimezone(timezone.utc).isoformat()
    except ValueError:
        return date
