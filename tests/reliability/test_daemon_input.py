"""Hostile input through Kafka into the running daemon (a sample of the fuzz categories).

A seeded sample of bad messages (random bytes, wrong types, huge and deeply nested
JSON, unknown scope fields, wrong schema versions, oversized order id lists, no value
at all, non-UTF-8, NaN, duplicate keys, forged manual triggers) is produced to the
alerts and manual topics of a daemon subprocess. Every one must land in the dead-letter
topic with a reason and be counted in ``killswitch_alerts_total``; the same daemon
process must then still sweep a valid alert. The parser-level fuzzing (thousands of
inputs) is in ``test_fuzz_alerts.py``.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support import figures
from tests.support.daemon import Daemons, daemon_config, http_get, write_config
from tests.support.exchange import exchange
from tests.support.topics import Producer, TopicCollector, alert, create_topics
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SEED = 424242
MAX_BYTES = 16 * 1024
MAX_IDS = 50
OPERATOR = Ed25519PrivateKey.generate()


def valid(alert_id: str) -> dict[str, Any]:
    return alert(alert_id, ["mm-1"], scope={"symbols": ["BTC_USDT"]})


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def sample(rng: random.Random) -> list[tuple[str, str, bytes | None]]:
    """(category, channel, value) of every bad input; ``value`` None is a null record."""
    out: list[tuple[str, str, bytes | None]] = []
    for _ in range(6):
        out.append(("random bytes", "alerts", rng.randbytes(rng.randint(1, 400))))
    for field, value in [
        ("scope", "mm-1"),
        ("latch", "yes"),
        ("created_at", 1764000000),
        ("action", ["kill"]),
        ("alert_id", {"id": 1}),
        ("source", None),
    ]:
        out.append(
            ("wrong type", "alerts", json.dumps(valid(f"wt-{field}") | {field: value}).encode())
        )
    for schema in ["killswitch.alert/v2", "killswitch.alert/v0", None, 1]:
        out.append(
            ("schema version", "alerts", json.dumps(valid("sv") | {"schema": schema}).encode())
        )
    for key in ["symbol", "side", "x" * 3000]:
        message = valid("unknown")
        message["scope"][key] = ["BTC_USDT"]
        out.append(("unknown scope field", "alerts", json.dumps(message).encode()))
    for size in [MAX_BYTES + 1, 200_000]:
        out.append(("huge", "alerts", json.dumps(valid("huge") | {"pad": "z" * size}).encode()))
    out.append(("huge", "alerts", b"9" * 50_000))
    for depth in [65, 990, 995, 100_000]:
        raw = json.dumps(valid("deep") | {"junk": "__D__"}).encode()
        out.append(("deeply nested", "alerts", raw.replace(b'"__D__"', deep(depth))))
    # The crash this suite found: a manual trigger nested just under the interpreter's
    # recursion limit, signed (badly) by an operator on the allowlist.
    forged = valid("deep-manual") | {
        "operator": {"name": "alice"},
        "signature": base64.b64encode(bytes(64)).decode(),
        "junk": "__D__",
    }
    # Where the window lies depends on how deep the parsing stack is: try every depth.
    for depth in range(900, 1_000):
        raw = json.dumps(forged).encode().replace(b'"__D__"', deep(depth))
        out.append(("deeply nested trigger", "manual", raw))
    for count in [MAX_IDS + 1, 2_000]:
        message = valid("ids")
        message["scope"]["order_ids"] = list(range(1, count + 1))
        out.append(("oversized order ids", "alerts", json.dumps(message).encode()))
    out.append(("null record", "alerts", None))
    out.append(("not UTF-8", "alerts", b'{"alert_id": "\xff\xfe"}'))
    out.append(("NaN", "alerts", json.dumps(valid("nan") | {"deadline_s": float("nan")}).encode()))
    out.append(("duplicate keys", "alerts", b'{"schema": "killswitch.alert/v1", "schema": "x"}'))
    out.append(("unsigned trigger", "manual", json.dumps(valid("unsigned")).encode()))
    rng.shuffle(out)
    return out


async def test_bad_input_through_kafka_goes_to_the_dlq_and_the_daemon_keeps_going(
    kafka_bootstrap: str, daemons: Daemons, tmp_path: Path
) -> None:
    inputs = sample(random.Random(SEED))
    public = base64.b64encode(
        OPERATOR.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
    async with exchange(["mm-1"], ["BTC_USDT"], seed=2) as ex:
        ex.seed("mm-1", ["BTC_USDT"], 10)
        config = daemon_config(
            kafka_bootstrap,
            f"input{ex.server.port}",
            ex.account_configs(),
            intake={"max_message_bytes": MAX_BYTES, "max_order_ids": MAX_IDS},
            trigger_signing={
                "required": True,
                "operators": [{"name": "alice", "public_key": public}],
            },
        )
        topics = config["kafka"]["topics"]
        await create_topics(kafka_bootstrap, topics)
        metrics_url = f"http://127.0.0.1:{config['metrics']['port']}/metrics"
        daemon = daemons.start(write_config(tmp_path / "killswitch.toml", config))
        async with (
            TopicCollector(kafka_bootstrap, topics["dlq"]) as dlq,
            TopicCollector(kafka_bootstrap, topics["results"]) as results,
            Producer(kafka_bootstrap, max_request_size=1_048_576) as producer,
        ):
            for _category, channel, value in inputs:
                await producer.send(topics[channel], value if value is not None else b"", key="k")
            await producer.send(topics["alerts"], valid("after-the-garbage"), key="mm-1")
            await wait_for(
                lambda: len(dlq.records) >= len(inputs) or not daemon.running, timeout=60
            )
            assert daemon.running, "bad input took the daemon down"
            await wait_for(lambda: bool(results.finals("after-the-garbage")), timeout=30)
            metrics = await http_get(metrics_url)
            assert daemon.running
            daemon.terminate()
            assert await daemon.wait(timeout=30) == 0
            letters = (await dlq.to_end()).json()
            after = (await results.to_end()).finals("after-the-garbage")

    assert len(letters) == len(inputs)
    assert all(r["reason"] for r in letters)
    assert all(r["kind"] in ("invalid", "unauthorized") for r in letters)
    by_topic = {(r["topic"], r["offset"]) for r in letters}
    assert len(by_topic) == len(inputs)  # one dead letter per input record
    assert metrics is not None
    refused = dead_lettered = 0.0
    for line in metrics.text.splitlines():
        reading = line.rsplit(" ", 1)[-1]
        if line.startswith("killswitch_alerts_total{") and (
            'result="invalid"' in line or 'result="unauthorized"' in line
        ):
            refused += float(reading)
        elif line.startswith("killswitch_dlq_total{"):
            dead_lettered += float(reading)
    assert refused == len(inputs)
    assert dead_lettered == len(inputs)
    assert [r["status"] for r in after] == ["flat"]
    assert len(daemons.started) == 1
    figures.add("fuzz: inputs through Kafka into the daemon", len(inputs))
