"""The `ray` executor on a real Ray cluster on this machine: a head that runs no tests and two
workers of one CPU each.

With the scripted model, a run whose agents' tests and model calls run on the cluster gives the
same tree, files and commits as the same run on the local executor; several targets are whole
runs placed on different nodes; a worker node killed mid-run costs only the test runs it held,
which run again on the other; and a run that loses the last worker stops, and resumes on a node
that joined to the same tree. `-m "not ray"` leaves these out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks import scale, scale_shape
from benchmarks.ray_cluster import LocalCluster
from soa_git.commands.resume import resume
from soa_git.commands.run import run, run_targets, targets_of
from soa_git import config
from soa_git.errors import ClusterError
from soa_git.gitrepo import GitRepo
from soa_git.targets import find_target
from soa_git.scripted import ScriptedServer

from .helpers.repos import git
from .helpers.targets import two_targets

pytestmark = pytest.mark.ray
KEY = {"OPENAI_API_KEY": "sk-test"}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(workers=2, cpus=1, head_cpus=0) as started:
        yield started


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return scale_shape.make_template(tmp_path_factory.mktemp("template") / "repo", 10)


def workload(agents: int, depth: int):
    shape = scale_shape.build_shape(agents, depth)
    return shape, ScriptedServer(scale_shape.Responder(shape, 0.0))


def flags(server, shape, **more) -> dict:
    return {"base_url": server.base_url, "max_depth": shape.depth,
            "max_children": shape.max_children, "jobs": 4, **more}


def fill(template: Path, where: Path, shape, **more):
    repo = scale_shape.clone(template, where)
    with workload(shape.agents, shape.depth)[1] as server:
        [summary] = run(f"{scale_shape.TARGET}::{scale_shape.ROOT_FUNCTION}", cwd=repo,
                        flags=flags(server, shape, **more), environ=KEY)
    return repo, summary


def history_of(repo: Path, summary) -> dict:
    """What a run left in git, without its run id: each agent's final tree, and its commits'
    subjects and test results (sorted: siblings are merged in the order they pass)."""
    out = {}
    for agent in summary.agents:
        log = git(repo, "log", "--format=%s %(trailers:key=Soa-Tests,valueonly,separator=)",
                  agent.branch).replace(summary.run, "RUN")
        out[agent.path] = (git(repo, "rev-parse", f"{agent.branch}^{{tree}}").strip(),
                           sorted(log.splitlines()))
    return out


def fsck(repo: Path) -> None:
    done = subprocess.run(["git", "-C", str(repo), "fsck", "--strict"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_a_run_on_ray_gives_the_local_run_s_tree(cluster, template, tmp_path):
    shape = scale_shape.build_shape(12, 3)
    local_repo, local = fill(template, tmp_path / "local", shape)
    ray_repo, on_ray = fill(template, tmp_path / "ray", shape, executor="ray",
                            ray_address=cluster.address)

    assert local.state == on_ray.state == "done", on_ray.message
    assert history_of(ray_repo, on_ray) == history_of(local_repo, local)
    assert git(ray_repo, "rev-parse", f"{on_ray.branch}^{{tree}}") == \
        git(local_repo, "rev-parse", f"{local.branch}^{{tree}}")
    fsck(ray_repo)


def test_the_scale_benchmark_measures_both_executors(cluster, tmp_path):
    out = tmp_path / "scale.json"
    assert scale.main(["--agents", "10", "--depth", "2", "--files", "10", "--latency", "0",
                       "--jobs", "4", "--limit", "120", "--executor", "local,ray",
                       "--ray-address", cluster.address, "--out", str(out)]) == 0
    local, on_ray = json.loads(out.read_text())["results"]
    assert (local["executor"], on_ray["executor"]) == ("local", "ray")
    for r in (local, on_ray):
        assert "skipped" not in r, r
        assert r["state"] == "done" and r["passed_agents"] == 10
    # Every agent's tests ran on the cluster, none here; the nodes' CPU is counted.
    assert sum(on_ray["runs_by_node"].values()) == 10 and on_ray["retried"] == 0
    # The run was placed on a node, and its agents' model calls went out from there.
    [node] = on_ray["placements"]
    assert on_ray["calls_by_node"] == {node: 10}
    assert on_ray["bytes_shipped"] > 0 and on_ray["node_actor_cpu_s"] > 0
    assert on_ray["cpu_ms_per_agent"] > on_ray["test_sessions_cpu_ms_per_agent"] > 0


def test_many_targets_are_whole_runs_spread_over_the_cluster(cluster, tmp_path, monkeypatch):
    """Two runs at once: each placed on its own worker, its model call made from there; and each
    node runs the coordinator's soa-git as Ray shipped it, not an installed one."""
    import soa_git
    from soa_git.ray_executor import RayExecutor

    repo = two_targets(tmp_path / "repo")
    gitrepo = GitRepo.open(repo)
    targets = targets_of(gitrepo, repo, ".")
    shape = scale_shape.build_shape(1, 1)
    # Ray puts the driver's working folder on the nodes' import path: here it would be this
    # checkout, whose soa_git would be imported before the shipped one.
    monkeypatch.chdir(repo)
    executor = RayExecutor.connect(cluster.address)
    try:
        # A second of latency: the first run is still on its node when the second is placed.
        with ScriptedServer(scale_shape.Responder(shape, 1.0)) as server:
            settings = config.resolve(gitrepo.root, {**flags(server, shape), "parallel_runs": 2},
                                      KEY)
            summaries = run_targets(gitrepo, settings, targets, KEY, lambda view: None, executor)
        workers = {worker.node_id for worker in cluster.workers}
        assert sorted(executor.placements) == sorted(workers)
        assert executor.calls_by_node == {node: 1 for node in workers}
        assert set(executor.runs_by_node) <= workers
        assert set(executor.code_on_node) == workers
        for code in executor.code_on_node.values():
            assert "runtime_resources" in code and Path(code) != Path(soa_git.__file__)
    finally:
        executor.close()
    assert sorted(s.target.file for s in summaries) == ["app/core.py", "calc/sums.py"]
    assert all(s.state == "done" for s in summaries), [s.message for s in summaries]
    assert all(s.tests_passed for s in summaries)


def test_a_model_call_made_on_a_node_keeps_its_notices_errors_and_budgets(cluster):
    """The endpoint's retry notice comes back with the reply, a refusal is the same ModelError as
    locally, and a spent budget stops the call before it leaves the coordinator."""
    from soa_git.errors import BudgetExhausted, ModelError
    from soa_git.llm import TokenLedger
    from soa_git.openai_chat import OpenAIChat
    from soa_git.ray_executor import RayExecutor
    from soa_git.scripted import Scripted

    replies = [Scripted(text="busy", status=503), "the answer", Scripted(text="no", status=400)]
    notices: list = []
    asked = [{"role": "user", "content": "hello"}]
    executor = RayExecutor.connect(cluster.address)
    try:
        with ScriptedServer(lambda request: replies.pop(0)) as server:
            ledger = TokenLedger(run_limit=10 ** 6)
            model = OpenAIChat(model="scripted", base_url=server.base_url, api_key="sk-test",
                               ledger=ledger, backoff_s=0.01, on_notice=notices.append)
            with executor.placed(model, ship_calls=True) as (placed, on_node):
                assert on_node.complete(asked, agent="root").text == "the answer"
                with pytest.raises(ModelError, match="no"):
                    on_node.complete(asked, agent="root")
                ledger.run_limit = 1
                with pytest.raises(BudgetExhausted):
                    on_node.complete(asked, agent="root")
        assert [n.agent for n in notices] == ["root"] and "retry 2/5" in notices[0].text
        assert ledger.for_agent("root").total > 0
        assert executor.calls_by_node == {placed.node.id: 2}
        assert replies == []
    finally:
        executor.close()


def killer(cluster, executor, worker) -> tuple[threading.Thread, threading.Event]:
    """A thread that kills `worker` once it has run a test (so it holds blobs) and while it runs
    another; the event says it did."""
    killed = threading.Event()

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if executor.busy().get(worker.node_id) and executor.runs_by_node.get(worker.node_id):
                cluster.kill(worker)
                killed.set()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=kill_when_busy)
    thread.start()
    return thread, killed


def run_on(executor, repo: Path, shape, server):
    gitrepo = GitRepo.open(repo)
    target = find_target(gitrepo, repo / scale_shape.TARGET, scale_shape.ROOT_FUNCTION)
    settings = config.resolve(gitrepo.root, flags(server, shape), KEY)
    [summary] = run_targets(gitrepo, settings, [target], KEY, lambda view: None, executor)
    return summary


def test_a_killed_worker_node_costs_only_the_test_runs_it_held(cluster, template, tmp_path):
    """The module's cluster loses one of its two workers here while it holds a test run, so this
    test comes after every other that needs both."""
    from soa_git.ray_executor import RayExecutor

    shape = scale_shape.build_shape(30, 2)
    local_repo, local = fill(template, tmp_path / "local", shape)
    repo = scale_shape.clone(template, tmp_path / "ray")
    worker = cluster.workers[0]
    executor = RayExecutor.connect(cluster.address)
    thread, killed = killer(cluster, executor, worker)
    try:
        with workload(shape.agents, shape.depth)[1] as server:
            summary = run_on(executor, repo, shape, server)
        thread.join()
        assert killed.is_set(), "the worker node never held a test run"
        assert executor.retried >= 1
        assert worker.node_id not in executor.busy()
        assert set(executor.runs_by_node) == {worker.node_id, *executor.busy()}
    finally:
        thread.join()
        executor.close()

    assert summary.state == "done", summary.message
    assert history_of(repo, summary) == history_of(local_repo, local)
    fsck(repo)


def test_a_run_that_loses_the_last_worker_resumes_to_the_same_tree(cluster, template, tmp_path):
    """The last worker dies mid-run: the run stops with one sentence, leaves only committed
    steps, and `resume` on a node that joined since finishes it with the tree of a run that lost
    nothing. The last test to use the module's cluster: it leaves one worker, then kills it."""
    from soa_git.ray_executor import RayExecutor

    for extra in cluster.workers[:-1]:
        cluster.kill(extra)
    [worker] = cluster.workers
    shape = scale_shape.build_shape(30, 2)
    local_repo, local = fill(template, tmp_path / "local", shape)
    repo = scale_shape.clone(template, tmp_path / "ray")
    executor = RayExecutor.connect(cluster.address)
    thread, killed = killer(cluster, executor, worker)
    try:
        with workload(shape.agents, shape.depth)[1] as server:
            with pytest.raises(ClusterError, match="no live node with a CPU"):
                run_on(executor, repo, shape, server)
        thread.join()
        assert killed.is_set(), "the worker node never held a test run"
    finally:
        thread.join()
        executor.close()
    fsck(repo)
    [run_id] = {ref.split("/")[3] for ref in
                git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/soa/").split()}

    cluster.add_node()
    with workload(shape.agents, shape.depth)[1] as server:
        summary = resume(run_id, cwd=repo, environ=KEY,
                         flags=flags(server, shape, executor="ray", ray_address=cluster.address))
    assert summary.state == "done", summary.message
    # The run's tree, and every agent's role, state and own files. (An agent that had not
    # started when the run stopped branches, on resume, from its Mother's tip as it is then,
    # siblings merged, so its branch's tree holds theirs too, as after any resume.)
    assert git(repo, "rev-parse", f"{summary.branch}^{{tree}}") == \
        git(local_repo, "rev-parse", f"{local.branch}^{{tree}}")
    assert agents_of(repo, summary) == agents_of(local_repo, local)
    assert [a.state for a in summary.agents] == [a.state for a in local.agents]
    fsck(repo)


def agents_of(repo: Path, summary) -> dict:
    """Each agent's role and its own two files at its branch's tip."""
    return {agent.path: (agent.role, *(git(repo, "show", f"{agent.branch}:{path}")
                                       for path in (agent.file, agent.test_file)))
            for agent in summary.agents}


def test_an_unreachable_cluster_is_one_sentence_and_writes_nothing(template, tmp_path):
    repo = scale_shape.clone(template, tmp_path / "repo")
    before = git(repo, "for-each-ref")
    # A port nothing listens on: bound, then closed.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [str(Path(sys.executable).with_name("soa-git")), "run", f"{scale_shape.TARGET}::total",
         "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
         "--base-url", "http://127.0.0.1:9/v1"],
        cwd=repo, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **KEY},
        timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in lines[0], \
        done.stderr
    assert "Traceback" not in done.stderr
    assert git(repo, "for-each-ref") == before
