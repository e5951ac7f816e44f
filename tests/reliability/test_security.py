"""Security: forged manual triggers, secrets in outputs, Kafka over TLS for real.

- Manual triggers (trigger signing required) unsigned, signed by a key not on the
  allowlist, by an operator not on it, tampered after signing, stale, from the future
  or replayed: each refused to the dead-letter topic with its reason and counted as
  ``unauthorized``; the accepted one is attributed to its operator in its result and
  in the daemon's log. A property test tampers with signed triggers at random.
- No API key or private key (inline or from a file; operators' keys too) appears in the
  daemon's stdout/stderr, /metrics, /readyz, results, dead letters or error texts.
- Kafka over TLS with the daemon's own client configuration (``kafka.ssl``): the daemon
  subprocess reaches the embedded broker only through a TLS-terminating proxy with a
  test CA; configured with another CA it is refused and exits non-zero.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.config import OperatorKey, TriggerSigningSettings
from killswitch.contracts import Alert, Rejection, RejectKind, parse_alert
from killswitch.core.times import format_time
from killswitch.embedded import EmbeddedBroker, free_port
from killswitch.triggers import TriggerVerifier, canonical_bytes, sign_trigger
from tests.support import figures
from tests.support.daemon import Daemons, daemon_config, http_get, write_config
from tests.support.exchange import exchange
from tests.support.tls import Pki, TLSProxy, make_pki
from tests.support.topics import Producer, TopicCollector, alert, create_topics
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

ALICE = Ed25519PrivateKey.generate()
BOB = Ed25519PrivateKey.generate()
MALLORY = Ed25519PrivateKey.generate()  # not on the allowlist
SYMBOLS = ["BTC_USDT", "ETH_USDT"]


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def private_forms(key: Ed25519PrivateKey) -> list[str]:
    """An operator's private key as an operator might keep it: raw base64 and PEM lines."""
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return [base64.b64encode(raw).decode(), raw.hex(), *pem.splitlines()[1:-1]]


def signing_settings() -> dict[str, Any]:
    return {
        "required": True,
        "max_age_s": 120.0,
        "operators": [
            {"name": "alice", "public_key": public_b64(ALICE)},
            {"name": "bob", "public_key": public_b64(BOB)},
        ],
    }


def assert_no_secrets(texts: dict[str, str], secrets: list[str]) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in {where}"


# ------------------------------------------------------------- parser: tampering

VERIFIER = TriggerVerifier(
    TriggerSigningSettings(
        required=True,
        operators=[OperatorKey(name="alice", public_key=public_b64(ALICE))],
    )
)
NOW = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)
BASE_TRIGGER = sign_trigger(
    alert("ops-1", ["mm-1"], scope={"symbols": ["BTC_USDT"]}, created_at=format_time(NOW)),
    "alice",
    ALICE,
)

json_leaf = st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=12)


@st.composite
def tampered(draw: st.DrawFn) -> dict[str, Any]:
    """The signed trigger with one change somewhere (a field, the scope, the signature)."""
    message = copy.deepcopy(BASE_TRIGGER)
    where = draw(st.sampled_from(["field", "scope", "add", "remove", "signature", "operator"]))
    if where == "field":
        key = draw(st.sampled_from([k for k in message if k not in ("signature", "operator")]))
        message[key] = draw(json_leaf | st.lists(json_leaf, max_size=3))
    elif where == "scope":
        key = draw(st.sampled_from(["accounts", "symbols", "sides", "order_ids"]))
        message["scope"][key] = draw(st.lists(json_leaf, max_size=3) | json_leaf)
    elif where == "add":
        message[draw(st.text(min_size=1, max_size=10))] = draw(json_leaf)
    elif where == "remove":
        message.pop(draw(st.sampled_from([k for k in message if k != "signature"])))
    elif where == "signature":
        raw = bytearray(base64.b64decode(message["signature"]))
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] ^= draw(st.integers(1, 255))
        message["signature"] = base64.b64encode(bytes(raw)).decode()
    else:
        message["operator"] = {"name": draw(st.sampled_from(["bob", "Alice", "alice "]))}
    return message


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(message=tampered())
def test_a_tampered_signed_trigger_is_never_accepted(message: dict[str, Any]) -> None:
    figures.add("security: tampered triggers tried")
    unchanged = message["signature"] == BASE_TRIGGER["signature"] and canonical_bytes(
        message
    ) == canonical_bytes(BASE_TRIGGER)
    result = parse_alert(
        json.dumps(message).encode(),
        channel="manual",
        accounts=("mm-1", "mm-2"),
        max_message_bytes=100_000,
        max_order_ids=100,
        now=NOW,
        verifier=VERIFIER,
    )
    if unchanged:  # e.g. a key re-set to the value it had: still the signed message
        assert isinstance(result, Alert)
    else:
        assert isinstance(result, Rejection), message
        assert result.kind in (RejectKind.UNAUTHORIZED, RejectKind.INVALID)


# --------------------------------------------------------- the daemon: triggers


def forged_triggers(now: datetime) -> dict[str, dict[str, Any]]:
    """Manual triggers the daemon must refuse, by what is wrong with them."""

    def trigger(alert_id: str, created: datetime = now) -> dict[str, Any]:
        return alert(
            alert_id,
            ["mm-1"],
            scope={"symbols": ["BTC_USDT"]},
            created_at=format_time(created),
            source="ops-cli",
            operator={"name": "alice"},
        )

    tampered_message = sign_trigger(trigger("forged-tampered"), "alice", ALICE)
    tampered_message["scope"]["symbols"] = ["BTC_USDT", "ETH_USDT"]  # widened after signing
    return {
        "unsigned": trigger("forged-unsigned"),
        "unknown key": sign_trigger(trigger("forged-key"), "alice", MALLORY),
        "unknown operator": sign_trigger(trigger("forged-operator"), "mallory", MALLORY),
        "tampered": tampered_message,
        "stale": sign_trigger(trigger("forged-stale", now - timedelta(minutes=10)), "alice", ALICE),
        "future": sign_trigger(
            trigger("forged-future", now + timedelta(minutes=10)), "alice", ALICE
        ),
    }


async def test_forged_triggers_are_refused_and_no_secret_leaks(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    async with exchange(["mm-1", "mm-2"], SYMBOLS, seed=5) as ex:
        for account in ("mm-1", "mm-2"):
            ex.seed(account, SYMBOLS, 10)
        accounts = ex.account_configs()
        # mm-2 reads its key from a file (the other way to configure it).
        key_file = tmp_path / "mm-2.pem"
        key_file.write_text(accounts[1].pop("private_key"))
        accounts[1]["private_key_file"] = str(key_file)
        config = daemon_config(
            kafka_bootstrap, f"sec{free_port()}", accounts, trigger_signing=signing_settings()
        )
        topics = config["kafka"]["topics"]
        await create_topics(kafka_bootstrap, topics)
        metrics_url = f"http://127.0.0.1:{config['metrics']['port']}"
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", config))
        now = datetime.now(UTC)
        forged = forged_triggers(now)
        valid = sign_trigger(
            alert(
                "ops-valid",
                ["mm-1"],
                scope={"symbols": ["BTC_USDT"]},
                created_at=format_time(now),
                source="ops-cli",
            ),
            "alice",
            ALICE,
        )
        async with (
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            TopicCollector(kafka_bootstrap, topics["dlq"]) as dlq,
            Producer(kafka_bootstrap) as producer,
        ):
            for message in forged.values():
                await producer.send(topics["manual"], message, key="mm-1")
            await producer.send(topics["manual"], valid, key="mm-1")
            await producer.send(topics["manual"], valid, key="mm-1")  # replayed
            # An automatic alert is not signed; mm-2's key is revoked on the exchange,
            # so its result carries the client's error text.
            ex.sim.revoke(ex.api_key("mm-2"))
            await producer.send(topics["alerts"], alert("auto-1", ["mm-2"]), key="mm-2")
            await wait_for(lambda: len(dlq.records) == len(forged) + 1, timeout=30)
            await wait_for(
                lambda: bool(results.finals("ops-valid") and results.finals("auto-1")), timeout=30
            )
            metrics = await http_get(f"{metrics_url}/metrics")
            ready = await http_get(f"{metrics_url}/readyz")
            assert metrics is not None
            assert ready is not None
            daemon.terminate()
            assert await daemon.wait(timeout=30) == 0
            letters = (await dlq.to_end()).json()
            published = await results.to_end()

    # Every forgery refused, with a reason, counted as unauthorized.
    assert {r["kind"] for r in letters} == {"unauthorized"}
    assert all(r["reason"] for r in letters)
    refused_ids = sorted(r["alert_id"] for r in letters)
    assert refused_ids == sorted([m["alert_id"] for m in forged.values()] + ["ops-valid"])
    replay = next(r for r in letters if r["alert_id"] == "ops-valid")
    assert "replay" in replay["reason"]
    unauthorized = (
        f'killswitch_alerts_total{{result="unauthorized",source="manual"}} {len(letters)}.0'
    )
    assert unauthorized in metrics.text
    assert 'killswitch_alerts_total{result="processed",source="manual"} 1.0' in metrics.text
    # Only the valid trigger acted: BTC_USDT of mm-1 is flat, ETH_USDT untouched.
    (result,) = published.finals("ops-valid")
    assert result["status"] == "flat"
    assert result["operator"] == "alice"
    assert ex.open_ids("mm-1", ["BTC_USDT"]) == set()
    assert len(ex.open_ids("mm-1", ["ETH_USDT"])) == 10
    accepted = [r for r in daemon.log_records() if r.get("event") == "trigger accepted"]
    assert [(r["alert_id"], r["operator"]) for r in accepted] == [("ops-valid", "alice")]
    (failed,) = published.finals("auto-1")
    assert failed["status"] == "failed"
    assert "authentication" in failed["reason"]
    # No secret anywhere the daemon wrote.
    secrets = ex.secrets() + private_forms(ALICE) + private_forms(BOB) + private_forms(MALLORY)
    assert_no_secrets(
        {
            "daemon output": daemon.output(),
            "/metrics": metrics.text,
            "/readyz": ready.text,
            "results": json.dumps(published.json()),
            "dead letters": json.dumps(letters),
        },
        secrets,
    )
    figures.add("security: forged triggers refused by the daemon", len(letters))


async def test_configuration_errors_never_echo_key_material(
    daemons: Daemons, tmp_path: Path
) -> None:
    marker = "c2VjcmV0LWtleS1tYXRlcmlhbC1uZXZlci1wcmludC1tZQ"  # looks like base64 key data
    bad_key = f"-----BEGIN PRIVATE KEY-----\n{marker}\n-----END PRIVATE KEY-----\n"
    cases = {  # what the message must name -> the account entry
        "private key": {"id": "mm-1", "api_key": f"api-{marker}", "private_key": bad_key},
        "rate_limit_per_second": {
            "id": "mm-1",
            "api_key": f"api-{marker}",
            "private_key": bad_key,
            "rate_limit_per_second": "fast",
        },
    }
    for named, account in cases.items():
        config = daemon_config("127.0.0.1:1", "bad", [account])
        name = named.replace(" ", "-")
        daemon = daemons.start(write_config(tmp_path / f"{name}.toml", config), name)
        assert await daemon.wait(timeout=30) == 2, daemon.output()
        output = daemon.output()
        assert named in output  # the message names the setting...
        assert marker not in output  # ...never the key


# ------------------------------------------------------------------------ TLS


def tls_options(ca: Path) -> dict[str, Any]:
    return {"security_protocol": "SSL", "ssl_context": ssl.create_default_context(cafile=str(ca))}


@pytest.fixture
async def tls_kafka(tmp_path: Path) -> AsyncIterator[tuple[str, Pki]]:
    """A broker reachable only through a TLS proxy (it advertises the proxy's address)."""
    pki = make_pki(tmp_path / "pki")
    proxy_port = free_port()
    broker = EmbeddedBroker(advertised=f"127.0.0.1:{proxy_port}").start()
    proxy = TLSProxy(pki, ("127.0.0.1", broker.port), proxy_port)
    try:
        await proxy.start()
        yield f"127.0.0.1:{proxy_port}", pki
    finally:
        await proxy.stop()
        broker.stop()


async def test_the_daemon_speaks_tls_to_kafka_and_refuses_a_wrong_ca(
    tls_kafka: tuple[str, Pki], daemons: Daemons, tmp_path: Path
) -> None:
    bootstrap, pki = tls_kafka
    other = make_pki(tmp_path / "other-ca", ca_name="some other CA")
    async with exchange(["mm-1"], SYMBOLS, seed=9) as ex:
        ex.seed("mm-1", SYMBOLS, 5)
        tls = {"security_protocol": "SSL", "ssl": {"cafile": str(pki.ca_cert)}}
        config = daemon_config(bootstrap, "tls", ex.account_configs(), kafka=tls)
        topics = config["kafka"]["topics"]
        # The daemon creates its topics itself (over TLS): nothing is prepared here.
        daemon = daemons.start(write_config(tmp_path / "tls.toml", config), "tls")
        async with Producer(bootstrap, **tls_options(pki.ca_cert)) as producer:
            await producer.send(topics["alerts"], alert("tls-1", ["mm-1"]), key="mm-1")
        async with TopicCollector(
            bootstrap, topics["results"], **tls_options(pki.ca_cert)
        ) as results:
            await wait_for(lambda: bool(results.finals("tls-1")), timeout=40)
            finals = (await results.to_end()).finals("tls-1")
        assert [r["status"] for r in finals] == ["flat"]
        assert ex.open_ids("mm-1") == set()
        daemon.terminate()
        assert await daemon.wait(timeout=30) == 0

        wrong = {"security_protocol": "SSL", "ssl": {"cafile": str(other.ca_cert)}}
        config = daemon_config(
            bootstrap,
            "tls-wrong",
            ex.account_configs(),
            kafka={**wrong, "request_timeout_ms": 3000},
        )
        refused = daemons.start(write_config(tmp_path / "wrong.toml", config), "wrong-ca")
        code = await refused.wait(timeout=60)
    assert code != 0
    assert "daemon failed" in refused.stderr()
    assert_no_secrets({"daemon output": daemons.all_output()}, ex.secrets())
