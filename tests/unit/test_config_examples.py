"""The example configuration documents every setting, and it is valid."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from killswitch import config
from killswitch.exchange.signing import generate_private_key, private_key_pem

ROOT = Path(__file__).resolve().parents[2]
TOML = (ROOT / "config" / "killswitch.example.toml").read_text()
ENV = (ROOT / "config" / "example.env").read_text()
SECTIONS: list[type[BaseModel]] = [
    config.Settings,
    config.KafkaSettings,
    config.TopicSettings,
    config.SslSettings,
    config.SaslSettings,
    config.AccountSettings,
    config.MetricsSettings,
    config.EngineSettings,
    config.TriggerSigningSettings,
    config.OperatorKey,
    config.DeadmanSource,
    config.AlertScope,
    config.IntakeSettings,
    config.LoggingSettings,
    config.RuntimeSettings,
    config.DirectSettings,
]


def _fields() -> Iterator[tuple[str, str]]:
    for model in SECTIONS:
        for name in model.model_fields:
            yield model.__name__, name


@pytest.mark.parametrize(("model", "name"), list(_fields()))
def test_every_setting_is_in_the_example_toml(model: str, name: str) -> None:
    as_key = re.search(rf"^#?\s*{re.escape(name)}\s*=", TOML, re.M)
    as_table = re.search(rf"^#?\s*\[\[?([a-z_]+\.)*{re.escape(name)}\]\]?$", TOML, re.M)
    inline = re.search(rf"\b{re.escape(name)}\s*=", TOML)
    assert as_key or as_table or inline, f"{model}.{name} is not documented in the example TOML"


@pytest.mark.parametrize(("model", "name"), list(_fields()))
def test_every_setting_is_in_the_example_env(model: str, name: str) -> None:
    assert re.search(rf"_{name.upper()}(__|=)", ENV) or re.search(rf"[\s\"]{name}\b", ENV), (
        f"{model}.{name} is not documented in config/example.env"
    )


def test_example_toml_is_valid_with_its_keys_present(tmp_path: Path) -> None:
    data = tomllib.loads(TOML)
    key = tmp_path / "k.pem"
    key.write_bytes(private_key_pem(generate_private_key()))
    for account in data["accounts"]:
        account["private_key_file"] = str(key)
    settings = config.Settings(**data)
    assert [a.id for a in settings.accounts] == ["mm-1", "mm-2", "arb-1"]
    assert settings.engine.latch_budget_share == 0.5
    assert settings.engine.latch_sweep_interval_s is None  # deprecated: commented out


def test_a_file_with_the_deprecated_latch_interval_still_loads(tmp_path: Path) -> None:
    # Files written before latch_budget_share keep loading; the value is kept (the
    # engine logs that it is ignored) and the new setting takes its default.
    data = tomllib.loads(TOML)
    key = tmp_path / "k.pem"
    key.write_bytes(private_key_pem(generate_private_key()))
    for account in data["accounts"]:
        account["private_key_file"] = str(key)
    data["engine"]["latch_sweep_interval_s"] = 5.0
    settings = config.Settings(**data)
    assert settings.engine.latch_sweep_interval_s == 5.0
    assert settings.engine.latch_budget_share == 0.5


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_latch_budget_share_must_be_a_share(share: float) -> None:
    with pytest.raises(ValueError, match="latch_budget_share"):
        config.EngineSettings(latch_budget_share=share)
