"""One Settings object, resolved as: defaults < user file < repository file < environment < flags.

The repository's file is `[tool.soa-git]` in its `pyproject.toml` when that table exists, else
`.soa-git.toml` at its root; the user's is `$XDG_CONFIG_HOME/soa-git/config.toml`
(`~/.config/soa-git/config.toml`).

A repository is someone else's until the user trusts it (the model of git's `safe.directory` and
direnv's `allow`): its committed file may not choose which environment variable is sent as the
key, nor the endpoint that receives it (TRUSTED_ONLY), unless `soa-git trust` accepted exactly
those values for it; it can never turn the sandbox off (USER_ONLY). Refusals are one sentence
that says how to proceed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

CONFIG_FILE = ".soa-git.toml"
PYPROJECT = "pyproject.toml"
TABLE = "soa-git"
USER_FILE = "config.toml"
TRUST_FILE = "trusted.json"


def _setting(default: Any, help: str, *, flag: bool = False, short: str = "",
             choices: tuple[str, ...] = (), switch: tuple[str, str] | None = None) -> Any:
    """One setting: its default, the sentence both `--help` and docs/configuration.md show, and
    whether it is also a flag of the commands that run agents (`short`: its one-letter form;
    `switch`: a flag without a value that sets one, e.g. ("--no-sandbox", "off"))."""
    return field(default=default, metadata={"help": help, "flag": flag or bool(switch),
                                            "short": short, "choices": choices,
                                            "switch": switch})


@dataclass(frozen=True)
class Settings:
    """Every setting, once: config files, the environment, the CLI's flags and the docs' table
    are all read from these fields (see SETTINGS)."""

    model: str = _setting(
        "gpt-4o-mini", "Model name, e.g. gpt-4o-mini; `local` (or local:NAME, "
        "local:/path/to/model.gguf) runs one on this machine.", flag=True)
    base_url: str = _setting(
        "https://api.openai.com/v1", "OpenAI-compatible endpoint, e.g. http://localhost:11434/v1.",
        flag=True)
    api_key_env: str = _setting(
        "OPENAI_API_KEY", "Name of the environment variable that holds the key (never the key).",
        flag=True)
    max_depth: int = _setting(
        2, "Levels in the agent tree (1: a single agent; 2: a Mother over Children, as in the "
        "paper).", flag=True)
    max_children: int = _setting(5, "Most sub-functions one Mother may spawn.", flag=True)
    split_min_lines: int = _setting(
        0, "A Mother is offered to split her function only when its docstring has at least this "
        "many lines besides its examples; a shorter one she implements herself.", flag=True)
    imports: str = _setting(
        "installed", "What generated code may import besides the project's own modules: any "
        "module installed where its tests run, or the standard library only.", flag=True,
        choices=("installed", "stdlib"))
    repair_rounds: int = _setting(
        3, "Repair rounds per agent (self-repair, and a Mother's revisions).", flag=True)
    fresh_rounds: int = _setting(
        0, "Of the repair rounds of an agent that implements its function itself, how many "
        "first ask for a new implementation from scratch instead of a fix (the best-scoring "
        "code is kept).", flag=True)
    jobs: int = _setting(4, "Agents working (model calls, tests) at once.", flag=True, short="-j")
    test_timeout: float = _setting(60.0, "Seconds one agent's test run may take.", flag=True)
    test_memory_mb: int = _setting(1024, "Memory one agent's test run may use, in MB.")
    run_token_budget: int = _setting(
        400_000, "Tokens a run may spend; then it stops cleanly (resume it with more).")
    agent_token_budget: int = _setting(60_000, "Tokens one agent may spend.")
    request_timeout: float = _setting(120.0, "Seconds one model call may take.")
    temperature: float = _setting(0.2, "The model's sampling temperature.")
    executor: str = _setting(
        "local", "Where runs do their work (agents' tests and model calls): here, or on a Ray "
        "cluster (docs/ray.md).", flag=True,
        choices=("local", "ray"))
    ray_address: str = _setting(
        "", "The Ray cluster: host:port, ray://host:port or auto (default: RAY_ADDRESS, else "
        "auto).", flag=True)
    parallel_runs: int = _setting(1, "Runs at once when there are many targets.", flag=True)
    model_calls: str = _setting(
        "nodes", "With the ray executor, where model calls go out from: the node each run is "
        "placed on, or here (docs/ray.md).", flag=True, choices=("nodes", "here"))
    # Sent with every request: a local server generates until its context is full otherwise.
    # A Mother writes her function, her children's skeletons and all their tests in one answer.
    mother_max_tokens: int = _setting(3072, "Most tokens of a Mother's answer (max_tokens).")
    child_max_tokens: int = _setting(1536, "Most tokens of a child's answer (max_tokens).")
    # "off" runs generated code without the sandbox: only the user may choose that (never a
    # repository's file), and the command line says so loudly on every run.
    sandbox: str = _setting(
        "on", "DANGEROUS: `off` runs generated code without the sandbox; only you may choose "
        "it, never a repository's file.",
        switch=("--no-sandbox", "off"))
    # E.g. "AWS_SECRET_ACCESS_KEY,DATABASE_URL" (the key's variable and GitHub's tokens always are).
    secret_env: str = _setting(
        "", "More environment variables whose values are masked in test output, comma-separated.")

    @property
    def sandboxed(self) -> bool:
        return self.sandbox != "off"

    def secret_values(self, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """The values to mask wherever generated code's output goes."""
        environ = os.environ if environ is None else environ
        names = {self.api_key_env, *ALWAYS_SECRET,
                 *(n.strip() for n in self.secret_env.split(",") if n.strip())}
        return tuple(sorted({environ[n] for n in names if len(environ.get(n, "")) >= 6}))

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The key itself is read from the environment at the moment of use, never stored."""
        return (os.environ if environ is None else environ).get(self.api_key_env) or None


# The ecosystem's usual names first; every key also has a SOA_GIT_<KEY> form.
ENV_ALIASES = {
    "base_url": ("OPENAI_BASE_URL", "OPENAI_API_BASE"),
    "model": ("OPENAI_MODEL",),
    "ray_address": ("RAY_ADDRESS",),
}


@dataclass(frozen=True)
class Setting:
    """A setting as the CLI and the docs show it."""

    name: str                   # the field of Settings
    key: str                    # in a config file
    kind: str                   # int | float | str
    default: Any
    help: str
    flags: tuple[str, ...]      # e.g. ("--jobs", "-j"); none when only files and the environment
    choices: tuple[str, ...]
    switch: str | None          # the value a flag without a value sets
    environment: tuple[str, ...]    # later names win


def _flags(name: str, metadata: Mapping[str, Any]) -> tuple[str, ...]:
    if metadata["switch"]:
        return (metadata["switch"][0],)
    if not metadata["flag"]:
        return ()
    return (f"--{name.replace('_', '-')}", *([metadata["short"]] if metadata["short"] else []))


SETTINGS = tuple(
    Setting(name=f.name, key=f.name.replace("_", "-"), kind=str(f.type), default=f.default,
            help=f.metadata["help"], flags=_flags(f.name, f.metadata),
            choices=f.metadata["choices"],
            switch=f.metadata["switch"][1] if f.metadata["switch"] else None,
            environment=(*ENV_ALIASES.get(f.name, ()), f"SOA_GIT_{f.name.upper()}"))
    for f in fields(Settings))
FLAG_SETTINGS = tuple(s for s in SETTINGS if s.flags)


def docs_table() -> str:
    """The settings table of docs/configuration.md (tests/test_config.py keeps the two equal)."""
    def code(items) -> str:
        return ", ".join(f"`{item}`" for item in items)

    rows = ["| setting (file key) | flag | environment | default | what it sets |",
            "| --- | --- | --- | --- | --- |"]
    for setting in SETTINGS:
        default = (f"`{setting.default}`" if setting.default != "" else "empty")
        rows.append(f"| `{setting.key}` | {code(setting.flags)} | {code(setting.environment)} "
                    f"| {default} | {setting.help} |")
    return "\n".join(rows) + "\n"


# Zero is meaningful only for temperature (deterministic answers); other numbers must be positive.
MAY_BE_ZERO = {"temperature"}
KINDS = {"int": (int,), "float": (int, float), "str": (str,)}
CHOICES = {"sandbox": ("on", "off")}
# Settings a repository's committed configuration may not change from their defaults.
USER_ONLY = {"sandbox"}
# Settings a repository's file may choose only once the user trusts it with those values.
TRUSTED_ONLY = ("api_key_env", "base_url")
ALWAYS_SECRET = ("OPENAI_API_KEY", "GITHUB_TOKEN", "GH_TOKEN")


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
    """The repository's file, as written (trust is checked by `resolve`)."""
    path = config_path(root)
    if not path.exists():
        return {}
    data = _read_toml(path)
    table = data.get("tool", {}).get(TABLE, {}) if path.name == PYPROJECT else data
    found = _from_mapping(table, path.name)
    for name in USER_ONLY:
        if name in found and found[name] != getattr(Settings(), name):
            raise ConfigError(f"{path.name} sets '{_key(name)}', which only you may change "
                              f"(a flag, an environment variable or {user_config_path()}), "
                              f"not a repository")
    return found


def _key(name: str) -> str:
    return name.replace("_", "-")


def user_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or "~", ".config")
    return Path(base).expanduser() / "soa-git"


def user_config_path(environ: Mapping[str, str] | None = None) -> Path:
    return user_dir(environ) / USER_FILE


def user_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The user's own file: any setting, the user-only ones included."""
    path = user_config_path(environ)
    if not path.exists():
        return {}
    return _from_mapping(_read_toml(path), str(path))


def _trust_key(root: Path, chosen: Mapping[str, Any]) -> str:
    """What trusting a repository pins: its place and the values it chooses."""
    values = {name: chosen.get(name) for name in TRUSTED_ONLY}
    return hashlib.sha256(json.dumps([str(root.resolve()), values]).encode()).hexdigest()


def _trusted(environ: Mapping[str, str]) -> dict[str, Any]:
    path = user_dir(environ) / TRUST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def trust(root: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Trust this repository's file with the key's variable and endpoint it sets now; returns
    those values (an empty dict when it sets neither). Changing them later needs trust again."""
    environ = os.environ if environ is None else environ
    chosen = {k: v for k, v in file_settings(root).items() if k in TRUSTED_ONLY}
    records = _trusted(environ)
    records[str(root.resolve())] = {"pin": _trust_key(root, chosen), **chosen}
    path = user_dir(environ) / TRUST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return chosen


def _check_trust(root: Path, from_file: Mapping[str, Any], mine: Mapping[str, Any],
                 environ: Mapping[str, str]) -> None:
    """Refuse a repository's choice of key variable or endpoint that the user did not make."""
    chosen = {name: from_file[name] for name in TRUSTED_ONLY
              if name in from_file and from_file[name] != mine.get(name, getattr(Settings(), name))}
    if not chosen:
        return
    record = _trusted(environ).get(str(root.resolve()))
    if isinstance(record, dict) and record.get("pin") == _trust_key(root, from_file):
        return
    name = next(iter(chosen))
    changed = " changed since you trusted it and" if isinstance(record, dict) else ""
    raise ConfigError(
        f"this repository's {config_path(root).name}{changed} sets {_key(name)} = "
        f"{chosen[name]!r}, which decides where your API key goes: run `soa-git trust` if you "
        f"accept that, or set {_key(name)} yourself (flag, environment or "
        f"{user_config_path(environ)})")


def env_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    found = {}
    for setting in SETTINGS:
        for var in setting.environment:
            if environ.get(var):
                found[setting.name] = _coerce(setting.name,
                                              f"environment variable {var} ({setting.name})",
                                              environ[var])
    return found


def user_sandbox(flags: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The sandbox setting as the user chose it (flag, environment, user file): no repository
    can change it."""
    chosen = {**user_settings(environ), **env_settings(environ),
              **{k: v for k, v in flags.items() if v is not None}}
    return chosen.get("sandbox", Settings().sandbox)


def resolve(root: Path, flags: Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < user file < repository file < environment < flags (flags set to None are
    ignored); a repository's choice of key variable or endpoint only if the user trusts it."""
    environ = os.environ if environ is None else environ
    mine = user_settings(environ)
    from_file = file_settings(root)
    given = env_settings(environ)
    given.update(_from_mapping({k: v for k, v in (flags or {}).items() if v is not None}, "flag"))
    _check_trust(root, {k: v for k, v in from_file.items() if k not in given}, mine, environ)
    settings = Settings(**{**mine, **from_file, **given})
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
