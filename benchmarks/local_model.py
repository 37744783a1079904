"""The local model (`--model local`): load time, prompt and generated tokens per second at 1, 2
and 4 parallel requests, and peak memory, for each model soa-git knows; the demo on the sample
repository with each model (which skeletons pass, and the sample project's own tests after
`soa-git accept`); and the README's first command on a fresh clone in a fresh virtualenv.

    python -m benchmarks.local_model --out benchmarks/results/local_model.json
    python -m benchmarks.local_model --parts speed --models qwen2.5-coder-0.5b   # one part

Each model is measured in a fresh process (`--one`), so its peak memory (`ru_maxrss`) is its
own. The server is soa-git's own (`local_model.serving`, four slots, continuous batching) and
every request goes through the `openai` client like a run's: one fixed code prompt, temperature
0, `max_tokens` generated every time (llama.cpp's `ignore_eos`), so that each level of
parallelism decodes the same number of tokens. Prompt and generation speeds are llama.cpp's own
timings per request (`prompt_per_second`, `predicted_per_second`, averaged over the requests);
`aggregate_generated_per_s` is all requests' generated tokens over the wall time of the batch.
The model's file must be in the cache or installable from its part wheels.

`demo`: `soa-git demo --model local:NAME --json` in a new directory, then `soa-git accept` of
every run that ended done, then the sample's tests (`python -m pytest tests`); it records the
wall time, each skeleton's state and the tests' counts. `fresh`: `git clone` of this checkout's
HEAD, `python3 -m venv`, `pip install -e '.[local]'` (pip's cache is warm after the first
install, as for a returning user; the first install of all also downloads the default model,
1.1 GB) and `soa-git demo`, each timed, with the model assembled into an empty cache as a new
user's is.

The machine may be shared: the 1-minute load average is recorded before and after every timing,
and a result measured with a load above the number of cores says so (`shared: true`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import openai

from soa_git.local_model import serving
from soa_git.weights import find_weights

PROMPT = [{"role": "system", "content": "You are a careful Python programmer."},
          {"role": "user", "content": "Write a Python function `median(values: list[float]) -> "
                                      "float | None` that returns the median of a list, None for "
                                      "an empty list, with a docstring and three pytest tests."}]
PARALLEL = (1, 2, 4)
ROOT = Path(__file__).resolve().parents[1]
SOA_GIT = str(Path(sys.executable).with_name("soa-git"))
IDENTITY = {"GIT_AUTHOR_NAME": "Benchmark", "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "Benchmark", "GIT_COMMITTER_EMAIL": "bench@example.com"}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def _request(client: openai.OpenAI, model: str, max_tokens: int) -> dict[str, Any]:
    completion = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0,
        extra_body={"ignore_eos": True, "cache_prompt": False})
    timings = (completion.model_extra or {}).get("timings", {})
    return {"prompt_tokens": completion.usage.prompt_tokens,
            "completion_tokens": completion.usage.completion_tokens,
            "prompt_per_second": timings.get("prompt_per_second"),
            "predicted_per_second": timings.get("predicted_per_second")}


def _batch(client: openai.OpenAI, model: str, parallel: int, max_tokens: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = [{} for _ in range(parallel)]

    def one(i: int) -> None:
        results[i] = _request(client, model, max_tokens)

    before = load()
    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    generated = sum(r["completion_tokens"] for r in results)

    def mean(key: str) -> float:
        return round(sum(r[key] for r in results) / parallel, 2)

    return {"parallel": parallel, "wall_s": round(wall, 2), "generated_tokens": generated,
            "prompt_tokens_each": results[0]["prompt_tokens"],
            "prompt_per_s": mean("prompt_per_second"),
            "generated_per_s_each": mean("predicted_per_second"),
            "aggregate_generated_per_s": round(generated / wall, 2),
            "load_before": before, "load_after": load()}


def measure_one(name: str, max_tokens: int) -> dict[str, Any]:
    weights_start = time.perf_counter()
    weights = find_weights(name)
    weights_s = time.perf_counter() - weights_start
    load_before = load()
    start = time.perf_counter()
    with serving(f"local:{name}", slots=max(PARALLEL)) as endpoint:
        load_s = time.perf_counter() - start
        loaded = {"load_s": round(load_s, 2), "load_before": load_before, "load_after": load()}
        client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key,
                               max_retries=0, timeout=3600)
        _request(client, endpoint.model, 8)  # warm-up, not measured
        batches = [_batch(client, endpoint.model, parallel, max_tokens) for parallel in PARALLEL]
    loads = [loaded["load_before"], loaded["load_after"]] + [
        b[k] for b in batches for k in ("load_before", "load_after")]
    return {"model": name, "file": str(weights.path), "file_bytes": weights.path.stat().st_size,
            "find_weights_s": round(weights_s, 2), **loaded, "max_tokens": max_tokens,
            "batches": batches,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "cores": os.cpu_count(), "max_load": max(loads),
            "shared": max(loads) > (os.cpu_count() or 1)}


def _timed(command: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, dict]:
    before, start = load(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    return done, {"wall_s": round(time.perf_counter() - start, 1), "load_before": before,
                  "load_after": load()}


def measure_demo(name: str, soa_git: str = SOA_GIT, env: dict | None = None,
                 model: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The real demo with `name` (or the demo's `model` options), then accept what passed and
    run the sample's own tests."""
    env = {**(env or os.environ), **IDENTITY}
    folder = Path(tempfile.mkdtemp(prefix="soa-git-demo-bench-")) / "sample"
    model = model or ("--model", f"local:{name}")
    done, timing = _timed([soa_git, "demo", *model, "--json", "--dir", str(folder)], env=env)
    result: dict[str, Any] = {"model": name, "dir": str(folder), **timing,
                              "exit_code": done.returncode}
    try:
        runs = json.loads(done.stdout)["runs"]
    except (ValueError, KeyError):
        return {**result, "error": done.stderr.strip().splitlines()[-1:]}
    target = {r["run"]: f"{r['target']['file']}::{r['target']['function']}" for r in runs}
    result["skeletons"] = {target[r["run"]]: {"state": r["state"], "message": r["message"],
                                              "agents": len(r["agents"]),
                                              "tokens": r["usage"]["total_tokens"],
                                              "seconds": r["seconds"]} for r in runs}
    result["accepted"] = [target[r["run"]] for r in runs if r["state"] == "done" and subprocess.run(
        [soa_git, "accept", r["run"]], cwd=folder, env=env, capture_output=True).returncode == 0]
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests"], cwd=folder, env=env, capture_output=True, text=True)
    counts = re.findall(r"(\d+) (passed|failed|error)", tests.stdout)
    result["sample_tests"] = {kind: int(n) for n, kind in counts}
    return result


def measure_fresh(name: str) -> dict[str, Any]:
    """The README's first command, as a new user runs it: fresh clone, fresh venv, empty cache."""
    home = Path(tempfile.mkdtemp(prefix="soa-git-fresh-"))
    clone = home / "soa-git"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOA_GIT_", "VIRTUAL_ENV"))}
    env["SOA_GIT_CACHE_DIR"] = str(home / "cache")
    venv, venv_t = _timed([sys.executable, "-m", "venv", str(clone / ".venv")])
    pip, pip_t = _timed([str(clone / ".venv/bin/pip"), "install", "-q", "-e", ".[local]"],
                        cwd=clone, env=env)
    if pip.returncode != 0:
        return {"error": pip.stderr.strip().splitlines()[-1:]}
    demo = measure_demo(name, str(clone / ".venv/bin/soa-git"), env)
    total = venv_t["wall_s"] + pip_t["wall_s"] + demo["wall_s"]
    return {"command": "python3 -m venv .venv && .venv/bin/pip install -e '.[local]' && "
                       ".venv/bin/soa-git demo",
            "commit": subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip(),
            "venv": venv_t, "pip_install": pip_t, "demo": demo, "total_s": round(total, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    parser.add_argument("--parts", default="speed,demo,fresh",
                        help="speed, demo, fresh (comma-separated)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/local_model.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # measure this model in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.max_tokens)))
        return 0
    models, parts = args.models.split(","), args.parts.split(",")
    # The parts not measured now keep their earlier results.
    data: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    data.update({"note": "load = 1-minute load average; shared = it exceeded the number of cores "
                         "during a timing", "cores": os.cpu_count()})
    for part in parts:
        data[part] = []

    def save(key: str, value: Any) -> None:
        data[key].append(value)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        print(json.dumps(value), flush=True)

    for name in models if "speed" in parts else ():
        done = subprocess.run([sys.executable, "-m", "benchmarks.local_model", "--one", name,
                               "--max-tokens", str(args.max_tokens)],
                              capture_output=True, text=True, cwd=ROOT)
        save("speed", json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
             else {"model": name, "error": done.stderr.strip().splitlines()[-1:]})
    for name in models if "demo" in parts else ():
        save("demo", measure_demo(name))
    if "fresh" in parts:
        save("fresh", measure_fresh(models[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
