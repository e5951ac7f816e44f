"""The shipped exchange transport with a watcher: what the client sends and gets back.

:class:`CancelProbe` *is* the client's transport (``Http1Transport``), so the client
takes its fast path and the test exercises exactly the code that ships, over loopback
to the simulator. It tracks, per order id, cancel requests the client has sent and not
yet seen finish (an answer, a timeout, a dropped connection, or the client's own
attempt deadline): a second cancel for an order while one is still in flight is an
*overlap*. It also tallies what came back, so a test can say how many faults the
client lived through.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

from killswitch.exchange.http1 import Http1Transport
from killswitch.exchange.transport import Phases, RawHeaders


def cancelled_ids(method: str, url: str, body: bytes | None) -> list[int]:
    """Order ids a request cancels (single DELETE or batch); [] for anything else."""
    if method != "DELETE":
        return []
    parts = urlsplit(url)
    if parts.path.endswith("/order"):
        query = parse_qs(parts.query)
        return [int(v) for v in query.get("order_id", []) if v.isdigit()]
    if parts.path.endswith("/order/batch"):
        data = json.loads(body or b"{}")
        return [int(i) for i in data.get("order_ids", [])]
    return []


class CancelProbe(Http1Transport):
    """Counts overlapping cancels per order and every answer by kind."""

    def __init__(self, *, max_connections: int) -> None:
        super().__init__(max_connections=max_connections)
        self.in_flight: Counter[int] = Counter()
        self.overlaps: list[int] = []  # order ids sent while a cancel for them was in flight
        # "200", "503", "429", "ReadTimeout", "AttemptDeadline" (the client's own),
        # "Cancelled" (the caller gave up, e.g. the sweep's deadline), ...
        self.answers: Counter[str] = Counter()
        self.cancels_sent: Counter[int] = Counter()

    async def send_raw(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        phases: Phases,
        *,
        deadline: float | None = None,
        resend_stale: bool = True,
        fresh: bool = False,
    ) -> tuple[int, bytes, RawHeaders]:
        ids = cancelled_ids(method, url, body)
        for order_id in ids:
            if self.in_flight[order_id]:
                self.overlaps.append(order_id)
            self.in_flight[order_id] += 1
            self.cancels_sent[order_id] += 1
        try:
            answer = await super().send_raw(
                method,
                url,
                headers,
                body,
                phases,
                deadline=deadline,
                resend_stale=resend_stale,
                fresh=fresh,
            )
        except asyncio.CancelledError:
            self.answers["Cancelled"] += 1
            raise
        except Exception as exc:
            self.answers[type(exc).__name__] += 1
            raise
        finally:
            for order_id in ids:
                self.in_flight[order_id] -= 1
        self.answers[str(answer[0])] += 1
        return answer

    def faults_seen(self) -> int:
        """Answers that were not a usable reply: 429, 5xx, timeouts, broken connections."""
        return sum(
            n
            for kind, n in self.answers.items()
            if not kind.isdigit() or kind == "429" or kind.startswith("5")
        )
