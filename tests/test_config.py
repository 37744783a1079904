"""Settings: defaults < config file < environment < flags, where the file lives, and bad values."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from soa_git import config
from soa_git.config import Settings
from soa_git.errors import ConfigError

from .helpers.repos import ROOT

# key, the key as written in TOML, a file value, env vars that set it, an env value, a flag value,
# and what each of those resolves to.
LEVELS = [
    pytest.param("model", 'model = "from-file"', "from-file",
                 ("OPENAI_MODEL", "SOA_GIT_MODEL"), "from-env", "from-env",
                 "from-flag", "from-flag", id="model"),
    pytest.param("base_url", 'base-url = "http://file.example/v1"', "http://file.example/v1",
                 ("OPENAI_BASE_URL", "OPENAI_API_BASE", "SOA_GIT_BASE_URL"),
                 "http://env.example/v1", "http://env.example/v1",
                 "http://flag.example/v1", "http://flag.example/v1", id="base_url"),
    pytest.param("max_depth", "max-depth = 3", 3, ("SOA_GIT_MAX_DEPTH",), "4", 4, 1, 1, id="max_depth"),
    # A flag of 0 is a value, not "unset": only None is ignored.
    pytest.param("repair_rounds", "repair-rounds = 5", 5, ("SOA_GIT_REPAIR_ROUNDS",), "6", 6, 0, 0,
                 id="repair_rounds"),
    pytest.param("jobs", "jobs = 2", 2, ("SOA_GIT_JOBS",), "3", 3, 7, 7, id="jobs"),
    pytest.param("test_timeout", "test-timeout = 5.5", 5.5, ("SOA_GIT_TEST_TIMEOUT",), "7.5", 7.5,
                 9.0, 9.0, id="test_timeout"),
]


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- resolution order ---------------------------------------------------------------------------

def test_defaults_when_nothing_is_set(tmp_path):
    assert config.resolve(tmp_path, {}, {}) == Settings()
    assert config.resolve(tmp_path, None, {}) == Settings()


@pytest.mark.parametrize("key, line, from_file, env_vars, env_value, from_env, flag, from_flag", LEVELS)
def test_each_level_overrides_the_one_below(tmp_path, key, line, from_file, env_vars, env_value,
                                            from_env, flag, from_flag):
    default = getattr(Settings(), key)
    assert getattr(config.resolve(tmp_path, {key: None}, {}), key) == default

    write(tmp_path, ".soa-git.toml", line + "\n")
    if key in config.TRUSTED_ONLY:
        config.trust(tmp_path)
    assert getattr(config.resolve(tmp_path, {}, {}), key) == from_file
    assert getattr(config.resolve(tmp_path, {key: None}, {}), key) == from_file

    for var in env_vars:
        environ = {var: env_value}
        resolved = config.resolve(tmp_path, {key: None}, environ)
        assert getattr(resolved, key) == from_env, var
        assert type(getattr(resolved, key)) is type(default), var
        assert getattr(config.resolve(tmp_path, {key: flag}, environ), key) == from_flag, var

    # Every other setting stays at its default.
    resolved = config.resolve(tmp_path, {key: flag}, {env_vars[0]: env_value})
    for f in fields(Settings):
        if f.name != key:
            assert getattr(resolved, f.name) == getattr(Settings(), f.name), f.name


def test_all_levels_at_once_for_several_keys(tmp_path):
    write(tmp_path, ".soa-git.toml",
          'model = "file-model"\nbase-url = "http://file/v1"\nmax-depth = 1\njobs = 2\n'
          "test-timeout = 5.0\nrepair-rounds = 9\n")
    config.trust(tmp_path)
    environ = {"OPENAI_MODEL": "env-model", "SOA_GIT_JOBS": "3", "SOA_GIT_TEST_TIMEOUT": "6.5"}
    flags = {"model": None, "base_url": None, "max_depth": None, "jobs": 8, "test_timeout": None,
             "repair_rounds": None, "max_children": None, "api_key_env": None}
    resolved = config.resolve(tmp_path, flags, environ)
    assert resolved.model == "env-model"          # env over file
    assert resolved.base_url == "http://file/v1"  # file only
    assert resolved.max_depth == 1                # file only
    assert resolved.jobs == 8                     # flag over env over file
    assert resolved.test_timeout == 6.5           # env over file
    assert resolved.repair_rounds == 9            # file only
    assert resolved.max_children == Settings().max_children


def test_the_soa_git_name_beats_the_ecosystem_alias(tmp_path):
    environ = {"OPENAI_BASE_URL": "http://alias/v1", "SOA_GIT_BASE_URL": "http://own/v1",
               "OPENAI_MODEL": "alias-model", "SOA_GIT_MODEL": "own-model"}
    resolved = config.resolve(tmp_path, {}, environ)
    assert (resolved.base_url, resolved.model) == ("http://own/v1", "own-model")


def test_empty_environment_values_are_ignored(tmp_path):
    write(tmp_path, ".soa-git.toml", 'model = "file-model"\njobs = 2\n')
    resolved = config.resolve(tmp_path, {}, {"OPENAI_MODEL": "", "SOA_GIT_JOBS": ""})
    assert (resolved.model, resolved.jobs) == ("file-model", 2)


def test_resolve_reads_os_environ_when_no_environ_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("SOA_GIT_MAX_CHILDREN", "2")
    assert config.resolve(tmp_path, {}).max_children == 2


def test_toml_keys_may_use_dashes_or_underscores(tmp_path):
    write(tmp_path, ".soa-git.toml", "max_depth = 1\nrepair-rounds = 4\n")
    resolved = config.resolve(tmp_path, {}, {})
    assert (resolved.max_depth, resolved.repair_rounds) == (1, 4)


# ---- where the configuration lives ----------------------------------------------------------

def test_pyproject_table_is_read(tmp_path):
    write(tmp_path, "pyproject.toml",
          '[project]\nname = "demo"\n\n[tool.other]\ncolour = "red"\n\n[tool.soa-git]\nmodel = "py-model"\njobs = 6\n')
    assert config.config_path(tmp_path) == tmp_path / "pyproject.toml"
    resolved = config.resolve(tmp_path, {}, {})
    assert (resolved.model, resolved.jobs) == ("py-model", 6)


def test_soa_git_toml_is_read_when_pyproject_has_no_table(tmp_path):
    write(tmp_path, "pyproject.toml", '[project]\nname = "demo"\n\n[tool.other]\njobs = 99\n')
    write(tmp_path, ".soa-git.toml", 'model = "file-model"\n')
    assert config.config_path(tmp_path) == tmp_path / ".soa-git.toml"
    resolved = config.resolve(tmp_path, {}, {})
    assert (resolved.model, resolved.jobs) == ("file-model", Settings().jobs)


def test_pyproject_table_wins_over_soa_git_toml(tmp_path):
    write(tmp_path, "pyproject.toml", '[tool.soa-git]\nmodel = "py-model"\n')
    write(tmp_path, ".soa-git.toml", 'model = "file-model"\n')
    assert config.config_path(tmp_path) == tmp_path / "pyproject.toml"
    assert config.resolve(tmp_path, {}, {}).model == "py-model"


def test_pyproject_without_table_gives_defaults(tmp_path):
    write(tmp_path, "pyproject.toml", '[project]\nname = "demo"\n')
    assert config.config_path(tmp_path) == tmp_path / "pyproject.toml"
    assert config.resolve(tmp_path, {}, {}) == Settings()


def test_no_files_at_all_points_at_soa_git_toml(tmp_path):
    assert config.config_path(tmp_path) == tmp_path / ".soa-git.toml"
    assert config.file_settings(tmp_path) == {}


# ---- writing -------------------------------------------------------------------------------

PYPROJECT = ('# my project\n[project]\nname = "demo"  # keep this comment\nversion = "1.0"\n\n'
             '[tool.black]\nline-length = 99\n')


@pytest.mark.parametrize("existing", [PYPROJECT, PYPROJECT.rstrip("\n"), ""],
                         ids=["ends-with-newline", "no-final-newline", "empty"])
def test_write_config_appends_to_pyproject_keeping_every_byte(tmp_path, existing):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_bytes(existing.encode("utf-8"))
    settings = Settings(model="m", max_depth=3, jobs=2)

    path, written = config.write_config(tmp_path, settings)

    assert (path, written) == (pyproject, True)
    after = pyproject.read_bytes()
    assert after.startswith(existing.encode("utf-8"))
    assert after.endswith(b"\n")
    data = tomllib.loads(after.decode("utf-8"))
    assert data["tool"]["soa-git"]["model"] == "m"
    if existing:
        assert data["project"]["name"] == "demo" and data["tool"]["black"]["line-length"] == 99
    assert not (tmp_path / ".soa-git.toml").exists()
    assert config.resolve(tmp_path, {}, {}) == settings


def test_write_config_keeps_crlf_bytes_of_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    original = b'[project]\r\nname = "demo"\r\n'
    pyproject.write_bytes(original)
    config.write_config(tmp_path, Settings())
    assert pyproject.read_bytes().startswith(original)


def test_write_config_writes_soa_git_toml_without_pyproject(tmp_path):
    settings = Settings(model="local", base_url="http://127.0.0.1:11434/v1", test_timeout=12.5)
    path, written = config.write_config(tmp_path, settings)
    assert (path, written) == (tmp_path / ".soa-git.toml", True)
    config.trust(tmp_path)
    assert not (tmp_path / "pyproject.toml").exists()
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert data["model"] == "local" and data["test-timeout"] == 12.5
    assert config.resolve(tmp_path, {}, {}) == settings


@pytest.mark.parametrize("with_pyproject", [True, False], ids=["pyproject", "soa-git-toml"])
def test_write_config_is_idempotent(tmp_path, with_pyproject):
    if with_pyproject:
        write(tmp_path, "pyproject.toml", PYPROJECT)
    path, written = config.write_config(tmp_path, Settings(model="first"))
    assert written
    before = path.read_bytes()
    listing = sorted(p.name for p in tmp_path.iterdir())

    again, written_again = config.write_config(tmp_path, Settings(model="second", jobs=1))

    assert (again, written_again) == (path, False)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert config.resolve(tmp_path, {}, {}).model == "first"


def test_write_config_keeps_an_existing_soa_git_toml_next_to_pyproject(tmp_path):
    pyproject = write(tmp_path, "pyproject.toml", PYPROJECT)
    own = write(tmp_path, ".soa-git.toml", 'model = "mine"\n')
    path, written = config.write_config(tmp_path, Settings(model="other"))
    assert (path, written) == (own, False)
    assert pyproject.read_text(encoding="utf-8") == PYPROJECT
    assert own.read_text(encoding="utf-8") == 'model = "mine"\n'


def test_written_strings_with_quotes_and_backslashes_read_back(tmp_path):
    settings = Settings(model='we"ird\\name', base_url="http://h/v1?a='b'")
    config.write_config(tmp_path, settings)
    config.trust(tmp_path)
    assert config.resolve(tmp_path, {}, {}) == settings


def test_written_strings_with_control_characters_read_back(tmp_path):
    settings = Settings(model="line\nbreak\ttab")
    config.write_config(tmp_path, settings)
    assert config.resolve(tmp_path, {}, {}) == settings


# ---- bad values -----------------------------------------------------------------------------

@pytest.mark.parametrize("line, names", [
    ('colour = "red"', ("colour",)),
    ("max-depth = -1", ("max_depth", "max-depth")),
    ("jobs = -2", ("jobs",)),
    ("test-timeout = -1.0", ("test_timeout", "test-timeout")),
    ("test-timeout = 0", ("test_timeout", "test-timeout")),
    ('jobs = "many"', ("jobs",)),
    ('max-depth = "deep"', ("max_depth", "max-depth")),
    ('test-timeout = "soon"', ("test_timeout", "test-timeout")),
    ("repair-rounds = true", ("repair_rounds", "repair-rounds")),
    ("jobs = 0", ("jobs",)),
    ("max-children = 0", ("max_children", "max-children")),
    ("max-depth = 0", ("max_depth", "max-depth")),
])
@pytest.mark.parametrize("where", [".soa-git.toml", "pyproject.toml"])
def test_bad_file_value_names_the_key(tmp_path, line, names, where):
    text = f"[tool.soa-git]\n{line}\n" if where == "pyproject.toml" else f"{line}\n"
    write(tmp_path, where, text)
    with pytest.raises(ConfigError) as caught:
        config.resolve(tmp_path, {}, {})
    message = str(caught.value)
    assert any(name in message for name in names), message
    assert "\n" not in message


@pytest.mark.parametrize("var, value, names", [
    ("SOA_GIT_JOBS", "many", ("jobs", "SOA_GIT_JOBS")),
    ("SOA_GIT_MAX_DEPTH", "-1", ("max_depth", "SOA_GIT_MAX_DEPTH")),
    ("SOA_GIT_TEST_TIMEOUT", "abc", ("test_timeout", "SOA_GIT_TEST_TIMEOUT")),
    ("SOA_GIT_MAX_DEPTH", "2.5", ("max_depth", "SOA_GIT_MAX_DEPTH")),
])
def test_bad_environment_value_names_the_key_and_variable(tmp_path, var, value, names):
    with pytest.raises(ConfigError) as caught:
        config.resolve(tmp_path, {}, {var: value})
    assert all(name in str(caught.value) for name in names), str(caught.value)


@pytest.mark.parametrize("flags, name", [
    ({"jobs": -1}, "jobs"),
    ({"max_depth": -3}, "max_depth"),
    ({"test_timeout": -0.5}, "test_timeout"),
    ({"jobs": "lots"}, "jobs"),
    ({"colour": "red"}, "colour"),
    ({"jobs": 0}, "jobs"),
    ({"max_depth": 0}, "max.depth"),
])
def test_bad_flag_value_names_the_key(tmp_path, flags, name):
    with pytest.raises(ConfigError, match=name):
        config.resolve(tmp_path, flags, {})


@pytest.mark.parametrize("line, key", [
    ("max-depth = 2.7", "'max-depth'"),       # not truncated to 2
    ("jobs = 3.5", "'jobs'"),                 # not truncated to 3
    ("test-timeout = true", "'test-timeout'"),  # a bool is not a number
    ("model = [1, 2]", "'model'"),            # a list is not a model name
])
def test_wrong_toml_type_is_rejected_naming_the_key_as_written(tmp_path, line, key):
    write(tmp_path, ".soa-git.toml", line + "\n")
    with pytest.raises(ConfigError, match=key):
        config.resolve(tmp_path, {}, {})


def test_temperature_zero_is_allowed(tmp_path):
    write(tmp_path, ".soa-git.toml", "temperature = 0\n")
    assert config.resolve(tmp_path, {}, {}).temperature == 0


@pytest.mark.parametrize("where, text", [
    (".soa-git.toml", 'model = "unterminated\n'),
    (".soa-git.toml", "jobs = = 3\n"),
    ("pyproject.toml", "[project\nname = 'x'\n"),
])
def test_invalid_toml_names_the_file(tmp_path, where, text):
    write(tmp_path, where, text)
    with pytest.raises(ConfigError, match=rf"{where.replace('.', '[.]')} is not valid TOML"):
        config.resolve(tmp_path, {}, {})


def test_write_config_refuses_invalid_pyproject_and_leaves_it(tmp_path):
    pyproject = write(tmp_path, "pyproject.toml", "[project\nname = 'x'\n")
    before = pyproject.read_bytes()
    with pytest.raises(ConfigError, match="pyproject.toml"):
        config.write_config(tmp_path, Settings())
    assert pyproject.read_bytes() == before
    assert not (tmp_path / ".soa-git.toml").exists()


# ---- the API key ----------------------------------------------------------------------------

def test_api_key_reads_the_variable_named_by_api_key_env():
    environ = {"OPENAI_API_KEY": "sk-openai", "MY_KEY": "sk-mine"}
    assert Settings().api_key(environ) == "sk-openai"
    assert Settings(api_key_env="MY_KEY").api_key(environ) == "sk-mine"
    assert Settings(api_key_env="ABSENT").api_key(environ) is None
    assert Settings().api_key({"OPENAI_API_KEY": ""}) is None


def test_api_key_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-os")
    assert Settings().api_key() == "sk-from-os"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert Settings().api_key() is None


def test_api_key_env_is_itself_configurable(tmp_path):
    write(tmp_path, ".soa-git.toml", 'api-key-env = "FILE_KEY"\n')
    config.trust(tmp_path)
    environ = {"FILE_KEY": "sk-file", "ENV_KEY": "sk-env"}
    assert config.resolve(tmp_path, {}, environ).api_key(environ) == "sk-file"
    environ["SOA_GIT_API_KEY_ENV"] = "ENV_KEY"
    assert config.resolve(tmp_path, {}, environ).api_key(environ) == "sk-env"


def test_rendered_and_written_config_never_hold_the_key(tmp_path):
    secret = "sk-secret-value-123"
    environ = {"OPENAI_API_KEY": secret, "MY_KEY": secret}
    for settings in (config.resolve(tmp_path, {}, environ),
                     config.resolve(tmp_path, {"api_key_env": "MY_KEY"}, environ)):
        assert settings.api_key(environ) == secret
        assert secret not in config.render_table(settings)
        assert secret not in repr(settings)
    path, _ = config.write_config(tmp_path, config.resolve(tmp_path, {"api_key_env": "MY_KEY"}, environ))
    text = path.read_text(encoding="utf-8")
    assert secret not in text
    assert 'api-key-env = "MY_KEY"' in text


@pytest.mark.parametrize("where, value", [
    ("file", "test-timeout = inf"), ("file", "request-timeout = nan"),
    ("file", "temperature = -inf"), ("env", "inf"), ("env", "nan"), ("flag", float("inf")),
])
def test_infinite_and_nan_numbers_are_refused_naming_the_key(tmp_path, where, value):
    """They parsed as floats and crashed the run after its branches were written."""
    if where == "file":
        write(tmp_path, ".soa-git.toml", value + "\n")
    environ = {"SOA_GIT_TEST_TIMEOUT": value} if where == "env" else {}
    flags = {"test_timeout": value} if where == "flag" else {}
    with pytest.raises(ConfigError, match="timeout|temperature"):
        config.resolve(tmp_path, flags, environ)
# ---- a repository cannot choose your secrets ---------------------------------------------------

@pytest.mark.parametrize("line, key", [('api-key-env = "AWS_SECRET_ACCESS_KEY"', "api-key-env"),
                                       ('base-url = "https://attacker.example/v1"', "base-url")])
def test_an_untrusted_repository_cannot_choose_the_key_or_its_endpoint(tmp_path, line, key):
    write(tmp_path, ".soa-git.toml", line + "\n")
    with pytest.raises(ConfigError, match=f"sets {key} = .*run `soa-git trust`"):
        config.resolve(tmp_path, {}, {})
    # The user's own choice (flag, environment) makes the repository's moot.
    name = key.replace("-", "_")
    assert getattr(config.resolve(tmp_path, {name: "MINE"}, {}), name) == "MINE"
    config.trust(tmp_path)
    assert getattr(config.resolve(tmp_path, {}, {}), name) == line.split('"')[1]


def test_trust_is_asked_again_when_the_repository_changes_its_choice(tmp_path):
    write(tmp_path, ".soa-git.toml", 'base-url = "http://127.0.0.1:8080/v1"\n')
    assert config.trust(tmp_path) == {"base_url": "http://127.0.0.1:8080/v1"}
    assert config.resolve(tmp_path, {}, {}).base_url == "http://127.0.0.1:8080/v1"
    write(tmp_path, ".soa-git.toml", 'base-url = "https://attacker.example/v1"\n')
    with pytest.raises(ConfigError, match="changed since you trusted it"):
        config.resolve(tmp_path, {}, {})
    # Trust is per repository: another one with the same file is not trusted.
    other = tmp_path / "other"
    other.mkdir()
    write(other, ".soa-git.toml", 'base-url = "http://127.0.0.1:8080/v1"\n')
    with pytest.raises(ConfigError, match="soa-git trust"):
        config.resolve(other, {}, {})


def test_the_users_own_file_chooses_freely_and_a_repository_may_agree(tmp_path):
    user = config.user_config_path()
    user.parent.mkdir(parents=True)
    user.write_text('base-url = "http://127.0.0.1:9/v1"\napi-key-env = "MY_KEY"\nsandbox = "off"\n')
    repo = tmp_path / "repo"
    repo.mkdir()
    resolved = config.resolve(repo, {}, {})
    assert (resolved.base_url, resolved.api_key_env, resolved.sandbox) == (
        "http://127.0.0.1:9/v1", "MY_KEY", "off")
    assert config.user_sandbox({}, {"HOME": str(Path.home())}) == "off"
    write(repo, ".soa-git.toml", 'base-url = "http://127.0.0.1:9/v1"\njobs = 2\n')
    assert config.resolve(repo, {}, {}).jobs == 2
    write(repo, ".soa-git.toml", 'api-key-env = "OPENAI_API_KEY"\n')
    with pytest.raises(ConfigError, match="api-key-env"):
        config.resolve(repo, {}, {})


def test_a_repository_can_never_turn_the_sandbox_off(tmp_path):
    write(tmp_path, ".soa-git.toml", 'sandbox = "off"\n')
    with pytest.raises(ConfigError, match="'sandbox', which only you may change"):
        config.resolve(tmp_path, {}, {})
    write(tmp_path, ".soa-git.toml", 'sandbox = "maybe"\n')
    with pytest.raises(ConfigError, match="must be one of 'on', 'off'"):
        config.resolve(tmp_path, {}, {})


def test_secret_values_are_the_keys_and_the_marked_variables():
    environ = {"OPENAI_API_KEY": "sk-one-123", "MY_KEY": "sk-two-456", "DB": "postgres://x:y@z",
               "GITHUB_TOKEN": "ghp-three-789", "SHORT": "abc", "OTHER": "visible"}
    settings = Settings(api_key_env="MY_KEY", secret_env="DB, SHORT")
    assert settings.secret_values(environ) == ("ghp-three-789", "postgres://x:y@z", "sk-one-123",
                                               "sk-two-456")




# ---- one table: Settings, the CLI's flags and the docs ---------------------------------------


def test_the_docs_table_is_the_settings_table():
    """docs/configuration.md shows config.docs_table(); after a change to Settings, paste it."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert config.docs_table() in text


def test_every_setting_with_a_flag_is_an_option_of_the_commands_that_run_agents():
    from soa_git.cli import main

    for command in ("run", "resume", "fill", "init"):
        options = {o for p in main.commands[command].params for o in p.opts}
        assert {f for s in config.FLAG_SETTINGS for f in s.flags} <= options, command
    assert {s.name for s in config.SETTINGS} == {f.name for f in fields(Settings)}
    assert all(s.help and s.environment[-1] == f"SOA_GIT_{s.name.upper()}"
               for s in config.SETTINGS)
