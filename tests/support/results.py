"""Result records (``killswitch.result/v1``) as the daemon writes them, for pure tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from killswitch.core.model import Counts, OrderReport, SweepResult, SweepStatus
from killswitch.core.outcomes import Outcome

T0 = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)


def sent_result(
    alert_id: str = "a-1", account: str = "mm-1", *, final: bool = True, orders: int = 2
) -> SweepResult:
    """The engine's result of a kill whose ``orders`` cancels were all sent: ``flat``
    when final, else ``running`` (a progress result)."""
    reports = [OrderReport(n, "BTC_USDT", Outcome.SENT, 1) for n in range(1, orders + 1)]
    return SweepResult(
        alert_id=alert_id,
        account=account,
        status=SweepStatus.FLAT if final else SweepStatus.RUNNING,
        final=final,
        dry_run=False,
        counts=Counts(sent=orders),
        residual_open=0,
        sweeps=1,
        received_at=T0,
        first_cancel_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=2) if final else None,
        orders=reports,
    )


def result_record(
    account: str = "mm-1",
    status: str = "running",
    *,
    final: bool = False,
    alert_id: str = "op-1",
    sent: int = 0,
    closed: int = 0,
    rejected: int = 0,
    failed: int = 0,
    residual: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "schema": "killswitch.result/v1",
        "alert_id": alert_id,
        "account": account,
        "status": status,
        "final": final,
        "dry_run": False,
        "counts": {
            "resolved": sent + closed + rejected + failed,
            "sent": sent,
            "already_closed": closed,
            "rejected": rejected,
            "failed": failed,
            "skipped": 0,
        },
        "residual_open": residual,
        "sweeps": 1,
        "received_at": "2026-11-24T01:02:03.000Z",
        "finished_at": "2026-11-24T01:02:05.500Z" if final else None,
        "reason": None,
        **extra,
    }
