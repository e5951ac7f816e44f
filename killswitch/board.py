"""The result-folding state machine of ``trigger`` / ``release`` / ``results`` (pure).

:class:`Board` folds the result records of one alert (``killswitch.result/v1``, read
back from Kafka) and its dead letter into one :class:`AccountProgress` per account,
decides when the wait is over and which exit code the command returns. No I/O and no
text: ``killswitch.render`` turns a board into lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from killswitch.contracts import ResultOrder, ResultRecord, read_dead_letter, read_result
from killswitch.core.model import SweepStatus
from killswitch.exitcodes import EXIT_NOT_DONE, EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED

__all__ = [
    "FINISHED_OK",
    "REFUSED",
    "TIMED_OUT",
    "WAITING",
    "AccountProgress",
    "Action",
    "Board",
]

Action = Literal["kill", "release"]

# Words a result's ``status`` can take, plus two of the operator's own: ``waiting``
# (nothing read yet) and ``refused`` (the daemon sent the trigger to the DLQ).
WAITING = "waiting"
REFUSED = "refused"
TIMED_OUT = "timed_out"
FINISHED_OK = frozenset({"flat", "released", "dry_run"})


# ------------------------------------------------------------------- progress model


@dataclass(frozen=True, slots=True)
class AccountProgress:
    """Where one account stands for one alert, as the latest result record says."""

    account: str
    status: str = WAITING
    final: bool = False
    sent: int = 0
    already_closed: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0
    residual_open: int = 0
    pending: int | None = None  # outcomes not known yet (when the record carries it)
    sweeps: int = 0
    reason: str | None = None
    seconds: float | None = None  # from the daemon reading the alert to the final result
    not_found: tuple[int, ...] = ()  # order ids in scope never seen open
    # Progress of the listing (when the record carries it): pairs listed to the end,
    # of the pairs in scope known so far.
    pairs_listed: int | None = None
    pairs_in_scope: int | None = None
    was_halted: bool | None = None  # releases: whether the account was halted
    orders: tuple[ResultOrder, ...] = ()  # the orders a final result lists
    orders_omitted: int = 0  # orders the record left out of its list
    # Final results: pairs in scope never listed to the end (open orders there unknown).
    unlisted_pairs: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        """The daemon sent the alert to the dead-letter topic."""
        return self.status == REFUSED

    @property
    def not_halted(self) -> bool:
        """A release of an account that was not halted (it did nothing)."""
        return self.status == "released" and self.was_halted is False

    @property
    def listing(self) -> bool:
        """Pairs in scope are still unlisted: how many orders there are is not known."""
        return (
            not self.final
            and self.pairs_in_scope is not None
            and self.pairs_listed is not None
            and self.pairs_listed < self.pairs_in_scope
        )

    @property
    def open_unknown(self) -> bool:
        """A final result that never listed some pairs in scope to the end: how many
        orders are still open is not known (``residual_open`` counts only the rest)."""
        return self.final and bool(self.unlisted_pairs)

    @property
    def resolved(self) -> int:
        """Orders with a known outcome."""
        return self.sent + self.already_closed + self.rejected + self.failed + self.skipped

    @classmethod
    def from_result(cls, record: Mapping[str, Any]) -> AccountProgress | None:
        """Read a result record leniently (a newer daemon may add fields); None if unusable."""
        read = read_result(record)
        return cls.from_record(read) if read is not None else None

    @classmethod
    def from_record(cls, r: ResultRecord) -> AccountProgress:
        """Where a result record says the account stands."""
        received, finished = r.received_at, r.finished_at
        return cls(
            account=r.account,
            status=r.status,
            final=r.final,
            sent=r.counts.sent,
            already_closed=r.counts.already_closed,
            rejected=r.counts.rejected,
            failed=r.counts.failed,
            skipped=r.counts.skipped,
            residual_open=r.residual_open,
            pending=r.pending,
            sweeps=r.sweeps,
            reason=r.reason or None,  # an empty reason says nothing
            seconds=(finished - received).total_seconds() if received and finished else None,
            not_found=r.not_found,
            pairs_listed=r.pairs_listed,
            pairs_in_scope=r.pairs_in_scope,
            was_halted=r.was_halted,
            orders=r.orders,
            orders_omitted=r.orders_omitted,
            unlisted_pairs=r.unlisted_pairs,
        )


@dataclass
class Board:
    """The results of one alert, per account, as they arrive (pure state machine).

    ``accounts`` are the accounts the operator waits for. A final record is kept;
    anything arriving for that account afterwards (a replayed duplicate, a late
    progress event) does not overwrite it. Records for other alerts are ignored;
    records for accounts not expected (the daemon's configuration differs) are
    shown but not waited for.
    """

    alert_id: str
    accounts: Sequence[str]
    action: Action = "kill"
    dry_run: bool = False
    rows: dict[str, AccountProgress] = field(default_factory=dict)
    # The final result records as read, per account (what ``--out`` writes).
    finals: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for account in self.accounts:
            self.rows.setdefault(account, AccountProgress(account))

    def apply_result(self, record: Mapping[str, Any]) -> bool:
        """Fold one result record in; True when something shown changed."""
        if record.get("alert_id") != self.alert_id:
            return False
        progress = AccountProgress.from_result(record)
        if progress is None:
            return False
        current = self.rows.get(progress.account)
        if current is not None and current.final and not _supersedes(progress):
            return False
        if current == progress:
            return False
        self.rows[progress.account] = progress
        if progress.final:
            self.finals[progress.account] = record
        return True

    def apply_dead_letter(self, record: Mapping[str, Any]) -> bool:
        """A dead letter for this alert: the daemon refused it; every account is done."""
        letter = read_dead_letter(record)
        if letter.alert_id != self.alert_id:
            return False
        why = f"{letter.kind}: {letter.reason}" if letter.kind and letter.reason else "?"
        changed = False
        for account, row in self.rows.items():
            if not row.final:
                self.rows[account] = replace(row, status=REFUSED, final=True, reason=why)
                changed = True
        return changed

    def time_out(self) -> None:
        """Mark every account still without a final result as timed out."""
        for account, row in self.rows.items():
            if not row.final:
                self.rows[account] = replace(row, status=TIMED_OUT, final=True)

    @property
    def done(self) -> bool:
        """Every expected account has a final result."""
        return all(self.rows[a].final for a in self.accounts)

    def waiting_for(self) -> list[str]:
        """Expected accounts without a final result yet."""
        return [a for a in self.accounts if not self.rows[a].final]

    def success_status(self) -> str:
        """The one final status that counts as success for this alert."""
        if self.action == "release":
            return "released"
        return "dry_run" if self.dry_run else "flat"

    def succeeded(self) -> bool:
        """Every expected account ended with the success status."""
        want = self.success_status()
        return all(self.rows[a].final and self.rows[a].status == want for a in self.accounts)

    def exit_code(self) -> int:
        """:data:`EXIT_REFUSED` when the daemon refused the alert (dead letter);
        :data:`EXIT_NOT_DONE` when a result is not the success status; then
        :data:`EXIT_NOT_FOUND` when every account ended well but order ids in scope
        were never found open (the kill did not do what was asked for them), or a
        release found an account that was not halted (it did nothing); else
        :data:`EXIT_OK`."""
        rows = [self.rows[a] for a in self.accounts]
        if any(r.refused for r in rows):
            return EXIT_REFUSED
        if not self.succeeded():
            return EXIT_NOT_DONE
        if any(r.not_found or r.not_halted for r in rows):
            return EXIT_NOT_FOUND
        return EXIT_OK

    def ordered(self) -> list[AccountProgress]:
        """Expected accounts in the order given, then any others by name."""
        extra = sorted(a for a in self.rows if a not in set(self.accounts))
        return [self.rows[a] for a in [*self.accounts, *extra]]


def _supersedes(later: AccountProgress) -> bool:
    """Whether ``later`` replaces an account's final result: a later final of
    another kill under the same alert id (``trigger --direct --alert-id`` after the
    daemon answered, say) does; a progress record or a ``duplicate`` answer, which only
    repeats that the id was handled, never does."""
    return later.final and later.status != SweepStatus.DUPLICATE
