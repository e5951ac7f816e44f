"""Operator commands, pure parts: the command line, building and signing a trigger, keys."""

from __future__ import annotations

import base64
import json
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from killswitch.cli import build_parser, main
from killswitch.commands.common import UsageError
from killswitch.commands.operator_keys import load_operator_key, public_key_b64
from killswitch.commands.prepare import (
    TriggerRequest,
    alert_message,
    message_key,
    new_alert_id,
    operator_name,
    prepare_trigger,
    request_from_args,
)
from killswitch.commands.trigger import trigger_rules
from killswitch.config import Settings
from killswitch.contracts import ALERT_ID_RE, parse_alert
from killswitch.triggers import TriggerVerifier, load_public_key

NOW = datetime(2026, 11, 24, 1, 2, 3, 456_000, tzinfo=UTC)
ACCOUNTS = ["mm-1", "mm-2", "arb-1"]
ALICE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def settings(**overrides: Any) -> Settings:
    accounts = [{"id": a, "api_key": f"key-{a}", "private_key": "unused"} for a in ACCOUNTS]
    return Settings(accounts=accounts, **overrides)


def signing_settings(required: bool = True) -> Settings:
    operators = [{"name": "alice", "public_key": public_key_b64(ALICE)}]
    return settings(trigger_signing={"required": required, "operators": operators})


def parse(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


def request(**kw: Any) -> TriggerRequest:
    base: dict[str, Any] = {
        "action": "kill",
        "accounts": ["mm-1"],
        "reason": "VaR limit breached",
        "operator": "alice",
    }
    return TriggerRequest(**(base | kw))


# ------------------------------------------------------------------- command line


def test_trigger_command_line_becomes_a_request() -> None:
    args = parse(
        "trigger",
        "-a",
        "mm-1,mm-2",
        "--account",
        "mm-1",
        "-s",
        "BTC_USDT",
        "--symbol",
        "ETH_USDT,BTC_USDT",
        "--side",
        "buy",
        "--order-id",
        "5000000001,5000000002",
        "--reason",
        "fat finger",
        "--latch",
        "--dry-run",
        "--deadline",
        "12.5",
        "--operator",
        "alice",
        "--alert-id",
        "op-x",
    )
    assert request_from_args(args, "kill") == TriggerRequest(
        action="kill",
        accounts=["mm-1", "mm-2"],
        reason="fat finger",
        operator="alice",
        symbols=["BTC_USDT", "ETH_USDT"],
        sides=["BUY"],
        order_ids=[5000000001, 5000000002],
        latch=True,
        dry_run=True,
        deadline_s=12.5,
        alert_id="op-x",
    )


def test_release_command_line() -> None:
    args = parse("release", "--all", "--operator", "bob")
    req = request_from_args(args, "release")
    assert req.accounts == "*"
    assert req.action == "release"
    assert req.reason == "released by operator"
    assert (req.symbols, req.sides, req.order_ids, req.latch) == ([], [], [], False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trigger", "-r", "x", "--operator", "a"], "name the accounts"),
        (["trigger", "-r", "x", "--all", "-a", "mm-1", "--operator", "a"], "not both"),
        (["trigger", "-r", "x", "-a", "mm-1", "--order-id", "12x", "--operator", "a"], "12x"),
        (["trigger", "-r", "x", "-a", "mm-1", "--order-id", "0", "--operator", "a"], "positive"),
        (["trigger", "-r", "x", "-a", "mm-1", "--deadline", "0", "--operator", "a"], "deadline"),
        (["trigger", "-r", "x", "-a", "mm-1", "--timeout", "-1", "--operator", "a"], "timeout"),
        # An option given with nothing in it ("$PAIR" unset) must not widen the kill.
        (["trigger", "-r", "x", "-a", "mm-1", "-s", "", "--operator", "a"], "--symbol"),
        (["trigger", "-r", "x", "-a", "mm-1", "-s", " , ", "--operator", "a"], "--symbol"),
        (["trigger", "-r", "x", "-a", "mm-1", "--order-id", "", "--operator", "a"], "--order-id"),
        # A malformed pair is named by its option, not by the message's field.
        (
            ["trigger", "-r", "x", "-a", "mm-1", "-s", "BTC USDT", "--operator", "a"],
            r"--symbol 'BTC USDT': not a pair name",
        ),
        (["trigger", "-r", "x", "-a", "", "--operator", "a"], "--account"),
        (["trigger", "-r", "x", "--all", "-a", "", "--operator", "a"], "--account"),
        (["trigger", "-r", " ", "--all", "--operator", "a"], "--reason"),
    ],
)
def test_contradictory_command_lines_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        request_from_args(parse(*argv), "kill")


def test_reason_is_required_for_a_kill(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("trigger", "-a", "mm-1")
    assert exc.value.code == 2
    assert "--reason" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "environ", "expected"),
    [
        ("alice", {"KILLSWITCH_OPERATOR": "bob"}, "alice"),
        (None, {"KILLSWITCH_OPERATOR": "bob"}, "bob"),
        (None, {"KILLSWITCH_OPERATOR": ""}, None),  # falls back to the login name
    ],
)
def test_operator_name(given: str | None, environ: dict[str, str], expected: str | None) -> None:
    name = operator_name(given, environ)
    assert name == expected if expected is not None else name


@pytest.mark.parametrize("given", ["", "  "])
def test_an_operator_given_empty_is_refused_not_replaced_by_the_login_name(given: str) -> None:
    with pytest.raises(UsageError, match="--operator '': empty value"):
        operator_name(given, {"KILLSWITCH_OPERATOR": "bob"})


# ------------------------------------------------------------------ the message


def test_alert_message_has_the_contract_shape() -> None:
    req = request(symbols=["BTC_USDT"], sides=["BUY"], order_ids=[7], latch=True, deadline_s=5)
    assert alert_message(req, alert_id="op-1", now=NOW) == {
        "schema": "killswitch.alert/v1",
        "alert_id": "op-1",
        "action": "kill",
        "source": "operator-cli",
        "reason": "VaR limit breached",
        "scope": {
            "accounts": ["mm-1"],
            "symbols": ["BTC_USDT"],
            "sides": ["BUY"],
            "order_ids": [7],
        },
        "latch": True,
        "dry_run": False,
        "created_at": "2026-11-24T01:02:03.456Z",
        "expires_at": None,
        "operator": {"name": "alice"},
        "deadline_s": 5,
    }
    # Narrowing keys are omitted (meaning "all"), never sent as empty lists.
    assert alert_message(request(), alert_id="op-1", now=NOW)["scope"] == {"accounts": ["mm-1"]}


def test_new_alert_ids_are_valid_and_distinct() -> None:
    ids = {new_alert_id("kill", NOW) for _ in range(50)}
    assert len(ids) == 50
    assert all(re.match(ALERT_ID_RE, i) for i in ids)
    assert new_alert_id("kill", NOW, "abcd") == "op-20261124T010203-abcd"
    assert new_alert_id("release", NOW, "abcd") == "rel-20261124T010203-abcd"


@pytest.mark.parametrize(
    ("accounts", "key"), [(["mm-2"], b"mm-2"), (["arb-1", "mm-1"], b"arb-1"), ("*", b"*")]
)
def test_message_key(accounts: Any, key: bytes) -> None:
    assert message_key(accounts) == key


def test_prepared_trigger_is_what_the_daemon_accepts() -> None:
    prepared = prepare_trigger(
        request(accounts=["mm-2", "mm-1"]), trigger_rules(settings()), now=NOW
    )
    assert prepared.accounts == ["mm-2", "mm-1"]
    assert prepared.key == b"mm-2"
    assert not prepared.signed
    assert json.loads(prepared.value) == prepared.message
    parsed = parse_alert(
        prepared.value,
        channel="manual",
        accounts=ACCOUNTS,
        max_message_bytes=1_000_000,
        max_order_ids=10,
        now=NOW,
    )
    assert not hasattr(parsed, "kind"), parsed
    assert re.match(ALERT_ID_RE, prepared.alert_id)


def test_all_accounts_waits_for_every_configured_account() -> None:
    prepared = prepare_trigger(request(accounts="*"), trigger_rules(settings()), now=NOW)
    assert prepared.message["scope"]["accounts"] == "*"
    assert prepared.accounts == ACCOUNTS
    assert prepared.key == b"*"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"accounts": ["nobody"]}, "unknown account id"),
        ({"symbols": ["BTC USDT"]}, "scope.symbols"),
        ({"alert_id": "has space"}, "alert_id"),
        ({"reason": "x" * 5000}, "reason"),
        ({"order_ids": list(range(1, 12))}, "at most 10"),
    ],
)
def test_triggers_the_daemon_would_refuse_are_usage_errors(
    kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        prepare_trigger(
            request(**kw), trigger_rules(settings(intake={"max_order_ids": 10})), now=NOW
        )


@pytest.mark.parametrize(
    ("typed", "meant"), [("MM-1", "'mm-1'"), ("mm1", "'mm-1'"), ("arb_1", "'arb-1'")]
)
def test_a_mistyped_account_is_refused_with_what_was_meant(typed: str, meant: str) -> None:
    with pytest.raises(UsageError) as refused:
        prepare_trigger(request(accounts=["mm-2", typed]), trigger_rules(settings()), now=NOW)
    text = str(refused.value)
    assert f"unknown account id(s): {typed!r} (did you mean {meant}?)" in text
    assert text.endswith("the configuration has: mm-1, mm-2, arb-1")


def test_an_account_like_none_configured_is_refused_with_the_ids_there_are() -> None:
    with pytest.raises(UsageError, match=r"'zzz-9'; the configuration has: mm-1, mm-2, arb-1$"):
        prepare_trigger(request(accounts=["zzz-9"]), trigger_rules(settings()), now=NOW)


def test_signed_trigger_verifies_against_the_allowlist() -> None:
    conf = signing_settings()
    prepared = prepare_trigger(request(), trigger_rules(conf), now=NOW, signing_key=ALICE)
    assert prepared.signed
    assert prepared.message["operator"] == {"name": "alice"}
    verifier = TriggerVerifier(conf.trigger_signing)
    assert verifier.verify(prepared.message, "alice", NOW, now=NOW) is None
    assert json.loads(prepared.value) == prepared.message


def test_unsigned_trigger_when_signing_is_required() -> None:
    with pytest.raises(UsageError, match="--signing-key"):
        prepare_trigger(request(), trigger_rules(signing_settings()), now=NOW)


def test_operator_not_on_the_allowlist_or_wrong_key() -> None:
    with pytest.raises(UsageError, match="not on the signing allowlist"):
        prepare_trigger(
            request(operator="mallory"),
            trigger_rules(signing_settings()),
            now=NOW,
            signing_key=ALICE,
        )
    other = Ed25519PrivateKey.generate()
    with pytest.raises(UsageError, match="does not verify"):
        prepare_trigger(request(), trigger_rules(signing_settings()), now=NOW, signing_key=other)


def test_signing_when_not_required_still_signs() -> None:
    prepared = prepare_trigger(request(), trigger_rules(settings()), now=NOW, signing_key=ALICE)
    assert prepared.signed


# ----------------------------------------------------------------------- keys


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_load_operator_key_pem_and_openssh(tmp_path: Path) -> None:
    pem = ALICE.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    ssh = ALICE.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    for name, data in (("a.pem", pem), ("id_ed25519", ssh)):
        key = load_operator_key(write(tmp_path / name, data))
        assert public_key_b64(key) == public_key_b64(ALICE)


def test_load_encrypted_operator_key(tmp_path: Path) -> None:
    data = ALICE.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"correct horse")
    )
    path = write(tmp_path / "enc.pem", data)
    assert public_key_b64(load_operator_key(path, "correct horse")) == public_key_b64(ALICE)
    with pytest.raises(UsageError, match="KILLSWITCH_OPERATOR_KEY_PASSPHRASE"):
        load_operator_key(path)
    with pytest.raises(UsageError, match="wrong passphrase"):
        load_operator_key(path, "wrong")


def test_unusable_operator_keys(tmp_path: Path) -> None:
    ec_pem = generate_private_key(SECP256R1()).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    secret_text = (
        b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n"
    )
    cases = [
        (tmp_path / "missing.pem", "No such file"),
        (write(tmp_path / "ec.pem", ec_pem), "not an Ed25519 key"),
        (write(tmp_path / "junk.pem", secret_text), "not a readable private key"),
    ]
    for path, message in cases:
        with pytest.raises(UsageError, match=message) as exc:
            load_operator_key(path)
        assert "c2VjcmV0" not in str(exc.value)


def test_keygen_ed25519(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ops" / "alice.pem"
    assert main(["keygen", "--ed25519", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    printed = capsys.readouterr().out
    public = re.search(r'public_key = "([^"]+)"', printed)
    assert public is not None
    key = load_operator_key(out)
    assert public.group(1) == public_key_b64(key)
    load_public_key(public.group(1))  # what the daemon's allowlist accepts
    assert base64.b64encode(out.read_bytes()).decode() not in printed
    assert "PRIVATE" not in printed
    # No overwrite without --force.
    assert main(["keygen", "--ed25519", "--out", str(out)]) == 2
    assert main(["keygen", "--ed25519", "--out", str(out), "--force"]) == 0
    assert public_key_b64(load_operator_key(out)) != public.group(1)


def test_group_members_are_read_from_describe_groups_answers() -> None:
    from types import SimpleNamespace

    from killswitch.commands.common import _group_members

    members = [("m-1", "killswitch", "/10.0.0.7", b"", b""), ("m-2", "", "", b"", b"")]
    answer = SimpleNamespace(groups=[(0, "g", "Stable", "consumer", "range", members)])
    assert _group_members([answer]) == ("Stable", ["killswitch@10.0.0.7", "m-2"])
    failed = SimpleNamespace(groups=[(16, "g", "", "", "", [])])
    assert _group_members([failed]) == ("error 16", [])
    assert _group_members([]) == ("unknown", [])
