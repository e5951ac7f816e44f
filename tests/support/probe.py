"""A transport wrapper that watches what the exchange client sends and gets back.

Wraps the client's real transport (the client still talks HTTP over loopback to the
simulator). It tracks, per order id, cancel requests the client has sent and not yet
seen finish (an answer, a timeout or a dropped connection): a second cancel for an
order while one is still in flight is an *overlap*. It also tallies what came back,
so a test can say how many faults the client lived through.
"""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import parse_qs

import httpx


def cancelled_ids(request: httpx.Request) -> list[int]:
    """Order ids a request cancels (single DELETE or batch); [] for anything else."""
    if request.method != "DELETE":
        return []
    path = request.url.path
    if path.endswith("/order"):
        query = parse_qs(request.url.query.decode())
        return [int(v) for v in query.get("order_id", []) if v.isdigit()]
    if path.endswith("/order/batch"):
        body = json.loads(request.content or b"{}")
        return [int(i) for i in body.get("order_ids", [])]
    return []


class CancelProbe(httpx.AsyncBaseTransport):
    """Counts overlapping cancels per order and every answer by kind."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.in_flight: Counter[int] = Counter()
        self.overlaps: list[int] = []  # order ids sent while a cancel for them was in flight
        self.answers: Counter[str] = Counter()  # "200", "503", "429", "ReadTimeout", ...
        self.cancels_sent: Counter[int] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ids = cancelled_ids(request)
        for order_id in ids:
            if self.in_flight[order_id]:
                self.overlaps.append(order_id)
            self.in_flight[order_id] += 1
            self.cancels_sent[order_id] += 1
        try:
            response = await self.inner.handle_async_request(request)
        except Exception as exc:
            self.answers[type(exc).__name__] += 1
            raise
        finally:
            for order_id in ids:
                self.in_flight[order_id] -= 1
        self.answers[str(response.status_code)] += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def faults_seen(self) -> int:
        """Answers that were not a usable reply: 429, 5xx, timeouts, broken connections."""
        return sum(
            n
            for kind, n in self.answers.items()
            if not kind.isdigit() or kind == "429" or kind.startswith("5")
        )
