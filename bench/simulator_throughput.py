"""Signed cancels per second the exchange simulator serves on one core.

The simulator runs as ``killswitch simulate-exchange`` in its own process (pinned
to one CPU when there are several); this process is the load generator. It seeds
orders through the admin API, signs every cancel ahead of time (so signing is
not what is measured), then replays them over several keep-alive connections on
raw asyncio connections. Baseline, measured in the same run: how many ECDSA verifies
per second one core does, the floor cost of a signed request.

    python -m bench.simulator_throughput [--cancels 60000] [--connections 16]

Prints one summary line; writes JSON to bench/results/simulator_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bench import harness
from killswitch.exchange.signing import (
    Signer,
    generate_private_key,
    public_key_pem,
    signing_payload,
    verify,
)

RESULTS = Path(__file__).parent / "results" / "simulator_throughput.json"
CANCEL_PATH = "/coin/internal/v1/order"
OPEN_PATH = "/coin/internal/v1/order/open"
SYMBOL = "BTC_USDT"


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _verify_baseline(seconds: float = 1.0) -> float:
    """ECDSA P-256 verifies per second on this core (the unavoidable cost)."""
    key = generate_private_key()
    payload = b"1714440597515DELETE/coin/internal/v1/orderorder_id=5000000001&symbol=BTC_USDT"
    signature = Signer(key).sign(payload)
    public = key.public_key()
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            verify(public, payload, signature)
        count += 200
    return count / (time.perf_counter() - start)


def _distinct_verify_baseline(seconds: float = 1.0) -> float:
    """Verifies per CPU-second of 400 distinct signatures under 4 keys, in turn.

    What the simulator verifies: never the same signature twice. Repeating one
    signature (``_verify_baseline``) flatters the verify by a few percent on some
    cores (its branches and data stay warm).
    """
    items: list[tuple[ec.EllipticCurvePrivateKey, bytes, str]] = []
    for n in range(400):
        key = generate_private_key() if n < 4 else items[n % 4][0]
        payload = b"1714440597515DELETE/coin/internal/v1/orderorder_id=%d&symbol=BTC_USDT" % n
        items.append((key, payload, Signer(key).sign(payload)))
    checks = [(key.public_key(), payload, signature) for key, payload, signature in items]
    count = 0
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        for public, payload, signature in checks:
            verify(public, payload, signature)
        count += len(checks)
    return count / (time.thread_time() - start)


def _start_server(tmp: Path, keys: list[tuple[str, Any]]) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "killswitch", "simulate-exchange", "--port", "0"]
    for api_key, key in keys:
        pub = tmp / f"{api_key}.pub.pem"
        pub.write_bytes(public_key_pem(key))
        args += ["--client", f"{api_key}={pub}"]
    # Requests are signed ahead of time: allow their timestamps to age during the run.
    args += ["--time-window-ms", "600000", "--log-max", "1000"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(proc.pid, {min(os.sched_getaffinity(0))})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


async def _http(host: str, port: int, method: str, path: str, body: dict[str, Any]) -> Any:
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + data)
    raw = await reader.read()
    writer.close()
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def _signed_cancels(api_key: str, key: Any, ids: list[int], host: str) -> list[bytes]:
    signer = Signer(key)
    stamp = str(int(time.time() * 1000))
    out = []
    for order_id in ids:
        query = f"order_id={order_id}&symbol={SYMBOL}"
        signature = signer.sign(signing_payload(stamp, "DELETE", CANCEL_PATH, query, b""))
        out.append(
            f"DELETE {CANCEL_PATH}?{query} HTTP/1.1\r\nHost: {host}\r\n"
            f"X-API-KEY: {api_key}\r\nX-TIMESTAMP: {stamp}\r\nX-SIGNATURE: {signature}\r\n"
            "\r\n".encode()
        )
    return out


class _LoadConnection(asyncio.Protocol):
    """One keep-alive connection replaying pre-built requests, ``depth`` in flight.

    A bare Protocol (no stream reader futures) so the generator stays cheaper than
    the server it measures.
    """

    def __init__(self, requests: list[bytes], depth: int, done: asyncio.Future[None]) -> None:
        self.requests = requests
        self.depth = depth
        self.done = done
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send(self.depth)

    def _send(self, count: int) -> None:
        assert self.transport is not None
        end = min(self.sent + count, len(self.requests))
        if end > self.sent:
            self.transport.write(b"".join(self.requests[self.sent : end]))
            self.sent = end

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        answered = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            cut = head.lower().find(b"content-length:")
            length = int(head[cut + 15 :].split(b"\r\n", 1)[0]) if cut >= 0 else 0
            if len(buf) < end + 4 + length:
                break
            status = int(head[9:12])
            self.statuses[status] = self.statuses.get(status, 0) + 1
            buf = buf[end + 4 + length :]
            answered += 1
        self.buf = buf
        self._send(answered)
        if sum(self.statuses.values()) == len(self.requests) and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("simulator closed the connection"))


async def _connection(host: str, port: int, requests: list[bytes], depth: int) -> dict[int, int]:
    """Send ``requests`` on one keep-alive connection; the status counts."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, protocol = await loop.create_connection(
        lambda: _LoadConnection(requests, depth, done), host, port
    )
    try:
        await done
    finally:
        transport.close()
    return protocol.statuses


async def _blast(host: str, port: int, request: bytes, seconds: float) -> dict[int, int]:
    """Send one request again and again on one connection until ``seconds`` pass."""
    statuses: dict[int, int] = {}
    reader, writer = await asyncio.open_connection(host, port)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        statuses[int(head[9:12])] = statuses.get(int(head[9:12]), 0) + 1
    writer.close()
    await writer.wait_closed()
    return statuses


async def _limit_accuracy(
    host: str, port: int, api_key: str, key: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """Overload one key far above its limit; the accepted rate should be the limit."""
    burst = max(1, int(args.limit_rate / 10))
    await _http(
        host,
        port,
        "PUT",
        "/_admin/limits",
        {"api_key": api_key, "rate_limit_per_second": args.limit_rate, "burst": burst},
    )
    stamp = str(int(time.time() * 1000))
    query = "symbol=ETH_USDT"
    signature = Signer(key).sign(signing_payload(stamp, "GET", OPEN_PATH, query, b""))
    request = (
        f"GET {OPEN_PATH}?{query} HTTP/1.1\r\nHost: {host}\r\nX-API-KEY: {api_key}\r\n"
        f"X-TIMESTAMP: {stamp}\r\nX-SIGNATURE: {signature}\r\n\r\n"
    ).encode()
    start = time.perf_counter()
    results = await asyncio.gather(
        *(_blast(host, port, request, args.limit_seconds) for _ in range(4))
    )
    elapsed = time.perf_counter() - start
    accepted = sum(r.get(200, 0) for r in results)
    refused = sum(r.get(429, 0) for r in results)
    effective = (accepted - burst) / elapsed
    return {
        "configured_rate_per_s": args.limit_rate,
        "burst": burst,
        "offered_per_s": round((accepted + refused) / elapsed, 1),
        "accepted": accepted,
        "throttled": refused,
        "accepted_rate_per_s": round(effective, 1),
        "ratio_to_configured": round(effective / args.limit_rate, 4),
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    keys = [(f"bench-key-{i}", generate_private_key()) for i in range(args.clients)]
    with tempfile.TemporaryDirectory() as tmp:
        proc, base_url = _start_server(Path(tmp), keys)
    own_cpus = os.sched_getaffinity(0)
    if len(own_cpus) > 1:  # keep the generator off the server's core
        os.sched_setaffinity(0, own_cpus - {min(own_cpus)})
    try:
        host, port_text = base_url.removeprefix("http://").split(":")
        port = int(port_text)
        per_client = args.cancels // args.clients
        by_client: list[list[bytes]] = []
        for api_key, key in keys:
            seeded = await _http(
                host,
                port,
                "POST",
                "/_admin/orders",
                {"api_key": api_key, "symbol": SYMBOL, "count": per_client},
            )
            by_client.append(_signed_cancels(api_key, key, seeded["order_ids"], host))
        # Interleave clients, then deal the requests out to the connections.
        requests = [r for group in zip(*by_client, strict=True) for r in group]
        chunks = [requests[i :: args.connections] for i in range(args.connections)]
        cpu_before = _cpu_seconds(proc.pid)
        own_before = time.process_time()
        start = time.perf_counter()
        results = await asyncio.gather(
            *(_connection(host, port, chunk, args.pipeline) for chunk in chunks)
        )
        elapsed = time.perf_counter() - start
        cpu_after = _cpu_seconds(proc.pid)
        user, system = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
        cpu = user + system
        generator_cpu = time.process_time() - own_before
        counters = await _http(host, port, "GET", "/_admin/counters", {})
        limit = await _limit_accuracy(host, port, *keys[0], args)
    finally:
        os.sched_setaffinity(0, own_cpus)
        proc.terminate()
        proc.wait(timeout=10)
    statuses: dict[int, int] = {}
    for result in results:
        for status, n in result.items():
            statuses[status] = statuses.get(status, 0) + n
    baseline = _verify_baseline()
    distinct = _distinct_verify_baseline()
    server_sent = sum(c.get("cancel", {}).get("200", 0) for c in counters["counters"].values())
    return {
        "benchmark": "simulator_throughput",
        "cancels": len(requests),
        "cancel_sent": statuses.get(200, 0),
        "server_cancel_sent": server_sent,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "connections": args.connections,
        "pipeline": args.pipeline,
        "clients": args.clients,
        "elapsed_s": round(elapsed, 3),
        "cancels_per_s": round(len(requests) / elapsed, 1),
        "server_cpu_s": round(cpu, 3),
        "server_user_cpu_s": round(user, 3),
        "server_system_cpu_s": round(system, 3),
        "cancels_per_server_cpu_s": round(len(requests) / cpu, 1) if cpu else None,
        # Close to elapsed_s means the generator, not the server, set the pace.
        "generator_cpu_s": round(generator_cpu, 3),
        # Below ~0.95 the server waited for requests: the generator or other work set the pace.
        "server_busy": round(cpu / elapsed, 3),
        "baseline_verifies_per_s": round(baseline, 1),
        "baseline_distinct_verifies_per_cpu_s": round(distinct, 1),
        "ratio_to_verify_only": round(len(requests) / elapsed / baseline, 3),
        "rate_limit": limit,
        "machine": harness.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "command": "python -m bench.simulator_throughput " + " ".join(sys.argv[1:]),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# The goal for the simulator (wall-clock, the server on one core).
GOAL_CANCELS_PER_S = 5_000


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print one line, write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cancels", type=int, default=60_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pipeline", type=int, default=1, help="requests in flight per connection")
    parser.add_argument("--clients", type=int, default=4, help="API keys (own key pairs)")
    parser.add_argument("--limit-rate", type=float, default=500.0, help="rate limit to check")
    parser.add_argument("--limit-seconds", type=float, default=3.0, help="overload duration")
    args = parser.parse_args([] if argv is None and __name__ != "__main__" else argv)
    result = asyncio.run(_run(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    harness.summary(
        "simulator_throughput signed_cancels",
        f"{result['ratio_to_verify_only']:.3f} of the bare ECDSA verify rate on one core "
        f"({result['cancels_per_s']:.0f} signed cancels/s vs "
        f"{result['baseline_verifies_per_s']:.0f} verifies/s; "
        f"{result['cancels_per_server_cpu_s']} per server CPU-second, server busy "
        f"{result['server_busy']:.2f}; {result['baseline_distinct_verifies_per_cpu_s']:.0f} "
        "distinct-signature verifies per CPU-second; "
        f"{result['cancel_sent']}/{result['cancels']} CANCEL_SENT; "
        f"{args.connections} connections x pipeline {args.pipeline})",
        goal=f">= {GOAL_CANCELS_PER_S:,} signed cancels/s on one core",
        ok=result["cancels_per_s"] >= GOAL_CANCELS_PER_S,
    )
    limit = result["rate_limit"]
    harness.summary(
        "simulator_throughput rate_limit",
        f"{limit['accepted_rate_per_s'] / limit['configured_rate_per_s']:.3f} of the configured "
        f"{limit['configured_rate_per_s']:.0f}/s accepted under {limit['offered_per_s']:.0f}/s "
        "offered",
    )
    return result


if __name__ == "__main__":
    main()
