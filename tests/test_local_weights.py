"""`--model local` without loading a model: where weights come from, how they are assembled and
verified, and the one-sentence refusals (no runtime, unknown model, not a GGUF file, too big for
memory, port in use). Model parts are real installed distributions in a tmp site directory."""

from __future__ import annotations

import hashlib
import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from soa_git import weights
from soa_git.cli import main
from soa_git.errors import ConfigError
from soa_git.weights import ModelSpec, Progress, find_weights

from .test_cli import assert_one_error, listing, repo  # noqa: F401 - fixture

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
def tiny_model(tmp_path, monkeypatch) -> ModelSpec:
    """A catalogue model whose three parts are installed; the cache is a tmp directory."""
    whole = b"".join(PARTS)
    spec = ModelSpec(name="tiny", file="tiny.gguf", size=len(whole),
                     sha256=hashlib.sha256(whole).hexdigest(),
                     parts=tuple(f"soa-tiny-part{i}" for i in (1, 2, 3)), parts_version="0.9.0",
                     hub_repo="nobody/tiny-GGUF", hub_file="tiny-q4.gguf", about="a tiny model")
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
        hub_file="ghost.gguf", about="absent"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # the Hub client is not installed
    with pytest.raises(ConfigError, match=r"pip install 'soa-git\[local\]'"):
        find_weights("ghost")


def test_explicit_paths_and_names_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        find_weights(str(tmp_path / "missing.gguf"))
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(ConfigError, match="is not a GGUF model file"):
        find_weights(str(tmp_path / "notes.gguf"))
    with pytest.raises(ConfigError, match="no local model named 'qwen-9000'"):
        find_weights("qwen-9000")


# ---- the command line ------------------------------------------------------------------------

def test_run_without_the_runtime_says_what_to_install(repo, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    before = listing(repo)
    result = CliRunner().invoke(main, ["run", "shapes/report.py", "--model", "local"])
    assert_one_error(result, "pip install 'soa-git[local]'")
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
