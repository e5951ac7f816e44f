"""Configuration: sources, precedence, validation and redaction."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from killswitch.cli import main
from killswitch.config import ConfigError, EngineSettings, load_settings, redacted_dump
from killswitch.core.ports import EngineConfig
from killswitch.exchange.signing import generate_private_key, private_key_pem

SECRET_API_KEY = "sk-test-9f8e7d6c5b4a"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "mm-1.pem"
    path.write_bytes(private_key_pem(generate_private_key()))
    return path


@pytest.fixture
def config_file(tmp_path: Path, key_file: Path) -> Path:
    path = tmp_path / "ks.toml"
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "127.0.0.1:19092"
[[accounts]]
id = "mm-1"
api_key = "{SECRET_API_KEY}"
private_key_file = "{key_file}"
rate_limit_per_second = 50
"""
    )
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KILLSWITCH_"):
            monkeypatch.delenv(name)


def test_toml_file_is_read(config_file: Path) -> None:
    settings = load_settings(config_file)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert settings.accounts[0].rate_limit_per_second == 50
    assert settings.accounts[0].api_key.get_secret_value() == SECRET_API_KEY


def test_environment_overrides_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILLSWITCH_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9092")
    monkeypatch.setenv("KILLSWITCH_ENGINE__STRATEGY", "batch")
    settings = load_settings(config_file)
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert settings.engine.strategy == "batch"


def test_accounts_from_environment_json(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accounts = [{"id": "a1", "api_key": "k", "private_key_file": str(key_file)}]
    monkeypatch.setenv("KILLSWITCH_ACCOUNTS", json.dumps(accounts))
    settings = load_settings(None)
    assert [a.id for a in settings.accounts] == ["a1"]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("", "accounts: required setting is missing"),
        (
            '[[accounts]]\nid="a"\napi_key="k"\nprivate_key_file="/nonexistent/k.pem"\n',
            "file not found: /nonexistent/k.pem",
        ),
        ("[kafka]\nbootstrap_serverz = 'x'\n", "kafka.bootstrap_serverz: unknown setting"),
        ("[engine]\npage_size = 'lots'\n", "engine.page_size"),
        ("[engine]\nstrategy = 'yolo'\n", "engine.strategy"),
        ("[[accounts]]\nid='a'\napi_key='k'\n", "set exactly one of private_key_file"),
    ],
)
def test_bad_configuration_names_the_setting(tmp_path: Path, snippet: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(snippet)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ('symbols = ["BTC_USDT", "ETH_IDR", "BTC_USDT"]', ["BTC_USDT", "ETH_IDR"]),
        ("symbols = []", "must name at least one pair"),
        ('symbols = ["BTC USDT"]', "as the exchange writes it: 'BTC USDT'"),
        ('symbols = ["_BTC"]', "as the exchange writes it: '_BTC'"),
        # The exchange's own spelling only: a miscased or unseparated entry would be
        # listed in vain (see docs/EXCHANGE.md).
        ('symbols = ["btc_usdt"]', "as the exchange writes it: 'btc_usdt' (upper-case BASE_QUOTE"),
        ('symbols = ["BTCUSDT", "BTC-USDT"]', "'BTCUSDT', 'BTC-USDT'"),
    ],
)
def test_account_symbols_fallback(
    tmp_path: Path, key_file: Path, line: str, expected: str | list[str] | None
) -> None:
    path = tmp_path / "ks.toml"
    path.write_text(
        f'[[accounts]]\nid = "mm-1"\napi_key = "k"\nprivate_key_file = "{key_file}"\n{line}\n'
    )
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert "accounts.0.symbols" in str(info.value)
        assert expected in str(info.value)
    else:
        assert load_settings(path).accounts[0].symbols == expected


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "absent.toml")


def test_malformed_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[kafka\nbootstrap_servers=")
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(path)


def test_secrets_are_redacted(config_file: Path) -> None:
    dumped = json.dumps(redacted_dump(load_settings(config_file)))
    assert SECRET_API_KEY not in dumped
    assert "**********" in dumped


def test_cli_config_show_redacts(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert SECRET_API_KEY not in out
    assert json.loads(out)["accounts"][0]["id"] == "mm-1"


def test_cli_config_check_loads_keys(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(config_file)]) == 0
    assert "1 account(s)" in capsys.readouterr().out


def test_cli_config_check_rejects_garbage_key(
    tmp_path: Path, config_file: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file.write_text("not a key")
    assert main(["config", "check", "--config", str(config_file)]) == 2
    # The setting and the file that holds the bad key are named (never the key).
    assert f"accounts[mm-1].private_key_file {str(key_file)!r}: not a readable" in (
        capsys.readouterr().err
    )


def test_config_is_taken_before_the_command_too(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config_file), "config", "check"]) == 0
    assert "1 account(s)" in capsys.readouterr().out
    same = ["--config", str(config_file), "config", "check", "--config", str(config_file)]
    assert main(same) == 0
    capsys.readouterr()
    other = ["--config", str(config_file), "config", "check", "--config", "other.toml"]
    assert main(other) == 2
    assert "--config given twice" in capsys.readouterr().err


def test_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[kafka]\nnope = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "killswitch", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "kafka.nope: unknown setting" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) < 25


def test_version_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "killswitch", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("killswitch ")


def test_the_engine_config_carries_the_engine_section() -> None:
    """The engine's own settings type: the same defaults as ``[engine]``, and every value
    of the section the engine reads."""
    assert EngineSettings().engine_config() == EngineConfig()
    names = [f.name for f in dataclasses.fields(EngineConfig)]
    changed = EngineSettings(
        default_deadline_s=7.0,
        strategy="batch",
        batch_size=9,
        page_size=11,
        priority="oldest_first",
        latch_budget_share=0.25,
        progress_interval_s=0.3,
        max_passes=4,
        settle_grace_s=0.5,
    )
    config = changed.engine_config()
    assert {n: getattr(config, n) for n in names} == {n: getattr(changed, n) for n in names}
    assert config != EngineConfig()
