"""Halts published again after the state topic lost them: the decision (pure), the
republisher's ownership and pending rules (with a stand-in engine), and the engine's
ordering of a republished halt against a release."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from killswitch.core.model import HaltState, Scope
from killswitch.core.orders import Side
from killswitch.core.republish import needs_republish
from killswitch.engine import Engine
from killswitch.kafka.republish import HaltRepublisher
from tests.support.engine import ACCOUNT, Engines, FakeExchange, request, settings
from tests.support.waiting import wait_for

T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
BTC = Scope(symbols=frozenset({"BTC_USDT"}))


def halt(account: str = "mm-1", since: datetime = T0, scope: Scope | None = None) -> HaltState:
    return HaltState(account, True, "latch-1", since, scope or Scope(), by="ops", reason="why")


def release(account: str = "mm-1", since: datetime = T0) -> HaltState:
    return HaltState(account, False, "release-1", since, Scope(), by="ops")


# ------------------------------------------------------------------ the decision


def test_a_halt_the_topic_lacks_is_published_again() -> None:
    assert needs_republish(halt(), None)


def test_the_halts_own_record_is_left_alone() -> None:
    assert not needs_republish(halt(), halt())


def test_a_newer_release_is_never_overwritten() -> None:
    assert not needs_republish(halt(), release(since=T0 + timedelta(seconds=1)))
    assert not needs_republish(halt(), release(since=T0))


def test_a_newer_halt_on_the_topic_is_left_alone() -> None:
    assert not needs_republish(halt(), halt(since=T0 + timedelta(seconds=1)))


def test_an_older_record_is_superseded() -> None:
    earlier = T0 - timedelta(seconds=1)
    assert needs_republish(halt(), release(since=earlier))
    assert needs_republish(halt(), halt(since=earlier))


def test_a_widening_the_topic_lost_is_published_again() -> None:
    wide = Scope(symbols=frozenset({"BTC_USDT", "ETH_USDT"}))
    assert needs_republish(halt(scope=wide), halt(scope=BTC))
    assert not needs_republish(halt(scope=BTC), halt(scope=wide))
    one_side = Scope(symbols=frozenset({"BTC_USDT"}), sides=frozenset({Side.BUY}))
    assert needs_republish(halt(scope=BTC), halt(scope=one_side))


def test_a_release_held_is_never_published_again() -> None:
    assert not needs_republish(release(), None)


# ------------------------------------------------------------------ the republisher


class Halts:
    """A stand-in for the engine: the halts it holds, and what it published again."""

    def __init__(self, held: Mapping[str, HaltState]) -> None:
        self.held = dict(held)
        self.published: list[HaltState] = []

    def halted(self) -> Mapping[str, HaltState]:
        return dict(self.held)

    async def republish_halt(self, account: str) -> HaltState | None:
        state = self.held.get(account)
        if state is not None:
            self.published.append(state)
        return state


def republisher(
    held: Mapping[str, HaltState], on_topic: Mapping[str, HaltState], owned: set[str]
) -> tuple[HaltRepublisher, Halts]:
    halts = Halts(held)

    async def read() -> Mapping[str, HaltState]:
        return on_topic

    return HaltRepublisher(halts, read, lambda account: account in owned), halts


async def test_nothing_happens_before_the_broker_came_back() -> None:
    rep, halts = republisher({"mm-1": halt()}, {}, {"mm-1"})
    await rep.step()
    assert halts.published == []


async def test_only_the_owner_publishes_and_only_what_the_topic_lacks() -> None:
    held = {"mm-1": halt("mm-1"), "mm-2": halt("mm-2"), "mm-3": halt("mm-3")}
    rep, halts = republisher(held, {"mm-3": held["mm-3"]}, owned={"mm-1"})
    rep.link_changed(True, "")
    await rep.step()
    assert [s.account for s in halts.published] == ["mm-1"]
    assert rep.pending == {"mm-2"}  # its owner publishes it, or we once it is ours


async def test_an_account_assigned_here_later_is_published_then() -> None:
    owned: set[str] = set()
    halts = Halts({"mm-2": halt("mm-2")})

    async def read() -> Mapping[str, HaltState]:
        return {}

    rep = HaltRepublisher(halts, read, lambda account: account in owned)
    rep.link_changed(True, "")
    await rep.step()
    assert halts.published == []
    owned.add("mm-2")
    rep.assignment_changed()
    await rep.step()
    assert [s.account for s in halts.published] == ["mm-2"]
    assert rep.pending == set()


async def test_a_record_from_another_daemon_clears_the_wait() -> None:
    rep, _ = republisher({"mm-2": halt("mm-2")}, {}, owned=set())
    rep.link_changed(True, "")
    await rep.step()
    assert rep.pending == {"mm-2"}
    rep.state_seen(halt("mm-2"))
    assert rep.pending == set()


async def test_a_failed_read_is_tried_again() -> None:
    halts = Halts({"mm-1": halt()})
    answers: list[Exception | Mapping[str, HaltState]] = [TimeoutError(), {}]

    async def read() -> Mapping[str, HaltState]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    rep = HaltRepublisher(halts, read, lambda account: True, retry_s=0.01)
    stop = asyncio.Event()
    running = asyncio.create_task(rep.run(stop))
    rep.link_changed(True, "")
    await wait_for(lambda: bool(halts.published), timeout=10)
    stop.set()
    await running
    assert [s.account for s in halts.published] == ["mm-1"]
    assert answers == []


# ------------------------------------------------------------------ the engine


async def test_the_engine_publishes_the_halt_it_holds_and_nothing_once_released(
    engines: Engines,
) -> None:
    published: list[HaltState] = []

    async def on_state(state: HaltState) -> None:
        published.append(state)

    engine = await engines(Engine({ACCOUNT: FakeExchange()}, settings(), on_state=on_state))
    held = halt(ACCOUNT)
    engine.restore_halt(held)
    assert await engine.republish_halt(ACCOUNT) == held
    await engine.release(request("rel"))
    assert await engine.republish_halt(ACCOUNT) is None
    assert [(s.halted, s.alert_id) for s in published] == [(True, "latch-1"), (False, "rel")]


async def test_a_release_during_a_republish_is_published_after_it(engines: Engines) -> None:
    published: list[HaltState] = []
    entered, gate = asyncio.Event(), asyncio.Event()

    async def on_state(state: HaltState) -> None:
        if state.halted:
            entered.set()
            await gate.wait()  # the broker is slow to acknowledge the republished halt
        published.append(state)

    engine = await engines(Engine({ACCOUNT: FakeExchange()}, settings(), on_state=on_state))
    engine.restore_halt(halt(ACCOUNT))
    republishing = asyncio.create_task(engine.republish_halt(ACCOUNT))
    await entered.wait()  # the republish holds the state lock, its halt being sent
    releasing = asyncio.create_task(engine.release(request("rel")))
    await wait_for(lambda: ACCOUNT not in engine.halted(), timeout=10)  # the latch lifted
    gate.set()
    await republishing
    await releasing
    # The topic's last record for the account is the release.
    assert [(s.halted, s.alert_id) for s in published] == [(True, "latch-1"), (False, "rel")]
