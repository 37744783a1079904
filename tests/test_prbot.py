"""Publishing a run: `soa-git report` (Markdown for a PR comment), `soa-git push` to a real bare
repository and back into a fresh clone, `soa-git pr` against a loopback stand-in for GitHub's
REST API, and the GitHub Actions workflow and composite action under hooks/github/."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from soa_git import render
from soa_git.commands.report import build
from soa_git.github import GitHubError, parse_repo, repo_from_url
from soa_git.gitrepo import GitRepo

from .helpers.repos import ROOT, git, isolated
from .helpers.shapes import AREA_RIGHT, AREA_WRONG, fill_scripted, shapes_repo, shapes_script

TOKEN = "ghp_test-token-never-shown"
REFLECTION = "I added ```instead``` of <b>multiplying</b>."


@dataclass(frozen=True)
class Published:
    repo: Path
    run: str


def _script(**kwargs) -> list[dict]:
    return shapes_script(area_first=AREA_WRONG, extra=[
        {"when": r"^soa-git task: repair area_report[.]area$",
         "replies": [f"{REFLECTION}\n\n{AREA_RIGHT}"]}], **kwargs)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Published:
    """One repository with one finished run (area repaired once). Built once: runs take seconds."""
    with isolated(tmp_path_factory):
        repo = shapes_repo(tmp_path_factory.mktemp("prbot") / "shapes")
        [done] = fill_scripted(repo, _script())
    assert done.state == "done", done.message
    return Published(repo, done.run)


@pytest.fixture
def copy(published, tmp_path) -> Path:
    """A private copy of the published repository, for tests that change it."""
    target = tmp_path / "copy"
    shutil.copytree(published.repo, target)
    return target


def _remote(repo: Path, tmp_path: Path, name: str = "remote.git") -> Path:
    """A bare repository holding `main`, added to `repo` as origin: where a team pushes."""
    bare = tmp_path / name
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")
    return bare


# ---- report --------------------------------------------------------------------------------


def test_markdown_report_of_a_real_run(published, cli):
    run = published.run
    text = cli(published.repo, "report", run, "--format", "markdown")
    assert text == render.run_markdown(build(published.repo, run))   # the CLI adds nothing
    assert cli(published.repo, "report", run, "--format", "markdown") == text   # deterministic

    lines = text.splitlines()
    assert lines[0] == f"<!-- soa-git report {run} -->"
    assert lines[1] == f"### soa-git run `{run}`: ✅ done"
    assert "**target** `shapes/report.py::area_report`" in text
    # The tree: one row per agent, children indented under their Mother.
    assert "| agent | role | state | tests | rounds | lines | tokens |" in lines
    rows = [line for line in lines if line.startswith("| ") and "` | " in line and "soa/" not in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| `area_report`", "| &emsp;`area`", "| &emsp;`fmt`"]
    assert rows[1].split(" | ")[1:6] == ["child", "✅ passed", "2 passed", "1", "8"]
    # One folded block per agent with its attempts, plus one for the diff stat.
    assert text.count("<details>") == text.count("</details>") == 4
    assert "<details><summary><code>area_report.area</code>: child, ✅ passed (2 passed), 1 round, " \
           "3 attempts</summary>" in text
    assert "**#3 repair**" in text and "modify: repair area (round 1)" in text
    # The model's words stay verbatim, fenced past their own backticks; no HTML gets through.
    assert f"````text\n{REFLECTION}\n" in text
    # The branches and the commands to fetch and inspect them.
    for branch in ("area_report", "area_report.area", "area_report.fmt"):
        assert f"| `soa/{run}/{branch}` |" in text
    assert (f"git fetch origin '+refs/heads/soa/{run}/*:refs/heads/soa/{run}/*' "
            "'+refs/notes/soa:refs/notes/soa'") in lines
    assert f"soa-git tree {run}" in lines
    # The diff stat of the result against where the run started.
    base = git(published.repo, "rev-parse", "--short=7", "main").strip()
    stat = git(published.repo, "diff", "--stat=100,70", f"{base}..soa/{run}/area_report")
    assert f"#### Changes against `{base}`" in lines
    assert f"<details><summary>{stat.splitlines()[-1].strip()}</summary>" in lines
    assert stat.splitlines()[-1].strip().startswith("6 files changed, ")
    assert stat.rstrip("\n") in text
    assert " shapes/area_report__area.py " in text


def test_markdown_report_links_into_github_when_the_remote_is_there(copy, published, cli):
    """It had no links: branches, commits, the compare view and the run are links now."""
    run = published.run
    git(copy, "remote", "add", "gh", "git@github.com:octo/shapes.git")
    text = cli(copy, "report", run, "--format", "markdown", "--remote", "gh")
    web = "https://github.com/octo/shapes"
    record = build(copy, run, remote="gh").run
    assert f"### soa-git run [`{run}`]({web}/tree/soa/{run}/area_report):" in text
    assert f"**result** [`soa/{run}/area_report`]({web}/tree/soa/{run}/area_report)" in text
    assert f"[**compare**]({web}/compare/{record.base}...soa/{run}/area_report)" in text
    area = record.agent("area_report.area")
    assert f"| [`soa/{run}/area_report.area`]({web}/tree/soa/{run}/area_report.area) |" in text
    assert f"[`{area.tip[:7]}`]({web}/commit/{area.tip})" in text
    # A remote elsewhere: no links, as before.
    assert "](https://" not in cli(copy, "report", run, "--format", "markdown")


def test_report_as_text_and_json(published, cli):
    run = published.run
    text = cli(published.repo, "report", run)
    assert text.startswith(f"run {run}: done: all tests pass")
    assert "changes against" in text and "shapes/area_report__fmt.py" in text
    data = json.loads(cli(published.repo, "report", run, "--format", "json", "--remote", "up"))
    tree = json.loads(cli(published.repo, "tree", run, "--json"))
    assert {k: v for k, v in data.items() if k not in ("agents", "diff_stat", "remote", "fetch")} \
        == {k: v for k, v in tree.items() if k != "agents"}
    assert [{k: v for k, v in a.items() if k != "attempts"} for a in data["agents"]] == tree["agents"]
    assert [a["kind"] for a in data["agents"][1]["attempts"]] == ["skeleton", "implement", "repair"]
    assert data["agents"][1]["attempts"][2]["reflection"].startswith(REFLECTION)
    assert data["remote"] == "up" and data["fetch"] == [
        f"+refs/heads/soa/{run}/*:refs/heads/soa/{run}/*", "+refs/notes/soa:refs/notes/soa"]
    assert "6 files changed" in data["diff_stat"]


def test_a_long_report_leaves_out_the_attempts(published):
    rep = build(published.repo, published.run)
    full = render.run_markdown(rep)
    short = render.run_markdown(rep, limit=len(full) - 1)
    assert len(short) < len(full) and "**#1 " not in short
    assert "`soa-git log AGENT` shows them" in short and "#### Branches" in short
    assert len(render.run_markdown(rep, limit=500)) <= 500


# ---- push ----------------------------------------------------------------------------------


def test_push_then_a_fresh_clone_reads_the_run(published, copy, cli, tmp_path):
    run = published.run
    bare = _remote(copy, tmp_path)
    out = cli(copy, "push", run)
    assert out.splitlines()[0] == f"pushed run {run} to origin ({bare})"
    assert f"  refs/heads/soa/{run}/area_report  new" in out
    assert "  refs/notes/soa  new" in out
    pushed = git(bare, "for-each-ref", "--format=%(refname) %(objectname)")
    here = git(copy, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/soa/",
               "refs/notes/soa", "refs/heads/main")
    assert pushed == here       # the run's branches and the notes, nothing else

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    assert "soa/" not in git(clone, "branch")
    spec = render.report_json(build(copy, run))["fetch"]
    git(clone, "fetch", "-q", "origin", *spec)
    assert cli(clone, "tree", run, "--json") == cli(copy, "tree", run, "--json")
    assert cli(clone, "transcript", f"{run}/area_report.area", "--json") == \
        cli(copy, "transcript", f"{run}/area_report.area", "--json")

    # Pushing again changes nothing.
    again = json.loads(cli(copy, "push", run, "origin", "--json"))
    assert {r["outcome"] for r in again["refs"]} == {"up to date"}
    assert again["notes_merged"] is False


def test_push_merges_notes_that_diverged_on_the_remote(published, copy, cli, tmp_path):
    run = published.run
    bare = _remote(copy, tmp_path)
    cli(copy, "push", run)
    # Someone else adds a note on the remote (on `main`); here, another run and a note on
    # the same commit are added: the two notes refs have diverged and conflict on `main`.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(bare), str(other))
    git(other, "fetch", "-q", "origin", "+refs/notes/soa:refs/notes/soa")
    main_sha = git(copy, "rev-parse", "main").strip()
    git(other, "fetch", "-q", str(copy), "main")
    git(other, "notes", "--ref=soa", "add", "-m", '{"by": "reviewer"}', main_sha)
    git(other, "push", "-q", "origin", "refs/notes/soa")
    GitRepo.open(copy).append_note(main_sha, '{"by": "author"}\n')
    [second] = fill_scripted(copy, _script())
    assert second.state == "done" and second.run != run

    out = json.loads(cli(copy, "push", second.run, "--json"))
    assert out["notes_merged"] is True
    assert {r["ref"]: r["outcome"] for r in out["refs"]}["refs/notes/soa"] == "updated"
    assert git(bare, "notes", "--ref=soa", "show", main_sha).splitlines() == [
        '{"by": "author"}', '{"by": "reviewer"}']
    # Both runs read back whole from a fresh clone; the merge also came home.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    git(clone, "fetch", "-q", "origin", "+refs/heads/soa/*:refs/heads/soa/*",
        "+refs/notes/soa:refs/notes/soa")
    for each in (run, second.run):
        assert cli(clone, "tree", each, "--json") == cli(copy, "tree", each, "--json")
    assert git(copy, "rev-parse", "refs/notes/soa") == git(bare, "rev-parse", "refs/notes/soa")
    assert not git(copy, "for-each-ref", "refs/notes/soa-pending/")   # no scratch ref left


def test_push_errors_are_one_sentence(published, copy, cli, tmp_path):
    run = published.run
    out = cli(copy, "push", run, "nowhere", ok=False)
    assert out == ("Error: there is no remote named 'nowhere' here; add one with "
                   "`git remote add nowhere URL`\n")
    bare = _remote(copy, tmp_path)
    assert "Error: no run named 20990101-000000-dead here" in cli(
        copy, "push", "20990101-000000-dead", ok=False)
    # The remote has other commits on one of the run's branches: refused, nothing forced.
    elsewhere = git(copy, "commit-tree", "-p", "main", "-m", "elsewhere", "main^{tree}").strip()
    git(copy, "push", "-q", str(bare), f"{elsewhere}:refs/heads/soa/{run}/area_report.fmt")
    out = cli(copy, "push", run, ok=False)
    assert out.startswith(f"Error: origin refused soa/{run}/area_report.fmt (")
    assert len(out.strip().splitlines()) == 1
    assert git(bare, "rev-parse", f"soa/{run}/area_report.fmt").strip() == elsewhere
    git(copy, "remote", "add", "gone", str(tmp_path / "missing.git"))
    out = cli(copy, "push", run, "gone", ok=False)
    assert out.startswith("Error: cannot ") and len(out.strip().splitlines()) == 1


# ---- pr: against a loopback stand-in for GitHub's REST API -----------------------------------


@pytest.fixture
def github(fake_github, monkeypatch):
    """github(*answers) -> a FakeGitHub that `soa-git pr` talks to, with a token."""
    def start(*answers):
        fake = fake_github(*answers)
        monkeypatch.setenv("GITHUB_API_URL", fake.url)
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        return fake

    return start


def _as_github_wants(request: dict, method: str, path: str) -> None:
    """What GitHub's REST docs ask of every call."""
    assert (request["method"], request["path"]) == (method, path)
    headers = request["headers"]
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["accept"] == "application/vnd.github+json"
    assert headers["x-github-api-version"] == "2022-11-28"
    assert headers["user-agent"].startswith("soa-git/")
    if request["body"] is not None:
        assert headers["content-type"] == "application/json"


def test_pr_opens_a_pull_request_with_the_report(published, copy, cli, github):
    run = published.run
    git(copy, "remote", "add", "origin", "git@github.com:octo/shapes.git")
    fake = github((200, []), (201, {"number": 7, "html_url": "https://github.com/octo/shapes/pull/7",
                                    "base": {"ref": "main"}}))
    out = cli(copy, "pr", run)
    assert out == ("opened pull request #7: soa/" + run + "/area_report into main\n"
                   "https://github.com/octo/shapes/pull/7\n")
    find, create = fake.requests
    _as_github_wants(find, "GET", "/repos/octo/shapes/pulls")
    assert find["query"] == {"head": [f"octo:soa/{run}/area_report"], "state": ["open"]}
    assert find["body"] is None
    _as_github_wants(create, "POST", "/repos/octo/shapes/pulls")
    assert create["query"] == {}
    assert create["body"] == {
        "title": f"soa-git: shapes/report.py::area_report (run {run})",
        "head": f"soa/{run}/area_report", "base": "main",
        "body": render.run_markdown(build(copy, run))}
    assert TOKEN not in out


def test_pr_updates_the_open_pull_request(published, copy, cli, github):
    run = published.run
    git(copy, "remote", "add", "origin", "https://github.com/someone/else.git")
    fake = github((200, [{"number": 12, "html_url": "https://github.com/octo/shapes/pull/12"}]),
                  (200, {"number": 12, "html_url": "https://github.com/octo/shapes/pull/12",
                         "base": {"ref": "develop"}}))
    data = json.loads(cli(copy, "pr", run, "--repo", "octo/shapes", "--base", "develop", "--json"))
    assert data == {"action": "updated", "number": 12,
                    "url": "https://github.com/octo/shapes/pull/12",
                    "head": f"soa/{run}/area_report", "base": "develop"}
    find, update = fake.requests
    _as_github_wants(find, "GET", "/repos/octo/shapes/pulls")
    assert find["query"]["head"] == [f"octo:soa/{run}/area_report"]
    _as_github_wants(update, "PATCH", "/repos/octo/shapes/pulls/12")
    assert update["body"] == {"body": render.run_markdown(build(copy, run))}


def test_pr_errors_are_one_sentence(published, copy, cli, github, monkeypatch):
    run = published.run
    git(copy, "remote", "add", "origin", "https://github.com/octo/shapes")
    github((401, {"message": "Bad credentials",
                  "documentation_url": "https://docs.github.com/rest"}))
    out = cli(copy, "pr", run, ok=False)
    assert out == "Error: GitHub refused the token (401: Bad credentials); check GITHUB_TOKEN\n"

    github((200, []), (422, {"message": "Validation Failed", "errors": [
        {"resource": "PullRequest", "field": "head", "code": "invalid"}]}))
    out = cli(copy, "pr", run, ok=False)
    assert out == ("Error: GitHub rejected POST /repos/octo/shapes/pulls (422: Validation Failed; "
                   "PullRequest head invalid); push the run first with `soa-git push RUN`\n")

    github((404, {"message": "Not Found"}))
    assert cli(copy, "pr", run, ok=False).startswith(
        "Error: GitHub found nothing at /repos/octo/shapes/pulls (404: Not Found)")

    monkeypatch.delenv("GITHUB_TOKEN")
    assert cli(copy, "pr", run, ok=False) == (
        "Error: no GitHub token: set GITHUB_TOKEN to a token that may write pull requests\n")
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    git(copy, "remote", "set-url", "origin", "/srv/git/shapes.git")
    assert "is not a GitHub URL" in cli(copy, "pr", run, ok=False)
    monkeypatch.setenv("GITHUB_API_URL", "http://127.0.0.1:9")      # nothing listens there
    out = cli(copy, "pr", run, "--repo", "octo/shapes", ok=False)
    assert out.startswith("Error: cannot reach GitHub at http://127.0.0.1:9")
    assert TOKEN not in out


def test_repository_names_from_remote_urls():
    for url in ("https://github.com/octo/shapes.git", "https://github.com/octo/shapes",
                "git@github.com:octo/shapes.git", "ssh://git@github.com/octo/shapes.git",
                "https://x-access-token:secret@github.com/octo/shapes.git",
                "https://ghe.example.com/octo/shapes/"):
        assert repo_from_url(url) == ("octo", "shapes"), url
    assert repo_from_url("/srv/git/shapes.git") is None
    assert repo_from_url("file:///srv/shapes.git") is None      # a local path, not a host
    assert parse_repo("octo/shapes") == ("octo", "shapes")
    with pytest.raises(GitHubError, match="is not a GitHub repository"):
        parse_repo("octo")


# ---- pr-head: the commit a `/soa run` comment reviewed, against the same stand-in ----------

COMMENTED = "2026-12-02T14:00:00Z"
HEAD, EARLIER = "a" * 40, "b" * 40


def _pull(head_repo: str | None = "octo/shapes") -> dict:
    return {"number": 5, "head": {"sha": HEAD, "ref": "feature",
                                  "repo": {"full_name": head_repo} if head_repo else None},
            "base": {"ref": "main", "repo": {"full_name": "octo/shapes"}}}


def _change(after: str, at: str, kind: str = "push") -> dict:
    """One item of GitHub's repository activity API."""
    return {"id": 1, "node_id": "RA_1", "before": EARLIER, "after": after,
            "ref": "refs/heads/feature", "timestamp": at, "activity_type": kind,
            "actor": {"login": "someone"}}


def test_pr_head_pins_the_head_that_was_reviewed(cli, github, tmp_path):
    fake = github((200, _pull()), (200, [_change(HEAD, "2026-12-02T13:58:30Z")]))
    out = cli(tmp_path, "pr-head", "5", "--repo", "octo/shapes", "--at", COMMENTED, "--json")
    assert json.loads(out) == {"number": 5, "sha": HEAD, "repo": "octo/shapes",
                               "branch": "feature", "fork": False}
    pull, activity = fake.requests
    _as_github_wants(pull, "GET", "/repos/octo/shapes/pulls/5")
    _as_github_wants(activity, "GET", "/repos/octo/shapes/activity")
    assert activity["query"] == {"ref": ["refs/heads/feature"], "direction": ["desc"],
                                 "per_page": ["1"]}


def test_pr_head_of_a_fork_reads_the_forks_activity(cli, github, tmp_path):
    fake = github((200, _pull("forker/shapes")), (200, [_change(HEAD, "2026-12-01T09:00:00Z")]))
    out = cli(tmp_path, "pr-head", "5", "--repo", "octo/shapes", "--at", COMMENTED)
    assert out == (f"pull request #5: {HEAD}, the head of forker/shapes:feature (a fork), "
                   "unchanged since the comment\n")
    assert fake.requests[1]["path"] == "/repos/forker/shapes/activity"


@pytest.mark.parametrize("pull, changes, said", [
    # Pushed after the comment: the pushed commit may carry any date it likes (a back-dated
    # one passed the old check); GitHub's own record of the push is what counts.
    (_pull(), [_change(HEAD, "2026-12-02T14:00:31Z")], "moved after the comment (a push to "
     "octo/shapes:feature at 2026-12-02T14:00:31Z; the comment is of 2026-12-02T14:00:00Z)"),
    (_pull(), [_change(HEAD, "2026-12-02T14:05:00Z", "force_push")], "(a force_push to"),
    # Within the comment's second: it may have come after it.
    (_pull(), [_change(HEAD, "2026-12-02T14:00:00.400Z")], "moved after the comment"),
    # GitHub's record lags behind the head: not known to be what was reviewed.
    (_pull(), [_change(EARLIER, "2026-12-02T13:00:00Z")],
     f"is {HEAD[:12]}, but GitHub's activity says octo/shapes:feature was last left at "
     f"{EARLIER[:12]}"),
    (_pull(), [], "shows no push, so the reviewed head is not known"),
    (_pull(head_repo=None), [], "has no head branch any more"),
])
def test_pr_head_refuses_a_head_not_known_to_be_the_reviewed_one(cli, github, tmp_path, pull,
                                                                 changes, said):
    fake = github((200, pull), (200, changes))
    out = cli(tmp_path, "pr-head", "5", "--repo", "octo/shapes", "--at", COMMENTED, ok=False)
    assert out.startswith("Error: ") and said in out and len(out.strip().splitlines()) == 1
    # Only GitHub's records are asked, never the commits (whose dates the pusher chooses).
    assert [r["path"] for r in fake.requests] == ["/repos/octo/shapes/pulls/5", *(
        ["/repos/octo/shapes/activity"] if pull["head"]["repo"] else [])]


def test_pr_head_errors_are_one_sentence(cli, github, tmp_path, monkeypatch):
    assert cli(tmp_path, "pr-head", "5", "--repo", "octo/shapes", "--at", "yesterday",
               ok=False) == "Error: --at 'yesterday' is not a time like 2026-12-02T14:00:00Z\n"
    github((404, {"message": "Not Found"}))
    out = cli(tmp_path, "pr-head", "5", "--repo", "octo/shapes", "--at", COMMENTED, ok=False)
    assert out.startswith("Error: GitHub found nothing at /repos/octo/shapes/pulls/5 (404")
    monkeypatch.delenv("GITHUB_TOKEN")
    assert "no GitHub token" in cli(tmp_path, "pr-head", "5", "--repo", "octo/shapes", "--at",
                                    COMMENTED, ok=False)


# ---- the workflow and the composite action ---------------------------------------------------

HOOKS = ROOT / "hooks" / "github"


def _yaml(name: str) -> dict:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load((HOOKS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _runs(step: dict) -> str:
    return step.get("run", "")


def soa_action(flow: dict) -> str:
    """The one soa-git action every job uses: a pinned ref, never a local path."""
    [uses] = {s["uses"] for job in flow["jobs"].values() for s in job["steps"]
              if "soa-git/hooks/github" in s.get("uses", "")}
    assert not uses.startswith(".") and "@" in uses
    return uses


def test_the_workflow_has_what_github_requires_and_splits_the_permissions():
    flow = _yaml("soa-git.yml")
    # YAML 1.1 reads the key `on` as True.
    on = flow.get("on", flow.get(True))
    assert on == {"issue_comment": {"types": ["created"]}}
    assert flow["name"] and flow["permissions"] == {}
    jobs = flow["jobs"]
    assert set(jobs) == {"check", "agents", "publish", "failed"}
    for job in jobs.values():
        assert job["runs-on"] and isinstance(job["steps"], list) and job["steps"]
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step
        # Nothing from the event is spliced into a script: it reaches the shell as environment.
        assert all("${{" not in _runs(s) for s in job["steps"])

    check, agents, publish, failed = (jobs[n] for n in ("check", "agents", "publish", "failed"))
    # Only on `/soa run`; the command is acknowledged first, with a link to this run.
    assert "startsWith(github.event.comment.body, '/soa run ')" in check["if"]
    assert "/reactions" in _runs(check["steps"][0]) and "$JOB_URL" in _runs(check["steps"][0])
    assert check["env"]["JOB_URL"].endswith("/actions/runs/${{ github.run_id }}")
    # Write permission is asked of GitHub, not read from author_association.
    assert "author_association" not in json.dumps(flow)
    permission = _runs(check["steps"][1])
    assert "collaborators/$COMMENTER/permission" in permission
    assert "admin|maintain|write" in permission
    # The reviewed commit is pinned: a pull request's head by `soa-git pr-head` (refused if it
    # moved after the comment), from soa-git's action, never the pull request's code.
    pin = next(s for s in check["steps"] if s.get("id") == "pull")
    assert pin["if"] == "github.event.issue.pull_request != null"
    assert not pin["uses"].startswith(".") and pin["uses"] == soa_action(flow)
    assert pin["with"]["command"] == "pin"
    assert pin["with"]["commented-at"] == "${{ github.event.comment.created_at }}"
    assert pin["with"]["issue"] == "${{ github.event.issue.number }}"
    branch = next(s for s in check["steps"] if s.get("id") == "branch")
    assert branch["if"] == "github.event.issue.pull_request == null"
    assert check["outputs"]["sha"] == ("${{ steps.pull.outputs.sha || "
                                       "steps.branch.outputs.sha }}")
    assert check["outputs"]["fork"] == "${{ steps.pull.outputs.fork || 'false' }}"
    assert not any(s.get("uses", "").startswith("actions/checkout") for s in check["steps"])

    # The job that executes generated code checks out exactly that commit and can only read.
    assert agents["needs"] == "check"
    assert agents["permissions"] == {"contents": "read", "pull-requests": "read"}
    checkout = next(s for s in agents["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["ref"] == "${{ needs.check.outputs.sha }}"
    assert checkout["with"]["persist-credentials"] is False
    soa = next(s for s in agents["steps"] if s.get("id") == "soa")
    assert soa["uses"] == soa_action(flow)          # never the pull request's own copy
    assert soa["with"]["api-key"] == "${{ secrets.SOA_GIT_API_KEY }}"
    assert soa["with"]["base-url"] == "${{ secrets.SOA_GIT_BASE_URL }}"
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in agents["steps"])

    # The job that writes runs nothing of the pull request, never sees the key, and pushes a
    # fork's commits only with the default token (which triggers no CI).
    assert publish["needs"] == ["check", "agents"]
    assert publish["permissions"] == {"contents": "write", "pull-requests": "write",
                                      "issues": "write"}
    assert any(s.get("uses", "").startswith("actions/download-artifact") for s in publish["steps"])
    assert "SOA_GIT_API_KEY" not in json.dumps(publish)
    checkout = next(s for s in publish["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert "ref" not in checkout.get("with", {})     # the default branch, not the pull request
    tokens = [v for s in publish["steps"] for k, v in s.get("with", {}).items() if "token" in k]
    assert tokens and all(t == "${{ needs.check.outputs.fork == 'false' && "
                              "secrets.SOA_GIT_PUSH_TOKEN || github.token }}" for t in tokens)
    assert "SOA_GIT_PUSH_TOKEN" not in json.dumps({k: v for k, v in publish.items()
                                                   if k != "steps"})
    push = next(s for s in publish["steps"] if s.get("with", {}).get("command") == "publish")
    assert push["with"]["started-from"] == "${{ needs.check.outputs.sha }}"

    # A failure anywhere is said on the pull request or issue.
    assert failed["needs"] == ["check", "agents", "publish"]
    assert "always()" in failed["if"] and "failure" in failed["if"]
    assert "/comments" in _runs(failed["steps"][0])

    # An ordinary comment gets a concurrency group of its own: it cannot cancel or displace a
    # `/soa run` of the same pull request.
    group = flow["concurrency"]["group"]
    assert "github.event.issue.number" in group and "github.run_id" in group
    assert "startsWith(github.event.comment.body, '/soa run ')" in group
    assert flow["concurrency"]["cancel-in-progress"] is False


def test_the_composite_action_is_valid():
    action = _yaml("action.yml")
    assert action["name"] and action["description"]
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    assert steps
    for step in steps:
        assert ("uses" in step) != ("run" in step), step
        if "run" in step:
            assert step["shell"] == "bash"          # required for run steps of a composite
            # Inputs reach scripts through the environment, never spliced into them.
            assert "${{" not in step["run"], step["name"]
    assert {"command", "target", "api-key", "base-url", "bundle", "run"} <= set(action["inputs"])
    for name, spec in action["inputs"].items():
        assert "description" in spec, name
    for name, spec in action["outputs"].items():
        assert spec["value"].startswith("${{ steps."), name
    run_step = next(s for s in steps if s.get("id") == "run")
    assert "--base-url" in run_step["run"] and "--api-key-env SOA_GIT_API_KEY" in run_step["run"]
    assert "git bundle create" in run_step["run"]
    pin_step = next(s for s in steps if s.get("id") == "pin")
    assert pin_step["if"] == "inputs.command == 'pin'"
    assert 'soa-git pr-head "$SOA_ISSUE" --repo "$GITHUB_REPOSITORY" --at "$SOA_COMMENTED_AT"' \
        in pin_step["run"]
    assert {"sha", "fork"} <= set(action["outputs"])
    publish_step = next(s for s in steps if s.get("id") == "publish")
    assert "soa-git push" in publish_step["run"] and "soa-git report" in publish_step["run"]
