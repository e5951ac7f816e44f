"""The operator's audit trail against a real daemon (in process), the embedded broker
and the exchange simulator: who latched an account and why, the trigger's reason in
results, one log line per final result, ``results`` read back and followed, ``check``
on the consumer group, and a release of an account that was not halted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from killswitch.cli import main
from killswitch.commands.check import run_checks
from killswitch.commands.prepare import TriggerRequest, prepare_trigger
from killswitch.commands.results import read_results, results_document
from killswitch.commands.status import read_status
from killswitch.commands.trigger import run_trigger, trigger_rules
from killswitch.embedded import free_port
from killswitch.exitcodes import EXIT_NOT_FOUND
from killswitch.render import dry_run_lines
from tests.support.daemon import account_config, write_config
from tests.support.exchange import exchange
from tests.support.inprocess import (
    ACCOUNTS,
    SYMBOLS,
    daemon_in_process,
    daemon_settings,
    prepare_topics,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


def request(action: str = "kill", accounts: tuple[str, ...] = ("mm-1",), **kw: Any) -> Any:
    base: dict[str, Any] = {
        "action": action,
        "accounts": list(accounts),
        "reason": "fat finger on the desk",
        "operator": "alice",
    }
    return TriggerRequest(**(base | kw))


async def test_the_audit_trail_of_a_latched_kill_and_its_release(
    kafka_bootstrap: str, unique_name: Unique, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="killswitch.kafka.consumer")
    async with exchange(ACCOUNTS, seed=7) as ex:
        seeded = ex.seed("mm-1", SYMBOLS, 5)
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        # No daemon in the group yet: check says nobody consumes alerts.
        checks = {
            c.name: c
            for c in await run_checks(
                settings.kafka, settings.accounts, settings.engine.page_size, timeout_s=10
            )
        }
        assert not checks["consumer group"].ok
        assert "no daemon is consuming" in checks["consumer group"].detail
        async with daemon_in_process(settings):
            kill = prepare_trigger(
                request(latch=True), trigger_rules(settings), now=datetime.now(UTC)
            )
            run = await run_trigger(
                settings.kafka, kill, out=io.StringIO(), tty=False, timeout_s=30
            )
            assert run.exit_code == 0
            assert ex.open_ids("mm-1") == set()

            # The state record says who latched the account, why, with which alert, since when.
            (state,) = await read_status(settings.kafka)
            assert (state.account, state.alert_id) == ("mm-1", kill.alert_id)
            assert (state.by, state.reason) == ("alice", "fat finger on the desk")

            # The results, read back: the trigger's reason next to the sweep's own.
            board = await read_results(settings.kafka, kill.alert_id)
            assert board.accounts == ["mm-1"]
            final = board.finals["mm-1"]
            assert final["status"] == "flat"
            assert final["trigger_reason"] == "fat finger on the desk"
            assert final["operator"] == "alice"

            # One structured log line per final result.
            lines = [r for r in caplog.records if r.getMessage() == "final result"]
            (line,) = [r for r in lines if getattr(r, "alert_id", None) == kill.alert_id]
            assert (line.account, line.status, line.operator) == ("mm-1", "flat", "alice")  # type: ignore[attr-defined]
            assert line.sent == len(seeded)  # type: ignore[attr-defined]
            assert line.seconds is not None  # type: ignore[attr-defined]

            # check: one daemon in the group, nothing behind.
            checks = {
                c.name: c
                for c in await run_checks(
                    settings.kafka, settings.accounts, settings.engine.page_size, timeout_s=10
                )
            }
            group = checks["consumer group"]
            assert group.ok
            assert group.detail.startswith("1 member(s)")
            assert checks["consumer lag"].ok

            # A release of the halted account, then of one that was not halted.
            now = datetime.now(UTC)
            release = prepare_trigger(
                request("release", ("mm-1", "mm-2")), trigger_rules(settings), now=now
            )
            out = io.StringIO()
            done = await run_trigger(settings.kafka, release, out=out, tty=False, timeout_s=30)
            assert done.exit_code == EXIT_NOT_FOUND
            assert done.board.finals["mm-1"]["was_halted"] is True
            assert done.board.finals["mm-2"]["was_halted"] is False
            assert "mm-2: was not halted (nothing released)" in out.getvalue()
            assert await read_status(settings.kafka) == []
            # Read back later, its results say it was a release.
            later = await read_results(settings.kafka, release.alert_id)
            assert (later.action, later.exit_code()) == ("release", EXIT_NOT_FOUND)


async def test_results_follow_an_alert_published_without_following(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        ex.seed("mm-1", SYMBOLS, 20)
        ex.seed("mm-2", SYMBOLS, 20)
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        async with daemon_in_process(settings):
            kill = prepare_trigger(
                request(accounts=("mm-1", "mm-2")), trigger_rules(settings), now=datetime.now(UTC)
            )
            published = await run_trigger(
                settings.kafka, kill, out=io.StringIO(), tty=False, timeout_s=30, follow=False
            )
            assert published.published
            board = await read_results(
                settings.kafka, kill.alert_id, accounts=["mm-1", "mm-2"], follow=True, timeout_s=30
            )
            assert board.done
            assert board.exit_code() == 0
            assert {board.finals[a]["status"] for a in ("mm-1", "mm-2")} == {"flat"}
            # Nothing for an alert id nobody used.
            assert (await read_results(settings.kafka, "op-nobody")).rows == {}


async def test_a_dry_run_through_the_daemon_lists_the_orders_it_would_cancel(
    kafka_bootstrap: str, unique_name: Unique
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        seeded = ex.seed("mm-1", SYMBOLS, 15)
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        async with daemon_in_process(settings):
            dry = prepare_trigger(
                request(dry_run=True), trigger_rules(settings), now=datetime.now(UTC)
            )
            run = await run_trigger(settings.kafka, dry, out=io.StringIO(), tty=False, timeout_s=30)
        assert ex.open_ids("mm-1") == seeded  # nothing cancelled
    assert run.exit_code == 0
    lines = dry_run_lines(run.board, limit=1000)
    assert lines[0] == f"dry run: {len(seeded)} order(s) would be cancelled:"
    assert {int(line.split()[1]) for line in lines[2:]} == seeded
    document = results_document(run.board, run.exit_code)
    assert {o["order_id"] for o in document["results"][0]["orders"]} == seeded


async def test_a_direct_kill_while_the_daemon_sweeps_the_same_account_keeps_counts_honest(
    kafka_bootstrap: str, unique_name: Unique, tmp_path: Path
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        seeded = ex.seed("mm-1", SYMBOLS, 300)
        # Slow enough for the direct kill to start while the daemon is still cancelling.
        slow = {"rate_limit_per_second": 100.0, "burst": 5}
        settings = daemon_settings(kafka_bootstrap, unique_name, ex, account_mm_1=slow)
        await prepare_topics(settings)
        accounts = [
            account_config(a, key, pem, ex.server.base_url, **slow)
            for a, (key, pem) in ex.keys.items()
        ]
        config = write_config(
            tmp_path / "direct.toml",
            {
                "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},  # broker "down"
                "accounts": accounts,
                "direct": {"audit_file": str(tmp_path / "audit.jsonl")},
            },
        )
        out = tmp_path / "direct.json"
        async with daemon_in_process(settings):
            kill = prepare_trigger(request(), trigger_rules(settings), now=datetime.now(UTC))
            daemon_run = asyncio.create_task(
                run_trigger(settings.kafka, kill, out=io.StringIO(), tty=False, timeout_s=60)
            )
            await wait_for(lambda: len(ex.cancels("mm-1")) > 0, timeout=30)
            argv = ["trigger", "--direct", "--config", str(config), "-a", "mm-1", "-r", "both"]
            code = await asyncio.to_thread(main, [*argv, "--operator", "bob", "--out", str(out)])
            daemon_result = await daemon_run
        assert ex.open_ids("mm-1") == set()
    assert code == 0
    assert daemon_result.exit_code == 0
    direct = json.loads(out.read_text())["results"][0]
    via_daemon = daemon_result.board.finals["mm-1"]
    assert (direct["status"], via_daemon["status"]) == ("flat", "flat")
    # Each process counts only the answers it got: every order was cancelled once, by
    # one of them; the other one, if it tried too, counts it already_closed.
    sent = direct["counts"]["sent"] + via_daemon["counts"]["sent"]
    assert sent == len(seeded)
    assert direct["counts"]["failed"] == via_daemon["counts"]["failed"] == 0
    by_direct = {o["order_id"] for o in direct["orders"] if o["outcome"] == "sent"}
    by_daemon = {o["order_id"] for o in via_daemon["orders"] if o["outcome"] == "sent"}
    assert by_daemon  # the daemon was sweeping when the direct kill began
    assert not by_direct & by_daemon
    assert by_direct | by_daemon == seeded


async def test_a_direct_latch_is_guarded_by_the_running_daemon(
    kafka_bootstrap: str, unique_name: Unique, tmp_path: Path
) -> None:
    async with exchange(ACCOUNTS, seed=7) as ex:
        ex.seed("mm-1", SYMBOLS, 5)
        settings = daemon_settings(kafka_bootstrap, unique_name, ex)
        await prepare_topics(settings)
        accounts = [
            account_config(a, key, pem, ex.server.base_url) for a, (key, pem) in ex.keys.items()
        ]
        config = write_config(
            tmp_path / "direct.toml",
            {
                "kafka": {
                    "bootstrap_servers": kafka_bootstrap,
                    "topics": settings.kafka.topics.model_dump(),
                },
                "accounts": accounts,
                "direct": {"audit_file": str(tmp_path / "audit.jsonl")},
            },
        )
        async with daemon_in_process(settings) as running:
            argv = ["trigger", "--direct", "--config", str(config), "-a", "mm-1", "--latch"]
            code = await asyncio.to_thread(main, [*argv, "-r", "runaway", "--operator", "bob"])
            assert code == 0
            assert ex.open_ids("mm-1") == set()
            # The daemon read the halt from the state topic and guards the account.
            await wait_for(lambda: "mm-1" in running.daemon.engine.guarded(), timeout=20)
            api_key = ex.keys["mm-1"][0]
            late = set(ex.sim.seed_orders(api_key, "BTC_USDT", 1))
            assert late <= ex.open_ids("mm-1")
            await wait_for(lambda: not late & ex.open_ids("mm-1"), timeout=20)
            (state,) = await read_status(settings.kafka)
            assert (state.by, state.reason) == ("bob", "runaway")
            release = prepare_trigger(
                request("release"), trigger_rules(settings), now=datetime.now(UTC)
            )
            done = await run_trigger(
                settings.kafka, release, out=io.StringIO(), tty=False, timeout_s=30
            )
            assert done.exit_code == 0
            assert done.board.finals["mm-1"]["was_halted"] is True
