"""The kill engine: per-account serialisation, coalescing, the halt latch, shutdown.

:class:`Engine` implements :class:`killswitch.core.ports.EngineAPI`.

- **One account, one sweep at a time.** Each account has a lock; a sweep runs in a
  task the engine owns (so a caller that gives up does not stop a sweep other alerts
  share). A kill for an account whose sweep is running *joins* it (the scope widens,
  see :mod:`killswitch.engine.sweep`) when the two scopes unite into one that covers
  nothing neither asked for (``Scope.union``: BTC's buys and all of ETH do not); else,
  or if that sweep no longer accepts alerts, the kill joins the next sweep waiting for
  the lock that can take it, or becomes one. Dry runs coalesce only with dry runs.
  Every alert gets its own final result from its own ``submit`` call.
- **Latch.** A kill with ``latch`` halts the account as soon as it is submitted (the
  state goes to the ``on_state`` sink before ``submit`` returns, so the alert's offset
  is committed only after its halt is published). While halted, a guard lists the
  halt's pairs one at a time, continuously, at ``latch_budget_share`` of the account's
  current request rate, and cancels whatever a listing shows, until
  :meth:`Engine.release`: an order placed meanwhile is cancelled within
  ``pairs / (share * rate)`` plus one round trip (:mod:`killswitch.core.latch`; the bound
  goes to ``Observer.latch_reaction``). Pairs with recent orders are listed first when
  that delays no other pair past the bound. Each guard step is a one-pair sweep that
  lists first (even with strategy ``symbol``); a kill arriving during one joins it (its
  scope widens to the kill's), and while a kill sweep runs the guard waits.
- **Guard filter.** With several engines (daemons) sharing the accounts, each
  halted account must be guarded by one of them only. :meth:`Engine.set_guard_filter`
  takes ``owns(account)``: the engine still records, reports and publishes every
  halt, but runs the guard loop only for accounts it owns; :meth:`Engine.refresh_guards`
  starts and stops guards after the answer changed. Without a filter it owns all.
- **Deadlines.** A request's deadline is ``deadline_s`` after its ``received_at``,
  measured on the event loop's monotonic clock from the moment it is submitted.
- **Refused endpoints.** An exchange that does not serve cancel-all or batch cancel
  (404/405 to the call itself) or redirects it (3xx, never followed) is remembered per
  account for the engine's lifetime: every later sweep of that account (strategy
  ``auto``) falls back at once instead of asking again (:meth:`Engine.refused_endpoints`).
- **Hand-over.** :meth:`Engine.hand_over` stops the kill sweeps of accounts another
  daemon now owns (a rebalance): no final results, a last progress result each (with
  the cancels cut off in flight) for the next owner to carry over.
- **Never raises for bad input.** An unknown account, a request during shutdown: a
  final ``failed`` result with the reason.
- **Lifetime.** ``async with Engine(...) as engine:`` is the engine's lifetime: every
  sweep, guard and latched kill runs as a task of its task group, so none outlives it.
  :meth:`Engine.start` stays synchronous (it creates its sweep's task in that group) and
  may be called only inside the lifetime; halts restored before it begins are guarded
  once it does. Leaving the lifetime closes the engine (no grace, unless
  :meth:`Engine.close` was awaited first) and cancels whatever still runs. A task of the
  engine that fails is logged, never raised into the group: one failing sweep must not
  cancel the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from killswitch.core.errors import ExchangeError
from killswitch.core.latch import (
    listing_interval_s,
    next_listing_at,
    next_pair,
    reaction_bound_s,
    round_trip_estimate,
)
from killswitch.core.model import (
    HaltState,
    KillRequest,
    Scope,
    SweepResult,
    SweepStatus,
    no_sweep_result,
    requested_by,
)
from killswitch.core.planning import symbols_to_list
from killswitch.core.ports import (
    CurrentRate,
    EngineConfig,
    ExchangeAPI,
    NullObserver,
    Observer,
    ResultSink,
    StateSink,
)
from killswitch.engine.sweep import Sweep, Ticket, WallClock, utc_now
from killswitch.tasks import task_scope

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
# The budget (requests per second) of a client without a limiter (test doubles): the
# default ``rate_limit_per_second`` of an account.
FALLBACK_BUDGET = 10.0
# How long a guard waits before asking again for a pair list it could not get.
PAIRS_RETRY_S = 1.0
HANDED_OVER = "the account moved to another daemon (rebalance)"
# A halt state the sink failed to take is published again after this, doubling up to
# the cap: the broker may be briefly unable to take it (a leader moving).
STATE_RETRY_BASE_S = 0.5
STATE_RETRY_CAP_S = 10.0


def _resolved(result: SweepResult) -> asyncio.Future[SweepResult]:
    future: asyncio.Future[SweepResult] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


def _uniting(
    alerts: Sequence[tuple[KillRequest, ResultSink]],
) -> list[tuple[list[tuple[KillRequest, ResultSink]], Scope]]:
    """``alerts`` in runs, in order, whose scopes each unite exactly (:meth:`Scope.union`),
    with each run's united scope: a storm's alerts of one scope are one run."""
    parts: list[tuple[list[tuple[KillRequest, ResultSink]], Scope]] = []
    for alert in alerts:
        scope = alert[0].scope
        united = parts[-1][1].union(scope) if parts else None
        if united is None:
            parts.append(([alert], scope))
        else:
            parts[-1][0].append(alert)
            parts[-1] = (parts[-1][0], united)
    return parts


def _all_outcomes(
    futures: list[asyncio.Future[SweepResult]],
) -> asyncio.Future[list[SweepResult | BaseException]]:
    """One future for the outcomes of ``futures`` (results or exceptions, in order),
    set when the last is done; unlike ``gather``, cancelling it cancels none of them."""
    outer: asyncio.Future[list[SweepResult | BaseException]]
    outer = asyncio.get_running_loop().create_future()
    outcomes = _Outcomes(futures, outer)
    if futures and not futures[-1].done():
        futures[-1].add_done_callback(outcomes.check)
    else:
        outcomes.check()
    return outer


class _Outcomes:
    """Sets ``outer`` once every future is done. One callback at a time, not one per
    future (a storm's group is thousands of alerts): on the last future first (a sweep
    answers its alerts in order), then on the first one not done yet, until none is
    left. An object, not a closure naming itself: that is a reference cycle, which
    keeps the group's results until the cycle collector's next full pass."""

    __slots__ = ("first_pending", "futures", "outer")

    def __init__(
        self,
        futures: list[asyncio.Future[SweepResult]],
        outer: asyncio.Future[list[SweepResult | BaseException]],
    ) -> None:
        self.futures = futures
        self.outer = outer
        self.first_pending = 0

    def check(self, _: object = None) -> None:
        futures = self.futures
        while self.first_pending < len(futures) and futures[self.first_pending].done():
            self.first_pending += 1
        if self.first_pending < len(futures):
            futures[self.first_pending].add_done_callback(self.check)
        elif not self.outer.done():
            self.outer.set_result(
                [
                    f.exception() or f.result()
                    if not f.cancelled()
                    else RuntimeError("the alert's sweep was cancelled")
                    for f in futures
                ]
            )


def _owns_every_account(account: str) -> bool:
    return True


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    """A task of the engine: a failure is logged here, so that the task group does not
    cancel the engine's other sweeps and guards for it."""
    try:
        await work
    except Exception:
        log.exception("engine task failed")


@dataclass(eq=False, slots=True)
class _Account:
    """Serialisation state of one account."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: list[Sweep] = field(default_factory=list)  # created, waiting for the lock
    running: Sweep | None = None
    # The kill sweeps' tasks (owned by the engine's task group), to stop them by account.
    tasks: dict[Sweep, asyncio.Task[None]] = field(default_factory=dict)

    def joinable(self, dry_run: bool, scope: Scope) -> Sweep | None:
        """The sweep a new alert should join: the running one, else the latest waiting
        one, if it can take ``scope`` in without covering orders no alert asked for
        (:meth:`Scope.union`); None: the alert needs a sweep of its own."""
        candidates = [self.running] if self.running is not None else []
        for sweep in [*candidates, *reversed(self.waiting)]:
            if sweep.accepting and sweep.dry_run == dry_run and sweep.can_take(scope):
                return sweep
        return None

    def busy(self) -> bool:
        return self.running is not None or bool(self.waiting)


@dataclass(eq=False, slots=True)
class _Guard:
    """The latch loop of one halted account."""

    task: asyncio.Task[None]
    stop: asyncio.Event
    sweep: Sweep | None = None  # the guard sweep in progress, if any


@dataclass(eq=False, slots=True)
class _Pace:
    """Where one guard loop is: its pace and when it last listed each pair."""

    started: float  # loop clock
    previous: float | None = None  # start of the last guard step
    last_listed: dict[str, float] = field(default_factory=dict)
    round_trip: float | None = None  # smoothed seconds of one empty listing


class Engine:
    """The kill engine for a set of accounts (see the module docstring).

    ``clients`` maps account id to that account's exchange client; ``concurrency``
    bounds the cancel workers per sweep (an int for every account, or per account id;
    use each account's ``max_concurrency``: more workers than limiter slots only wait).
    ``clock`` is the wall clock used for result timestamps.
    """

    def __init__(
        self,
        clients: Mapping[str, ExchangeAPI],
        settings: EngineConfig,
        observer: Observer | None = None,
        on_state: StateSink | None = None,
        *,
        clock: WallClock = utc_now,
        concurrency: int | Mapping[str, int] = DEFAULT_CONCURRENCY,
    ) -> None:
        self._clients = dict(clients)
        self._settings = settings
        self._observer: Observer = observer or NullObserver()
        self._on_state = on_state
        self._clock = clock
        self._concurrency = concurrency
        self._accounts: dict[str, _Account] = {}
        self._refused: dict[str, set[str]] = {}  # per account: endpoints not served
        self._halts: dict[str, HaltState] = {}
        self._guards: dict[str, _Guard] = {}
        self._deferred_guards: set[str] = set()
        self._share = settings.latch_budget_share
        # Per account: pair -> loop time orders were last found or cancelled there.
        self._activity: dict[str, dict[str, float]] = {}
        self._owns: Callable[[str], bool] = _owns_every_account
        self._state_lock = asyncio.Lock()
        # The last halt state (halt or release) emitted per account, and the accounts
        # whose last one the sink failed to take: published again until it does.
        self._states: dict[str, HaltState] = {}
        self._unpublished: set[str] = set()
        self._state_retry: asyncio.Task[None] | None = None
        self._closing = False
        self._group: asyncio.TaskGroup | None = None  # while the lifetime runs
        self._life: contextlib.AsyncExitStack | None = None

    # ----------------------------------------------------------------- lifetime

    async def __aenter__(self) -> Self:
        """Begin the engine's lifetime (see the module docstring)."""
        if self._life is not None or self._closing:
            raise RuntimeError("an engine's lifetime begins once")
        life = contextlib.AsyncExitStack()
        self._group = await life.enter_async_context(task_scope())
        self._life = life
        self._start_deferred_guards()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End the lifetime: close (no grace, unless already closed), then cancel and
        wait for every task still running."""
        try:
            if not self._closing:
                await self.close(0.0)
        finally:
            life, self._life = self._life, None
            if life is not None:
                await life.aclose()
            self._group = None

    # ----------------------------------------------------------------- EngineAPI

    async def submit(self, request: KillRequest, progress: ResultSink) -> SweepResult:
        """Sweep ``request.account`` for this alert; returns its final result."""
        return await self.start(request, progress)

    def start(self, request: KillRequest, progress: ResultSink) -> asyncio.Future[SweepResult]:
        """:meth:`submit` begun now: the sweep is spawned (or joined) before this returns.

        Await the returned future for the final result; not awaiting it is harmless
        (the sweep runs on; cancelling the future does not cancel a sweep others
        share). The intake calls this while it reads the record, so the sweep's
        first request is not queued behind other work of the event loop.
        """
        self._start_deferred_guards()
        client = self._clients.get(request.account)
        if client is None:
            reason = f"account {request.account!r} is not configured"
            return _resolved(self._refusal(request, reason))
        if self._closing:
            return _resolved(self._refusal(request, "the engine is shutting down"))
        account = self._account(request.account)
        sweep = account.joinable(request.dry_run, request.scope)
        if sweep is None:
            sweep = self._new_sweep(client, dry_run=request.dry_run)
            account.waiting.append(sweep)
            ticket = sweep.attach(request, progress)
            task = self._spawn(self._run(account, sweep), f"sweep-{request.account}")
            account.tasks[sweep] = task
        else:
            ticket = sweep.attach(request, progress)
            # DEBUG: the alert's final result is logged at INFO; a storm of alerts that
            # cannot form groups (latched, several accounts) would repeat this per alert.
            log.debug(
                "alert joined the running sweep",
                extra={"account": request.account, "alert_id": request.alert_id},
            )
        if request.latch and not request.dry_run:
            return self._latched(request, ticket)
        # Shielded: a caller that stops waiting must not cancel a sweep others share.
        return asyncio.shield(ticket.future)

    def _latched(self, request: KillRequest, ticket: Ticket) -> asyncio.Future[SweepResult]:
        """The final result of a latched kill, after its halt is published. The halt runs
        as a task of the engine; a caller that stops waiting cancels the halt's wait, not
        the shared sweep."""
        out: asyncio.Future[SweepResult] = asyncio.get_running_loop().create_future()
        task = self._spawn(self._halt_then(request, ticket, out), f"latch-{request.account}")
        out.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)
        return out

    async def _halt_then(
        self, request: KillRequest, ticket: Ticket, out: asyncio.Future[SweepResult]
    ) -> None:
        try:
            await self._halt(request, ticket.scope)
            result = await asyncio.shield(ticket.future)
        except asyncio.CancelledError:
            out.cancel()
            raise
        except Exception as exc:  # the sweep's own (SweepHandedOver): the caller's to see
            if not out.done():
                out.set_exception(exc)
                out.exception()  # retrieved: its waiter may be gone already
            return
        if not out.done():
            out.set_result(result)

    def start_group(
        self, alerts: Sequence[tuple[KillRequest, ResultSink]]
    ) -> asyncio.Future[list[SweepResult | BaseException]]:
        """:meth:`start` for several kills of one account at once. Consecutive alerts
        whose scopes unite exactly (:meth:`Scope.union`; a storm's alerts of one scope)
        join a sweep together, in one step (one scope widening, one log line); and one
        future gives every alert's outcome, in order (its final result, or the
        exception the future of its own :meth:`start` would carry, e.g.
        :class:`~killswitch.core.ports.SweepHandedOver`), once the last of them has
        one: the caller wakes once for the group, not once per alert. Cancelling the
        future cancels no sweep. An unconfigured account or a closing engine gives
        every alert its refusal.

        Every request must be for the same account and dry-run flag, without a latch
        (a latch publishes a halt first: use :meth:`start`); else ``ValueError``."""
        loop = asyncio.get_running_loop()
        if not alerts:
            done: asyncio.Future[list[SweepResult | BaseException]] = loop.create_future()
            done.set_result([])
            return done
        first = alerts[0][0]
        if any(
            r.account != first.account or r.dry_run != first.dry_run or (r.latch and not r.dry_run)
            for r, _ in alerts
        ):
            raise ValueError("a group is one account's kills, of one dry-run flag, no latch")
        self._start_deferred_guards()
        client = self._clients.get(first.account)
        if client is None or self._closing:
            reason = (
                f"account {first.account!r} is not configured"
                if client is None
                else "the engine is shutting down"
            )
            refused: asyncio.Future[list[SweepResult | BaseException]] = loop.create_future()
            refused.set_result([self._refusal(r, reason) for r, _ in alerts])
            return refused
        account = self._account(first.account)
        tickets: list[Ticket] = []
        for part, scope in _uniting(alerts):
            tickets.extend(self._join_part(client, account, part, scope))
        return _all_outcomes([t.future for t in tickets])

    def _join_part(
        self,
        client: ExchangeAPI,
        account: _Account,
        part: Sequence[tuple[KillRequest, ResultSink]],
        scope: Scope,
    ) -> list[Ticket]:
        """One join of alerts whose scopes unite into ``scope``: to the sweep that can
        take it, else to a new sweep."""
        first = part[0][0]
        sweep = account.joinable(first.dry_run, scope)
        joined = sweep is not None
        if sweep is None:
            sweep = self._new_sweep(client, dry_run=first.dry_run)
            account.waiting.append(sweep)
        tickets = sweep.attach_many(part)
        if not joined:
            task = self._spawn(self._run(account, sweep), f"sweep-{first.account}")
            account.tasks[sweep] = task
        else:
            # DEBUG, as a single alert's join: each alert's final result is logged at
            # INFO, and a storm would repeat this line for every group.
            log.debug(
                "alerts joined the running sweep",
                extra={"account": first.account, "alerts": len(tickets)},
            )
        return tickets

    async def release(self, request: KillRequest) -> SweepResult:
        """Lift the latch on ``request.account``: no more guard sweeps after this returns."""
        self._start_deferred_guards()
        if request.account not in self._clients:
            return self._refusal(request, f"account {request.account!r} is not configured")
        state = self._halts.pop(request.account, None)
        guard = self._stop_guard_now(request.account)
        if state is not None:
            self._observer.halted(request.account, False)
        scope = state.scope if state is not None else request.scope
        # Published before any wait: a latched kill that came after this release (its
        # halt runs in a task of its own meanwhile) must be published after it, or the
        # state topic would end released while this engine guards the account.
        await self._emit(
            HaltState(
                request.account,
                False,
                request.alert_id,
                self._clock(),
                scope,
                by=requested_by(request),
                reason=request.reason,
            )
        )
        if guard is not None:
            await asyncio.gather(guard, return_exceptions=True)
        reason = None if state is not None else "the account was not halted"
        result = no_sweep_result(request, SweepStatus.RELEASED, self._clock(), reason)
        return replace(result, was_halted=state is not None)

    async def hand_over(self, accounts: Collection[str]) -> int:
        """Stop the kill sweeps of ``accounts`` now: another daemon owns them from here on.

        Every alert of those sweeps (running or waiting) gets
        :class:`~killswitch.core.ports.SweepHandedOver` instead of a final result, and
        those that had started get one last progress result through their sink before
        this returns (its ``in_flight`` lists the cancels cut off unanswered), so the
        next owner's replay carries over what was done here. Once this returns no
        request for these accounts is sent by their sweeps. Latch guards are not
        touched (:meth:`refresh_guards` moves them). Returns the sweeps stopped."""
        stopped: list[tuple[Sweep, asyncio.Task[None]]] = []
        for account_id in accounts:
            account = self._accounts.get(account_id)
            if account is None:
                continue
            for sweep, task in list(account.tasks.items()):
                sweep.hand_over(HANDED_OVER)
                if sweep in account.waiting and not sweep.started:
                    account.waiting.remove(sweep)
                task.cancel()
                stopped.append((sweep, task))
        if not stopped:
            return 0
        await asyncio.gather(*(task for _, task in stopped), return_exceptions=True)
        for sweep, _ in stopped:
            for sink, result in sweep.handed_over:
                try:
                    await sink(result)
                except Exception:  # the next owner then carries less; it still sweeps
                    log.exception("last progress result not handed over")
        log.warning(
            "sweeps handed over to the account's new owner",
            extra={"accounts": sorted({s.account for s, _ in stopped}), "sweeps": len(stopped)},
        )
        return len(stopped)

    def restore_halt(self, state: HaltState) -> None:
        """Resume guarding an account found halted in the state topic at start-up (or
        follow a state record another daemon published)."""
        account = state.account
        if account not in self._clients:
            log.warning(
                "halt state for an unconfigured account ignored", extra={"account": account}
            )
            return
        pending = self._states.get(account)
        if account in self._unpublished and pending is not None and state.since >= pending.since:
            # The topic has a record at least as new: ours, still unpublished, is stale.
            self._unpublished.discard(account)
        if not state.halted:
            if self._halts.pop(account, None) is not None:
                self._observer.halted(account, False)
                guard = self._guards.pop(account, None)
                if guard is not None:
                    guard.stop.set()
            return
        self._halts[account] = state
        self._observer.halted(account, True)
        self._deferred_guards.add(account)
        self._start_deferred_guards()

    def halted(self) -> Mapping[str, HaltState]:
        """The accounts currently halted (a copy)."""
        return dict(self._halts)

    def state_retries_pending(self) -> int:
        """Accounts whose latest halt state the sink has not taken yet (retried)."""
        return len(self._unpublished)

    async def republish_halt(self, account: str) -> HaltState | None:
        """Publish ``account``'s halt again as it is now (the state topic lost it: a
        broker that came back empty); None when the account is not halted any more.

        In order with every other state change (the same lock as :meth:`_emit`): a
        release that lifted the latch first leaves nothing to publish, one that comes
        later is published after this halt, so a stale halt never overwrites a release
        this engine made. Unlike a latch change, a failing sink raises: the caller tries
        again."""
        async with self._state_lock:
            state = self._halts.get(account)
            if state is None or self._on_state is None:
                return None
            await self._on_state(state)
            return state

    def refused_endpoints(self, account: str) -> frozenset[str]:
        """Bulk endpoints (``cancel_all``, ``cancel_batch``) the account's exchange refused."""
        return frozenset(self._refused.get(account, ()))

    def set_guard_filter(self, owns: Callable[[str], bool]) -> None:
        """Guard (re-sweep) a halted account only while ``owns(account)`` holds.

        Halts are still recorded, published and reported for every account; kills
        submitted here still sweep. ``owns`` must be cheap and must not raise; call
        :meth:`refresh_guards` whenever its answers may have changed.
        """
        self._owns = owns

    async def refresh_guards(self) -> None:
        """Stop the guards of accounts no longer owned; start those of owned halted ones.

        Stops first (and waits for an idle guard sweep to be cancelled), so an account
        moving to another engine is not swept here once this returns. A newly owned
        account is swept at once: nobody guarded it while it moved.
        """
        for account in list(self._guards):
            if not self._owns(account):
                await self._stop_guard(account)
                log.info("guard handed over", extra={"account": account})
        if self._closing:
            return
        running = self.guarded()
        for account in list(self._halts):
            if account not in running and self._owns(account):
                self._ensure_guard(account)
                log.info("guard taken over", extra={"account": account})

    def guarded(self) -> frozenset[str]:
        """The halted accounts whose guard loop runs in this engine."""
        return frozenset(
            account
            for account, guard in self._guards.items()
            if not guard.task.done() and not guard.stop.is_set()
        )

    async def close(self, grace_s: float) -> None:
        """Stop latch loops; let running sweeps finish within ``grace_s``, then cancel them."""
        self._closing = True
        if self._unpublished:
            log.error(
                "halt states not published before the stop: the state topic does not have them",
                extra={"accounts": sorted(self._unpublished)},
            )
        guard_tasks = [g.task for g in self._guards.values()]
        for account in list(self._guards):
            await self._stop_guard(account, wait=False)
        sweeps = [t for a in self._accounts.values() for t in a.tasks.values()]
        tasks = [t for t in [*sweeps, *guard_tasks] if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._guards.clear()

    # --------------------------------------------------------------- sweeps

    def _account(self, account_id: str) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            account = self._accounts[account_id] = _Account()
        return account

    def _workers(self, account_id: str) -> int:
        if isinstance(self._concurrency, int):
            return self._concurrency
        return self._concurrency.get(account_id, DEFAULT_CONCURRENCY)

    def _new_sweep(
        self,
        client: ExchangeAPI,
        *,
        dry_run: bool,
        scope: Scope | None = None,
        deadline: float | None = None,
        list_first: bool = False,
        name: str = "",
    ) -> Sweep:
        return Sweep(
            client,
            self._settings,
            workers=self._workers(client.account),
            dry_run=dry_run,
            scope=scope,
            deadline=deadline,
            list_first=list_first,
            observer=self._observer,
            clock=self._clock,
            name=name,
            refused=self._refused.setdefault(client.account, set()),
        )

    async def _run(self, account: _Account, sweep: Sweep) -> None:
        """Run ``sweep`` when the account's previous sweep is done."""
        try:
            await self._run_locked(account, sweep)
        finally:
            account.tasks.pop(sweep, None)

    async def _run_locked(self, account: _Account, sweep: Sweep) -> None:
        try:
            async with account.lock:
                account.waiting.remove(sweep)
                account.running = sweep
                try:
                    await sweep.run()
                finally:
                    account.running = None
                    self._note_activity(sweep.account, sweep)
        except asyncio.CancelledError:
            if not sweep.started:  # cancelled while waiting: its alerts still get results
                if sweep in account.waiting:
                    account.waiting.remove(sweep)
                sweep.abandon("the engine stopped before the sweep started")
            raise

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """``coro`` as a task of the engine's task group (its lifetime must have begun)."""
        if self._group is None:
            coro.close()
            raise RuntimeError("the engine is not running: use `async with Engine(...)`")
        task = self._group.create_task(_logged(coro), name=name)
        # A task cancelled before its first step never starts ``coro``: closed here, as a
        # task of ``coro`` itself would have closed it (a no-op once it has run).
        task.add_done_callback(lambda _: coro.close())
        return task

    def _refusal(self, request: KillRequest, reason: str) -> SweepResult:
        return no_sweep_result(request, SweepStatus.FAILED, self._clock(), reason)

    # ---------------------------------------------------------------- latch

    async def _halt(self, request: KillRequest, scope: Scope) -> None:
        account = request.account
        current = self._halts.get(account)
        if current is None:
            state = HaltState(
                account,
                True,
                request.alert_id,
                self._clock(),
                scope,
                by=requested_by(request),
                reason=request.reason,
            )
            self._observer.halted(account, True)
        else:
            widened = current.scope.widen(scope)
            if widened == current.scope:
                return
            state = replace(current, scope=widened)
        self._halts[account] = state
        self._ensure_guard(account)
        await self._emit(state)

    async def _emit(self, state: HaltState) -> None:
        """Publish a halt change; in order, and a failing sink never fails the caller:
        the account's latest state is published again until the sink takes it
        (:meth:`_retry_states`), since a restart, or the account's next owner, knows
        the latch only from the state topic."""
        if self._on_state is None:
            return
        async with self._state_lock:
            self._states[state.account] = state
            try:
                await self._on_state(state)
            except Exception:
                log.exception("publishing halt state failed", extra={"account": state.account})
                self._unpublished.add(state.account)
                self._start_state_retry()
            else:
                self._unpublished.discard(state.account)

    def _start_state_retry(self) -> None:
        running = self._state_retry is not None and not self._state_retry.done()
        if running or self._closing or self._group is None:
            return
        self._state_retry = self._spawn(self._retry_states(), "halt-state-retry")

    async def _retry_states(self) -> None:
        """Until every account's latest halt state is published: each in order with the
        other state changes (the state lock), the latest only (the topic keeps one
        record per account), after a backoff. Not once the account has a newer record
        from another daemon (:meth:`restore_halt`) or another daemon owns it."""
        delay = STATE_RETRY_BASE_S
        while self._unpublished and not self._closing:
            await asyncio.sleep(delay)  # backoff between attempts
            delay = min(delay * 2, STATE_RETRY_CAP_S)
            for account in sorted(self._unpublished):
                if not self._owns(account):
                    # Another daemon owns it now: its records are the account's; ours,
                    # published late, could overwrite a newer one.
                    self._unpublished.discard(account)
                    continue
                async with self._state_lock:
                    if account in self._unpublished:  # not superseded meanwhile
                        await self._publish_again(account)

    async def _publish_again(self, account: str) -> None:
        """One more try of ``account``'s latest halt state (the state lock held)."""
        assert self._on_state is not None  # only what _emit failed to publish is here
        state = self._states[account]
        try:
            await self._on_state(state)
        except Exception as exc:  # the broker still refuses: later
            log.warning(
                "halt state still not published; trying again",
                extra={"account": account, "error": type(exc).__name__},
            )
            return
        self._unpublished.discard(account)
        log.info(
            "halt state published after a failure",
            extra={"account": account, "halted": state.halted},
        )

    def _start_deferred_guards(self) -> None:
        if not self._deferred_guards or self._closing or self._group is None:
            return  # restore_halt before the lifetime began: started when it begins
        for account in list(self._deferred_guards):
            self._deferred_guards.discard(account)
            if account in self._halts:
                self._ensure_guard(account)

    def _ensure_guard(self, account: str) -> None:
        if self._closing or not self._owns(account):
            return  # another engine guards it (refresh_guards starts it if that changes)
        guard = self._guards.get(account)
        if guard is not None and not guard.task.done() and not guard.stop.is_set():
            return
        if self._group is None:
            self._deferred_guards.add(account)  # started when the lifetime begins
            return
        stop = asyncio.Event()
        task = self._spawn(self._guard(account, stop), f"guard-{account}")
        self._guards[account] = _Guard(task, stop)

    async def _guard(self, account_id: str, stop: asyncio.Event) -> None:
        """List a halted account's pairs one at a time, paced at its share of the budget,
        until released or closed (see :mod:`killswitch.core.latch`)."""
        loop = asyncio.get_running_loop()
        pace = _Pace(started=loop.time())
        try:
            while not self._closing:
                halt = self._halts.get(account_id)
                if stop.is_set() or halt is None or not self._owns(account_id):
                    return
                interval = listing_interval_s(self._budget(account_id), self._share)
                wait = next_listing_at(pace.previous, interval) - loop.time()
                account = self._account(account_id)
                if account.busy():
                    wait = interval  # a kill sweep is under way: it lists every pair itself
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await stop.wait()
                    continue
                await self._guard_step(account_id, account, halt, pace, interval)
        finally:
            self._observer.latch_reaction(account_id, None)

    async def _guard_step(
        self, account_id: str, account: _Account, halt: HaltState, pace: _Pace, interval: float
    ) -> None:
        """List the next pair (cancelling what it shows); update the pace and the gauge."""
        loop = asyncio.get_running_loop()
        pairs = await self._guard_pairs(account_id, halt.scope)
        now = loop.time()
        pair = next_pair(
            pairs,
            pace.last_listed,
            self._activity.setdefault(account_id, {}),
            now=now,
            interval=interval,
            started=pace.started,
        )
        pace.previous = now
        if pair is None:
            # No pair list (exchange info unreadable, nothing configured): ask again
            # later, not at the listing pace, so a failing exchange is not asked 5 times a
            # second nor the log filled with the same warning.
            pace.previous = now + PAIRS_RETRY_S
            return
        scope = Scope(frozenset({pair}), halt.scope.sides, halt.scope.order_ids)
        sweep = await self._guard_sweep(account_id, account, scope)
        pace.last_listed[pair] = now
        if sweep.passes == 1 and not len(sweep.ledger) and sweep.failure is None:
            pace.round_trip = round_trip_estimate(pace.round_trip, loop.time() - now)
        self._observer.latch_reaction(
            account_id,
            reaction_bound_s(
                len(pairs), self._budget(account_id), self._share, pace.round_trip or 0.0
            ),
        )

    async def _guard_pairs(self, account_id: str, scope: Scope) -> list[str]:
        """The pairs the halt covers: its own, else every pair the exchange trades."""
        if scope.symbols is not None:
            return symbols_to_list(scope, None)
        try:
            info = await self._clients[account_id].exchange_info()
        except ExchangeError as exc:
            log.warning(
                "guard could not read the pair list",
                extra={"account": account_id, "error": str(exc)},
            )
            return []
        return symbols_to_list(scope, (s.symbol for s in info))

    def _budget(self, account_id: str) -> float:
        """The account's request rate now (its limiter's, after any 429 cut)."""
        limiter = getattr(self._clients[account_id], "limiter", None)  # not every client has one
        return limiter.rate if isinstance(limiter, CurrentRate) else FALLBACK_BUDGET

    def _note_activity(self, account_id: str, sweep: Sweep) -> None:
        """Remember the pairs where ``sweep`` found orders (listed first by guards)."""
        now = asyncio.get_running_loop().time()
        activity = self._activity.setdefault(account_id, {})
        for _, record in sweep.ledger.items():
            activity[record.symbol] = now

    async def _guard_sweep(self, account_id: str, account: _Account, scope: Scope) -> Sweep:
        loop = asyncio.get_running_loop()
        sweep = self._new_sweep(
            self._clients[account_id],
            dry_run=False,
            scope=scope,
            deadline=loop.time() + self._settings.default_deadline_s,
            list_first=True,
            name=f"guard-{account_id}",
        )
        guard = self._guards.get(account_id)
        if guard is not None:
            guard.sweep = sweep
        account.waiting.append(sweep)
        try:
            await self._run(account, sweep)
        finally:
            if guard is not None:
                guard.sweep = None
        counts = sweep.ledger.counts()
        if counts.resolved or sweep.failure:
            log.warning(
                "guard sweep of a halted account",
                extra={
                    "account": account_id,
                    "resolved": counts.resolved,
                    "sent": counts.sent,
                    "residual": sweep.ledger.residual(sweep.scope),
                    "failure": sweep.failure,
                },
            )
        return sweep

    async def _stop_guard(self, account: str, *, wait: bool = True) -> None:
        """Stop a guard loop. A guard sweep no alert has joined is cancelled at once."""
        task = self._stop_guard_now(account)
        if task is not None and wait:
            await asyncio.gather(task, return_exceptions=True)

    def _stop_guard_now(self, account: str) -> asyncio.Task[None] | None:
        """:meth:`_stop_guard` without waiting: the guard's task when it was cancelled
        (to wait for), else None."""
        self._deferred_guards.discard(account)
        guard = self._guards.pop(account, None)
        if guard is None:
            return None
        guard.stop.set()
        sweep = guard.sweep
        if sweep is None or not sweep.tickets:
            if sweep is not None:
                sweep.accepting = False  # no alert may join a sweep about to be cancelled
            guard.task.cancel()
            return guard.task
        # Otherwise an alert joined the guard sweep: it finishes, then the loop ends
        # because its stop event is set.
        return None
