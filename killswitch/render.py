"""What the operator commands show, as plain functions (no I/O): progress, tables, summaries.

The ``*_lines`` / ``table`` functions turn a :class:`killswitch.board.Board` (the
results of one alert, folded), halt states, check outcomes and ``/metrics`` samples
into text lines; :func:`redraw` is the terminal escape sequence that replaces the
previous frame. The commands in ``killswitch.commands`` only print what these return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from killswitch.board import FINISHED_OK, REFUSED, TIMED_OUT, WAITING, AccountProgress, Board
from killswitch.contracts import DUPLICATE_REASON, scope_to_json, state_to_json
from killswitch.core.model import HaltState
from killswitch.core.times import format_time
from killswitch.prometheus_text import Sample

__all__ = [
    "Check",
    "GroupView",
    "bar",
    "check_lines",
    "dry_run_lines",
    "duration_text",
    "fraction_done",
    "group_checks",
    "metrics_lines",
    "plain_updates",
    "progress_line",
    "progress_lines",
    "redraw",
    "scope_text",
    "status_lines",
    "status_records",
    "summary_lines",
    "table",
    "terminal_frame",
]

# ------------------------------------------------------------------- progress text


def fraction_done(p: AccountProgress) -> float | None:
    """How far one account is, in [0, 1]; None while nothing is known.

    Done is the orders with an outcome; still to do is ``pending`` when the record
    carries it, else the orders the last listing still showed open (an estimate
    that errs towards "not done": a cancelled order counts as open until re-listed).
    A successful final result is complete whatever the counts say. While pairs in
    scope are still unlisted (:attr:`AccountProgress.listing`) this is the share of
    the orders found so far, and the line shows the listing's progress instead of a
    percentage. A final result with pairs never listed to the end
    (:attr:`AccountProgress.open_unknown`) is unknown (None): what is left is not known.
    A refused or failed alert, or one without a final result before the timeout, with
    nothing counted is unknown too (a full bar beside "NOT OK: refused" reads as done).
    """
    if p.final and p.status in FINISHED_OK:
        return 1.0
    if p.open_unknown:
        return None
    if p.status in (REFUSED, TIMED_OUT, "failed") and p.resolved == 0:
        return None
    remaining = p.pending if p.pending is not None else p.residual_open
    total = p.resolved + remaining
    if total == 0:
        return 1.0 if p.final else None
    return min(1.0, p.resolved / total)


def bar(fraction: float | None, width: int = 24) -> str:
    """``[#########---------------]``; ``[ ? ... ]`` dots when unknown."""
    width = max(1, width)
    if fraction is None:
        return "[" + "." * width + "]"
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def duration_text(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``4m05s``; empty when unknown."""
    if seconds is None or seconds < 0:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _status_text(p: AccountProgress, success: str) -> str:
    if not p.final:
        return "waiting for the daemon" if p.status == WAITING else "running"
    mark = "ok" if p.status == success and not p.not_halted else "NOT OK"
    if p.not_halted:
        return f"{mark}: not halted (nothing to release)"
    if p.status == "duplicate":
        return f"{mark}: {_duplicate_text(p)}"
    words = {
        "flat": "flat",
        "released": "released",
        "dry_run": "dry run (nothing cancelled)",
        "residual": f"residual: {_still_open_text(p)}",
        TIMED_OUT: "no final result before the timeout",
    }
    text = words.get(p.status, p.status)
    if p.open_unknown and p.status != "residual":
        text = f"{text}; {_still_open_text(p)}"
    reason = _reason_text(p)
    if reason and p.status not in ("flat", "released"):
        text = f"{text} ({reason})"
    took = duration_text(p.seconds)
    return f"{mark}: {text}" + (f" in {took}" if took else "")


def _duplicate_text(p: AccountProgress) -> str:
    """A ``duplicate`` answer: the alert id was handled before, so nothing was done now
    (its counts are zero, whatever is open), and how to kill again."""
    seen = (p.reason or "").removeprefix(DUPLICATE_REASON).strip(" ()")
    return (
        f"duplicate alert id{f' ({seen})' if seen else ''}: handled before, nothing done "
        "now (to kill again, leave out --alert-id)"
    )


# How the engine's reason names the pairs it never listed (killswitch.engine.sweep),
# for readers without ``unlisted_pairs``; left out where the status text names them.
_UNLISTED_NOTE = "never listed to the end:"


def _reason_text(p: AccountProgress) -> str | None:
    """The result's reason, less the part naming unlisted pairs when the status text
    names them already (from ``unlisted_pairs``)."""
    if not (p.reason and p.open_unknown):
        return p.reason
    parts = [part for part in p.reason.split("; ") if not part.startswith(_UNLISTED_NOTE)]
    return "; ".join(parts) or None


def _still_open_text(p: AccountProgress, shown: int = 10) -> str:
    """``3 still open``, or ``still open: unknown (2 pair(s) never listed to the end:
    …)`` when some pairs in scope were never listed to the end."""
    if not p.open_unknown:
        # None open in its last complete listing, yet not flat: no listing came back
        # empty before the deadline (the reason says why); "0 still open" would puzzle.
        return "not proven flat" if p.residual_open == 0 else f"{p.residual_open} still open"
    pairs = p.unlisted_pairs
    names = ", ".join(pairs[:shown]) + (" ..." if len(pairs) > shown else "")
    known = f"; {p.residual_open} in the pairs listed" if p.residual_open else ""
    return f"still open: unknown ({len(pairs)} pair(s) never listed to the end: {names}{known})"


def progress_line(
    p: AccountProgress,
    *,
    name_width: int = 8,
    bar_width: int = 24,
    success: str = "flat",
    compact: bool = False,
) -> str:
    """One account: name, bar, percentage (``listed 3/5 pairs`` while pairs are still
    unlisted), outcome counts, what is still open, status.

    ``compact`` (narrow terminals) leaves out the outcome counts that are zero.
    """
    frac = fraction_done(p)
    pct = "  ? " if frac is None else f"{round(frac * 100):3d}%"
    if p.listing:
        # Orders in unlisted pairs are not counted yet: a percentage would overstate.
        pct = f"listed {p.pairs_listed}/{p.pairs_in_scope} pairs"
    shown = [
        ("sent", p.sent, True),
        ("closed", p.already_closed, not compact),
        ("rejected", p.rejected, not compact),
        ("failed", p.failed, not compact),
        ("skipped", p.skipped, False),
    ]
    counts = "  ".join(f"{word} {value}" for word, value, always in shown if value or always)
    if p.status == "duplicate":  # nothing was listed for it: what is open is not known
        pct = "  ? "
    unknown = p.open_unknown or p.status == "duplicate"
    open_text = "open ?" if unknown else f"open {p.residual_open}"
    return (
        f"{p.account:<{name_width}}  {bar(frac, bar_width)} {pct}  {counts}  {open_text}  "
        f"{_status_text(p, success)}"
    )


def progress_lines(board: Board, *, bar_width: int = 24, compact: bool = False) -> list[str]:
    """One line per account (the frame redrawn in a terminal)."""
    rows = board.ordered()
    width = max((len(r.account) for r in rows), default=0)
    success = board.success_status()
    return [
        progress_line(r, name_width=width, bar_width=bar_width, success=success, compact=compact)
        for r in rows
    ]


def terminal_frame(board: Board, columns: int, *, bar_width: int = 24) -> list[str]:
    """The progress lines for a terminal ``columns`` wide, none of them wrapping.

    A wrapped line would break the in-place redraw (the cursor moves up by lines, not
    by screen rows), so the bar narrows first (down to 6), then zero counts are left
    out, and only then are lines cut.
    """
    limit = max(columns - 1, 1)
    lines: list[str] = []
    for compact in (False, True):
        lines = progress_lines(board, bar_width=bar_width, compact=compact)
        excess = max((len(line) for line in lines), default=0) - limit
        if excess <= 0:
            break
        lines = progress_lines(board, bar_width=max(6, bar_width - excess), compact=compact)
        if max(len(line) for line in lines) <= limit:
            break
    return [line[:limit] for line in lines]


def summary_lines(board: Board, elapsed_s: float | None) -> list[str]:
    """The verdict after the wait: one line, plus one per account that did not end well
    (``elapsed_s`` None: no time is known, none is shown)."""
    rows = [board.rows[a] for a in board.accounts]
    success = board.success_status()
    good = [r for r in rows if r.final and r.status == success]
    word = {"flat": "flat", "released": "released", "dry_run": "dry run done"}[success]
    # A release of an account that was not halted ended well but released nothing.
    done = sum(1 for r in good if not r.not_halted)
    took = "" if elapsed_s is None else f" in {duration_text(elapsed_s) or '0s'}"
    head = f"{board.action} {board.alert_id}: {word} on {done}/{len(rows)} account(s){took}"
    missing = [f"  {r.account}: {_not_found_text(r.not_found)}" for r in rows if r.not_found]
    missing += [f"  {r.account}: was not halted (nothing released)" for r in rows if r.not_halted]
    # A good result's reason is a note worth reading (a redirected endpoint: a wrong
    # base_url that the fallback hid); the status line shows the others' reasons.
    # (A release of an account that was not halted already has its line above.)
    notes = [f"  {r.account}: note: {r.reason}" for r in good if r.reason and not r.not_halted]
    if len(good) == len(rows):
        total = sum(r.resolved for r in rows)
        sent = sum(r.sent for r in rows)
        if board.action == "kill":
            head += f" ({total} order(s) resolved, {sent} cancel(s) sent)"
        if missing:
            head = head.replace(f"{board.action} ", f"{board.action} INCOMPLETE ", 1)
        return [head, *missing, *notes]
    lines = [head.replace(f"{board.action} ", f"{board.action} FAILED ", 1)]
    for r in rows:
        if not (r.final and r.status == success):
            lines.append(f"  {r.account}: {_status_text(r, success)}")
    return lines + missing + notes


def _not_found_text(ids: Sequence[int], shown: int = 20) -> str:
    text = ", ".join(str(i) for i in ids[:shown]) + (" ..." if len(ids) > shown else "")
    return f"{len(ids)} order id(s) never found open, not cancelled by this kill: {text}"


def dry_run_lines(board: Board, limit: int = 50) -> list[str]:
    """What a dry run would cancel: a table of the orders its final results list
    (at most ``limit`` rows; the rest counted, all of them in ``--out``)."""
    if not (board.dry_run and board.action == "kill"):
        return []
    rows = [(r.account, o) for r in board.ordered() for o in r.orders]
    omitted = sum(r.orders_omitted for r in board.ordered())
    if not rows and not omitted:
        return ["dry run: no open order in scope"]
    shown = [[account, str(o.order_id), o.symbol] for account, o in rows[:limit]]
    lines = [
        f"dry run: {len(rows) + omitted} order(s) would be cancelled:",
        *table(["ACCOUNT", "ORDER ID", "PAIR"], shown),
    ]
    rest = len(rows) - len(shown) + omitted
    if rest:
        lines.append(f"... and {rest} more (write them all with --out FILE)")
    return lines


def redraw(lines: Sequence[str], previous: int) -> str:
    """Terminal text replacing the ``previous`` lines just printed with ``lines``.

    Moves the cursor to the start of the first old line (CSI n F), then writes each
    line after clearing it (CSI 2K); old lines beyond the new ones are cleared.
    """
    out = [f"\x1b[{previous}F"] if previous else []
    out.extend(f"\x1b[2K{line}\n" for line in lines)
    out.extend("\x1b[2K\n" for _ in range(previous - len(lines)))
    if previous > len(lines):
        out.append(f"\x1b[{previous - len(lines)}F")
    return "".join(out)


def plain_updates(
    printed: Mapping[str, str],
    current: Sequence[tuple[str, str, bool]],
    *,
    periodic: bool,
) -> list[tuple[str, str]]:
    """Lines to print in a log (not a terminal): ``(account, line)`` for changed accounts.

    ``printed`` is the last line printed per account; ``current`` is
    ``(account, line, final)`` per account now. A final line is printed as soon as
    it differs; other changes only when ``periodic`` (the interval has passed), so
    a log gets a line per account every few seconds, not one per record.
    """
    return [
        (account, line)
        for account, line, final in current
        if printed.get(account) != line and (final or periodic)
    ]


# ------------------------------------------------------------------------- tables


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, a header row; trailing spaces trimmed."""
    body = [list(map(str, r)) for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        for i, cell in enumerate(r[: len(widths)]):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return [line(headers), *(line(r) for r in body)]


def scope_text(scope: Mapping[str, Any]) -> str:
    """``all symbols, both sides`` / ``BTC_USDT,ETH_USDT; BUY; 3 order ids``."""
    symbols, sides, ids = scope.get("symbols"), scope.get("sides"), scope.get("order_ids")
    parts = [
        ",".join(map(str, symbols)) if symbols else "all symbols",
        ",".join(map(str, sides)) if sides else "both sides",
    ]
    if ids:
        parts.append(f"{len(ids)} order id(s)")
    return "; ".join(parts)


def status_records(states: Iterable[HaltState]) -> list[dict[str, Any]]:
    """Halt states as JSON records (``killswitch status --json``), sorted by account:
    the state record's fields but ``schema`` and ``daemon``, with ``by`` and ``reason``
    null when unknown."""
    records = []
    for s in sorted(states, key=lambda s: s.account):
        record = state_to_json(s)
        del record["schema"]
        records.append(record | {"by": s.by or None, "reason": s.reason or None})
    return records


def status_lines(states: Iterable[HaltState], now: datetime) -> list[str]:
    """The halted accounts as a table (or one line saying there are none)."""
    records = sorted(states, key=lambda s: s.account)
    if not records:
        return ["no account is halted"]
    rows = [
        [
            s.account,
            format_time(s.since) or "",
            duration_text((now - s.since).total_seconds()),
            s.alert_id,
            s.by or "?",
            scope_text(scope_to_json(s.scope)),
            _cut(s.reason, 60) or "?",
        ]
        for s in records
    ]
    head = f"{len(records)} halted account(s):"
    headers = ["ACCOUNT", "SINCE", "FOR", "ALERT", "BY", "SCOPE", "REASON"]
    return [head, *table(headers, rows)]


def _cut(text: str, width: int) -> str:
    """One line of at most ``width`` characters (an ellipsis when cut)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


@dataclass(frozen=True, slots=True)
class Check:
    """One line of ``killswitch check``."""

    name: str
    target: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GroupView:
    """The daemons' consumer group as ``check`` reads it."""

    state: str  # Stable, Empty, PreparingRebalance, ...
    members: Sequence[str]  # client_id@host (or member id) per member
    lag: Mapping[str, int]  # input topic -> records not committed yet, all partitions
    # Input topics on which the group has no committed offset on any partition: their
    # lag is counted from the earliest offset, where a new member would start.
    uncommitted: frozenset[str] = frozenset()


def group_checks(group_id: str, view: GroupView | str) -> list[Check]:
    """``consumer group`` (fails with no member: no daemon consumes alerts) and
    ``consumer lag`` (records the group has not committed yet, per input topic; fails
    with no member too: nobody is reading them, however few they are).
    ``view`` is the reason when the group could not be read."""
    if isinstance(view, str):
        return [Check("consumer group", group_id, False, view)]
    members = len(view.members)
    if members:
        shown = ", ".join(list(view.members)[:5]) + (" ..." if members > 5 else "")
        detail = f"{members} member(s), {view.state}: {shown}"
    else:
        detail = f"no member: no daemon is consuming alerts ({view.state})"
    checks = [Check("consumer group", group_id, members > 0, detail)]
    if view.lag:
        checks.append(Check("consumer lag", group_id, members > 0, _lag_detail(view)))
    return checks


def _lag_detail(view: GroupView) -> str:
    behind = ", ".join(
        f"{topic} {count}" + (" (nothing committed)" if topic in view.uncommitted else "")
        for topic, count in view.lag.items()
    )
    notes = []
    if view.uncommitted & view.lag.keys():
        notes.append("counted from the earliest offset where nothing is committed")
    if not view.members:
        notes.append("no member is reading them")
    return f"records behind: {behind}" + "".join(f"; {note}" for note in notes)


def check_lines(checks: Sequence[Check]) -> list[str]:
    """The checks as a table and a verdict line."""
    rows = [[c.name, c.target, "ok" if c.ok else "FAIL", c.detail] for c in checks]
    failed = sum(1 for c in checks if not c.ok)
    verdict = (
        f"all {len(checks)} checks passed"
        if failed == 0
        else f"{failed} of {len(checks)} checks FAILED"
    )
    return [*table(["CHECK", "TARGET", "RESULT", "DETAIL"], rows), verdict]


# ------------------------------------------------------------------------ metrics


def _sum(samples: Iterable[Sample], name: str, **match: str) -> float:
    return sum(
        v
        for n, labels, v in samples
        if n == name and all(labels.get(k) == x for k, x in match.items())
    )


def _by(samples: Sequence[Sample], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, labels, value in samples:
        if n == name and label in labels:
            out[labels[label]] = out.get(labels[label], 0.0) + value
    return out


def _status_class(status: str) -> str:
    if status == "429":
        return "429"
    if status.isdigit() and len(status) == 3:
        return f"{status[0]}xx"
    return "no answer"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def _histogram_text(samples: Sequence[Sample], name: str, what: str) -> str:
    count, total = _sum(samples, f"{name}_count"), _sum(samples, f"{name}_sum")
    if not count:
        return f"no {what} yet"
    return f"{count:.0f} {what}, mean {duration_text(total / count)}"


def metrics_lines(samples: Sequence[Sample], accounts: Sequence[str]) -> list[str]:
    """A few headline numbers from the daemon's ``/metrics``, as a two-column table."""
    outcomes = _by(samples, "killswitch_cancels_total", "outcome")
    statuses: dict[str, float] = {}
    for status, value in _by(samples, "killswitch_exchange_requests_total", "status").items():
        key = _status_class(status)
        statuses[key] = statuses.get(key, 0.0) + value
    order = ["2xx", "4xx", "429", "5xx", "no answer"]
    calls = sum(statuses.values())
    per_status = "  ".join(f"{k} {_number(statuses[k])}" for k in order if statuses.get(k))
    rates = _by(samples, "killswitch_rate_limit_per_second", "account")
    halted = _by(samples, "killswitch_account_halted", "account")
    alerts = _by(samples, "killswitch_alerts_total", "result")
    rows = [
        [
            "killswitch_cancels_total",
            "  ".join(
                f"{o} {_number(outcomes.get(o, 0.0))}"
                for o in ("sent", "already_closed", "rejected", "failed")
            ),
        ],
        [
            "killswitch_exchange_requests_total",
            f"{_number(calls)} calls" + (f": {per_status}" if per_status else ""),
        ],
        [
            "killswitch_alert_to_first_cancel_seconds",
            _histogram_text(samples, "killswitch_alert_to_first_cancel_seconds", "kill(s)"),
        ],
        [
            "killswitch_time_to_flat_seconds",
            _histogram_text(samples, "killswitch_time_to_flat_seconds", "flat result(s)"),
        ],
        [
            "killswitch_rate_limit_per_second",
            "  ".join(f"{a} {rates[a]:,.0f}" for a in accounts if a in rates),
        ],
        [
            "killswitch_account_halted",
            "  ".join(f"{a} {_number(halted[a])}" for a in accounts if a in halted),
        ],
        [
            "killswitch_alerts_total",
            "  ".join(f"{r} {_number(v)}" for r, v in sorted(alerts.items()) if v) or "none",
        ],
        ["killswitch_ready", _number(_sum(samples, "killswitch_ready"))],
    ]
    return table(["METRIC", "NOW"], rows)
