"""What every command returns, rendered for people and machines: text lines, Markdown and JSON.

The CLI prints them; nothing here reads git or prints. (`commands/report.py` builds a run's
review for `soa-git report`; its rendering is here too.)
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable

# Types only: rendering imports none of what it renders, so a command imports only its own code.
if TYPE_CHECKING:
    from .commands.accept import Accepted
    from .commands.check import CheckResult
    from .commands.clean import CleanPlan
    from .commands.pr_head import ReviewedHead
    from .commands.push import Pushed
    from .commands.report import RunReport
    from .github import PullRequest
    from .history import AgentLog, AgentRecord, Attempt, RunRecord
    from .local_model import LocalEndpoint
    from .summary import AgentView, RunSummary


def _depth(path: str) -> int:
    return path.count(".")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _table(rows: list[list[str]], right: Iterable[int] = ()) -> list[str]:
    """Columns padded to their widest cell; `right` columns (numbers) aligned right."""
    right = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


def _indent(text: str, spaces: int) -> list[str]:
    pad = " " * spaces
    return [pad + line if line.strip() else "" for line in text.rstrip("\n").splitlines()]


def _ordered(views: Iterable[AgentView]) -> list[AgentView]:
    """Depth-first order from dotted paths: a parent before its children, siblings by name."""
    return sorted(views, key=lambda v: v.path.split("."))


# ---- a run as it works and as it ends: run, resume, demo, fill -----------------------------


FINAL_STATES = ("passed", "failed", "stopped")
NO_TESTS = "no tests ran"   # what a test result says before any test ran


def tree_lines(views: Iterable[AgentView], *, live: bool = False,
               notices: dict[str, str] | None = None) -> list[str]:
    """The agents as a tree; `live` (while a run works): no result before the first test run
    or while tests run, then each agent's time and tokens, and what its model call goes
    through (`notices`)."""
    ordered = _ordered(views)
    width = max((2 * _depth(v.path) + len(v.function) for v in ordered), default=0)
    lines = []
    for view in ordered:
        name = "  " * _depth(view.path) + view.function
        rounds = f"  {_plural(view.rounds, 'round')}" if view.rounds else ""
        tests = view.tests
        if live and (view.state == "testing" or view.tests == NO_TESTS):
            tests = ""
        line = f"{name:<{width}}  {view.role:<6}  {view.state:<9}  {tests}{rounds}"
        if live:
            line = (f"{line:<{width + 34}}  {view.seconds:5.0f} s  {view.tokens:>7,} tokens"
                    + (f"  {notices[view.path]}" if notices and view.path in notices else ""))
        lines.append(line.rstrip())
    return lines


def live_header(views: Iterable[AgentView], seconds: float) -> str:
    """The live tree's first line: the run, its elapsed time and the tokens it has spent."""
    views = list(views)
    tokens = sum(v.tokens for v in views)
    minutes, secs = divmod(int(seconds), 60)
    return (f"run {views[0].run}  {minutes}:{secs:02}  {tokens:,} tokens "
            f"({tokens / max(seconds, 1e-9):.1f}/s)")


def event_line(view: AgentView) -> str:
    """One plain line per state change, for logs and pipes: a result once it is known."""
    tests = f" ({view.tests})" if view.state in ("passed", "failed", "tested") else ""
    return f"{view.path} [{view.role}] {view.state}{tests}"


def why_lines(agents: Iterable[AgentView | AgentRecord]) -> list[str]:
    """Why each failed agent failed (its error, or its first failing test), under its tree."""
    return [f"why {a.path} failed: {a.why}" for a in agents if a.why]


def summary_lines(summary: RunSummary) -> list[str]:
    lines = [f"run {summary.run}: {summary.state}: {summary.message}", ""]
    lines += tree_lines(summary.agents)
    lines += why_lines(_ordered(summary.agents))
    usage = summary.usage
    estimated = " (estimated)" if usage.estimated else ""
    return [*lines, "", *_totals(
        len(summary.agents), summary.depth, summary.lines, summary.tests_passed,
        f"{usage.total:,} ({usage.prompt_tokens:,} prompt"
        + (f", {usage.cached_tokens:,} of them cached" if usage.cached_tokens else "")
        + f", {usage.completion_tokens:,} completion){estimated}", summary.branch,
        seconds=summary.seconds)]


def _totals(agents: int, depth: int, lines: int, tests_passed: int, tokens: str, branch: str,
            seconds: float | None = None) -> list[str]:
    """The closing lines of a run's summary, as it ends and as `show` reads it back."""
    return [f"agents: {agents}, depth: {depth}",
            f"lines of code: {lines} in total, {lines / max(agents, 1):.1f} per agent",
            f"tests passed: {tests_passed}", f"tokens: {tokens}",
            *([f"wall time: {seconds:.1f} s"] if seconds is not None else []),
            f"review: git log --graph {branch}"]


def summaries_json(summaries: Iterable[RunSummary]) -> dict:
    """`run`, `resume`, `demo` and `fill --json`: one shape however many runs, none included."""
    return {"runs": [summary_json(s) for s in summaries]}


def summary_json(summary: RunSummary) -> dict:
    data = asdict(summary)
    data["usage"]["total_tokens"] = summary.usage.total
    data["agents"] = [asdict(v) for v in _ordered(summary.agents)]
    data["seconds"] = round(summary.seconds, 3)
    return data


# ---- reviewing a run read back from git: list, tree, log, show, transcript -----------------


def _age(started: str, now: datetime) -> str:
    try:
        seconds = (now - datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return "just now"


def _root_tests(run: RunRecord) -> str | None:
    root = run.agent(run.root)
    return root.tests if root else None


def _agent_row(agent: AgentRecord) -> list[str]:
    return ["  " * _depth(agent.path) + agent.function, agent.role, agent.state,
            agent.tests or "-", str(agent.rounds), str(agent.lines), f"{agent.tokens:,}",
            agent.file or "?", agent.branch]


def run_tree_lines(run: RunRecord) -> list[str]:
    """The agent hierarchy of one run, as `soa-git tree` prints it."""
    header = ["agent", "role", "state", "tests", "rounds", "lines", "tokens", "file", "branch"]
    return [f"run {run.run}: {run.state}, {run.target or 'target not known yet'}", "",
            *_table([header, *(_agent_row(a) for a in run.agents)], right=(4, 5, 6)),
            *why_lines(run.agents)]


def runs_lines(runs: Iterable[RunRecord], now: datetime | None = None) -> list[str]:
    """`soa-git list`: one line per run, newest first."""
    now = now or datetime.now(timezone.utc)
    rows = [[r.run, r.target or "?", r.state, str(len(r.agents)), _root_tests(r) or "-",
             f"{r.tokens:,}", _age(r.started, now)] for r in runs]
    if not rows:
        from .history import NO_RUNS
        return [NO_RUNS]
    return _table([["run", "target", "state", "agents", "tests", "tokens", "age"], *rows],
                  right=(3, 5))


def run_summary_lines(run: RunRecord) -> list[str]:
    """`soa-git show RUN`: the outcome, the tree and the totals."""
    return [
        f"run {run.run}: {run.state}: {run.message}",
        f"target {run.target or '?'}, from {run.base[:7] or '?'}; started {run.started}, "
        f"last commit {run.updated}",
        "", *run_tree_lines(run)[2:], "",
        *_totals(len(run.agents), run.depth, sum(a.lines for a in run.agents), run.tests_passed,
                 f"{run.tokens:,}{_tokens_note(run)}", run.branch),
    ]


def _tokens_note(run: RunRecord) -> str:
    """The run counts every model call; its agents, the steps their commits and notes kept."""
    kept = sum(a.tokens for a in run.agents)
    if kept == run.tokens:
        return ""
    return (f" ({kept:,} in the agents' recorded steps; the rest in answers the run never "
            "recorded: a step interrupted before its commit)" if kept < run.tokens else
            f" (this process's; the agents' recorded steps hold {kept:,})")


def agent_log_lines(log: AgentLog) -> list[str]:
    """`soa-git log AGENT`: each attempt with its outcome, reflection, comments and diff."""
    agent = log.agent
    place = f" under {agent.parent}" if agent.parent else ", the root"
    lines = [f"agent {agent.path} in run {log.run.run}: {agent.role}{place}, {agent.state} "
             f"({agent.tests or 'not tested'}), {_plural(agent.rounds, 'round')}",
             f"file {agent.file or '?'}, tests {agent.test_file or '?'}",
             f"branch {agent.branch} at {agent.tip[:7]}", *why_lines([agent])]
    for attempt in log.attempts:
        commit = attempt.commit
        facts = [f"{commit.phase or '?'}, round {commit.round}",
                 f"tests: {attempt.tests or 'not run'}", f"tokens: {commit.tokens:,}", commit.date]
        lines += ["", f"#{attempt.number} {attempt.kind}  {commit.sha[:7]}  {commit.subject}",
                  "   " + ", ".join(facts)]
        if attempt.merged:
            lines.append(f"   merged {attempt.merged} (its tests: {attempt.child_tests or '?'})")
        for label, text in _words(attempt, lambda name: name):
            lines += [f"   {label}:", *_indent(text, 5)]
        if attempt.diff.strip():
            lines += ["   diff:", *_indent(attempt.diff, 5)]
    return lines


def _words(attempt: Attempt, name: Callable[[str], str]) -> list[tuple[str, str]]:
    """What the model and the Mother said in an attempt, labelled, in the order shown;
    `name` writes a child's name in a label."""
    return [*([("reflection", attempt.reflection)] if attempt.reflection else []),
            *([("comment from the Mother", attempt.comment)] if attempt.comment else []),
            *((f"comment to {name(child)}", comment)
              for child, comment in attempt.comments_sent.items())]


def agent_show_lines(log: AgentLog) -> list[str]:
    """`soa-git show AGENT`: its log, then its code and tests as they are at its tip."""
    agent = log.agent
    own = "function" if agent.parent is None else "module"
    lines = agent_log_lines(log)
    lines += ["", f"its {own} at {agent.tip[:7]} ({agent.file or '?'}):",
              *_indent(log.code or "(none)", 4)]
    lines += ["", f"its tests at {agent.tip[:7]} ({agent.test_file or '?'}):",
              *_indent(log.test_code or "(none)", 4)]
    return lines


def transcript_lines(run: RunRecord, agent: AgentRecord, steps: list[dict]) -> list[str]:
    """`soa-git transcript AGENT`: every message of every step, verbatim, under a role header."""
    lines = [f"transcript of {agent.path} in run {run.run}: {_plural(len(steps), 'step')}"]
    for number, step in enumerate(steps, start=1):
        usage = step.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        estimated = " (estimated)" if usage.get("estimated") else ""
        lines += ["", f"=== step {number} of {len(steps)}: {step.get('task', '?')} "
                      f"({step.get('phase', '?')}, round {step.get('round', '?')}), commit "
                      f"{str(step.get('commit', ''))[:7]} {step.get('subject', '')}",
                  f"model: {step.get('model', '?')}, tokens: {prompt + completion:,} "
                  f"({prompt:,} prompt, {completion:,} completion){estimated}, "
                  f"tests: {step.get('tests') or 'not run'}"]
        for message in step.get("messages", []):
            lines += [f"--- {message.get('role', '?')}", str(message.get("content", ""))]
    return lines


def _agent_json(agent: AgentRecord) -> dict:
    return {"path": agent.path, "role": agent.role, "function": agent.function,
            "parent": agent.parent, "file": agent.file, "test_file": agent.test_file,
            "branch": agent.branch, "tip": agent.tip, "state": agent.state, "tests": agent.tests,
            "passed": agent.passed, "rounds": agent.rounds, "commits": len(agent.commits),
            "lines": agent.lines, "tokens": agent.tokens, "why": agent.why}


def _run_head_json(run: RunRecord) -> dict:
    return {"run": run.run, "target": run.target, "branch": run.branch, "base": run.base,
            "state": run.state, "message": run.message, "started": run.started,
            "updated": run.updated, "depth": run.depth, "lines": sum(a.lines for a in run.agents),
            "tests_passed": run.tests_passed, "tokens": run.tokens}


def runs_json(runs: Iterable[RunRecord]) -> dict:
    return {"runs": [{**_run_head_json(r), "agent_count": len(r.agents), "tests": _root_tests(r)}
                     for r in runs]}


def run_json(run: RunRecord) -> dict:
    return {**_run_head_json(run), "agents": [_agent_json(a) for a in run.agents]}


def _attempt_json(attempt: Attempt) -> dict:
    commit = attempt.commit
    return {"number": attempt.number, "commit": commit.sha, "previous": attempt.previous,
            "subject": commit.subject, "kind": attempt.kind, "phase": commit.phase,
            "round": commit.round, "date": commit.date, "model": commit.soa.model,
            "tokens": commit.tokens, "tests": attempt.tests, "child_tests": attempt.child_tests,
            "merged": attempt.merged, "reflection": attempt.reflection, "comment": attempt.comment,
            "comments_sent": dict(attempt.comments_sent), "diff": attempt.diff}


def agent_log_json(log: AgentLog) -> dict:
    return {"run": log.run.run, "agent": _agent_json(log.agent),
            "attempts": [_attempt_json(a) for a in log.attempts]}


def run_show_json(run: RunRecord) -> dict:
    return {"kind": "run", **run_json(run)}


def agent_show_json(log: AgentLog) -> dict:
    return {"kind": "agent", **agent_log_json(log), "code": log.code, "test_code": log.test_code}


def transcript_json(run: RunRecord, agent: AgentRecord, steps: list[dict]) -> dict:
    return {"run": run.run, "agent": agent.path, "steps": steps}


# ---- `soa-git report`: the review of one run, as Markdown for a PR comment, text or JSON ------


# GitHub refuses a pull request body or a comment longer than 65,536 characters.
MARKDOWN_LIMIT = 60_000
_MARK = {"passed": "✅", "failed": "❌", "pending": "⏳", "done": "✅", "stopped": "⏸️",
         "running": "🔄", "interrupted": "⚠️"}


def report_lines(rep: RunReport) -> list[str]:
    """`soa-git report RUN` as text: the run's summary, its diff stat, how to fetch it."""
    run = rep.run
    return [*run_summary_lines(run), "", f"changes against {run.base[:7] or '?'}:",
            *_indent(rep.diff_stat or "(none)", 2), "", "fetch it into a clone with:",
            *(f"  {command}" for command in _review_commands(rep))]


def report_json(rep: RunReport) -> dict:
    """The keys of `tree --json`, each agent with its `attempts` (as in `log --json`, without
    the diffs), plus `diff_stat`, `remote` and `fetch` (the refspecs)."""
    data = run_json(rep.run)
    attempts = {log.agent.path: [{k: v for k, v in _attempt_json(a).items() if k != "diff"}
                                 for a in log.attempts] for log in rep.logs}
    for agent in data["agents"]:
        agent["attempts"] = attempts.get(agent["path"], [])
    return {**data, "diff_stat": rep.diff_stat, "remote": rep.remote,
            "fetch": list(rep.fetch_refspecs)}


def run_markdown(rep: RunReport, *, limit: int = MARKDOWN_LIMIT) -> str:
    """GitHub-flavoured Markdown for a pull request body or comment: the outcome, the agent
    tree, each agent's attempts folded in a `<details>`, the branches with the commands to fetch
    and inspect them, and the diff stat. Longer than `limit`: the attempts are left out."""
    text = "\n".join(_markdown(rep, attempts=True)) + "\n"
    if len(text) > limit:
        text = "\n".join(_markdown(rep, attempts=False)) + "\n"
    if len(text) > limit:
        cut = "\n\n…(cut: too long for GitHub; `soa-git report` shows all of it)\n"
        text = text[:limit - len(cut)] + cut
    return text


def _markdown(rep: RunReport, *, attempts: bool) -> list[str]:
    run = rep.run
    lines_of_code = sum(a.lines for a in run.agents)
    web = _Web(rep.web)
    out = [f"<!-- soa-git report {run.run} -->",
           (f"### soa-git run {web.tree(run.run, run.branch)}: "
            f"{_MARK.get(run.state, '')} {run.state}").replace("  ", " "),
           "", _md_text(run.message), "",
           f"**target** `{run.target or '?'}` · **from** {web.commit(run.base)} · "
           f"**result** {web.tree(run.branch)}"
           + (f" · [**compare**]({rep.web}/compare/{run.base}...{run.branch})"
              if rep.web and run.base else ""),
           "", f"**{_plural(len(run.agents), 'agent')}**, depth {run.depth} · "
           f"{_plural(lines_of_code, 'line')} of code · {run.tests_passed} tests passed · "
           f"{run.tokens:,} tokens · started {run.started}",
           "", "#### Agents", "",
           "| agent | role | state | tests | rounds | lines | tokens |",
           "| :-- | :-- | :-- | :-- | --: | --: | --: |"]
    for agent in run.agents:
        indent = "&emsp;" * _depth(agent.path)
        out.append(f"| {indent}`{agent.function}` | {agent.role} | "
                   f"{_MARK.get(agent.state, '')} {agent.state} | {agent.tests or '-'} | "
                   f"{agent.rounds} | {agent.lines} | {agent.tokens:,} |")
    out += [line for agent in run.agents if agent.why
            for line in ("", f"**why `{agent.path}` failed:** {_md_text(agent.why)}")]
    if attempts:
        out += ["", "#### What each agent did"]
        for log in rep.logs:
            out += ["", *_agent_details(log, web)]
    else:
        out += ["", "_Each agent's attempts are left out here: too long for one comment. "
                    "`soa-git log AGENT` shows them._"]
    out += ["", "#### Branches", "", "| branch | agent | tip |", "| :-- | :-- | :-- |"]
    for agent in run.agents:
        role = "root: the result" if agent.parent is None else f"under `{agent.parent}`"
        out.append(f"| {web.tree(agent.branch)} | `{agent.path}`, {role} | "
                   f"{web.commit(agent.tip)} |")
    out += ["", "Fetch the run and its transcripts (git notes), then inspect it:", "",
            "```sh", *_review_commands(rep), "```"]
    stat = rep.diff_stat.rstrip("\n")
    total = stat.splitlines()[-1].strip() if stat else "no changes"
    out += ["", f"#### Changes against `{run.base[:7] or '?'}`", "",
            f"<details><summary>{_md_text(total)}</summary>", "", *_fenced(stat or "(none)"),
            "", "</details>"]
    return out


class _Web:
    """Links into the repository's GitHub pages, or plain code spans when it has none."""

    def __init__(self, base: str | None):
        self.base = base

    def tree(self, text: str, ref: str | None = None) -> str:
        return f"[`{text}`]({self.base}/tree/{ref or text})" if self.base else f"`{text}`"

    def commit(self, sha: str) -> str:
        if not sha:
            return "`?`"
        return f"[`{sha[:7]}`]({self.base}/commit/{sha})" if self.base else f"`{sha[:7]}`"


def _agent_details(log: AgentLog, web: _Web) -> list[str]:
    agent = log.agent
    where = f"{agent.role} under `{agent.parent}`" if agent.parent else f"the root {agent.role}"
    out = [f"<details><summary><code>{agent.path}</code>: {agent.role}, "
           f"{_MARK.get(agent.state, '')} {agent.state} ({_md_text(agent.tests or 'not tested')}), "
           f"{_plural(agent.rounds, 'round')}, {_plural(len(log.attempts), 'attempt')}</summary>",
           "", f"{where}; file `{agent.file or '?'}`, tests `{agent.test_file or '?'}`"]
    for attempt in log.attempts:
        commit = attempt.commit
        facts = [f"{commit.phase or '?'}, round {commit.round}",
                 f"tests: {attempt.tests or 'not run'}", f"{commit.tokens:,} tokens"]
        out += ["", f"**#{attempt.number} {attempt.kind}** {web.commit(commit.sha)} "
                    f"{_md_text(commit.subject)} · {_md_text(', '.join(facts))}"]
        if attempt.merged:
            out += ["", f"merged `{attempt.merged}` (its tests: "
                        f"{_md_text(attempt.child_tests or '?')})"]
        for label, text in _words(attempt, lambda name: f"`{name}`"):
            out += ["", f"{label}:", *_fenced(text)]
    return out + ["", "</details>"]


def _review_commands(rep: RunReport) -> list[str]:
    run = rep.run
    return [f"git fetch {rep.remote} " + " ".join(f"'{spec}'" for spec in rep.fetch_refspecs),
            f"soa-git tree {run.run}",
            f"git log --graph {run.branch}",
            f"git diff {run.base[:7] or run.base}..{run.branch}",
            f"soa-git log {run.run}/AGENT     # one agent's attempts, reflections and diffs",
            f"soa-git accept {run.run}        # merge the result into your branch"]


def _md_text(text: str) -> str:
    """Model or git text in Markdown prose: no HTML, no accidental emphasis or code."""
    text = " ".join(str(text).split())
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, entity)
    for char in "\\`*_[]|#":
        text = text.replace(char, "\\" + char)
    return text


def _fenced(text: str, info: str = "text") -> list[str]:
    """`text` verbatim in a fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, *text.rstrip("\n").splitlines(), fence]


# ---- the other commands: accept, clean, push, pr, pr-head, check, serve -------------------


def accept_lines(done: Accepted) -> list[str]:
    how = "squashed" if done.squash else "merged"
    return [f"accepted run {done.run} ({done.target}) into {done.into}: {done.commit}",
            f"{how} {done.branch}, {_plural(len(done.files), 'file')} changed"]


def clean_json(plan: CleanPlan) -> dict:
    return {"dry_run": plan.dry_run,
            "runs": [{"run": r.run, "branches": list(r.branches), "workspaces": list(r.workspaces),
                      "notes": len(r.notes), "lock": r.lock} for r in plan.runs],
            "orphan_notes": len(plan.orphan_notes), "pending_refs": list(plan.pending_refs),
            "kept": [{"run": run, "reason": why} for run, why in plan.kept]}


def clean_lines(plan: CleanPlan) -> list[str]:
    verb = "would remove" if plan.dry_run else "removed"
    if plan.empty:
        return ["nothing to remove"]
    lines = []
    for run in plan.runs:
        lines.append(f"{verb} run {run.run}:")
        lines += [f"  branch    {b}" for b in run.branches]
        lines += [f"  workspace {w}" for w in run.workspaces]
        if run.notes:
            lines.append(f"  notes     on {_plural(len(run.notes), 'commit')}")
        if run.lock:
            lines.append(f"  lock      {run.lock}")
    if plan.orphan_notes:
        lines.append(f"{verb} notes on {len(plan.orphan_notes)} commits no branch reaches")
    if plan.pending_refs:
        lines.append(f"{verb} {_plural(len(plan.pending_refs), 'scratch notes ref')} "
                     "(refs/notes/soa-pending/)")
    return lines


def push_lines(done: Pushed) -> list[str]:
    merged = "; merged the remote's notes into ours first" if done.notes_merged else ""
    lines = [f"pushed run {done.run} to {done.remote} ({done.url}){merged}"]
    lines += [f"  {ref}  {outcome}" for ref, outcome in done.refs]
    lines += ["a reviewer fetches it with:",
              f"  git fetch {done.remote} " + " ".join(f"'{spec}'" for spec in done.fetch)]
    return lines


def push_json(done: Pushed) -> dict:
    return {"run": done.run, "remote": done.remote, "url": done.url,
            "refs": [{"ref": ref, "outcome": outcome} for ref, outcome in done.refs],
            "notes_merged": done.notes_merged, "fetch": list(done.fetch)}


def pull_lines(done: PullRequest) -> list[str]:
    verb = "opened" if done.created else "updated"
    return [f"{verb} pull request #{done.number}: {done.head} into {done.base}",
            done.url or "(GitHub gave no address)"]


def pull_json(done: PullRequest) -> dict:
    return {"action": "created" if done.created else "updated", "number": done.number,
            "url": done.url, "head": done.head, "base": done.base}


def pr_head_lines(head: ReviewedHead) -> list[str]:
    origin = " (a fork)" if head.fork else ""
    return [f"pull request #{head.number}: {head.sha}, the head of {head.repo}:{head.branch}"
            f"{origin}, unchanged since the comment"]


def pr_head_json(head: ReviewedHead) -> dict:
    return {"number": head.number, "sha": head.sha, "repo": head.repo, "branch": head.branch,
            "fork": head.fork}


def check_lines(result: CheckResult) -> list[str]:
    if result.problems:
        return [p.message for p in result.problems]
    return [f"soa-git check: {len(result.files)} Python file(s) checked; "
            f"{len(result.tested)} agent(s)' tests pass, no marked skeleton left"]


def check_json(result: CheckResult) -> dict:
    return {"ok": result.ok, "files": list(result.files),
            "tested": [{"file": t.file, "function": t.function, "tests": t.tests,
                        "result": t.result, "ok": t.ok} for t in result.tested],
            "problems": [{"file": p.file, "function": p.function, "kind": p.kind,
                          "message": p.message, "tests": p.tests, "result": p.result}
                         for p in result.problems],
            "notes": list(result.notes)}


def serve_lines(endpoint: LocalEndpoint) -> list[str]:
    """How to reach a `soa-git serve` model from other commands."""
    return [f"serving {endpoint.model} on {endpoint.base_url} ({endpoint.slots} slots); "
            "Ctrl-C stops it",
            f"model file: {endpoint.weights.source}",
            "use it from another shell with:",
            f"  export OPENAI_BASE_URL={endpoint.base_url} OPENAI_MODEL={endpoint.model} "
            f"OPENAI_API_KEY={endpoint.api_key}"]


def serve_json(endpoint: LocalEndpoint) -> dict:
    return {"base_url": endpoint.base_url, "api_key": endpoint.api_key, "model": endpoint.model,
            "slots": endpoint.slots, "source": endpoint.weights.source}
