"""Operator commands against the embedded broker (and the simulator for ``check``).

The daemon's side is played by :class:`ScriptedDaemon`: it reads the manual topic with
the daemon's own parser and answers with progress and final results (or a dead letter)
as scripted, so these tests pin the CLI's half of the contract. The demo test runs the
CLI's code against the real daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from killswitch.cli import main
from killswitch.commands.check import run_checks
from killswitch.commands.common import OperatorError, describe_group
from killswitch.commands.prepare import TriggerRequest, prepare_trigger
from killswitch.commands.status import read_status
from killswitch.commands.trigger import run_trigger, trigger_rules
from killswitch.config import OperatorKey, Settings, TriggerSigningSettings
from killswitch.contracts import (
    Alert,
    ResultRecord,
    encode_dlq,
    encode_result,
    encode_state,
    parse_alert,
)
from killswitch.core.model import Counts, HaltState, Scope, SweepResult, SweepStatus
from killswitch.core.orders import Side
from killswitch.embedded import free_port
from killswitch.simulator import Simulator, SimulatorServer
from killswitch.simulator.testing import register_test_client
from killswitch.triggers import TriggerVerifier
from tests.support.intake import create_all_topics, make_settings
from tests.support.topics import create_topics, read_to_end
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


def request(accounts: Any = ("mm-1",), **kw: Any) -> TriggerRequest:
    base: dict[str, Any] = {
        "action": "kill",
        "accounts": accounts if accounts == "*" else list(accounts),
        "reason": "test kill",
        "operator": "alice",
    }
    return TriggerRequest(**(base | kw))


@dataclass
class ScriptedDaemon:
    """Answers manual triggers with scripted results, like the daemon would."""

    settings: Settings
    statuses: dict[str, str] = field(default_factory=dict)  # account -> final status
    verifier: TriggerVerifier | None = None
    progress_steps: int = 2
    silent: set[str] = field(default_factory=set)  # accounts that never answer
    in_group: bool = False  # a member of the daemons' consumer group, as a daemon is
    received: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)

    async def run(self) -> None:
        kafka = self.settings.kafka
        consumer = AIOKafkaConsumer(
            kafka.topics.manual,
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=kafka.group_id if self.in_group else None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        )
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await consumer.start()
        await producer.start()
        try:
            async for record in consumer:
                self.received.append((record.key, json.loads(record.value)))
                await self._answer(producer, record)
        finally:
            await consumer.stop()
            await producer.stop()

    async def _answer(self, producer: AIOKafkaProducer, record: Any) -> None:
        topics = self.settings.kafka.topics
        now = datetime.now(UTC)
        parsed = parse_alert(
            record.value,
            channel="manual",
            accounts=[a.id for a in self.settings.accounts],
            max_message_bytes=1_000_000,
            max_order_ids=100,
            now=now,
            verifier=self.verifier,
        )
        if not isinstance(parsed, Alert):
            value = encode_dlq(
                record.value,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                rejection=parsed,
                received_at=now,
            )
            await producer.send_and_wait(topics.dlq, value, key=record.key)
            return
        for account in parsed.target_accounts([a.id for a in self.settings.accounts]):
            if account in self.silent:
                continue
            for step in range(self.progress_steps):
                progress = self._result(parsed, account, SweepStatus.RUNNING, step, now)
                await producer.send_and_wait(topics.results, progress, key=account.encode())
            status = SweepStatus(self.statuses.get(account, self._default(parsed)))
            final = self._result(parsed, account, status, self.progress_steps, now)
            await producer.send_and_wait(topics.results, final, key=account.encode())

    @staticmethod
    def _default(alert: Alert) -> str:
        if alert.action == "release":
            return "released"
        return "dry_run" if alert.dry_run else "flat"

    @staticmethod
    def _result(alert: Alert, account: str, status: SweepStatus, step: int, now: datetime) -> bytes:
        final = status is not SweepStatus.RUNNING
        residual = 3 if status is SweepStatus.RESIDUAL else (0 if final else 40 - 10 * step)
        return encode_result(
            ResultRecord.of(
                SweepResult(
                    alert_id=alert.alert_id,
                    account=account,
                    status=status,
                    final=final,
                    dry_run=alert.dry_run,
                    counts=Counts(sent=10 * step, already_closed=step),
                    residual_open=residual,
                    sweeps=step + 1,
                    received_at=now,
                    first_cancel_at=now,
                    finished_at=now if final else None,
                    reason="deadline passed" if status is SweepStatus.RESIDUAL else None,
                    operator=alert.operator.name if alert.operator else None,
                    source=alert.source,
                )
            )
        )


@contextlib.asynccontextmanager
async def scripted(daemon: ScriptedDaemon) -> AsyncIterator[ScriptedDaemon]:
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def fresh(kafka_bootstrap: str, unique_name: Unique, **kw: Any) -> Settings:
    settings = make_settings(kafka_bootstrap, unique_name, **kw)
    await create_all_topics(settings)
    return settings


# ------------------------------------------------------------------------- trigger


async def test_trigger_publishes_a_valid_alert_and_follows_it_to_flat(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    prepared = prepare_trigger(
        request(["mm-2", "mm-1"], symbols=["BTC_USDT"], latch=True),
        trigger_rules(settings),
        now=datetime.now(UTC),
    )
    out = io.StringIO()
    async with scripted(ScriptedDaemon(settings)) as daemon:
        run = await run_trigger(settings.kafka, prepared, out=out, tty=False, timeout_s=20)
    assert run.exit_code == 0
    assert run.published
    # One message, keyed by the first account, exactly the prepared bytes.
    sent = await read_to_end(kafka_bootstrap, settings.kafka.topics.manual)
    assert len(sent) == 1
    assert daemon.received == list(zip(sent.keys(), sent.json(), strict=True))
    key, message = daemon.received[0]
    assert key == b"mm-2"
    assert message == prepared.message
    assert message["scope"] == {"accounts": ["mm-2", "mm-1"], "symbols": ["BTC_USDT"]}
    assert message["latch"] is True
    assert [r.status for r in run.board.ordered()] == ["flat", "flat"]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(
        f"kill {prepared.alert_id} published to {settings.kafka.topics.manual}"
    )
    assert "latch on" in lines[0]
    assert "unsigned" in lines[0]
    finals = [line for line in lines if "ok: flat" in line]
    assert [line.split()[0] for line in finals] == ["mm-2", "mm-1"]
    assert "[########################] 100%" in finals[0]
    assert lines[-1].startswith(f"kill {prepared.alert_id}: flat on 2/2 account(s)")
    assert "\x1b[" not in out.getvalue()  # not a terminal: no escape codes


async def test_trigger_not_flat_exits_1_and_names_the_account(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    prepared = prepare_trigger(
        request(["mm-1", "arb-1"]), trigger_rules(settings), now=datetime.now(UTC)
    )
    out = io.StringIO()
    async with scripted(ScriptedDaemon(settings, statuses={"arb-1": "residual"})):
        run = await run_trigger(settings.kafka, prepared, out=out, tty=False, timeout_s=20)
    assert run.exit_code == 1
    assert run.board.rows["mm-1"].status == "flat"
    assert run.board.rows["arb-1"].status == "residual"
    tail = out.getvalue().splitlines()[-2:]
    assert tail[0].startswith(f"kill FAILED {prepared.alert_id}: flat on 1/2")
    assert tail[1] == "  arb-1: NOT OK: residual: 3 still open (deadline passed) in 0.00s"


async def test_trigger_all_accounts_and_dry_run(kafka_bootstrap: str, unique_name: Unique) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    prepared = prepare_trigger(
        request("*", dry_run=True), trigger_rules(settings), now=datetime.now(UTC)
    )
    out = io.StringIO()
    async with scripted(ScriptedDaemon(settings)) as daemon:
        run = await run_trigger(settings.kafka, prepared, out=out, tty=False, timeout_s=20)
    assert run.exit_code == 0
    assert daemon.received[0][0] == b"*"
    assert sorted(run.board.rows) == ["arb-1", "mm-1", "mm-2"]
    assert {r.status for r in run.board.rows.values()} == {"dry_run"}
    assert "DRY RUN" in out.getvalue().splitlines()[0]


async def test_a_refused_trigger_is_reported_from_the_dead_letter_topic(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    # The daemon requires signatures; this operator's configuration does not know it.
    settings = await fresh(kafka_bootstrap, unique_name)
    verifier = TriggerVerifier(
        TriggerSigningSettings(
            required=True, operators=[OperatorKey(name="alice", public_key="A" * 43 + "=")]
        )
    )
    prepared = prepare_trigger(
        request(["mm-1", "mm-2"]), trigger_rules(settings), now=datetime.now(UTC)
    )
    out = io.StringIO()
    async with scripted(ScriptedDaemon(settings, verifier=verifier)):
        run = await run_trigger(settings.kafka, prepared, out=out, tty=False, timeout_s=20)
    assert run.exit_code == 2  # refused: the dead letter says why
    assert {r.status for r in run.board.rows.values()} == {"refused"}
    assert "unauthorized: signature missing" in (run.board.rows["mm-1"].reason or "")
    assert run.elapsed_s < 20  # answered by the dead letter, not by the timeout
    assert "NOT OK: refused (unauthorized: signature missing" in out.getvalue()


async def test_no_final_result_times_out(kafka_bootstrap: str, unique_name: Unique) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    prepared = prepare_trigger(
        request(["mm-1", "mm-2"]), trigger_rules(settings), now=datetime.now(UTC)
    )
    out = io.StringIO()
    async with scripted(ScriptedDaemon(settings, silent={"mm-2"})):
        run = await run_trigger(settings.kafka, prepared, out=out, tty=False, timeout_s=1.5)
    assert run.exit_code == 1
    assert run.board.rows["mm-1"].status == "flat"
    assert run.board.rows["mm-2"].status == "timed_out"
    assert out.getvalue().splitlines()[-1] == "  mm-2: NOT OK: no final result before the timeout"


async def test_terminal_output_is_redrawn_in_place(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    prepared = prepare_trigger(
        request(["mm-1", "mm-2"]), trigger_rules(settings), now=datetime.now(UTC)
    )
    out = io.StringIO()
    async with scripted(ScriptedDaemon(settings, progress_steps=3)):
        run = await run_trigger(settings.kafka, prepared, out=out, tty=True, timeout_s=20)
    assert run.exit_code == 0
    text = out.getvalue()
    frames = text.count("\x1b[2F")  # each redraw moves up over the two account lines
    assert frames >= 1
    last_frame = text.rsplit("\x1b[2F", 1)[1]
    assert re.findall(r"\x1b\[2K(mm-\d)", last_frame) == ["mm-1", "mm-2"]
    assert last_frame.count("ok: flat") == 2


async def test_release_follows_to_released(kafka_bootstrap: str, unique_name: Unique) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    prepared = prepare_trigger(
        request(["arb-1"], action="release"), trigger_rules(settings), now=datetime.now(UTC)
    )
    assert prepared.alert_id.startswith("rel-")
    out = io.StringIO()
    async with scripted(ScriptedDaemon(settings)) as daemon:
        run = await run_trigger(settings.kafka, prepared, out=out, tty=False, timeout_s=20)
    assert run.exit_code == 0
    assert daemon.received[0][1]["action"] == "release"
    assert out.getvalue().splitlines()[-1].startswith(f"release {prepared.alert_id}: released")


async def test_missing_topics_and_unreachable_kafka_are_clear_errors(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)  # topics never created
    prepared = prepare_trigger(request(), trigger_rules(settings), now=datetime.now(UTC))
    with pytest.raises(OperatorError, match=r"manual topic .* does not exist"):
        await run_trigger(settings.kafka, prepared, out=io.StringIO(), tty=False, timeout_s=5)
    nowhere = make_settings(f"127.0.0.1:{free_port()}", unique_name)
    with pytest.raises(OperatorError, match="not reachable"):
        await run_trigger(nowhere.kafka, prepared, out=io.StringIO(), tty=False, timeout_s=5)


# ----------------------------------------------------------------- through the CLI


def write_config(path: Path, settings: Settings, **extra: str) -> Path:
    t = settings.kafka.topics
    accounts = "".join(
        f'[[accounts]]\nid = "{a.id}"\napi_key = "k-{a.id}"\nprivate_key = "unused"\n'
        for a in settings.accounts
    )
    signing = extra.get("signing", "")
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{settings.kafka.bootstrap_servers}"\n'
        f'group_id = "{settings.kafka.group_id}"\n'
        f"[kafka.topics]\n"
        f'alerts = "{t.alerts}"\nmanual = "{t.manual}"\nheartbeats = "{t.heartbeats}"\n'
        f'results = "{t.results}"\nstate = "{t.state}"\ndlq = "{t.dlq}"\n'
        f"[engine]\ndefault_deadline_s = 5.0\n{signing}{accounts}"
    )
    return path


async def test_cli_trigger_exit_codes(
    kafka_bootstrap: str,
    unique_name: Unique,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    config = str(write_config(tmp_path / "ks.toml", settings))
    base = ["trigger", "--config", config, "--operator", "alice", "-r", "cli test"]
    async with scripted(ScriptedDaemon(settings, statuses={"mm-2": "failed"})):
        assert await asyncio.to_thread(main, [*base, "-a", "mm-1", "--side", "sell"]) == 0
        ok = capsys.readouterr().out
        assert await asyncio.to_thread(main, [*base, "-a", "mm-1,mm-2"]) == 1
        failed = capsys.readouterr().out
        # Bad usage never publishes.
        assert await asyncio.to_thread(main, [*base, "-a", "nobody"]) == 2
        assert "unknown account id(s): 'nobody'" in capsys.readouterr().err
        assert await asyncio.to_thread(main, [*base, "-a", "mm-1", "--no-follow"]) == 0
        assert "published" in capsys.readouterr().out
    assert "mm-1: flat" not in ok
    assert re.search(r"kill op-\S+: flat on 1/1", ok)
    assert "  mm-2: NOT OK: failed" in failed


async def test_cli_trigger_says_when_no_daemon_is_in_the_group(
    kafka_bootstrap: str,
    unique_name: Unique,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    config = str(write_config(tmp_path / "ks.toml", settings))
    argv = ["trigger", "--config", config, "--operator", "alice", "-r", "t", "-a", "mm-1"]
    # Nothing consumes the manual topic: said at once, with the way to kill from here.
    assert await asyncio.to_thread(main, [*argv, "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert f"no daemon is in consumer group {settings.kafka.group_id!r} now" in err
    assert "'killswitch trigger --direct' (same options)" in err
    assert "was published and a daemon that starts runs it" in err
    # A daemon in the group (once it has joined): no such warning.
    async with scripted(ScriptedDaemon(settings, in_group=True)):
        await wait_for_members(settings)
        assert await asyncio.to_thread(main, argv) == 0
    err = capsys.readouterr().err
    assert "no daemon" not in err


async def wait_for_members(settings: Settings, timeout_s: float = 30.0) -> None:
    """Until the daemons' consumer group has a member (a join takes seconds)."""
    await wait_until(lambda: describe_group(settings.kafka), lambda g: bool(g[1]), timeout_s)


async def test_cli_trigger_out_file_and_results_read_back(
    kafka_bootstrap: str,
    unique_name: Unique,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    config = str(write_config(tmp_path / "ks.toml", settings))
    out = tmp_path / "out.json"
    base = ["trigger", "--config", config, "--operator", "alice", "-r", "cli test"]
    async with scripted(ScriptedDaemon(settings, statuses={"mm-2": "residual"})):
        argv = [*base, "-a", "mm-1,mm-2", "--out", str(out)]
        assert await asyncio.to_thread(main, argv) == 1
        capsys.readouterr()
    document = json.loads(out.read_text())
    assert document["via"] == "kafka"
    assert document["exit_code"] == 1
    assert [(r["account"], r["status"]) for r in document["results"]] == [
        ("mm-1", "flat"),
        ("mm-2", "residual"),
    ]
    alert_id = document["alert_id"]
    # Read back later, as after Ctrl-C: the same verdict and exit code.
    assert await asyncio.to_thread(main, ["results", "--config", config, alert_id]) == 1
    text = capsys.readouterr().out
    assert f"kill FAILED {alert_id}: flat on 1/2" in text
    assert "  mm-2: NOT OK: residual: 3 still open (deadline passed)" in text
    assert await asyncio.to_thread(main, ["results", "--config", config, "op-none"]) == 1
    assert "no result for op-none" in capsys.readouterr().err
    # --audit-file belongs to --direct.
    argv = [*base, "-a", "mm-1", "--audit-file", str(tmp_path / "a.jsonl")]
    assert await asyncio.to_thread(main, argv) == 2
    assert "--direct only" in capsys.readouterr().err


async def test_cli_trigger_with_a_signing_key(
    kafka_bootstrap: str,
    unique_name: Unique,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    key = tmp_path / "alice.pem"
    assert main(["keygen", "--ed25519", "--out", str(key)]) == 0
    public = re.search(r'public_key = "([^"]+)"', capsys.readouterr().out)
    assert public is not None
    signing = (
        "[trigger_signing]\nrequired = true\n"
        f'[[trigger_signing.operators]]\nname = "alice"\npublic_key = "{public.group(1)}"\n'
    )
    config = str(write_config(tmp_path / "ks.toml", settings, signing=signing))
    verifier = TriggerVerifier(
        TriggerSigningSettings(
            required=True, operators=[OperatorKey(name="alice", public_key=public.group(1))]
        )
    )
    base = ["trigger", "--config", config, "-a", "mm-1", "-r", "signed"]
    async with scripted(ScriptedDaemon(settings, verifier=verifier)):
        # Unsigned while the configuration requires signing: refused before publishing.
        assert await asyncio.to_thread(main, [*base, "--operator", "alice"]) == 2
        assert "--signing-key" in capsys.readouterr().err
        argv = [*base, "--operator", "alice", "--signing-key", str(key)]
        assert await asyncio.to_thread(main, argv) == 0
        assert "signed" in capsys.readouterr().out
        sent = (await read_to_end(kafka_bootstrap, settings.kafka.topics.manual)).json()
        assert len(sent) == 1  # the unsigned one was never published
        assert sent[0]["signature"]


# ------------------------------------------------------------------------- status


async def test_status_reads_the_state_topic_to_its_end(
    kafka_bootstrap: str,
    unique_name: Unique,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = await fresh(kafka_bootstrap, unique_name)
    topic = settings.kafka.topics.state
    since = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)
    scope = Scope(symbols=frozenset({"BTC_USDT"}), sides=frozenset({Side.BUY}))
    records = [
        (
            b"mm-1",
            encode_state(HaltState("mm-1", True, "risk-1", since, scope, "var-monitor", "VaR")),
        ),
        (b"mm-2", encode_state(HaltState("mm-2", True, "risk-2", since, Scope()))),
        (b"mm-2", encode_state(HaltState("mm-2", False, "rel-2", since, Scope()))),
        (b"arb-1", encode_state(HaltState("arb-1", True, "risk-3", since, Scope()))),
        (b"arb-1", None),  # tombstone
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
    states = await read_status(settings.kafka)
    assert [(s.account, s.alert_id, s.scope) for s in states] == [("mm-1", "risk-1", scope)]

    config = str(write_config(tmp_path / "ks.toml", settings))
    assert await asyncio.to_thread(main, ["status", "--config", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "halted": [
            {
                "account": "mm-1",
                "halted": True,
                "alert_id": "risk-1",
                "since": "2026-11-24T01:02:03.000Z",
                "scope": {"symbols": ["BTC_USDT"], "sides": ["BUY"], "order_ids": None},
                "by": "var-monitor",
                "reason": "VaR",
            }
        ]
    }
    assert await asyncio.to_thread(main, ["status", "--config", config]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "1 halted account(s):"
    assert table[1].split() == ["ACCOUNT", "SINCE", "FOR", "ALERT", "BY", "SCOPE", "REASON"]
    assert table[2].split()[0] == "mm-1"
    assert table[2].endswith("risk-1  var-monitor  BTC_USDT; BUY  VaR")


async def test_status_without_a_state_topic(
    kafka_bootstrap: str,
    unique_name: Unique,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(kafka_bootstrap, unique_name)
    with pytest.raises(OperatorError, match="state topic"):
        await read_status(settings.kafka)
    config = str(write_config(tmp_path / "ks.toml", settings))
    assert await asyncio.to_thread(main, ["status", "--config", config]) == 1
    assert "does not exist" in capsys.readouterr().err


# -------------------------------------------------------------------------- check


@pytest.mark.parametrize("public_auth", [False, True])
async def test_check_passes_and_fails_per_account(
    kafka_bootstrap: str,
    unique_name: Unique,
    capsys: pytest.CaptureFixture[str],
    public_auth: bool,
) -> None:
    sim = Simulator(seed=1)
    # True: an exchange that wants even its public endpoints signed; a working key is
    # still a working key there.
    sim.public_auth = public_auth
    keys = {a: register_test_client(sim, name=a) for a in ("mm-1", "mm-2", "arb-1")}
    sim.seed_orders(keys["mm-1"][0], sim.symbols[0], 3)
    sim.revoke(keys["mm-2"][0])
    async with SimulatorServer(sim) as server:
        accounts = [
            {
                "id": a,
                "api_key": api_key,
                "private_key": pem.decode(),
                "base_url": server.base_url,
                "backoff_base_s": 0.01,
            }
            for a, (api_key, pem) in keys.items()
        ]
        # arb-1 points at a port where nothing listens
        accounts[2]["base_url"] = f"http://127.0.0.1:{free_port()}"
        settings = make_settings(kafka_bootstrap, unique_name)
        settings = Settings(
            kafka=settings.kafka.model_dump(), accounts=accounts, engine={"page_size": 10}
        )
        t = settings.kafka.topics
        await create_topics(kafka_bootstrap, [t.alerts, t.manual, t.heartbeats, t.results, t.state])
        checks = await run_checks(
            settings.kafka, settings.accounts, settings.engine.page_size, timeout_s=5
        )
    by = {(c.name, c.target.split()[0]): c for c in checks}
    assert by[("kafka reachable", kafka_bootstrap)].ok
    assert all(by[("topic present", n)].ok for n in (t.alerts, t.manual, t.results, t.state))
    assert not by[("topic present", t.dlq)].ok  # not created
    # No daemon ever joined: the group has no member and no committed offset, and the
    # lag row says so rather than "ok" for the empty topics.
    group = settings.kafka.group_id
    assert not by[("consumer group", group)].ok
    lag = by[("consumer lag", group)]
    assert not lag.ok
    assert lag.detail == (
        f"records behind: {t.alerts} 0 (nothing committed), {t.manual} 0 (nothing committed); "
        "counted from the earliest offset where nothing is committed; no member is reading them"
    )
    assert by[("exchange reachable", "mm-1")].ok
    assert by[("key accepted", "mm-1")].ok
    first = sim.symbols[0]
    assert by[("key accepted", "mm-1")].detail == (
        f"open orders on {first} answered (3 on the first page)"
    )
    assert by[("exchange reachable", "mm-2")].ok  # public endpoints answer a revoked key
    assert not by[("key accepted", "mm-2")].ok
    assert "refused" in by[("key accepted", "mm-2")].detail
    assert not by[("exchange reachable", "arb-1")].ok
    assert not by[("key accepted", "arb-1")].ok
    # Read-only: nothing was cancelled or created.
    assert len(sim.open_order_ids(keys["mm-1"][0])) == 3
    for api_key, _ in keys.values():
        for endpoint in ("cancel", "cancel_batch", "cancel_all", "create_order"):
            assert sim.count(api_key, endpoint=endpoint) == 0
    # No secret in what an operator sees.
    text = "\n".join(f"{c.name} {c.target} {c.detail}" for c in checks)
    for api_key, pem in keys.values():
        assert api_key not in text
        assert pem.decode().splitlines()[1] not in text


async def test_check_with_kafka_down(unique_name: Unique) -> None:
    settings = make_settings(f"127.0.0.1:{free_port()}", unique_name)
    settings = Settings(
        kafka=settings.kafka.model_dump(),
        accounts=[
            {
                "id": "mm-1",
                "api_key": "k",
                "private_key": "not a key",
                "base_url": f"http://127.0.0.1:{free_port()}",
            }
        ],
    )
    checks = await run_checks(
        settings.kafka, settings.accounts, settings.engine.page_size, timeout_s=3
    )
    assert not any(c.ok for c in checks)
    assert checks[0].name == "kafka reachable"
    assert "not reachable" in checks[0].detail
    key = next(c for c in checks if c.name == "key accepted")
    assert "private key" in key.detail
