"""Where settings come from: paths relative to the TOML file, errors naming their source."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from killswitch.config import ConfigError, load_settings
from killswitch.exchange.signing import generate_private_key, private_key_pem


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KILLSWITCH_"):
            monkeypatch.delenv(name)


def _key(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(private_key_pem(generate_private_key()))
    return path


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``etc/ks.toml`` naming ``keys/mm-1.pem`` (relative), run from an unrelated directory."""
    etc = tmp_path / "etc"
    _key(etc / "keys" / "mm-1.pem")
    (etc / "ks.toml").write_text(
        '[[accounts]]\nid = "mm-1"\napi_key = "k"\nprivate_key_file = "keys/mm-1.pem"\n'
        '[kafka.ssl]\ncafile = "tls/ca.pem"\ncertfile = "/abs/client.pem"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return etc / "ks.toml"


def test_relative_paths_in_the_file_are_relative_to_its_directory(layout: Path) -> None:
    settings = load_settings(layout)
    key_file = settings.accounts[0].private_key_file
    assert key_file is not None
    assert key_file.resolve() == (layout.parent / "keys" / "mm-1.pem").resolve()
    assert settings.kafka.ssl.cafile == layout.parent / "tls" / "ca.pem"
    assert settings.kafka.ssl.certfile == Path("/abs/client.pem")  # absolute: as written


def test_relative_config_path_from_another_directory(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(layout.parent.parent)
    settings = load_settings(Path("etc/ks.toml"))
    assert settings.accounts[0].private_key_file == Path("etc/keys/mm-1.pem")


def test_paths_from_the_environment_stay_relative_to_the_working_directory(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _key(Path.cwd() / "env-keys" / "a.pem")
    accounts = [{"id": "a1", "api_key": "k", "private_key_file": "env-keys/a.pem"}]
    monkeypatch.setenv("KILLSWITCH_ACCOUNTS", json.dumps(accounts))
    monkeypatch.setenv("KILLSWITCH_KAFKA__SSL__CAFILE", "env-ca.pem")
    settings = load_settings(layout)
    assert settings.accounts[0].private_key_file == Path("env-keys/a.pem")
    assert settings.kafka.ssl.cafile == Path("env-ca.pem")


def _error(config: Path | None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    return str(info.value)


def _line(message: str, setting: str) -> str:
    (line,) = [
        x
        for x in message.splitlines()
        if x.startswith((f"  - {setting}:", f"  - {setting} (account "))
    ]
    return line


def test_a_bad_environment_variable_is_named_not_the_file(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILLSWITCH_KAFKA__FETCH_MAX_WAIT_MS", "-5")
    line = _line(_error(layout), "kafka.fetch_max_wait_ms")
    assert "from KILLSWITCH_KAFKA__FETCH_MAX_WAIT_MS" in line
    assert str(layout) not in line


def test_a_bad_file_setting_names_the_file(layout: Path) -> None:
    layout.write_text(layout.read_text() + "[engine]\npage_size = 0\n")
    line = _line(_error(layout), "engine.page_size")
    assert line.endswith(f"(in {layout})")
    assert "KILLSWITCH_" not in line


def test_each_problem_names_its_own_source(layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout.write_text(layout.read_text() + "[engine]\nstrategy = 'yolo'\n")
    monkeypatch.setenv("KILLSWITCH_METRICS__PORT", "not-a-port")
    message = _error(layout)
    assert _line(message, "engine.strategy").endswith(f"(in {layout})")
    assert _line(message, "metrics.port").endswith("(from KILLSWITCH_METRICS__PORT)")


def test_unknown_setting_in_the_environment(layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILLSWITCH_KAFKA__BOOTSTRAP_SERVERZ", "x")
    line = _line(_error(layout), "kafka.bootstrap_serverz")
    assert "unknown setting (from KILLSWITCH_KAFKA__BOOTSTRAP_SERVERZ)" in line


def test_accounts_from_the_environment_are_blamed_on_the_variable(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILLSWITCH_ACCOUNTS", json.dumps([{"id": "a1", "api_key": "k"}]))
    line = _line(_error(layout), "accounts.0")
    assert line.startswith("  - accounts.0 (account 'a1'): ")  # named, not only placed
    assert line.endswith("(from KILLSWITCH_ACCOUNTS)")


def test_malformed_json_in_the_environment_names_the_variable(
    layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILLSWITCH_TRIGGER_SIGNING__OPERATORS", '[{"name": "alice", sec')
    message = _error(layout)
    assert "KILLSWITCH_TRIGGER_SIGNING__OPERATORS" in message
    assert "not valid JSON" in message
    assert str(layout) not in message
    assert "alice" not in message  # never a value


def test_missing_key_file_from_the_file_says_how_to_make_it(layout: Path) -> None:
    (layout.parent / "keys" / "mm-1.pem").unlink()
    message = _error(layout)
    assert _line(message, "accounts.0").endswith(f"(in {layout})")
    assert f"killswitch keygen --config {layout}" in message
    # Every problem came from the file: no note about the environment's variables.
    assert "KILLSWITCH_* environment variables" not in message


def test_missing_key_file_from_the_environment_says_how_to_make_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accounts = [{"id": "a1", "api_key": "k", "private_key_file": "nowhere/a.pem"}]
    monkeypatch.setenv("KILLSWITCH_ACCOUNTS", json.dumps(accounts))
    message = _error(None)
    assert _line(message, "accounts.0").endswith("(from KILLSWITCH_ACCOUNTS)")
    assert "killswitch keygen --out FILE" in message
    assert "keygen --config" not in message


def test_without_a_configuration_file_the_error_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KILLSWITCH_ACCOUNTS", raising=False)
    message = _error(None)
    assert _line(message, "accounts").endswith(
        "(not set: no configuration file was given, and no environment variable sets it)"
    )
    assert "pass --config FILE or set KILLSWITCH_CONFIG" in message


def test_a_setting_nobody_gave_is_said_to_be_unset(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    line = _line(_error(empty), "accounts")
    assert "required setting is missing (not set in the file or the environment)" in line
