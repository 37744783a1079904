"""One Settings object, resolved as: defaults < config file < environment < flags.

The config file is `[tool.soa-git]` in the repository's `pyproject.toml` when that table
exists, else `.soa-git.toml` at the repository root.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

CONFIG_FILE = ".soa-git.toml"
PYPROJECT = "pyproject.toml"
TABLE = "soa-git"


@dataclass(frozen=True)
class Settings:
    model: str = "gpt-4o-mini"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_depth: int = 2          # levels in the agent tree: 2 is a Mother over Children
    max_children: int = 5
    repair_rounds: int = 3
    jobs: int = 4
    test_timeout: float = 60.0
    test_memory_mb: int = 1024
    run_token_budget: int = 400_000
    agent_token_budget: int = 60_000
    request_timeout: float = 120.0
    temperature: float = 0.2
    executor: str = "local"     # where agents' tests run: local | ray (docs/ray.md)
    ray_address: str = ""       # the Ray cluster (executor = "ray"); empty: RAY_ADDRESS or auto
    parallel_runs: int = 1      # runs at once when one command has many targets
    # Sent with every request: a local server generates until its context is full otherwise.
    # A Mother writes her function, her children's skeletons and all their tests in one answer.
    mother_max_tokens: int = 3072
    child_max_tokens: int = 1536
    # "off" runs generated code without the sandbox: only the user may choose that (never a
    # repository's file), and the command line says so loudly on every run.
    sandbox: str = "on"

    @property
    def sandboxed(self) -> bool:
        return self.sandbox != "off"

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The key itself is read from the environment at the moment of use, never stored."""
        return (os.environ if environ is None else environ).get(self.api_key_env) or None


# The ecosystem's usual names first; every key also has a SOA_GIT_<KEY> form.
ENV_ALIASES = {
    "base_url": ("OPENAI_BASE_URL", "OPENAI_API_BASE"),
    "model": ("OPENAI_MODEL",),
    "ray_address": ("RAY_ADDRESS",),
}


# Zero is meaningful only for temperature (deterministic answers); other numbers must be positive.
MAY_BE_ZERO = {"temperature"}
KINDS = {"int": (int,), "float": (int, float), "str": (str,)}
CHOICES = {"sandbox": ("on", "off")}
# Settings a repository's committed configuration may not change from their defaults.
USER_ONLY = {"sandbox"}


def _wanted(name: str, kind: str) -> str:
    if kind == "str":
        return "a string"
    sign = "non-negative" if name in MAY_BE_ZERO else "positive"
    return f"a {sign} {'whole ' if kind == 'int' else ''}number"


def _coerce(name: str, where: str, value: Any) -> Any:
    """Strings (environment, flags) are parsed; TOML values must already have the right type."""
    kind = {f.name: f.type for f in fields(Settings)}[name]
    problem = ConfigError(f"{where} must be {_wanted(name, kind)}, not {value!r}")
    if isinstance(value, bool) or not isinstance(value, (str, *KINDS[kind])):
        raise problem
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, CHOICES[name]))}, "
                          f"not {value!r}")
    if kind == "str":
        return value
    try:
        number = (int if kind == "int" else float)(value)
    except ValueError:
        raise problem from None
    # inf and nan parse as floats, then break the run that uses them.
    if not math.isfinite(number) or number < 0 or (
            number == 0 and name not in MAY_BE_ZERO and kind == "float"):
        raise problem
    return number


def _from_mapping(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    known = {f.name for f in fields(Settings)}
    result = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{source}: unknown setting '{key}'")
        result[name] = _coerce(name, f"{source}: '{key}'", value)
    return result


def config_path(root: Path) -> Path:
    """Where this repository's configuration lives (or would be written)."""
    pyproject = root / PYPROJECT
    if pyproject.exists() and TABLE in _read_toml(pyproject).get("tool", {}):
        return pyproject
    if (root / CONFIG_FILE).exists() or not pyproject.exists():
        return root / CONFIG_FILE
    return pyproject


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name} is not valid TOML: {exc}") from None


def file_settings(root: Path) -> dict[str, Any]:
    path = config_path(root)
    if not path.exists():
        return {}
    data = _read_toml(path)
    table = data.get("tool", {}).get(TABLE, {}) if path.name == PYPROJECT else data
    found = _from_mapping(table, path.name)
    for name in USER_ONLY:
        if name in found and found[name] != getattr(Settings(), name):
            raise ConfigError(f"{path.name} sets '{name.replace('_', '-')}', which only you may "
                              f"change (a flag or an environment variable), not a repository")
    return found


def env_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    found = {}
    for f in fields(Settings):
        for var in (*ENV_ALIASES.get(f.name, ()), f"SOA_GIT_{f.name.upper()}"):
            if environ.get(var):
                found[f.name] = _coerce(f.name, f"environment variable {var} ({f.name})",
                                        environ[var])
    return found


def user_sandbox(flags: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The sandbox setting as the user chose it (flag over environment), without a repository."""
    chosen = {**env_settings(environ), **{k: v for k, v in flags.items() if v is not None}}
    return chosen.get("sandbox", Settings().sandbox)


def resolve(root: Path, flags: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < config file < environment < flags (flags set to None are ignored)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    merged.update(file_settings(root))
    merged.update(env_settings(environ))
    merged.update(_from_mapping({k: v for k, v in (flags or {}).items() if v is not None}, "flag"))
    settings = Settings(**merged)
    for name in ("max_depth", "max_children", "jobs", "parallel_runs"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"'{name.replace('_', '-')}' must be at least 1")
    return settings


def _toml_value(value: Any) -> str:
    # A JSON string is a valid TOML basic string, control characters escaped included.
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def render_table(settings: Settings) -> str:
    return "".join(f"{f.name.replace('_', '-')} = {_toml_value(getattr(settings, f.name))}\n"
                   for f in fields(Settings) if f.name not in USER_ONLY)


def write_config(root: Path, settings: Settings) -> tuple[Path, bool]:
    """Write the settings where config_path says; an existing configuration is kept as it is.

    Returns the path and whether anything was written. Appending a table keeps every byte the
    user already has in pyproject.toml.
    """
    path = config_path(root)
    if path.exists() and (path.name == CONFIG_FILE or TABLE in _read_toml(path).get("tool", {})):
        return path, False
    if path.name == PYPROJECT:
        # Bytes, not text: universal newlines would rewrite the user's CRLF line ends.
        data = path.read_bytes()
        separator = b"" if data.endswith(b"\n") or not data else b"\n"
        table = f"\n[tool.{TABLE}]\n{render_table(settings)}".encode("utf-8")
        path.write_bytes(data + separator + table)
    else:
        path.write_text(f"# soa-git configuration\n{render_table(settings)}", encoding="utf-8")
    return path, True
