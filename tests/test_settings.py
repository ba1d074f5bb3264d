"""Settings: TOML file, ``AEGISPAY_*`` variables, overrides, and errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from aegispay.errors import ConfigError
from aegispay.settings import (
    EngineSettings,
    PluginConfig,
    PluginSelection,
    Settings,
    load_settings,
    settings_from_dict,
)

FILE = """\
store = "sqlite:///from-file.db"
lock = "file://locks"

[engine]
gateway_timeout_s = 5.0
status_lookups = 1

[plugins]
deny = ["from_file"]

[plugins.fraud_rules]
review_above = "5000.00 USD"
api_key = "sk_live_SECRET"
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so no stray aegispay.toml is picked up."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data)
    return str(info.value)


# -- defaults and the file -----------------------------------------------------------------------


def test_defaults_without_file_or_env(workdir: Path) -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.store == "sqlite:///aegispay.db"  # the embedded default
    assert settings.lock is None
    assert settings.engine == EngineSettings(
        gateway_timeout_s=10.0, lock_timeout_s=30.0, status_lookups=3, idempotency_ttl_s=86_400
    )
    assert settings.plugins == PluginSelection(allow=None, deny=())
    assert settings.plugin_config.names() == []


def test_explicit_file(workdir: Path) -> None:
    path = write(workdir / "custom.toml", FILE)
    settings = load_settings(path, env={})
    assert settings.store == "sqlite:///from-file.db"
    assert settings.lock == "file://locks"
    assert settings.engine.gateway_timeout_s == 5.0
    assert settings.engine.status_lookups == 1
    assert settings.engine.lock_timeout_s == 30.0  # untouched keys keep their defaults
    assert settings.plugins.deny == ("from_file",)
    assert settings.plugins.allow is None
    assert settings.plugin_config.names() == ["fraud_rules"]
    assert settings.plugin_config.section("fraud_rules") == {
        "review_above": "5000.00 USD",
        "api_key": "sk_live_SECRET",
    }


def test_default_file_in_the_working_directory(workdir: Path) -> None:
    write(workdir / "aegispay.toml", 'store = "memory://default-file"\n')
    assert load_settings(env={}).store == "memory://default-file"


def test_file_named_by_aegispay_config(workdir: Path) -> None:
    write(workdir / "aegispay.toml", 'store = "memory://default-file"\n')
    other = write(workdir / "other.toml", 'store = "memory://other"\n')
    assert load_settings(env={"AEGISPAY_CONFIG": str(other)}).store == "memory://other"


def test_explicit_path_wins_over_aegispay_config(workdir: Path) -> None:
    first = write(workdir / "first.toml", 'store = "memory://first"\n')
    second = write(workdir / "second.toml", 'store = "memory://second"\n')
    assert load_settings(first, env={"AEGISPAY_CONFIG": str(second)}).store == "memory://first"


def test_missing_config_path_is_an_error(workdir: Path) -> None:
    missing = workdir / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing, env={})
    assert "--config" in str(info.value)
    assert str(missing) in str(info.value)


def test_a_directory_is_not_a_config_file(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(workdir, env={})


def test_invalid_toml_names_the_file(workdir: Path) -> None:
    path = write(workdir / "broken.toml", "store = \n[engine\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


# -- environment variables ---------------------------------------------------------------------


def test_environment_variables(workdir: Path) -> None:
    settings = load_settings(
        env={
            "AEGISPAY_STORE": "memory://from-env",
            "AEGISPAY_ENGINE__GATEWAY_TIMEOUT_S": "7.5",
            "AEGISPAY_ENGINE__STATUS_LOOKUPS": "0",
            "AEGISPAY_PLUGINS__DENY": "a,b",
            "AEGISPAY_PLUGINS__X__Y": "5",
            "AEGISPAY_PLUGINS__X__NAME": "plain text",
            "PATH": "/usr/bin",
            "UNRELATED": "1",
        }
    )
    assert settings.store == "memory://from-env"
    assert settings.engine.gateway_timeout_s == 7.5
    assert settings.engine.status_lookups == 0
    assert settings.plugins.deny == ("a", "b")
    assert settings.plugin_config.section("x") == {"y": 5, "name": "plain text"}


def test_environment_values_are_toml_literals_when_they_parse(workdir: Path) -> None:
    settings = load_settings(
        env={
            "AEGISPAY_ENGINE__GATEWAY_TIMEOUT_S": "10",  # an integer is a fine float
            "AEGISPAY_PLUGINS__X__ON": "true",
            "AEGISPAY_PLUGINS__X__LIST": "[1, 2]",
            "AEGISPAY_PLUGINS__X__QUOTED": '"5"',
        }
    )
    assert settings.engine.gateway_timeout_s == 10.0
    assert isinstance(settings.engine.gateway_timeout_s, float)
    assert settings.plugin_config.section("x") == {"on": True, "list": [1, 2], "quoted": "5"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a,b", ("a", "b")),
        (" a , b ,", ("a", "b")),
        ("single", ("single",)),
        ("", ()),
        ('["x", "y"]', ("x", "y")),
    ],
)
def test_plugin_lists_from_the_environment(
    workdir: Path, raw: str, expected: tuple[str, ...]
) -> None:
    settings = load_settings(env={"AEGISPAY_PLUGINS__DENY": raw, "AEGISPAY_PLUGINS__ALLOW": raw})
    assert settings.plugins.deny == expected
    assert settings.plugins.allow == expected


def test_a_plugin_sections_own_allow_key_is_not_split(workdir: Path) -> None:
    """Only ``plugins.allow`` / ``plugins.deny`` are comma lists; a plugin's own keys are not."""
    settings = load_settings(env={"AEGISPAY_PLUGINS__IP_FILTER__ALLOW": "10.0.0.1,10.0.0.2"})
    assert settings.plugin_config.section("ip_filter") == {"allow": "10.0.0.1,10.0.0.2"}


def test_environment_overrides_the_file(workdir: Path) -> None:
    path = write(workdir / "aegispay.toml", FILE)
    settings = load_settings(
        path,
        env={
            "AEGISPAY_STORE": "memory://env",
            "AEGISPAY_ENGINE__GATEWAY_TIMEOUT_S": "3",
            "AEGISPAY_PLUGINS__DENY": "env_plugin",
            "AEGISPAY_PLUGINS__FRAUD_RULES__REVIEW_ABOVE": "1.00 USD",
        },
    )
    assert settings.store == "memory://env"
    assert settings.lock == "file://locks"  # not overridden
    assert settings.engine.gateway_timeout_s == 3.0
    assert settings.engine.status_lookups == 1  # the file's value, same table
    assert settings.plugins.deny == ("env_plugin",)
    assert settings.plugin_config.section("fraud_rules") == {
        "review_above": "1.00 USD",
        "api_key": "sk_live_SECRET",
    }


def test_overrides_win_over_env_and_file(workdir: Path) -> None:
    path = write(workdir / "aegispay.toml", FILE)
    settings = load_settings(
        path,
        env={"AEGISPAY_STORE": "memory://env", "AEGISPAY_LOCK": "memory://env-lock"},
        overrides={"store": "memory://cli", "lock": None},
    )
    assert settings.store == "memory://cli"
    assert settings.lock == "memory://env-lock"  # None means "not given on the command line"


def test_os_environ_is_the_default(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGISPAY_STORE", "memory://os-environ")
    monkeypatch.setenv("AEGISPAY_ENGINE__LOCK_TIMEOUT_S", "2.5")
    settings = load_settings()
    assert settings.store == "memory://os-environ"
    assert settings.engine.lock_timeout_s == 2.5


def test_env_descending_into_a_non_table_is_an_error(workdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AEGISPAY_STORE": "memory://", "AEGISPAY_STORE__X": "1"})
    assert str(info.value) == "AEGISPAY_STORE__X: store.x is not a table in the configuration"
    # Without a scalar to collide with, the table lands on a string key and is refused there.
    with pytest.raises(ConfigError, match=r"settings\.store: expected a string"):
        load_settings(env={"AEGISPAY_STORE__X": "1"})


def test_unknown_env_key_is_named(workdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AEGISPAY_STOR": "memory://"})
    assert "unknown key(s) ['stor']" in str(info.value)


@pytest.mark.parametrize("raw", ["abc", "true", "[1]"])
def test_bad_env_value_names_key_value_and_expectation(workdir: Path, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AEGISPAY_ENGINE__GATEWAY_TIMEOUT_S": raw})
    message = str(info.value)
    assert "settings.engine.gateway_timeout_s" in message
    assert "expected a number" in message
    assert "(got " in message


# -- validation messages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path", "expected", "got"),
    [
        ({"store": 5}, "settings.store", "expected a string", "(got 5)"),
        ({"lock": ["a"]}, "settings.lock", "expected a string", "(got ['a'])"),
        (
            {"engine": {"gateway_timeout_s": "fast"}},
            "settings.engine.gateway_timeout_s",
            "expected a number",
            "(got 'fast')",
        ),
        (
            {"engine": {"lock_timeout_s": True}},
            "settings.engine.lock_timeout_s",
            "expected a number",
            "(got True)",
        ),
        (
            {"engine": {"status_lookups": 1.5}},
            "settings.engine.status_lookups",
            "expected an integer",
            "(got 1.5)",
        ),
        (
            {"engine": {"idempotency_ttl_s": "1d"}},
            "settings.engine.idempotency_ttl_s",
            "expected an integer",
            "(got '1d')",
        ),
        (
            {"plugins": {"deny": "a"}},
            "plugins.deny",
            "expected a list of plugin names",
            "(got 'a')",
        ),
        (
            {"plugins": {"allow": ["a", 1]}},
            "plugins.allow",
            "expected a list of plugin names",
            "(got ['a', 1])",
        ),
    ],
)
def test_bad_value_names_key_expectation_and_value(
    data: dict[str, Any], path: str, expected: str, got: str
) -> None:
    message = config_error(data)
    assert f"{path}: {expected} {got}" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gateway_timeout_s", -1),
        ("gateway_timeout_s", 0),
        ("lock_timeout_s", -0.5),
        ("idempotency_ttl_s", 0),
    ],
)
def test_non_positive_durations_are_refused(key: str, value: float) -> None:
    message = config_error({"engine": {key: value}})
    assert "settings.engine" in message
    assert key in message
    assert "greater than 0" in message
    assert f"got {value}" in message or f"got {float(value)}" in message


def test_every_problem_is_reported_at_once() -> None:
    message = config_error(
        {"store": 1, "engine": {"gateway_timeout_s": "x", "status_lookups": "y"}}
    )
    assert "settings.store" in message
    assert "settings.engine.gateway_timeout_s" in message
    assert "settings.engine.status_lookups" in message


def test_unknown_keys_are_named() -> None:
    assert "settings: unknown key(s) ['stor']" in config_error({"stor": "memory://"})
    assert "settings.engine: unknown key(s) ['other', 'timeout']" in config_error(
        {"engine": {"timeout": 1, "other": 2}}
    )
    assert "plugins: unknown key(s) ['dney']" in config_error({"plugins": {"dney": ["a"]}})


def test_unknown_keys_in_a_file_are_named(workdir: Path) -> None:
    path = write(workdir / "aegispay.toml", "[engine]\ngateway_timeout = 3\n")
    with pytest.raises(
        ConfigError, match=r"settings\.engine: unknown key\(s\) \['gateway_timeout'\]"
    ):
        load_settings(path, env={})


@pytest.mark.parametrize("value", ["memory://", 5, ["a"]])
def test_plugins_must_be_a_table(value: Any) -> None:
    message = config_error({"plugins": value})
    assert "plugins" in message
    assert repr(value) in message


def test_plugins_from_the_environment_must_be_a_table(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="plugins"):
        load_settings(env={"AEGISPAY_PLUGINS": "5"})


def test_engine_must_be_a_table() -> None:
    message = config_error({"engine": 5})
    assert "settings.engine" in message
    assert "(got 5)" in message
    assert "expected" in message


def test_settings_are_frozen() -> None:
    settings = settings_from_dict({})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.store = "x"  # type: ignore[misc]


# -- plugin sections -------------------------------------------------------------------------------


@attrs.frozen
class FraudRulesConfig:
    review_above: str
    max_score: int = 80
    enabled: bool = True
    api_key: str = ""


def test_plugin_section_structures_into_an_attrs_class() -> None:
    config = PluginConfig({"fraud_rules": {"review_above": "5000.00 USD", "max_score": 60}})
    assert config.structure("fraud_rules", FraudRulesConfig) == FraudRulesConfig(
        review_above="5000.00 USD", max_score=60
    )


def test_plugin_section_errors_name_the_plugin_key() -> None:
    config = PluginConfig(
        {"fraud_rules": {"review_above": "1 USD", "max_score": "high", "enabled": "yes", "x": 1}}
    )
    with pytest.raises(ConfigError) as info:
        config.structure("fraud_rules", FraudRulesConfig)
    message = str(info.value)
    assert "plugins.fraud_rules.max_score: expected an integer (got 'high')" in message
    assert "plugins.fraud_rules.enabled: expected true or false (got 'yes')" in message
    assert "plugins.fraud_rules: unknown key(s) ['x']" in message


def test_missing_plugin_section_or_key() -> None:
    config = PluginConfig({})
    with pytest.raises(ConfigError) as info:
        config.structure("fraud_rules", FraudRulesConfig)
    assert "plugins.fraud_rules.review_above: required key missing" in str(info.value)
    assert config.section("fraud_rules") == {}


def test_plugin_sections_from_a_file(workdir: Path) -> None:
    path = write(workdir / "aegispay.toml", FILE)
    config = load_settings(path, env={}).plugin_config
    assert config.structure("fraud_rules", FraudRulesConfig).api_key == "sk_live_SECRET"


def test_plugin_config_repr_never_shows_values() -> None:
    config = PluginConfig(
        {"stripe": {"api_key": "sk_live_SECRET"}, "fraud_rules": {"token": "hunter2"}}
    )
    for text in (repr(config), str(config)):
        assert "sk_live_SECRET" not in text and "hunter2" not in text
        assert "api_key" not in text
        assert text == "PluginConfig(sections=['fraud_rules', 'stripe'])"


def test_settings_repr_never_shows_plugin_values(workdir: Path) -> None:
    settings = load_settings(write(workdir / "aegispay.toml", FILE), env={})
    assert "sk_live_SECRET" not in repr(settings)
    assert "fraud_rules" in repr(settings)


def test_plugin_config_copies_its_input() -> None:
    source = {"x": {"key": "value"}}
    config = PluginConfig(source)
    source["x"]["key"] = "changed"
    source["y"] = {}
    assert config.section("x") == {"key": "value"}
    assert config.names() == ["x"]


def test_test_switches_and_the_config_path_are_not_settings(tmp_path: Path) -> None:
    env = {"AEGISPAY_TEST_REQUIRE_SERVICES": "1", "AEGISPAY_CONFIG": str(tmp_path / "a.toml")}
    (tmp_path / "a.toml").write_text('store = "memory://"\n')
    assert load_settings(env=env).store == "memory://"


def test_a_misspelt_aegispay_variable_is_an_error_not_ignored() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"AEGISPAY_STOR": "memory://"})
    assert "stor" in str(info.value)


def test_redis_lock_lease_and_fence_retention_come_from_the_engine_settings() -> None:
    from aegispay.locks.redis import RedisLockManager
    from aegispay.stack import open_locks

    settings = settings_from_dict(
        {"engine": {"lock_lease_ms": 5000, "lock_fence_retention_s": 600}}
    )
    locks = open_locks("redis://127.0.0.1:6379/0", settings.engine)  # connects lazily
    assert isinstance(locks, RedisLockManager)
    assert (locks.lease_ms, locks.fence_retention_s) == (5000, 600)
    defaults = open_locks("redis://127.0.0.1:6379/0")
    assert isinstance(defaults, RedisLockManager)
    assert (defaults.lease_ms, defaults.fence_retention_s) == (10_000, 3600)


@pytest.mark.parametrize(
    ("engine", "key", "why"),
    [
        ({"lock_lease_ms": 2}, "lock_lease_ms", "at least 3"),
        ({"lock_lease_ms": 20_000, "lock_fence_retention_s": 20}, "lock_fence_retention_s",
         "longer than lock_lease_ms (20000 ms)"),
    ],
)  # fmt: skip
def test_lock_settings_that_cannot_work_are_refused(
    engine: dict[str, Any], key: str, why: str
) -> None:
    message = config_error({"engine": engine})
    assert f"settings.engine: {key}: must be {why}" in message
