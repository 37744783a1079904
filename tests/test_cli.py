"""The command line: every bad input ends in one `Error: ...` line, a non-zero exit and an
untouched repository; good input gives a summary as text or JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from soa_git import config
from soa_git.cli import main
from soa_git.openai_chat import OpenAIChat

from .helpers.cli import assert_one_error, cli_repo, console_script, listing
from .helpers.repos import free_port, git, make_repo, snapshot
from .helpers.shapes import SHAPES_SKELETON, shapes_script

KEY = "sk-cli-test-key"

@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> Path:
    """The shapes repository plus a file without skeletons and one that does not parse; cwd."""
    path = cli_repo(tmp_path / "shapes")
    monkeypatch.chdir(path)
    return path


def state(repo: Path) -> tuple[dict, str]:
    return snapshot(repo), git(repo, "for-each-ref")


def test_commands_that_call_no_model_do_not_import_openai():
    # Importing `openai` takes longer than the rest of soa-git's start-up; status, tree, check,
    # clean and the hooks never call a model.
    code = ("import sys, soa_git.cli; "
            "sys.exit('openai' in sys.modules or 'soa_git.openai_chat' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_commit_gate_imports_only_what_it_needs(tmp_path):
    """Every command was imported at start-up: `soa-git check` paid for the organizer, the
    agents, the history reader, rich...; then GitPython, only to find the repository, and
    tree-sitter and the test runner with nothing to parse or test (benchmarks/startup.py
    measures it)."""
    git(tmp_path, "init", "-q")
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    git(tmp_path, "add", "calc.py")
    code = ("import sys; from soa_git.entry import main; sys.argv = ['soa-git', 'check']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('soa_git.organizer', 'soa_git.history', 'soa_git.agents', "
            "'soa_git.commands.run', 'rich', 'openai', 'git', 'tree_sitter', 'soa_git.pycode', "
            "'soa_git.testing', 'soa_git.llm') if m in sys.modules]\n"
            "print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert "1 Python file(s) checked" in done.stdout, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout + done.stderr


# ---- init ------------------------------------------------------------------------------------

def test_init_outside_a_git_repository(runner, tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello\n")
    monkeypatch.chdir(plain)
    result = runner.invoke(main, ["init"])
    assert_one_error(result, "not inside a git repository")
    assert listing(plain) == {"notes.txt": b"hello\n"}


def test_init_writes_then_keeps_the_configuration(runner, repo):
    result = runner.invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    path = repo / ".soa-git.toml"
    assert result.stdout.strip() == f"wrote configuration in {path}"
    assert config.resolve(repo, {}, {}) == config.Settings()
    written = path.read_bytes()

    again = runner.invoke(main, ["init", "--model", "other"])
    assert again.exit_code == 0, again.output
    assert "kept the existing configuration" in again.stdout
    assert path.read_bytes() == written


def test_init_with_flags_writes_those_values(runner, repo):
    result = runner.invoke(main, ["init", "--model", "m", "--max-depth", "3"])
    assert result.exit_code == 0, result.output
    data = tomllib.loads((repo / ".soa-git.toml").read_text())
    assert (data["model"], data["max-depth"]) == ("m", 3)
    resolved = config.resolve(repo, {}, {})
    assert (resolved.model, resolved.max_depth) == ("m", 3)


def test_init_puts_the_table_in_an_existing_pyproject(runner, tmp_path, monkeypatch):
    original = '[project]\nname = "shapes"\n\n[tool.black]\nline-length = 99\n'
    path = make_repo(tmp_path / "proj", {"pyproject.toml": original, "shapes.py": SHAPES_SKELETON})
    monkeypatch.chdir(path)
    result = runner.invoke(main, ["init", "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert str(path / "pyproject.toml") in result.stdout
    after = (path / "pyproject.toml").read_bytes()
    assert after.startswith(original.encode())
    assert tomllib.loads(after.decode())["tool"]["soa-git"]["jobs"] == 2
    assert not (path / ".soa-git.toml").exists()


def test_init_never_writes_the_key(runner, repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert runner.invoke(main, ["init"]).exit_code == 0
    assert KEY not in (repo / ".soa-git.toml").read_text()


@pytest.mark.parametrize("args, name", [(["--jobs", "0"], "jobs"), (["--max-depth", "-1"], "max_depth")])
def test_init_with_a_bad_value_writes_nothing(runner, repo, args, name):
    before = state(repo)
    assert_one_error(runner.invoke(main, ["init", *args]), name)
    assert state(repo) == before


def test_init_with_a_broken_config_file_names_it(runner, repo):
    (repo / ".soa-git.toml").write_text("jobs = = 2\n")
    before = state(repo)
    assert_one_error(runner.invoke(main, ["init"]), ".soa-git.toml")
    assert state(repo) == before


# ---- run: bad input --------------------------------------------------------------------------

def test_run_outside_a_git_repository(runner, tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "report.py").write_text(SHAPES_SKELETON)
    monkeypatch.chdir(plain)
    assert_one_error(runner.invoke(main, ["run", "report.py::area_report"]),
                     "not inside a git repository")
    assert listing(plain) == {"report.py": SHAPES_SKELETON.encode()}


def test_run_in_a_repository_without_commits(runner, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    (empty / "report.py").write_text(SHAPES_SKELETON)
    monkeypatch.chdir(empty)
    files, status = listing(empty), git(empty, "status", "--porcelain", "--untracked-files=all")
    assert_one_error(runner.invoke(main, ["run", "report.py::area_report"]), "no commits")
    assert listing(empty) == files
    assert git(empty, "status", "--porcelain", "--untracked-files=all") == status
    assert git(empty, "for-each-ref") == ""


@pytest.mark.parametrize("target, fragments", [
    ("shapes/missing.py::area_report", ("shapes/missing.py", "not a file committed")),
    ("README.md", ("README.md", "not a Python file")),
    ("README.md::area_report", ("README.md", "not a Python file")),
    ("shapes/report.py::nope", ("nope",)),
    ("shapes/report.py::untouched", ("untouched", "not a skeleton")),
    ("shapes/broken.py::half", ("shapes/broken.py", "does not parse", "line 6")),
    ("shapes/broken.py", ("shapes/broken.py", "does not parse")),
    ("shapes/done.py", ("shapes/done.py", "no skeletons")),
    ("../elsewhere.py::area_report", ("outside the repository",)),
], ids=["no-such-file", "not-python", "not-python-with-function", "no-such-function",
        "not-a-skeleton", "does-not-parse", "does-not-parse-whole-file", "no-skeletons",
        "outside-the-repository"])
def test_run_bad_target(runner, repo, monkeypatch, target, fragments):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the target is checked whether or not a key is set
    before = state(repo)
    assert_one_error(runner.invoke(main, ["run", target]), *fragments)
    assert state(repo) == before


def test_run_file_with_uncommitted_changes(runner, repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    report = repo / "shapes" / "report.py"
    report.write_text(SHAPES_SKELETON + "\n# my unsaved thought\n")
    before = state(repo)
    assert_one_error(runner.invoke(main, ["run", "shapes/report.py::area_report"]),
                     "shapes/report.py", "uncommitted changes")
    assert state(repo) == before
    assert report.read_text().endswith("# my unsaved thought\n")


def test_run_from_a_subdirectory_resolves_the_target_against_cwd(runner, repo, monkeypatch):
    monkeypatch.chdir(repo / "shapes")
    before = state(repo)
    # The path is relative to cwd, so the target is found and only the missing key stops the run.
    assert_one_error(runner.invoke(main, ["run", "report.py::area_report"]), "OPENAI_API_KEY")
    assert state(repo) == before


def test_run_without_an_api_key_names_the_variable(runner, repo):
    assert "OPENAI_API_KEY" not in os.environ
    before = state(repo)
    assert_one_error(runner.invoke(main, ["run", "shapes/report.py::area_report"]), "OPENAI_API_KEY")
    assert_one_error(runner.invoke(main, ["run", "shapes/report.py::area_report",
                                          "--api-key-env", "MY_SOA_KEY"]), "MY_SOA_KEY")
    assert state(repo) == before


def test_run_with_a_bad_setting(runner, repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    before = state(repo)
    assert_one_error(runner.invoke(main, ["run", "shapes/report.py::area_report", "--jobs", "0"]),
                     "jobs")
    assert state(repo) == before


def test_run_against_an_unreachable_endpoint(runner, repo, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    # Every attempt is still made; only the backoff between them (about 15 s in all) is skipped.
    monkeypatch.setattr(OpenAIChat, "_pause_s", lambda self, attempt, retry_after: 0.0)
    before = state(repo)
    result = runner.invoke(main, ["run", "shapes/report.py::area_report",
                                  "--base-url", f"http://127.0.0.1:{free_port()}/v1"])
    assert_one_error(result, "unreachable", only_line=False)
    assert KEY not in result.output
    assert state(repo) == before


def test_run_against_a_model_that_answers_nonsense(runner, repo, monkeypatch, serve):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = serve(lambda request: "no code here")
    before = state(repo)
    result = runner.invoke(main, ["run", "shapes/report.py::area_report", "--base-url", server.base_url])
    # A failed run, shown like any other, with why it failed; the user's work is untouched.
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.match(r"run \S+: failed: agent area_report: the model's answers could not be used",
                    result.stdout), result.stdout
    assert KEY not in result.output
    assert state(repo)[0] == before[0]
    assert server.requests, "the model was never asked"
    listed = runner.invoke(main, ["list"])
    assert " failed " in listed.stdout.splitlines()[1]
    # The run is there for every command that reads runs, the model's answers included.
    run = result.stdout.split()[1].rstrip(":")
    for command, words in ((["show", run], "failed"), (["report", run], "failed"),
                           (["transcript", f"{run}/area_report"], ": error (generate")):
        shown = runner.invoke(main, command)
        assert shown.exit_code == 0 and words in shown.stdout, (command, shown.output)
    steps = json.loads(runner.invoke(main, ["transcript", f"{run}/area_report", "--json"]).stdout)
    answers = [m["content"] for step in steps["steps"] for m in step["messages"]
               if m["role"] == "assistant"]
    assert answers == ["no code here"] * 3


# ---- run: success ----------------------------------------------------------------------------

def test_run_json_summary(runner, repo, monkeypatch, serve):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = serve(shapes_script())
    before = snapshot(repo)
    result = runner.invoke(main, ["run", "shapes/report.py::area_report", "--json",
                                  "--base-url", server.base_url, "--model", "scripted"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output

    [data] = json.loads(result.stdout)["runs"]
    assert data["state"] == "done", data.get("message")
    run_id = data["run"]
    assert re.fullmatch(r"[\w.-]+", run_id)
    assert data["branch"] == f"soa/{run_id}/area_report"
    assert git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{data['branch']}").strip()
    assert data["depth"] >= 1
    assert isinstance(data["lines"], int) and data["lines"] > 0
    assert data["tests_passed"] >= 3
    assert data["usage"]["total_tokens"] > 0
    assert isinstance(data["seconds"], float | int) and data["seconds"] >= 0
    agents = data["agents"]
    assert [a["path"] for a in agents] == ["area_report", "area_report.area", "area_report.fmt"]
    for agent in agents:
        assert {"path", "role", "state", "tests", "lines", "tokens"} <= set(agent)
        assert agent["state"] == "passed", agent
        assert agent["tokens"] > 0
    assert [a["role"] for a in agents] == ["mother", "child", "child"]
    assert KEY not in result.output
    # Progress went to stderr, one plain line per change; the user's work is untouched.
    assert "area_report.fmt [child]" in result.stderr
    assert snapshot(repo) == before


def test_run_text_summary(runner, repo, monkeypatch, serve):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = serve(shapes_script())
    result = runner.invoke(main, ["run", "shapes/report.py", "--base-url", server.base_url])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^run \S+: done: ", out, re.M), out
    assert "agents: 3" in out
    assert "tokens:" in out
    assert "review: git log --graph soa/" in out


@pytest.mark.parametrize("args", [["run", "shapes/report.py::area_report"],
                                  ["run", "shapes/report.py"]])
def test_run_json_is_one_object_with_a_list_of_runs_whatever_their_number(runner, repo,
                                                                         monkeypatch, serve, args):
    """It was an object for one skeleton and a list for several."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = serve(shapes_script())
    result = runner.invoke(main, [*args, "--json", "--base-url", server.base_url])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == ["runs"] and [r["state"] for r in data["runs"]] == ["done"]


def test_fill_json_without_marked_skeletons_is_the_same_shape(runner, repo):
    """It printed `[]`."""
    result = runner.invoke(main, ["fill", "--json", "shapes/report.py"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"runs": []}


def test_no_runs_reads_the_same_in_list_and_tree(runner, repo):
    """`tree` said "there are no soa-git runs in this repository", `list` "no soa-git runs here
    yet": one wording, and an empty list is no error."""
    listed = runner.invoke(main, ["list"])
    assert listed.exit_code == 0 and listed.stdout.startswith("no soa-git runs here yet;")
    assert json.loads(runner.invoke(main, ["list", "--json"]).stdout) == {"runs": []}
    for command in (["tree"], ["report"]):
        result = runner.invoke(main, command)
        assert result.stderr == f"Error: {listed.stdout}", command


# ---- demo and version ------------------------------------------------------------------------

def test_demo_runs_three_targets(runner, tmp_path):
    target = tmp_path / "demo"
    result = runner.invoke(main, ["demo", "--scripted", "--dir", str(target)])
    assert result.exit_code == 0, result.output
    assert len(re.findall(r"^run \S+: done: ", result.stdout, re.M)) == 3, result.stdout
    assert f"sample repository: {target}" in result.stderr
    assert (target / ".git").is_dir()
    assert len(git(target, "for-each-ref", "--format=%(refname)", "refs/heads/soa/").split()) >= 3


def test_demo_json_has_the_run_shape(runner, tmp_path):
    """It printed a bare list."""
    result = runner.invoke(main, ["demo", "--scripted", "--json", "--dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert [r["state"] for r in json.loads(result.stdout)["runs"]] == ["done"] * 3


def test_demo_refuses_a_non_empty_directory(runner, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")
    assert_one_error(runner.invoke(main, ["demo", "--scripted", "--dir", str(target)]),
                     "not empty")
    assert listing(target) == {"keep.txt": b"mine\n"}


def test_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert re.search(r"version \d+\.\d+", result.stdout), result.stdout


def test_every_released_version_names_its_commit_and_has_its_tag():
    """`rev: v0.1.0` in a pre-commit config and the workflow's `@v0.1.0` resolved to nothing:
    the documented tag had never reached the repository. The CHANGELOG names each release's
    commit, so a clone that arrived without tags (a branch pushed alone) can still check it and
    recreate the tag."""
    project = Path(__file__).resolve().parent.parent
    if not (project / ".git").exists() or \
            git(project, "rev-parse", "--is-shallow-repository").strip() != "false":
        pytest.skip("not a full clone of soa-git")
    released = re.findall(r"^## (\d+\.\d+\.\d+)\n\n[^\n]*commit `([0-9a-f]{7,40})`",
                          (project / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert released
    tags = set(git(project, "tag", "--list", "v*").split())
    for version, commit in released:
        pyproject = git(project, "show", f"{commit}:pyproject.toml")
        assert f'\nversion = "{version}"\n' in pyproject, version
        if tags:
            assert f"v{version}" in tags, (version, tags)
            assert git(project, "rev-parse", f"v{version}^{{commit}}").startswith(commit)


# ---- the real console script -----------------------------------------------------------------

@pytest.mark.parametrize("command", [console_script(), [sys.executable, "-m", "soa_git"]],
                         ids=["console-script", "python-m"])
def test_console_script_error_is_one_line(tmp_path, command):
    plain = tmp_path / "plain"
    plain.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "OPENAI_API_KEY"}
    done = subprocess.run([*command, "run", "report.py::area_report"], cwd=plain,
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ") and "not inside a git repository" in lines[0]
    assert list(plain.iterdir()) == []
