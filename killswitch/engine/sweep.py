"""One sweep of one account: resolve, cancel, verify, until flat or out of time.

A sweep runs *passes*. A listing pass lists every pair in scope concurrently and
cancels while it lists: each page's in-scope orders go into a priority queue at once
and a fixed set of workers takes the best order (or batch) as soon as one is there.
A cancel-all pass (strategy ``symbol``, first pass only) cancels whole pairs and
finishes ``fail`` ids one by one. After a pass the sweep lists again; it is flat only
when a complete listing, started after the last alert joined, finds nothing in scope.

Strategy ``auto`` (the default) spends the fewest requests: in every pass, a pair wholly
in scope whose first page is full or shows two or more orders becomes one cancel-all,
queued under the priority key of the best order on that page, and the rest of the pair
is not listed (the next pass's listing verifies); partial scopes go out as batch
cancels. In a sweep's first pass a pair the scope names (whole pairs) gets its
cancel-all before any listing (``cancel_named_pairs_first``): the first cancel goes out
one round trip sooner, and the next pass's listing verifies. Ids a bulk cancel answers
in ``fail`` (or in neither list) get per-order DELETEs. An endpoint the exchange does
not serve (404/405 to the call as a whole) or redirects (3xx, never followed) is
remembered for the account (``refused``, shared by its later sweeps) and the account
falls back: cancel-all to batches (a named pair is then listed first), batches to
per-order. A redirect is named in the result's reason, with its ``Location``.

The deadline is soft for cancels already sent: at the deadline listings stop and
workers take no new work, but a cancel in flight may still answer until
``settle_grace_s`` past it (then it is cut off). After the deadline (or the last pass
allowed) the sweep *settles*: one final listing of the pairs in scope, bounded by
``settle_grace_s`` too, decides what is still open: an order it no longer shows is
``sent`` if a cancel was attempted, never ``failed``, and ``residual_open`` counts what
it shows (see :mod:`killswitch.core.ledger`).

Alerts join a sweep as *tickets*. A ticket that joins a running sweep widens its
scope (and may push its deadline out); new pairs are listed in the running pass
already, and the sweep cannot end flat before a pass that started after the join.
Each ticket gets its own final result, filtered to its own scope.

A flaky or absent exchange does not end a sweep before its deadline: a listing that
exhausts the client's retries leaves its pass incomplete and the next pass (after a
pause) lists again, so an outage shorter than the deadline costs time, not the kill.
A sweep whose last ``MAX_UNANSWERED_LISTINGS`` passes or more got no usable answer
when its deadline comes ends ``failed`` (unreachable) without a settling listing. A
``residual`` result names the pairs never listed to the end, whose open orders
``residual_open`` cannot count.

Memory: a listing holds one page of orders at a time; beyond that the sweep keeps one
small record per resolved order (:class:`killswitch.core.ledger.Ledger`) and two
small tuples per queued order (:class:`killswitch.core.planning.CancelQueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from killswitch.core.carry import RESULT_MAX_ORDERS, carry_over
from killswitch.core.errors import (
    AuthError,
    ExchangeError,
    ExchangeUnavailable,
    InvalidRequest,
    NotFound,
    Redirected,
)
from killswitch.core.ledger import Ledger
from killswitch.core.model import (
    Counts,
    InFlight,
    KillRequest,
    OrderReport,
    Scope,
    SweepResult,
    SweepStatus,
)
from killswitch.core.orders import Order
from killswitch.core.outcomes import Outcome, RejectReason
from killswitch.core.pairs import PairList, list_unchecked_reason
from killswitch.core.planning import (
    NAMED_PAIR_KEY,
    WHOLE_PAIR,
    CancelQueue,
    Next,
    PassSummary,
    PriorityKey,
    StrategyName,
    bulk_plan,
    cancel_pair_first,
    cancel_whole_pair,
    effective_strategy,
    endpoint_refused,
    final_status,
    in_scope,
    next_step,
    pause_before_next_pass,
    priority_key,
    symbols_to_list,
    unanswered,
)
from killswitch.core.ports import (
    BatchCancelResult,
    EngineConfig,
    ExchangeAPI,
    NullObserver,
    Observer,
    ResultSink,
    SweepHandedOver,
    Throttled,
)
from killswitch.tasks import task_scope

log = logging.getLogger(__name__)

WallClock = Callable[[], datetime]

# A listing (or the exchange info) that exhausted the client's retries does not end
# the sweep: that pass is incomplete and the next one lists again, until the deadline
# (the operator's budget for the kill; an exchange back within it is still swept).
# This many passes in a row with such a failure, and no usable answer since, mean the
# exchange is unreachable: a sweep in that state at its deadline ends failed.
MAX_UNANSWERED_LISTINGS = 3
# A bulk cancel endpoint (cancel-all, batch cancel) that failed as a whole this many
# times in a row in one sweep, while the exchange answered listings, is broken on its own:
# the sweep's next passes cancel one level down (batches, then one by one). Not at the
# first failure answered 5xx: one lost answer during an outage must not cost a whole
# sweep the fewest-requests strategy. One whose last attempt hung (no answer until it
# timed out: not a refused or reset connection) is given up at once: each such failure
# holds the call for its whole request deadline.
BULK_FAILURES_TO_GIVE_UP = 2
# How an attempt that got no answer until it was given up ends (the transport's kinds).
_HUNG = frozenset({"AttemptDeadline", "ReadTimeout"})
# Pause before listing again after such a failure: doubles per failure in a row.
UNANSWERED_PAUSE_BASE_S = 0.25
UNANSWERED_PAUSE_CAP_S = 2.0
# Tickets answered between two turns of the event loop when a sweep settles (each
# answer wakes its alert's task, which encodes and publishes the result).
SETTLE_TURN = 16
# A sweep whose pass found nothing but gained joining alerts gathers more before the
# pass that verifies for them: it lists once no alert has joined for JOINERS_GATHER_S,
# or JOINERS_GATHER_MAX_S after the gathering began while they keep coming (in a storm,
# one listing per gathering, not one per handful of joiners), or at once when a joiner
# widens the scope (its new pairs are not to wait for the next listing).
JOINERS_GATHER_S = 0.02
JOINERS_GATHER_MAX_S = 0.2


def utc_now() -> datetime:
    """The default wall clock."""
    return datetime.now(UTC)


def _united(scope: Scope | None, scopes: Sequence[Scope]) -> Scope:
    """``scope`` (None: a sweep no alert has joined yet) united with ``scopes`` in turn,
    exactly (:meth:`Scope.union`); the alerts' own scopes first, as the engine grouped
    them (:func:`killswitch.engine.engine._uniting`)."""
    incoming: Scope | None = scopes[0]
    for other in scopes[1:]:
        incoming = incoming.union(other) if incoming is not None else None
    joined = incoming if scope is None or incoming is None else scope.union(incoming)
    if joined is None:
        raise ValueError("alerts join a sweep only if their scopes unite exactly")
    return joined


class SweepStopped(Exception):
    """The sweep cannot go on for this account (auth refused, exchange unreachable)."""


HandOff = tuple[ResultSink, SweepResult]


@dataclass(eq=False, slots=True)
class Ticket:
    """One alert's place in a sweep."""

    request: KillRequest
    scope: Scope
    progress: ResultSink | None
    join_gen: int
    received_mono: float
    future: asyncio.Future[SweepResult]
    first_cancel_at: datetime | None = None


@dataclass(eq=False, slots=True)
class _Pass:
    """Shared state of one pass: the queue, who is still producing, who is busy."""

    number: int
    gen: int
    tg: asyncio.TaskGroup
    strategy: StrategyName
    first: bool = False  # the sweep's first pass that cancels (see cancel_pair_first)
    starting: bool = True  # its first producers are being made (see Sweep._run_pass)
    queue: CancelQueue = field(default_factory=CancelQueue)
    singles: deque[tuple[str, int]] = field(default_factory=deque)
    symbols: set[str] = field(default_factory=set)
    producers: int = 0  # listings / cancel-alls (and scope extensions) not finished
    busy: int = 0  # workers in the middle of a cancel that may hand work back
    workers: int = 0  # worker tasks running (started on demand, see Sweep._want_workers)
    queued: int = 0
    # strategy auto: the first-page orders of each pair queued as one cancel-all
    bulk: dict[str, list[tuple[PriorityKey, int]]] = field(default_factory=dict)
    no_bulk: set[str] = field(default_factory=set)  # pairs whose cancel-all was refused
    complete: bool = True  # every pair in scope was listed to the end
    open: bool = True  # more producers may still be added (scope widening)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def idle(self) -> bool:
        return self.producers == 0 and self.busy == 0 and not self.singles and len(self.queue) == 0


SymbolsSource = Callable[[], Awaitable[list[str]]]


@dataclass(slots=True)
class _Shared:
    """What the results of one scope have in common at one moment (see
    ``Sweep.result_for``); ``progress``: a progress result's orders and cancels in flight."""

    residual: int
    counts: Counts
    orders: list[OrderReport]
    progress: tuple[list[OrderReport], list[InFlight]] | None = None
    # a final result's: unlisted pairs, not-found ids and finish time
    final: tuple[list[str], list[int], datetime] | None = None
    # whether the verifying listing (the sweep's, named) found an order in the scope
    found: tuple[object, bool] | None = None
    # final results' templates (_result_template) by (dry run, verified, why the pairs
    # are unchecked): what decides the status and reason
    decided: dict[tuple[bool, bool, str | None], list[Any]] = field(default_factory=dict)


class Sweep:
    """One sweep of one account. Create, :meth:`attach` tickets, then :meth:`run` once."""

    def __init__(
        self,
        client: ExchangeAPI,
        settings: EngineConfig,
        *,
        workers: int,
        dry_run: bool = False,
        scope: Scope | None = None,
        deadline: float | None = None,
        list_first: bool = False,
        observer: Observer | None = None,
        clock: WallClock = utc_now,
        name: str = "",
        refused: set[str] | None = None,
    ) -> None:
        self.client = client
        self.account = client.account
        self.settings = settings
        self.workers = max(1, workers)
        self.dry_run = dry_run
        self.list_first = list_first
        self.observer: Observer = observer or NullObserver()
        self.clock = clock
        self.name = name or f"sweep-{self.account}"
        self.scope: Scope | None = scope
        self.deadline = deadline if deadline is not None else -1.0
        self.tickets: list[Ticket] = []
        # Endpoints the account's exchange does not serve (shared with its later sweeps).
        self.refused: set[str] = refused if refused is not None else set()
        # Bulk endpoints that failed as a whole (retries exhausted) in this sweep, in a row,
        # and those given up for the rest of it (see BULK_FAILURES_TO_GIVE_UP).
        self._bulk_failures: dict[str, int] = {}
        self._bulk_given_up: set[str] = set()
        self._stopped = False  # cancelled: the engine stopped (shutdown), not a failure
        # Not a method of the sweep: the ledger would make a cycle with it, and a sweep
        # ended holds its alerts (thousands in a storm) until a full collection.
        self.ledger = Ledger(
            on_outcome=functools.partial(self.observer.cancel_outcome, self.account)
        )
        self.gen = 0
        self.passes = 0
        self.accepting = True
        self.started = False
        self.failure: str | None = None
        self.end_note: str | None = None
        self.notes: list[str] = []
        # Why the pairs of the whole-account listing that verified prove nothing (the
        # configured list); the same for the pass running now, and whether any pass
        # listed the exchange's own pairs (the settling listing lists them all).
        self._blind_list: str | None = None
        self._pass_blind: str | None = None
        self._listed_exchange_pairs = False
        self.first_cancel_at: datetime | None = None
        self._verified: tuple[int, frozenset[int]] | None = None  # (gen, ids found)
        self._pass: _Pass | None = None
        self._timeout: asyncio.Timeout | None = None
        self._awaiting_first_cancel = 0
        self._unanswered_listings = 0  # passes in a row (see MAX_UNANSWERED_LISTINGS)
        self._unanswered_pass = 0  # the last pass counted in _unanswered_listings
        self._unanswered_reason = ""  # the last listing's that gave up
        self._pairs_read = False  # a whole-account pass had a pair list to list
        self._pairs: set[str] = set()  # every pair in scope a pass set out to list or cancel
        # An alert whose pairs were never checked against the exchange's pair list: a
        # named pair may not exist, and a refused cancel-all of it (404) would read as
        # "no cancel-all here" for the whole account. Such sweeps list first.
        self._unchecked_pairs = False
        # Pairs the exchange refused to list while its own pair list could not be had
        # (see _unlistable): pair -> the refusal.
        self._refused_unchecked: dict[str, str] = {}
        self._reread_pass = 0  # the pass after which the pair list was last asked again
        self._settle_wanted = False  # ended with orders possibly open: list once more
        self._soft: set[asyncio.Timeout] = set()  # listings that stop at the deadline
        # Set while the sweep gathers joiners between passes (see _gather_joiners): a
        # joiner that widens the scope ends the gathering.
        self._widened: asyncio.Event | None = None
        self._joined_at = 0.0  # event-loop time of the last attach_many
        self._widen_gen = 0  # the generation that last widened the scope
        self._proven_upto = 0  # tickets before this index were considered by _answer_proven
        # The last final results' order reports: (ledger version, scope, reports).
        self._reports_memo: tuple[int, Scope | None, list[OrderReport]] | None = None
        # Set by hand_over: the account moved to another daemon; no final results here.
        self.handing_over: str | None = None
        # Each handed-over ticket's last progress result, with its sink (see hand_over).
        self.handed_over: list[HandOff] = []

    # ----------------------------------------------------------------- tickets

    def can_take(self, scope: Scope) -> bool:
        """Whether an alert of ``scope`` may join: the sweep's scope and it unite into
        one that covers no order neither asked for (:meth:`Scope.union`)."""
        return self.scope is None or self.scope.union(scope) is not None

    def attach(self, request: KillRequest, progress: ResultSink | None) -> Ticket:
        """Add an alert to this sweep (widening its scope); returns its ticket."""
        return self.attach_many([(request, progress)])[0]

    def attach_many(self, alerts: Sequence[tuple[KillRequest, ResultSink | None]]) -> list[Ticket]:
        """Add several alerts at once (one join: the scope widens and the pass extends
        once for all of them); returns their tickets, in order. Raises
        ``RuntimeError`` when the sweep no longer accepts alerts and ``ValueError``
        when the scopes do not unite exactly (:meth:`can_take`), before any change."""
        if not self.accepting:
            raise RuntimeError("sweep no longer accepts alerts")
        old = self.scope
        scope = _united(old, [r.scope for r, _ in alerts])  # refused before any change
        loop = asyncio.get_running_loop()
        now = loop.time()
        wall = self.clock()
        self.gen += 1
        self._joined_at = now
        deadline = self.deadline
        gen = self.gen
        future = loop.create_future
        tickets: list[Ticket] = []
        for request, progress in alerts:
            age = (wall - request.received_at).total_seconds()
            received = now - age if age > 0.0 else now
            ends = received + request.deadline_s
            # By position (request, scope, progress, join_gen, received_mono, future): an
            # alert storm joins thousands of tickets, and binding keywords cost more than
            # the rest of making one.
            tickets.append(Ticket(request, request.scope, progress, gen, received, future()))
            if request.unchecked_pairs is not None:
                self._unchecked_pairs = True
            if ends > deadline:  # noqa: PLR1730 - max() is a call per alert of a storm
                deadline = ends
        self.tickets.extend(tickets)
        self._awaiting_first_cancel += len(tickets)
        self.scope = scope
        if deadline > self.deadline:
            self.deadline = deadline
            if self._timeout is not None and not self._timeout.expired():
                self._timeout.reschedule(self.deadline + self.settings.settle_grace_s)
            for soft in self._soft:
                if not soft.expired():
                    soft.reschedule(self.deadline)
        if self.scope != old:
            self._widen_gen = self.gen
        if self.started and self.scope != old:
            self._extend_pass()
            if self._widened is not None:
                self._widened.set()
        return tickets

    # --------------------------------------------------------------------- run

    async def run(self) -> None:
        """Run passes until flat, residual, failed or cancelled; then settle every ticket."""
        assert not self.started, "a sweep runs once"
        self.started = True
        if self.scope is None:
            raise RuntimeError("a sweep needs a scope (a ticket or an initial scope)")
        try:
            # The progress loop lives as long as the passes and the settling listing.
            async with task_scope() as tasks:
                tasks.create_task(self._progress_loop(), name=f"{self.name}-progress")
                await self._passes_and_settling()
        except asyncio.CancelledError:
            self.failure = self.failure or "engine stopped before the sweep finished"
            self._stopped = True
            raise
        finally:
            self.accepting = False
            self._timeout = None
            self._pass = None
            await self._settle_in_turns()

    async def _passes_and_settling(self) -> None:
        try:
            # Hard bound: cancels still in flight this long after the deadline are
            # cut off (the passes themselves stop taking work at the deadline).
            hard = self.deadline + self.settings.settle_grace_s
            async with asyncio.timeout_at(hard) as timeout:
                self._timeout = timeout
                await self._passes()
        except TimeoutError:
            if self._timeout is None or not self._timeout.expired():
                self.failure = "internal error: unexpected timeout"
                log.exception("sweep failed", extra={"account": self.account})
            else:
                self._past_deadline()
        except asyncio.CancelledError:
            self.failure = "engine stopped before the sweep finished"
            raise
        except Exception as exc:
            self.failure = self._describe_failure(exc)
        self.accepting = False
        self._timeout = None
        self._pass = None
        if (
            (self._unchecked_pairs or self._refused_unchecked)
            and self.failure is None
            and not self.dry_run
            and self._reread_pass != self.passes  # asked after the last pass already
        ):
            await self._recheck_pairs()
        if self._settle_wanted and self.failure is None and not self.dry_run:
            await self._settle_outcomes()

    def _deadline_passed(self) -> bool:
        return asyncio.get_running_loop().time() >= self.deadline

    def _past_deadline(self) -> None:
        """The deadline ended the sweep: settle outcomes with one final listing, or
        fail it when the exchange is unreachable (the listing would only wait again)."""
        self.accepting = False
        if self._unreachable():
            self.failure = self._unanswered_reason
            return
        if self._without_pairs():
            # Nothing was listed, so nothing can be counted as still open: "0 open"
            # would read as done. The kill could not work.
            self.failure = self._unanswered_reason or (
                "no pair list: the exchange's info did not answer before the deadline"
            )
            return
        self.end_note = "deadline passed before a listing came back empty"
        limiter = getattr(self.client, "limiter", None)  # not every client has one
        if isinstance(limiter, Throttled) and limiter.throttling:
            # Say why the listings never came back: a 429 window longer than the kill.
            self.end_note = "throttled (429) until the deadline: no listing came back empty"
        self._settle_wanted = True

    def _without_pairs(self) -> bool:
        """A whole-account sweep that never had a pair list: it knows of no pair."""
        return self.scope is not None and self.scope.symbols is None and not self._pairs_read

    def _unreachable(self) -> bool:
        """The last passes got no usable answer from the exchange (see
        :data:`MAX_UNANSWERED_LISTINGS`)."""
        return self._unanswered_listings >= MAX_UNANSWERED_LISTINGS

    @contextlib.asynccontextmanager
    async def _until_deadline(self) -> AsyncIterator[None]:
        """Raise TimeoutError in the body at the deadline (moved out when tickets join)."""
        async with asyncio.timeout_at(self.deadline) as soft:
            self._soft.add(soft)
            try:
                yield
            finally:
                self._soft.discard(soft)

    def hand_over(self, reason: str) -> None:
        """The account moved to another daemon: stop without final results.

        Call, then cancel the task running the sweep. Cancels cut off in flight stay
        listed as in flight, so when the sweep settles each open ticket's last progress
        result (counts, per-order outcomes, cancels in flight: what the next owner
        carries over) goes to :attr:`handed_over` with its sink, and the ticket's
        future fails with :class:`~killswitch.core.ports.SweepHandedOver` instead of
        getting a final result. A sweep that never started is settled at once."""
        self.accepting = False
        self.handing_over = reason
        if not self.started:
            for _ in self._settle():
                pass

    def abandon(self, reason: str) -> None:
        """Settle a sweep that will never run (the engine stopped): every ticket gets a
        ``failed`` result."""
        self.accepting = False
        self.failure = reason
        self._stopped = True
        for _ in self._settle():
            pass

    def _describe_failure(self, exc: BaseException) -> str:
        """A one-line reason from what stopped the sweep (task groups wrap exceptions)."""
        leaves = list(_leaves(exc))
        stops = list(dict.fromkeys(str(e) for e in leaves if isinstance(e, SweepStopped)))
        if len(stops) > 1:
            # Concurrent listings of every pair stop alike (a refused key): one says it.
            return f"{stops[0]} (and {len(stops) - 1} more pair(s) stopped alike)"
        if stops:
            return stops[0]
        exchange = [str(e) for e in leaves if isinstance(e, ExchangeError)]
        if exchange:
            return "exchange error: " + "; ".join(dict.fromkeys(exchange))
        log.error("sweep failed", exc_info=exc, extra={"account": self.account})
        return "internal error: " + "; ".join(f"{type(e).__name__}: {e}" for e in leaves)

    async def _passes(self) -> None:
        assert self.scope is not None
        max_passes = self.settings.max_passes
        lagging = 0
        while True:
            if self._deadline_passed():
                self._past_deadline()
                return
            self.passes += 1
            if self.passes * 2 > max_passes:
                # Past half its passes a sweep takes no more alerts: an alert storm would
                # otherwise keep it verifying for late joiners until it ran out of passes.
                # Later alerts form the next sweep, with a pass budget of its own.
                self.accepting = False
            gen = self.gen
            self.ledger.new_pass()
            first_pass = self.passes == 1 and not self.list_first and not self.dry_run
            strategy = effective_strategy(self.settings.strategy, self.scope, first_pass=first_pass)
            p = await self._run_pass(strategy, gen, first_pass)
            ended = self.gen  # joiners after this wait for no listing of this pass
            summary = PassSummary(
                listed=strategy != "symbol" and p.complete,
                found=self.ledger.seen_count(),
                queued=p.queued,
                scope_changed=self.gen != gen,
            )
            if summary.listed:
                self._verified = (gen, self.ledger.seen_this_pass())
                self._blind_list = self._pass_blind
                if summary.found == 0 and summary.scope_changed:
                    # Proven flat for the alerts that joined before this listing began;
                    # the sweep goes on for the ones that joined during it.
                    await self._answer_proven(gen)
            step = next_step(
                summary, passes=self.passes, max_passes=max_passes, dry_run=self.dry_run
            )
            if step is Next.FLAT and await self._flat_goes_on(gen, ended):
                continue
            if step is Next.CONTINUE and self._deadline_passed():
                self._past_deadline()
                return
            if step is Next.CONTINUE:
                lagging = lagging + 1 if self.ledger.recancels() else 0
                pause = max(
                    pause_before_next_pass(lagging),
                    # a listing gave up: let a 429 storm or an error burst pass first
                    pause_before_next_pass(
                        self._unanswered_listings,
                        base_s=UNANSWERED_PAUSE_BASE_S,
                        cap_s=UNANSWERED_PAUSE_CAP_S,
                    ),
                )
                # No pause past the deadline: the sweep ends there, it must not wait on.
                pause = min(pause, self.deadline - asyncio.get_running_loop().time())
                if summary.found == 0 and summary.scope_changed:
                    # Nothing found, only alerts joined: let more join before the
                    # listing that verifies for them.
                    await self._gather_joiners(pause, ended)
                elif pause:
                    await asyncio.sleep(pause)  # let the exchange apply the cancels it took
                continue
            if step is Next.RESIDUAL and self._unreachable():
                self.failure = self._unanswered_reason  # out of passes, none answered
            elif step is Next.RESIDUAL:
                self.end_note = (
                    f"stopped after {self.passes} pass(es) with orders still open"
                    if self.passes >= max_passes
                    else "orders still open that the exchange refused to cancel"
                )
                # The last pass cancelled after its listing: only a listing can say what
                # is still open. (A pass that cancelled nothing is its own final listing.)
                self._settle_wanted = p.queued > 0 or not summary.listed
            self.accepting = False
            return

    async def _flat_goes_on(self, gen: int, ended: int) -> bool:
        """A pass found nothing in scope; True when the sweep still goes on: its listing
        was of the configured pairs and the exchange's own list is back (the next pass
        lists it, and verifies), or more alerts joined (:meth:`_linger`: the next pass
        verifies for them)."""
        if self._blind_list is not None and await self._own_pairs_back():
            return True
        return self.accepting and self.gen > 1 and await self._linger(gen, ended)

    async def _linger(self, gen: int, ended: int) -> bool:
        """A sweep that has had joiners (an alert storm on the account) and just proved
        it flat: answer its alerts now, then gather joiners as between passes before
        ending; True when some joined (the sweep goes on to verify for them). A storm
        then costs one listing per gathering, not a new sweep, and its first listing,
        per handful of alerts. The caller lingers only a sweep that still accepts
        alerts and was joined more than once: a sweep of one join (one kill, or one
        group) ends at once."""
        await self._answer_proven(gen)
        await self._gather_joiners(0.0, ended)
        return self.gen != ended

    async def _answer_proven(self, gen: int) -> None:
        """Answer at once, in turns of :data:`SETTLE_TURN`, every ticket that joined by
        generation ``gen`` and whose result is ``flat`` now: the listing of that
        generation found nothing and nothing is in flight, so its result cannot
        change. An alert storm on one account is then answered a gathering at a
        time, not all at the sweep's end. Others wait for the sweep's end, and so
        does every ticket of a dry run or while a cancel is in flight."""
        if self.dry_run or self.ledger.pending():
            return
        tickets = self.tickets
        mono = asyncio.get_running_loop().time()
        # No pass runs meanwhile (this is the pass loop's own step), so the ledger and
        # the verifying listing stay as they are across the turns: the tickets of one
        # scope share one snapshot for the whole answer. Only joiners (during a turn)
        # may widen the sweep's scope, which the snapshot of the sweep's scope names.
        scope = self.scope
        shared: dict[Scope | None, _Shared] = {}
        flat: list[float] = []  # the turn's answers, for the observer at once
        while self._proven_upto < len(tickets) and tickets[self._proven_upto].join_gen <= gen:
            ticket = tickets[self._proven_upto]
            self._proven_upto += 1
            if ticket.future.done():
                continue
            result = self._reported(ticket, final=True, shared=shared)
            if result.status is not SweepStatus.FLAT:
                continue
            waited = mono - ticket.received_mono
            flat.append(waited if waited > 0.0 else 0.0)  # max() is a call per alert
            ticket.future.set_result(result)
            if len(flat) == SETTLE_TURN:
                self.observer.flat(flat)
                flat = []
                await asyncio.sleep(0)  # each answer wakes a task: let others run
                if self.scope != scope:
                    scope, shared = self.scope, {}
        if flat:
            self.observer.flat(flat)

    async def _gather_joiners(self, at_least: float, ended: int) -> None:
        """Wait for more joining alerts before the next pass (at least ``at_least`` s):
        until none has joined for :data:`JOINERS_GATHER_S`, :data:`JOINERS_GATHER_MAX_S`
        have passed, or the deadline. A joiner after generation ``ended`` (the last
        pass's end) that widens the scope ends the gathering at once: only what is
        left of ``at_least`` (the pause between passes) is still waited.

        Only the wait is shortened; what a listing verifies is unchanged: the next pass
        takes its generation when it begins, so an alert that joined during the
        gathering is verified by that pass's listing or a later one, never an earlier.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = min(start + max(at_least, JOINERS_GATHER_MAX_S), self.deadline)
        widened = self._widened = asyncio.Event()
        if self._widen_gen > ended:  # widened since the pass ended (while answering)
            widened.set()
        try:
            while not widened.is_set():
                # the last join (attach_many stamps it) moves the end of the quiet wait
                quiet = max(self._joined_at, start) + JOINERS_GATHER_S
                until = min(max(quiet, start + at_least), end)
                if loop.time() >= until:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(until):
                        await widened.wait()
        finally:
            self._widened = None
        rest = min(start + at_least, end) - loop.time()  # widened: only the pause is left
        if rest > 0:
            await asyncio.sleep(rest)

    async def _run_pass(self, strategy: StrategyName, gen: int, first_pass: bool) -> _Pass:
        symbols = await self._symbols()
        async with asyncio.TaskGroup() as tg:
            p = _Pass(self.passes, gen, tg, strategy, first_pass)
            p.complete = symbols is not None  # pairs unknown: this pass cannot verify
            self._pass = p
            first: Coroutine[Any, Any, None] | None = None
            for symbol in symbols or ():
                job = self._producer(p, symbol)
                if job is None:
                    continue
                if first is None:
                    first = job
                else:
                    tg.create_task(job, name=f"{self.name}-{symbol}")
            # Workers start when there is work (see _want_workers), and the first
            # producer runs in this task: the first request goes out without waiting
            # for a task switch, behind whatever else the event loop has queued. Named
            # pairs' cancel-alls (no producer): this task is their first worker.
            p.starting = False
            if first is None and len(p.queue):
                p.workers += 1
                first = self._worker(p)
                self._want_workers(p)  # the others, up to the account's concurrency
            # No work yet: the last producer (or worker) closes the pass.
            p.open = p.producers > 0 or p.workers > 0
            if first is not None:
                await first
        self._pass = None
        p.open = False
        return p

    # --------------------------------------------------------------- producers

    async def _symbols(self) -> list[str] | None:
        """Pairs in scope: the scope's own, else every pair the exchange trades.

        None when the exchange info could not be read this time (see
        :data:`MAX_UNANSWERED_LISTINGS`).
        """
        assert self.scope is not None
        if self.scope.symbols is not None:
            return symbols_to_list(self.scope, None)
        try:
            info = await self.client.exchange_info()
        except AuthError as exc:
            raise SweepStopped(f"authentication refused reading exchange info: {exc}") from None
        except ExchangeUnavailable as exc:
            self._listing_unanswered(f"exchange unavailable reading exchange info: {exc}")
            return None
        self._exchange_answered()
        self._pairs_read = True
        self._note_pair_source()
        return symbols_to_list(self.scope, (s.symbol for s in info))

    async def _recheck_pairs(self) -> None:
        """Read the exchange's pair list again (until the deadline at most) for alerts
        whose pairs could not be checked when they arrived (the list was unreadable):
        once it names their pairs, an empty listing proves them flat
        (:meth:`_pairs_confirmed`). A failure leaves them unchecked."""
        read = getattr(self.client, "refresh_pair_list", None)  # not every client has one
        if not callable(read) or self._deadline_passed():
            return
        with contextlib.suppress(ExchangeError, TimeoutError):
            async with asyncio.timeout_at(self.deadline):
                await read()

    def _held_pair_list(self) -> PairList | None:
        """The pair list the client holds now (None from a client that keeps none)."""
        cached = getattr(self.client, "cached_pair_list", None)
        pairs = cached() if callable(cached) else None
        return pairs if isinstance(pairs, PairList) else None

    def _own_pair_list(self) -> PairList | None:
        """The exchange's own pair list as the client holds it (fresh or stale); None
        when there is none, or only the account's configured ``symbols`` (no proof)."""
        pairs = self._held_pair_list()
        return pairs if pairs is not None and list_unchecked_reason(pairs) is None else None

    async def _own_pairs_back(self) -> bool:
        """A whole-account listing of the configured pairs came back empty, which proves
        nothing: ask the exchange for its own pair list once more, as for unchecked
        pairs (:meth:`_recheck_pairs`); True when it answered (fresh or stale). Once
        per sweep: a storm of joiners lingering over the configured pairs must not ask
        per gathering (the client's pause between failed refreshes is there for that)."""
        if self._reread_pass:
            return False
        await self._recheck_pairs()
        self._reread_pass = self.passes  # no second ask before the result (see below)
        return self._own_pair_list() is not None

    def _pairs_confirmed(self, symbols: frozenset[str] | None) -> bool:
        """The exchange's current pair list (as the client holds it) names every pair
        of ``symbols``."""
        pairs = self._held_pair_list()
        return (
            symbols is not None
            and pairs is not None
            and pairs.source == "exchange"
            and symbols <= pairs.symbols
        )

    def _pairs_missing(self, symbols: frozenset[str] | None) -> str | None:
        """Why ``symbols`` are not the exchange's, when its own pair list (as the client
        holds it, read again before the result) lacks some: the intake would have
        refused them. None when there is no such list or it names them all."""
        pairs = self._own_pair_list()  # the configured list: no proof either way
        if symbols is None or pairs is None:
            return None
        missing = sorted(symbols - pairs.symbols)
        return _not_listed_reason(missing, pairs) if missing else None

    def _note_pair_source(self) -> None:
        """Say in the result when the pairs listed were not the exchange's current list;
        remember when this pass's were only the configured list (never proof of flat:
        a listing of them that verifies leaves the result unproven)."""
        pairs = self._held_pair_list()
        if pairs is None:
            return
        blind = self._pass_blind = list_unchecked_reason(pairs)
        if blind is None:
            self._listed_exchange_pairs = True
        if blind is None and pairs.source != "exchange":
            note = f"pairs from the {pairs.source} pair list (exchange-info: {pairs.error})"
            if note not in self.notes:
                self.notes.append(note)

    def _exchange_answered(self) -> None:
        """A usable answer (a page, a cancel outcome): the exchange is reachable."""
        self._unanswered_listings = 0

    def _listing_unanswered(self, what: str) -> None:
        """A listing gave up: its pass is incomplete, the next one lists again."""
        if self._unanswered_pass != self.passes:  # concurrent listings of a pass count once
            self._unanswered_pass = self.passes
            self._unanswered_listings += 1
        self._unanswered_reason = what
        log.warning(
            "listing failed, the next pass lists again",
            extra={"account": self.account, "error": what},
        )

    def _add_producer(self, p: _Pass, symbol: str) -> None:
        job = self._producer(p, symbol)
        if job is None:
            return
        try:
            p.tg.create_task(job, name=f"{self.name}-{symbol}")
        except RuntimeError:  # the pass is ending (deadline, failure): the sweep settles it
            job.close()
            p.producers -= 1

    def _producer(self, p: _Pass, symbol: str) -> Coroutine[Any, Any, None] | None:
        """The listing (or cancel-all) of ``symbol`` in pass ``p``; None if it has one."""
        if symbol in p.symbols:
            return None
        p.symbols.add(symbol)
        self._pairs.add(symbol)
        if self._pair_first(p, symbol):
            self._queue_pair(p, symbol)
            return None
        p.producers += 1
        if p.strategy == "symbol":
            return self._cancel_all(p, symbol)
        return self._list_symbol(p, symbol)

    def _extend_pass(self) -> None:
        """The scope widened: list the new pairs in the running pass already."""
        p = self._pass
        if p is None or not p.open:
            return
        job = self._extend(p)
        try:
            p.tg.create_task(job, name=f"{self.name}-extend")
        except RuntimeError:  # the pass is aborting (a task failed): it ends with the sweep
            job.close()
            return
        p.producers += 1  # held until the new pairs are known, so workers do not quit

    async def _extend(self, p: _Pass) -> None:
        try:
            symbols = await self._symbols()
            if symbols is None:
                p.complete = False
            for symbol in symbols or ():
                self._add_producer(p, symbol)
        finally:
            self._producer_done(p)

    def _producer_done(self, p: _Pass) -> None:
        p.producers -= 1
        p.wake.set()
        if p.producers == 0 and p.workers == 0:
            p.open = False  # nothing queued and nobody left to queue it: the pass ends

    def _pair_first(self, p: _Pass, symbol: str) -> bool:
        """Strategy ``auto``: whether this named pair's cancel-all goes before its listing."""
        assert self.scope is not None
        return symbol not in p.no_bulk and cancel_pair_first(
            p.strategy,
            self.scope,
            first_pass=p.first and not self._unchecked_pairs,
            enabled=self.settings.cancel_named_pairs_first,
            refused=self._unusable(),
        )

    def _queue_pair(self, p: _Pass, symbol: str) -> None:
        """Queue a named pair's cancel-all before any listing (:meth:`_cancel_pair` sends
        it and handles its answer; a refusal lists the pair in this pass). This pass does
        not list the pair, so it cannot verify: the next pass's listing does."""
        p.bulk[symbol] = []
        p.queue.push(NAMED_PAIR_KEY, WHOLE_PAIR, symbol)
        p.complete = False
        if not p.starting:  # at the start of the pass, _run_pass starts the workers
            self._want_workers(p)
        p.wake.set()

    async def _list_symbol(self, p: _Pass, symbol: str) -> None:
        ledger = self.ledger
        ledger.listing_started(symbol)
        try:
            async with (
                self._until_deadline(),
                _closing(self.client.open_orders(symbol, limit=self.settings.page_size)) as pages,
            ):
                first = True
                async for page in pages:
                    if first and self._whole_pair(p, symbol, page):
                        return  # one cancel-all covers the rest: the next pass verifies
                    first = False
                    self._take_page(p, page)
            ledger.listing_finished(symbol)
            self._exchange_answered()
        except TimeoutError:
            p.complete = False  # the deadline: the sweep settles with a final listing
        except AuthError as exc:
            raise SweepStopped(f"authentication refused listing {symbol}: {exc}") from None
        except ExchangeUnavailable as exc:
            p.complete = False
            self._listing_unanswered(f"exchange unavailable listing {symbol}: {exc}")
        except (InvalidRequest, NotFound, Redirected) as exc:  # a redirect stops the sweep there
            await self._unlistable(p, symbol, exc)
        finally:
            self._producer_done(p)

    def _take_page(self, p: _Pass, page: list[Order]) -> None:
        scope = self.scope  # read per page: a widened scope applies to the rest of the listing
        assert scope is not None
        ledger = self.ledger
        self._exchange_answered()
        for order in page:
            if not in_scope(scope, order):
                continue
            if not ledger.observe(order.order_id, order.symbol, order.side):
                continue
            if self.dry_run:
                ledger.conclude(order.order_id, Outcome.SKIPPED)
                continue
            p.queue.push(priority_key(self.settings.priority, order), order.order_id, order.symbol)
            p.queued += 1
        self._want_workers(p)
        p.wake.set()

    def _whole_pair(self, p: _Pass, symbol: str, page: list[Order]) -> bool:
        """Strategy ``auto``: queue the pair as one cancel-all after its first page.

        True when done (the listing of the pair stops here). The cancel-all is queued
        under the key of the best order on the page, so priority still holds across
        pairs; the page's orders are resolved now and settled by its answer.
        """
        if p.strategy != "auto" or self.dry_run or not p.open or symbol in p.no_bulk:
            return False
        scope = self.scope
        assert scope is not None
        wanted = [o for o in page if in_scope(scope, o)]
        if not cancel_whole_pair(
            scope,
            first_page=len(page),
            in_scope_on_page=len(wanted),
            page_size=self.settings.page_size,
            refused=self._unusable(),
        ):
            return False
        self._exchange_answered()
        ledger = self.ledger
        entries: list[tuple[PriorityKey, int]] = []
        for order in wanted:
            if ledger.observe(order.order_id, order.symbol, order.side):
                entries.append((priority_key(self.settings.priority, order), order.order_id))
        if not entries:
            return False  # nothing here we would cancel again (rejected): list on
        p.bulk[symbol] = entries
        p.queue.push(min(key for key, _ in entries), WHOLE_PAIR, symbol)
        p.queued += len(entries)
        p.complete = False
        self._want_workers(p)
        p.wake.set()
        return True

    async def _unlistable(self, p: _Pass, symbol: str, exc: ExchangeError) -> None:
        """The exchange refused to list a pair: unknown pair (no orders) or a failure.

        Only the exchange's own pair list tells them apart. Without it (exchange-info
        failing: the configured ``symbols`` are no proof a pair exists) the pair stays
        unlisted, so no result covering it is flat, and the sweep goes on with the
        other pairs; the result names the pair (:meth:`_refusal_notes`), by what the
        exchange's list, read again before the result, says of it. A redirect says
        nothing of the pair (``base_url`` is wrong): it stops the sweep then."""
        known = await self._exchange_pairs()
        if known is None and not isinstance(exc, Redirected):
            self._refused_unchecked.setdefault(symbol, str(exc))
            return
        self._refused_unchecked.pop(symbol, None)
        if known is None or symbol in known:
            raise SweepStopped(f"exchange refused to list {symbol}: {exc}") from None
        # Not in the pair list (delisted since the scope was checked, or never checked):
        # a refusal to list proves nothing, so the pair stays unlisted and no result
        # covering it can be flat (see result_for).
        note = _not_traded(symbol)
        if note not in self.notes:
            self.notes.append(note)

    async def _exchange_pairs(self) -> frozenset[str] | None:
        """The exchange's own pair list (fresh or stale); None when it cannot be had
        now (no list at all, or only the account's configured ``symbols``)."""
        try:
            info = await self.client.exchange_info()
        except ExchangeError:
            return None
        pairs = self._held_pair_list()
        if pairs is not None and list_unchecked_reason(pairs) is not None:
            return None
        return frozenset(s.symbol for s in info)

    def _refusal_notes(self) -> list[str]:
        """What the result says of pairs the exchange refused to list while its pair
        list could not tell whether it trades them (:meth:`_unlistable`), by what the
        list the client holds now says: not traded, or a refusal of a traded pair, or
        still unchecked. Pairs listed to the end since are left out."""
        refused = self._refused_unchecked
        if not refused:
            return []
        listed = self.ledger.listed_pairs()
        pairs = self._own_pair_list()
        own = pairs.symbols if pairs is not None else None
        notes: list[str] = []
        for symbol, why in sorted(refused.items()):
            if symbol in listed:
                continue
            if own is None:
                notes.append(
                    f"{symbol} unchecked: the exchange refused to list it ({why}) and its "
                    "pair list could not be read to tell whether it trades the pair"
                )
            elif symbol in own:
                notes.append(f"exchange refused to list {symbol}: {why}")
            else:
                notes.append(_not_traded(symbol))
        return notes

    async def _cancel_all(self, p: _Pass, symbol: str) -> None:
        """Strategy ``symbol``: cancel a whole pair, then ``fail`` ids one by one."""
        try:
            self._note_cancel(symbol, None)
            result = await self.client.cancel_all(symbol)
            if result.outcome is not None:
                self._bulk_refused(symbol, result)
                p.complete = False
                return
            self._exchange_answered()
            for order_id in result.success:
                if self.ledger.adopt(order_id, symbol):
                    self.ledger.conclude(order_id, Outcome.SENT, result.attempts)
                    p.queued += 1
            for order_id in unanswered(result.fail, ()):
                self.ledger.adopt(order_id, symbol)
                if self.ledger.record(order_id).outcome is None:
                    self.ledger.hand_back(order_id)
                    p.singles.append((symbol, order_id))
                    p.queued += 1
            self._want_workers(p)
        finally:
            self._producer_done(p)

    def _clock_hint(self, endpoint: str) -> str:
        """What a cancel's authentication refusal adds when the clock may be its cause
        (a listing's error says it already): the client's hint, or nothing."""
        hint = getattr(self.client, "auth_clock_hint", None)  # not every client has one
        text = hint(endpoint) if callable(hint) else ""
        return f"; {text}" if text else ""

    def _bulk_refused(self, symbol: str, result: BatchCancelResult) -> None:
        if result.reason is RejectReason.AUTH:
            raise SweepStopped(
                f"authentication refused cancelling on {symbol} (invalid_client)"
                + self._clock_hint("cancel_all")
            )
        # Not fatal: the next pass lists the pair and cancels order by order.
        assert result.outcome is not None
        self.notes.append(f"cancel-all on {symbol} {result.outcome.value}")
        self._note_redirect(result.error if result.reason is RejectReason.REDIRECT else None)

    def _note_redirect(self, problem: str | None) -> None:
        """Name a redirect (and where it points) in the result's reason, once."""
        if problem and problem not in self.notes:
            self.notes.append(problem)

    # ----------------------------------------------------------------- workers

    def _want_workers(self, p: _Pass) -> None:
        """Start workers for what is queued, up to the account's concurrency.

        On demand rather than at the start of a pass: a listing goes out before any
        worker exists, one order gets one worker, and a pass that finds nothing
        starts none. Workers stop only when the pass is idle (they close it)."""
        if self.dry_run or not p.open:
            return
        per_request, _ = bulk_plan(p.strategy, self.settings.batch_size, self._unusable())
        work = len(p.singles) + p.queue.requests(per_request)
        idle = p.workers - p.busy
        for _ in range(min(self.workers - p.workers, work - idle)):
            job = self._worker(p)
            try:
                p.tg.create_task(job, name=f"{self.name}-w{p.workers + 1}")
            except RuntimeError:  # an answer arriving while the pass ends: nobody to work
                job.close()
                return
            p.workers += 1

    async def _worker(self, p: _Pass) -> None:
        try:
            await self._work(p)
        finally:
            p.workers -= 1

    async def _work(self, p: _Pass) -> None:
        while True:
            if self._deadline_passed():
                return  # no new cancels; the ones in flight may still answer
            if p.singles:
                symbol, order_id = p.singles.popleft()
                await self._busy(p, self._cancel_one(symbol, order_id))
                continue
            # Read per request: a batch refusal switches the account to per-order.
            per_request, use_batch = bulk_plan(
                p.strategy, self.settings.batch_size, self._unusable()
            )
            item = p.queue.pop(per_request)
            if item is None:
                if p.idle():
                    p.open = False
                    p.wake.set()
                    return
                p.wake.clear()
                await p.wake.wait()
                continue
            symbol, ids = item
            if ids[0] == WHOLE_PAIR:
                await self._busy(p, self._cancel_pair(p, symbol))
            elif use_batch and (len(ids) > 1 or p.strategy == "batch"):
                await self._busy(p, self._cancel_batch(p, symbol, ids))
            else:
                await self._busy(p, self._cancel_one(symbol, ids[0]))

    async def _busy(self, p: _Pass, job: Awaitable[None]) -> None:
        p.busy += 1
        try:
            await job
        finally:
            p.busy -= 1
            p.wake.set()

    def _cut_off(self, ids: list[int]) -> None:
        """Cancels stopped unanswered (the task was cancelled). Handing over, they stay
        in flight for the last progress result: the exchange may still apply them."""
        if self.handing_over is not None:
            return
        for order_id in ids:
            self.ledger.abandon(order_id, sent=True)

    async def _cancel_one(self, symbol: str, order_id: int) -> None:
        ledger = self.ledger
        ledger.begin(order_id)
        self._note_cancel(symbol, order_id)
        try:
            result = await self.client.cancel_order(order_id, symbol)
        except asyncio.CancelledError:
            self._cut_off([order_id])
            raise
        except AuthError as exc:
            ledger.conclude(order_id, Outcome.REJECTED, 1, RejectReason.AUTH)
            raise SweepStopped(
                f"authentication refused cancelling order {order_id}: {exc}"
            ) from None
        except ExchangeError as exc:
            # The client reports exchange answers as outcomes; anything raised is a failure.
            log.warning("cancel of %s raised %s", order_id, exc, extra={"account": self.account})
            ledger.conclude(order_id, Outcome.FAILED, 1)
            return
        ledger.conclude(order_id, result.outcome, result.attempts, result.reason)
        if result.reason is RejectReason.REDIRECT:
            self._note_redirect(result.error)
        if result.outcome is not Outcome.FAILED:
            self._exchange_answered()
        if result.outcome is Outcome.REJECTED and result.reason is RejectReason.AUTH:
            raise SweepStopped(
                f"authentication refused (invalid_client) cancelling order {order_id} on {symbol}"
                + self._clock_hint("cancel")
            )

    async def _cancel_batch(self, p: _Pass, symbol: str, ids: list[int]) -> None:
        ledger = self.ledger
        for order_id in ids:
            ledger.begin(order_id)
        self._note_cancel(symbol, ids[0])
        try:
            result = await self.client.cancel_batch(symbol, ids)
        except asyncio.CancelledError:
            self._cut_off(ids)
            raise
        if result.outcome is not None:
            if result.reason is RejectReason.AUTH:
                for order_id in ids:
                    ledger.conclude(order_id, Outcome.REJECTED, result.attempts, result.reason)
                raise SweepStopped(
                    f"authentication refused (invalid_client) batch-cancelling on {symbol}"
                    + self._clock_hint("cancel_batch")
                )
            if result.outcome is Outcome.FAILED:
                # The exchange is struggling: per-order retries would multiply the load.
                # These orders are retried by the next pass if they are still listed.
                for order_id in ids:
                    ledger.conclude(order_id, Outcome.FAILED, result.attempts)
                self._bulk_failed("cancel_batch", result)
                return
            if endpoint_refused(result.status) and "cancel_batch" not in self.refused:
                self.refused.add("cancel_batch")  # no batch cancel here (or it redirects)
                self.notes.append(f"batch cancel refused ({_refusal(result)}): per-order")
            retry = list(ids)  # batch refused as a whole (size, format): one by one
        else:
            self._exchange_answered()
            self._bulk_failures.pop("cancel_batch", None)
            asked = set(ids)
            for order_id in dict.fromkeys(result.success):
                if order_id in asked:  # an id we did not send is none of our business
                    ledger.conclude(order_id, Outcome.SENT, result.attempts)
            retry = unanswered(ids, result.success)
        self._hand_back(p, symbol, retry, result.attempts)

    async def _cancel_pair(self, p: _Pass, symbol: str) -> None:
        """Strategy ``auto``: one cancel-all for a pair queued by :meth:`_whole_pair` (with
        its first page's orders) or by :meth:`_queue_pair` (none known yet)."""
        ledger = self.ledger
        entries = p.bulk.pop(symbol, [])
        if "cancel_all" in self._unusable():  # refused (or given up) since it was queued
            self._unbulk(p, symbol, entries)
            return
        ids = [order_id for _, order_id in entries]
        for order_id in ids:
            ledger.begin(order_id)
        self._note_cancel(symbol, None)
        try:
            result = await self.client.cancel_all(symbol)
        except asyncio.CancelledError:
            self._cut_off(ids)
            raise
        if result.outcome is None:
            self._exchange_answered()
            self._bulk_failures.pop("cancel_all", None)
            self._apply_bulk(p, symbol, ids, result)
            return
        if result.reason is RejectReason.AUTH:
            for order_id in ids:
                ledger.conclude(order_id, Outcome.REJECTED, result.attempts, result.reason)
            raise SweepStopped(
                f"authentication refused (invalid_client) cancelling on {symbol}"
                + self._clock_hint("cancel_all")
            )
        if result.outcome is Outcome.FAILED:
            # The exchange is struggling: the next pass lists the pair and cancels again.
            for order_id in ids:
                ledger.conclude(order_id, Outcome.FAILED, result.attempts)
            self._bulk_failed("cancel_all", result)
            return
        if endpoint_refused(result.status) and "cancel_all" not in self.refused:
            self.refused.add("cancel_all")  # no cancel-all here (or it redirects)
            self.notes.append(f"cancel-all refused ({_refusal(result)}): batch cancels")
        for order_id in ids:
            ledger.hand_back(order_id, result.attempts)
        self._unbulk(p, symbol, entries)

    def _unusable(self) -> set[str]:
        """Bulk endpoints not to use: refused by the exchange (remembered per account),
        or given up in this sweep after failing as a whole (:meth:`_bulk_failed`)."""
        return self.refused | self._bulk_given_up if self._bulk_given_up else self.refused

    def _bulk_failed(self, endpoint: str, result: BatchCancelResult) -> None:
        """A bulk cancel failed as a whole (retries exhausted). Not counted while the last
        listing went unanswered (an outage fails everything alike); at
        :data:`BULK_FAILURES_TO_GIVE_UP` in a row the endpoint is given up for the sweep,
        at once when its last attempt hung (each such failure costs the call's whole
        request deadline)."""
        if self._unanswered_listings or endpoint in self._bulk_given_up:
            return
        failures = self._bulk_failures[endpoint] = self._bulk_failures.get(endpoint, 0) + 1
        if failures >= BULK_FAILURES_TO_GIVE_UP or result.error in _HUNG:
            self._bulk_given_up.add(endpoint)
            lower = "batch cancels" if endpoint == "cancel_all" else "per-order cancels"
            last = f"last HTTP {result.status}" if result.status else f"last {result.error}"
            self.notes.append(
                f"{endpoint.replace('_', '-')} failed {failures} time(s) in a row "
                f"({result.attempts} attempt(s) each, {last}): given up for the rest of "
                f"this kill, {lower} instead"
            )

    def _unbulk(self, p: _Pass, symbol: str, entries: list[tuple[PriorityKey, int]]) -> None:
        """A pair's cancel-all is not possible: its orders go batch / per-order in this pass.

        The first page's orders are queued again and the pair is listed from the start
        (orders this pass has seen are not queued twice).
        """
        p.no_bulk.add(symbol)
        for key, order_id in entries:
            p.queue.push(key, order_id, symbol)
        p.symbols.discard(symbol)
        self._add_producer(p, symbol)
        self._want_workers(p)
        p.wake.set()

    def _apply_bulk(
        self, p: _Pass, symbol: str, expected: list[int], result: BatchCancelResult
    ) -> None:
        """A cancel-all's answer: ``success`` ids are sent; ids in ``fail``, and expected
        ids in neither list, get a per-order cancel."""
        ledger = self.ledger
        for order_id in dict.fromkeys(result.success):
            ledger.adopt(order_id, symbol)  # an order the first page did not show
            ledger.conclude(order_id, Outcome.SENT, result.attempts)
        asked = set(expected)
        retry: list[int] = []
        for order_id in unanswered([*expected, *result.fail], result.success):
            ledger.adopt(order_id, symbol)
            if order_id in asked or ledger.record(order_id).outcome is None:
                retry.append(order_id)
        self._hand_back(p, symbol, retry, result.attempts)

    def _hand_back(self, p: _Pass, symbol: str, ids: list[int], attempts: int) -> None:
        """Orders a batch did not cancel, to be cancelled one by one (all workers may help)."""
        for order_id in ids:
            self.ledger.hand_back(order_id, attempts)
            p.singles.append((symbol, order_id))
        if ids:
            self._want_workers(p)
        p.wake.set()

    def _note_cancel(self, symbol: str, order_id: int | None) -> None:
        """A cancel request is about to go out: first-cancel timing per ticket."""
        if self._awaiting_first_cancel == 0:
            return
        now = self.clock()
        mono = asyncio.get_running_loop().time()
        if self.first_cancel_at is None:
            self.first_cancel_at = now
        record = self.ledger.record(order_id) if order_id is not None else None
        for ticket in self.tickets:
            if ticket.first_cancel_at is not None:
                continue
            scope = ticket.scope
            hit = (
                scope.covers(record.symbol, record.side, order_id)
                if record is not None and order_id is not None
                else scope.covers_pair(symbol)
            )
            if hit:
                ticket.first_cancel_at = now
                self._awaiting_first_cancel -= 1
                self.observer.first_cancel(max(0.0, mono - ticket.received_mono))

    # ------------------------------------------------------------- reporting

    def _reported(
        self, ticket: Ticket, *, final: bool, shared: dict[Scope | None, _Shared] | None = None
    ) -> SweepResult:
        """:meth:`result_for` as published: a progress result lists the outcomes so far
        and the cancels in flight while they fit one record, and a replayed alert's
        results include what an earlier process published for it
        (:mod:`killswitch.core.carry`)."""
        result = self.result_for(ticket, final=final, shared=shared)
        if not final and len(self.ledger) <= RESULT_MAX_ORDERS:
            scope = None if ticket.scope == self.scope else ticket.scope
            facts = shared.get(scope) if shared is not None else None
            lists = facts.progress if facts is not None else None
            if lists is None:
                # A crash now leaves these cancels to the exchange: a replay must count them.
                lists = (self.ledger.reports(scope), self.ledger.in_flight_orders(scope))
                if facts is not None:
                    facts.progress = lists
            result.orders, result.in_flight = lists
        carried = ticket.request.carried
        return result if carried is None else carry_over(result, carried)

    async def _progress_loop(self) -> None:
        interval = self.settings.progress_interval_s
        while True:
            await asyncio.sleep(interval)
            # Tickets of one scope share one snapshot of the ledger (taken afresh after
            # each turn of the event loop, when the ledger may have moved on).
            shared: dict[Scope | None, _Shared] = {}
            for n, ticket in enumerate(list(self.tickets), start=1):
                if n % SETTLE_TURN == 0:
                    await asyncio.sleep(0)  # thousands of coalesced alerts: let others run
                    shared = {}
                if ticket.progress is None or ticket.future.done():
                    continue
                try:
                    await ticket.progress(self._reported(ticket, final=False, shared=shared))
                except Exception:  # a sink problem must not stop the sweep
                    log.exception("progress sink failed", extra={"account": self.account})

    async def _settle_outcomes(self) -> None:
        """List every pair in scope once more, within ``settle_grace_s``.

        Orders the final listing does not show are settled by the ledger (``sent``
        after a cancel, never ``failed``); a complete listing that finds nothing in
        scope verifies the sweep flat.
        """
        grace = self.settings.settle_grace_s
        if grace <= 0:
            return
        assert self.scope is not None
        symbols = (
            symbols_to_list(self.scope, None) if self.scope.symbols is not None else self._pairs
        )
        self.ledger.new_pass()
        gen = self.gen
        complete: list[bool] = []
        try:
            async with asyncio.timeout(grace), asyncio.TaskGroup() as tg:
                for symbol in sorted(symbols):
                    tg.create_task(self._final_listing(symbol, complete))
        except TimeoutError:
            pass
        if symbols and len(complete) == len(symbols) and all(complete):
            self._verified = (gen, self.ledger.seen_this_pass())
            self._blind_list = None if self._listed_exchange_pairs else self._pass_blind

    async def _final_listing(self, symbol: str, complete: list[bool]) -> None:
        """One pair's last listing: record what is open, cancel nothing."""
        scope = self.scope
        assert scope is not None
        ledger = self.ledger
        ledger.listing_started(symbol)
        try:
            async with _closing(
                self.client.open_orders(symbol, limit=self.settings.page_size)
            ) as pages:
                async for page in pages:
                    for order in page:
                        if in_scope(scope, order):
                            ledger.observe(order.order_id, order.symbol, order.side)
        except ExchangeError as exc:
            log.warning("final listing failed", extra={"account": self.account, "error": str(exc)})
            complete.append(False)
            return
        ledger.listing_finished(symbol, final=True)
        complete.append(True)

    async def _settle_in_turns(self) -> None:
        """:meth:`_settle`, letting the event loop run every :data:`SETTLE_TURN`
        tickets: a sweep that coalesced a storm of alerts has thousands to answer, and
        each answer wakes the alert's own task; other accounts' kills must not wait
        for all of them. A cancellation meanwhile settles the rest at once, then
        propagates."""
        cancelled: asyncio.CancelledError | None = None
        for _ in self._settle(turn=SETTLE_TURN):
            if cancelled is not None:
                continue
            try:
                await asyncio.sleep(0)  # a turn for the rest of the event loop
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled

    def _settle(self, turn: int = 0) -> Iterator[None]:
        """End of sweep: final outcomes, metrics, and one final result per ticket;
        yields after every ``turn`` tickets (0: never). Run it to its end. A sweep
        handed over settles its open tickets without final results instead."""
        if self.handing_over is not None:
            self._settle_handed_over(self.handing_over)
            return
        self.ledger.finalise()  # queued or in flight when the sweep stopped: failed
        if self.failure is not None and not self._stopped:  # a stop is no failed kill
            self.observer.sweep_failed(self.account)
        if not self.dry_run:
            wanted = self.scope.symbols if self.scope is not None else None
            residual = self.ledger.residual(self.scope)
            self.observer.residual(self.account, residual, len(self._unlisted(wanted)))
        mono = asyncio.get_running_loop().time()
        # Coalesced alerts mostly share one scope: their per-order reports, counts and
        # residual are computed once per scope, not once per alert.
        shared: dict[Scope | None, _Shared] = {}
        flat: list[float] = []  # the turn's flat answers, for the observer at once
        for done, ticket in enumerate(self.tickets, start=1):
            if ticket.future.done():  # answered early (_answer_proven)
                continue
            result = self._reported(ticket, final=True, shared=shared)
            if result.status is SweepStatus.FLAT:
                flat.append(max(0.0, mono - ticket.received_mono))
            if not ticket.future.done():
                ticket.future.set_result(result)
            if turn and done % turn == 0 and done < len(self.tickets):
                if flat:
                    self.observer.flat(flat)
                    flat = []
                yield
        if flat:
            self.observer.flat(flat)

    def _settle_handed_over(self, reason: str) -> None:
        """Each open ticket: its last progress result (before anything in flight is
        settled), then :class:`SweepHandedOver` instead of a final result."""
        for ticket in self.tickets:
            if ticket.future.done():
                continue
            if self.started and ticket.progress is not None:
                self.handed_over.append((ticket.progress, self._reported(ticket, final=False)))
            ticket.future.set_exception(SweepHandedOver(reason))
            ticket.future.exception()  # retrieved: its waiter may be gone already

    def result_for(
        self, ticket: Ticket, *, final: bool, shared: dict[Scope | None, _Shared] | None = None
    ) -> SweepResult:
        """The result (final or progress) of one ticket, filtered to its scope.

        ``shared`` (valid while the ledger does not change) keeps what depends on the
        scope alone, for the next ticket with the same scope; the results then share
        one ``orders`` list, which nobody may modify."""
        own = ticket.scope
        # A run of alike alerts shares one scope object, the sweep's first among them.
        scope = None if own is self.scope or own == self.scope else own
        ledger = self.ledger
        facts = shared.get(scope) if shared is not None else None
        if facts is None:
            facts = _Shared(
                residual=ledger.residual(scope if scope is not None else self.scope),
                counts=ledger.counts(scope),
                orders=self._reports(scope) if final else [],
            )
            if shared is not None:
                shared[scope] = facts
        residual = facts.residual
        request = ticket.request
        if final:
            if facts.final is None:
                facts.final = (
                    self._unlisted(ticket.scope.symbols),
                    _not_found(ticket.scope, ledger) if self._listed_all(ticket) else [],
                    self.clock(),
                )
            unlisted, not_found, finished_at = facts.final
            # The tickets of one scope differ here only in these three and in their
            # alert's own fields: one result template for each combination.
            key = (request.dry_run, self._verified_for(ticket, facts), self._unchecked(ticket))
            template = facts.decided.get(key)
            if template is None:
                status, reason = self._decide(*key, residual, unlisted)
                template = facts.decided[key] = _result_template(
                    account=self.account,
                    status=status,
                    final=True,
                    dry_run=request.dry_run,
                    counts=facts.counts,
                    residual_open=residual,
                    sweeps=self.passes,
                    finished_at=finished_at,
                    orders=facts.orders,
                    reason=reason,
                    pending=0,
                    not_found=not_found,
                    pairs_listed=None,
                    pairs_in_scope=None,
                    unlisted_pairs=unlisted,
                )
            return _from_template(template, ticket)
        listed, in_scope_pairs = self._pair_progress(ticket)
        return SweepResult(
            alert_id=request.alert_id,
            account=self.account,
            status=SweepStatus.RUNNING,
            final=False,
            dry_run=request.dry_run,
            counts=facts.counts,
            residual_open=residual,
            sweeps=self.passes,
            received_at=request.received_at,
            first_cancel_at=ticket.first_cancel_at,
            finished_at=None,
            orders=[],
            reason=None,
            operator=request.operator,
            source=request.source,
            pending=ledger.pending(),
            not_found=[],
            trigger_reason=request.reason,
            pairs_listed=listed,
            pairs_in_scope=in_scope_pairs,
            unlisted_pairs=[],
        )

    def _reports(self, scope: Scope | None) -> list[OrderReport]:
        """``ledger.reports(scope)`` for final results, kept while the ledger's records
        stay unchanged (its ``version``): a lingering sweep answers a storm's alerts a
        gathering at a time, and its answers list the same orders. One list for all of
        them is converted and written once (``ResultRecord.of``, ``encode_results``)."""
        memo = self._reports_memo
        version = self.ledger.version
        if memo is not None and memo[0] == version and memo[1] == scope:
            return memo[2]
        reports = self.ledger.reports(scope)
        self._reports_memo = (version, scope, reports)
        return reports

    def _decide(
        self,
        dry_run: bool,
        verified: bool,
        unproven: str | None,
        residual: int,
        unlisted: list[str],
    ) -> tuple[SweepStatus, str | None]:
        """A final result's status and reason (see :meth:`result_for`)."""
        status = final_status(
            dry_run=dry_run, failure=self.failure, verified=verified, residual_in_scope=residual
        )
        if unproven is None and status is SweepStatus.FLAT and unlisted:
            # The same pairs the result names in unlisted_pairs, so a flat never
            # names any (_reason names them).
            unproven = "not flat: a pair in scope was never listed to the end"
        if unproven is not None and status is not SweepStatus.FAILED:
            status = SweepStatus.RESIDUAL  # failed says more: the kill could not work
        return status, "; ".join(filter(None, (unproven, self._reason(status, unlisted)))) or None

    def _pair_progress(self, ticket: Ticket) -> tuple[int | None, int | None]:
        """Pairs of the ticket's scope listed to the end, of those the sweep set out on."""
        pairs = set(self._pairs)
        if ticket.scope.symbols is not None:
            pairs &= ticket.scope.symbols
        if not pairs:
            return None, None
        return len(pairs & self.ledger.listed_pairs()), len(pairs)

    def _unchecked(self, ticket: Ticket) -> str | None:
        """Why the ticket's pairs were never checked against the exchange's own list:
        its scope pairs (decided at intake; None once the exchange's list names them),
        or the configured list a whole-account pass listed (pairs outside it were never
        looked at)."""
        unchecked = ticket.request.unchecked_pairs
        if unchecked is not None and not self._pairs_confirmed(ticket.scope.symbols):
            return self._pairs_missing(ticket.scope.symbols) or unchecked
        return self._blind_list if ticket.scope.symbols is None else None

    def _listed_all(self, ticket: Ticket) -> bool:
        """Every pair the ticket concerns was listed to the end (so an id never seen
        is known not to be open there); False when nothing was listed at all."""
        wanted = ticket.scope.symbols
        concerned = set(wanted) if wanted is not None else self._pairs
        return bool(concerned) and concerned <= self.ledger.listed_pairs()

    def _verified_for(self, ticket: Ticket, facts: _Shared) -> bool:
        """A complete listing that began after the ticket joined found nothing in its
        scope (what it found is looked at once per scope: ``facts``)."""
        verified = self._verified
        if verified is None or verified[0] < ticket.join_gen:
            return False
        if facts.found is None or facts.found[0] is not verified:
            ledger = self.ledger
            found = any(
                oid in ledger and ticket.scope.covers((r := ledger.record(oid)).symbol, r.side, oid)
                for oid in verified[1]
            )
            facts.found = (verified, found)
        return not facts.found[1]

    def _unlisted(self, wanted: frozenset[str] | None) -> list[str]:
        """Pairs in scope never listed to the end, sorted: of ``wanted`` (a scope's own
        pairs), else of every pair the sweep set out to list or cancel."""
        pairs = self._pairs if wanted is None else wanted
        return sorted(pairs - self.ledger.listed_pairs())

    def _reason(self, status: SweepStatus, unlisted: list[str]) -> str | None:
        parts: list[str] = []
        if status is SweepStatus.FAILED and self.failure:
            parts.append(self.failure)
        elif status is SweepStatus.RESIDUAL and self.end_note:
            parts.append(self.end_note)
        if status is SweepStatus.RESIDUAL and unlisted:
            # residual_open counts what listings returned: say where nobody looked.
            shown = ", ".join(unlisted[:10]) + (" ..." if len(unlisted) > 10 else "")
            parts.append(
                f"never listed to the end: {shown} (open orders there are not in residual_open)"
            )
        parts.extend(self.notes)
        parts.extend(self._refusal_notes())
        return "; ".join(parts) or None


# Final results are built positionally from a template made once per scope and decision:
# binding SweepResult's twenty-odd keyword arguments once per alert of a storm costs as
# much as the rest of its answer. Positions come from the fields' names.
_RESULT_AT = {f.name: i for i, f in enumerate(dataclasses.fields(SweepResult))}
_ALERT_ID = _RESULT_AT["alert_id"]
_RECEIVED_AT = _RESULT_AT["received_at"]
_FIRST_CANCEL_AT = _RESULT_AT["first_cancel_at"]
_OPERATOR = _RESULT_AT["operator"]
_SOURCE = _RESULT_AT["source"]
_TRIGGER_REASON = _RESULT_AT["trigger_reason"]
_PER_ALERT = frozenset(
    {_ALERT_ID, _RECEIVED_AT, _FIRST_CANCEL_AT, _OPERATOR, _SOURCE, _TRIGGER_REASON}
)


def _result_template(**given: Any) -> list[Any]:
    """SweepResult's positional arguments, by name from ``given``, up to the last field
    given; the alert's own fields (:func:`_from_template`) are left to fill. A field not
    given takes its default, but one with a default factory must be given: a template's
    values are shared by every result made from it."""
    args: list[Any] = []
    named = {_RESULT_AT[name] for name in given} | _PER_ALERT
    for i, f in enumerate(dataclasses.fields(SweepResult)[: max(named) + 1]):
        if f.name in given:
            args.append(given[f.name])
        elif f.default is not dataclasses.MISSING:
            args.append(f.default)
        elif i in _PER_ALERT:
            args.append(None)
        else:
            raise TypeError(f"a result template needs {f.name}")
    return args


def _from_template(template: list[Any], ticket: Ticket) -> SweepResult:
    """A final result from ``template`` (:func:`_result_template`) and the ticket's own
    alert."""
    args = template.copy()
    request = ticket.request
    args[_ALERT_ID] = request.alert_id
    args[_RECEIVED_AT] = request.received_at
    args[_FIRST_CANCEL_AT] = ticket.first_cancel_at
    args[_OPERATOR] = request.operator
    args[_SOURCE] = request.source
    args[_TRIGGER_REASON] = request.reason
    return SweepResult(*args)


def _not_listed_reason(missing: list[str], pairs: PairList) -> str:
    """Why a kill naming pairs its exchange's pair list lacks (``missing``) is not flat."""
    source = "" if pairs.source == "exchange" else f"{pairs.source} "
    return (
        f"the exchange does not list {', '.join(missing)} (its {source}pair list, read"
        " before this result; pair names are case-sensitive): an empty listing there does"
        " not prove flat"
    )


def _not_traded(symbol: str) -> str:
    """A result's note on a pair the exchange's own list does not name."""
    return f"{symbol} is not traded on the exchange (it refused to list it)"


def _refusal(result: BatchCancelResult) -> str:
    """A refused bulk cancel in a reason: its HTTP status, or what its redirect means."""
    return result.error or f"HTTP {result.status}"


def _not_found(scope: Scope, ledger: Ledger) -> list[int]:
    """Order ids the scope names that no listing (or cancel answer) ever showed."""
    if not scope.order_ids:
        return []
    return sorted(oid for oid in scope.order_ids if oid not in ledger)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@contextlib.asynccontextmanager
async def _closing(
    pages: AsyncIterator[list[Order]],
) -> AsyncIterator[AsyncIterator[list[Order]]]:
    """Close an async generator of pages when the listing stops early (cancelled, error)."""
    try:
        yield pages
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()
