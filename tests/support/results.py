"""Result records (``killswitch.result/v1``) as the daemon writes them, for pure tests."""

from __future__ import annotations

from typing import Any


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
