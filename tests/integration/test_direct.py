"""``killswitch trigger --direct``: the break-glass kill, end to end through the CLI.

The exchange simulator serves real HTTP on loopback; "the broker stopped" is a
bootstrap address where nothing listens. The simulator's books are the truth checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from killswitch.cli import main
from killswitch.commands.status import read_status
from killswitch.config import load_settings
from killswitch.embedded import free_port
from killswitch.simulator import EndpointFaults
from tests.support.daemon import TOPIC_ROLES, daemon_config, write_config
from tests.support.exchange import CANCEL_ENDPOINTS, Exchange, exchange
from tests.support.topics import create_topics

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]
ACCOUNTS = ("mm-1", "mm-2")
SYMBOLS = ("BTC_USDT", "ETH_USDT", "SOL_USDT")


def config_file(
    tmp_path: Path, ex: Exchange, bootstrap: str, tag: str, **direct: Any
) -> tuple[str, Path]:
    audit = tmp_path / "state" / "audit.jsonl"
    settings = daemon_config(
        bootstrap,
        tag,
        ex.account_configs(),
        direct={"audit_file": str(audit), "kafka_connect_timeout_s": 1.0, **direct},
    )
    return str(write_config(tmp_path / f"{tag}.toml", settings)), audit


def nowhere() -> str:
    """A Kafka bootstrap address where no broker listens (the broker is down)."""
    return f"127.0.0.1:{free_port()}"


async def cli(*argv: str) -> int:
    # In a thread: the simulator serves from this test's event loop.
    return await asyncio.to_thread(main, list(argv))


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cancels(ex: Exchange, account: str) -> int:
    return sum(ex.sim.count(ex.api_key(account), endpoint=e) for e in CANCEL_ENDPOINTS)


async def test_direct_kill_with_the_broker_down_ends_flat_and_keeps_an_audit_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS) as ex:
        seeded = ex.seed("mm-1", SYMBOLS, 40)
        other = ex.seed("mm-2", SYMBOLS, 5)
        config, audit = config_file(tmp_path, ex, nowhere(), "down")
        out = tmp_path / "result.json"
        argv = ["trigger", "--direct", "--config", config, "-a", "mm-1", "--operator", "alice"]
        code = await cli(*argv, "-r", "risk desk unreachable", "--out", str(out))
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert ex.open_ids("mm-1") == set()
        assert ex.open_ids("mm-2") == other  # not in scope: untouched
    document = json.loads(out.read_text())
    assert document["via"] == "direct"
    assert document["exit_code"] == 0
    assert document["kafka"]["published"] is False
    assert "not reachable" in document["kafka"]["detail"]
    (result,) = document["results"]
    assert result["status"] == "flat"
    assert result["final"] is True
    assert result["counts"]["sent"] + result["counts"]["already_closed"] == len(seeded)
    assert {o["order_id"] for o in result["orders"]} == seeded
    assert result["operator"] == "alice"
    assert result["trigger_reason"] == "risk desk unreachable"
    # The same result, once, in the audit file; on stdout the summary, not the document.
    (line,) = audit_lines(audit)
    assert line["audit"] == "killswitch.audit/v1"
    assert line["alert_id"] == document["alert_id"]
    assert line["status"] == "flat"
    assert line["counts"] == result["counts"]
    assert audit.stat().st_mode & 0o077 == 0
    assert "results NOT published to Kafka" in printed
    assert printed.splitlines()[0].startswith(f"kill {document['alert_id']} DIRECT")
    assert printed.splitlines()[-1] == f"the results are in {out}"
    assert "\n{" not in printed
    for secret in ex.secrets():
        assert secret not in printed
        assert secret not in audit.read_text()


async def test_direct_kill_prints_its_document_when_the_out_file_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS) as ex:
        seeded = ex.seed("mm-1", SYMBOLS, 4)
        config, _ = config_file(tmp_path, ex, nowhere(), "unwritable")
        out = tmp_path / "no-such-dir" / "result.json"
        argv = ["trigger", "--direct", "--config", config, "-a", "mm-1", "--operator", "alice"]
        code = await cli(*argv, "-r", "desk runaway", "--out", str(out))
        captured = capsys.readouterr()
        assert code == 0, captured.out
        assert ex.open_ids("mm-1") == set()
    assert not out.exists()
    assert f"cannot write {out}" in captured.err
    document = json.loads(captured.out[captured.out.index("\n{") :])
    (result,) = document["results"]
    assert {o["order_id"] for o in result["orders"]} == seeded


async def test_direct_kill_refuses_an_unknown_pair_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS) as ex:
        seeded = ex.seed("mm-1", SYMBOLS, 3)
        config, audit = config_file(tmp_path, ex, nowhere(), "pairs")
        argv = ["trigger", "--direct", "--config", config, "-a", "mm-1", "-r", "x"]
        code = await cli(*argv, "-s", "BTC_USDX", "--operator", "alice")
        printed = capsys.readouterr().out
        assert code == 2
        assert cancels(ex, "mm-1") == 0
        assert ex.sim.count(ex.api_key("mm-1"), endpoint="open_orders") == 0
        assert ex.open_ids("mm-1") == seeded
    assert "refused before any request: unknown pair(s): BTC_USDX" in printed
    assert "BTC_USDT" in printed  # the suggestion
    assert not audit.exists()  # nothing was done: nothing to record


async def test_direct_kill_warnings_are_readable_lines_with_their_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An operator watching a kill that struggles sees why, account and error included
    # (Python's last-resort handler wrote the bare message, once per failed listing).
    async with exchange(ACCOUNTS, SYMBOLS) as ex:
        ex.seed("mm-1", SYMBOLS, 3)
        ex.sim.set_faults(EndpointFaults(error_rate=1.0, error_statuses=(503,)), "exchange_info")
        config, _ = config_file(tmp_path, ex, nowhere(), "warn")
        argv = ["trigger", "--direct", "--config", config, "-a", "mm-1", "-r", "x"]
        code = await cli(*argv, "--operator", "alice", "--deadline", "1")
    warned = [line for line in capsys.readouterr().err.splitlines() if " warning " in line]
    assert code == 1  # failed: no pair list
    assert warned
    assert all("account=mm-1" in line and "error=" in line for line in warned)
    # Removed when the kill ends: nothing is added to the process's logging for good.
    assert not any(type(h).__name__ == "StreamHandler" for h in logging.getLogger().handlers)


async def test_direct_kill_with_latch_and_the_broker_down_says_the_latch_is_not_in_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS) as ex:
        ex.seed("mm-1", SYMBOLS, 5)
        config, _ = config_file(tmp_path, ex, nowhere(), "latch")
        argv = ["trigger", "--direct", "--config", config, "-a", "mm-1", "-r", "x", "--latch"]
        code = await cli(*argv, "--operator", "alice")
        printed = capsys.readouterr().out
        assert ex.open_ids("mm-1") == set()  # the kill itself worked
    assert code == 1
    assert "WARNING: the latch is NOT in force" in printed


async def test_direct_dry_run_lists_every_order_it_would_cancel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS) as ex:
        seeded = ex.seed("mm-1", SYMBOLS, 30)
        config, _ = config_file(tmp_path, ex, nowhere(), "dry")
        out = tmp_path / "dry.json"
        argv = ["trigger", "--direct", "--config", config, "-a", "mm-1", "-r", "x", "--dry-run"]
        code = await cli(*argv, "--operator", "alice", "--out", str(out))
        printed = capsys.readouterr().out
        assert code == 0
        assert cancels(ex, "mm-1") == 0
        assert ex.open_ids("mm-1") == seeded
    assert f"dry run: {len(seeded)} order(s) would be cancelled:" in printed
    assert "... and 40 more (write them all with --out FILE)" in printed
    (result,) = json.loads(out.read_text())["results"]
    assert result["status"] == "dry_run"
    assert {o["order_id"] for o in result["orders"]} == seeded


async def test_two_direct_kills_at_once_both_flat_and_counts_stay_honest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with exchange(ACCOUNTS, SYMBOLS) as ex:
        seeded = ex.seed("mm-1", SYMBOLS, 60)
        config, audit = config_file(tmp_path, ex, nowhere(), "both")
        base = ["trigger", "--direct", "--config", config, "-a", "mm-1", "-r", "x"]
        codes = await asyncio.gather(
            cli(*base, "--operator", "alice", "--out", str(tmp_path / "a.json")),
            cli(*base, "--operator", "bob", "--out", str(tmp_path / "b.json")),
        )
        capsys.readouterr()
        assert ex.open_ids("mm-1") == set()
    assert list(codes) == [0, 0]  # gather gives a list; its stub says a tuple
    results = [json.loads((tmp_path / f).read_text())["results"][0] for f in ("a.json", "b.json")]
    assert [r["status"] for r in results] == ["flat", "flat"]
    # Each order was cancelled once; whoever got there second counts it already_closed.
    sent = sum(r["counts"]["sent"] for r in results)
    assert sent == len(seeded)
    for r in results:
        assert r["counts"]["failed"] == 0
        outcomes = {o["order_id"]: o["outcome"] for o in r["orders"]}
        assert set(outcomes) <= seeded
    sent_ids = [o["order_id"] for r in results for o in r["orders"] if o["outcome"] == "sent"]
    assert sorted(sent_ids) == sorted(seeded)
    assert len(audit_lines(audit)) == 2


async def test_direct_kill_publishes_its_results_and_latch_when_kafka_answers(
    kafka_bootstrap: str, unique_name: Unique, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = unique_name("direct")
    await create_topics(kafka_bootstrap, [f"{role}.{tag}" for role in TOPIC_ROLES])
    async with exchange(ACCOUNTS, SYMBOLS) as ex:
        ex.seed("mm-1", SYMBOLS, 10)
        config, _ = config_file(tmp_path, ex, kafka_bootstrap, tag, kafka_connect_timeout_s=10.0)
        argv = ["trigger", "--direct", "--config", config, "-a", "mm-1", "--latch"]
        code = await cli(*argv, "-r", "limit breach", "--operator", "alice")
        printed = capsys.readouterr().out
        assert code == 0, printed
    assert "results published to Kafka with the latch" in printed
    document = json.loads(printed[printed.index("\n{") :])
    settings = load_settings(Path(config))
    (state,) = await read_status(settings.kafka)
    assert (state.account, state.halted, state.alert_id) == ("mm-1", True, document["alert_id"])
    assert (state.by, state.reason) == ("alice", "limit breach")
    # `killswitch results` reads them back from the results topic.
    code = await cli("results", "--config", config, document["alert_id"], "--json")
    assert code == 0
    (final,) = json.loads(capsys.readouterr().out)["results"]
    assert final["alert_id"] == document["alert_id"]
    assert final["status"] == "flat"
    assert final["trigger_reason"] == "limit breach"
    assert final["operator"] == "alice"
