"""``killswitch check``: Kafka, the topics, the daemons' consumer group, the exchange and
every account's key, each tried with read-only calls (exit code 0 only when every
check passes)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from killswitch.commands.common import (
    KAFKA_TIMEOUT_S,
    OperatorError,
    describe_group,
    start_reader,
    topic_partitions,
)
from killswitch.config import AccountSettings, KafkaSettings, settings_from_args
from killswitch.core.pairs import PairList
from killswitch.exchange.client import ExchangeClient
from killswitch.exchange.errors import (
    AuthError,
    ExchangeError,
    ExchangeUnavailable,
    InvalidRequest,
    Redirected,
    TransportError,
    redirect_problem,
)
from killswitch.exchange.signing import KeyLoadError
from killswitch.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from killswitch.kafka.clients import connection_kwargs
from killswitch.observability import first_page, unanswered_text
from killswitch.render import Check, GroupView, check_lines, group_checks

__all__ = ["add_arguments_check", "cli_check", "read_group", "run_checks"]


def add_arguments_check(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch check``."""
    parser.description = (
        "Check that Kafka answers, the topics exist, the exchange answers for every "
        "account and accepts every account's key (a read-only signed call). Exit 0 only "
        "when every check passes."
    )
    parser.add_argument(
        "--timeout", type=float, default=KAFKA_TIMEOUT_S, metavar="SECONDS", help="per check"
    )


async def _kafka_checks(kafka: KafkaSettings, timeout_s: float) -> list[Check]:
    t = kafka.topics
    roles = {
        t.alerts: "alerts",
        t.manual: "manual",
        t.heartbeats: "heartbeats",
        t.results: "results",
        t.state: "state",
        t.dlq: "dlq",
    }
    try:
        consumer = await start_reader(kafka)
    except OperatorError as exc:
        failed = [Check("kafka reachable", kafka.bootstrap_servers, False, str(exc))]
        return failed + [Check("topic present", n, False, "Kafka not reachable") for n in roles]
    try:
        async with asyncio.timeout(timeout_s):
            parts = await topic_partitions(consumer)
    except (KafkaError, TimeoutError) as exc:
        detail = f"no metadata ({type(exc).__name__})"
        return [Check("kafka reachable", kafka.bootstrap_servers, False, detail)]
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    checks = [Check("kafka reachable", kafka.bootstrap_servers, True, f"{len(parts)} topic(s)")]
    for name, role in roles.items():
        count = len(parts.get(name, ()))
        detail = f"{role}, {count} partition(s)" if count else f"{role}: missing"
        checks.append(Check("topic present", name, count > 0, detail))
    inputs = {t: parts[t] for t in (t.alerts, t.manual) if t in parts}
    try:
        async with asyncio.timeout(timeout_s):
            view: GroupView | str = await read_group(kafka, inputs)
    except (KafkaError, TimeoutError, OSError, ValueError) as exc:
        # ValueError: a broker answering a request version the client cannot decode.
        view = f"not readable ({type(exc).__name__})"
    return checks + group_checks(kafka.group_id, view)


async def read_group(kafka: KafkaSettings, inputs: dict[str, list[int]]) -> GroupView:
    """The daemons' consumer group: its state, its members and how far behind it is on
    the input topics (``inputs``: topic -> partitions). Never joins the group."""
    state, members = await describe_group(kafka)
    # A consumer bound to the group but subscribed to nothing reads its committed
    # offsets (OffsetFetch) without joining it.
    reader = AIOKafkaConsumer(
        group_id=kafka.group_id, enable_auto_commit=False, **connection_kwargs(kafka)
    )
    await reader.start()
    try:
        lag: dict[str, int] = {}
        uncommitted: set[str] = set()
        for topic, partitions in inputs.items():
            tps = [TopicPartition(topic, p) for p in partitions]
            ends = await reader.end_offsets(tps)
            starts = await reader.beginning_offsets(tps)
            behind = 0
            committed_any = False
            for tp in tps:
                committed = await reader.committed(tp)
                committed_any |= committed is not None
                behind += max(0, ends[tp] - (committed if committed is not None else starts[tp]))
            lag[topic] = behind
            if not committed_any:
                uncommitted.add(topic)
    finally:
        with contextlib.suppress(Exception):
            await reader.stop()
    return GroupView(state, members, lag, frozenset(uncommitted))


# A clock sync is one request without retries (the daemon re-syncs on its own
# schedule): asked a few times here, so that one 5xx, 429 or dropped connection of a
# working exchange is not reported as "not reachable".
CLOCK_ATTEMPTS = 3
CLOCK_RETRY_S = 0.25


async def _sync_clock(client: ExchangeClient) -> int:
    for attempt in range(1, CLOCK_ATTEMPTS):
        try:
            return await client.sync_clock()
        except (ExchangeUnavailable, TransportError):
            await asyncio.sleep(CLOCK_RETRY_S * attempt)
    return await client.sync_clock()


async def _exchange_checks(
    account: AccountSettings, timeout_s: float, page_size: int = 10
) -> list[Check]:
    # The key is tried with a listing of the engine's page size, so an exchange that
    # allows fewer orders per page fails here rather than on every kill.
    # Fail fast: a check is a question, not a kill (few retries, short deadline).
    quick = account.model_copy(
        update={
            "max_attempts": min(account.max_attempts, 2),
            "request_deadline_s": min(account.request_deadline_s, timeout_s),
        }
    )
    target = f"{account.id} {account.base_url}"
    try:
        client = ExchangeClient(quick)
    except KeyLoadError as exc:
        return [
            Check("exchange reachable", target, False, "not tried: the key does not load"),
            Check("key accepted", account.id, False, str(exc)),
        ]
    async with client:
        try:
            async with asyncio.timeout(timeout_s):
                offset = await _sync_clock(client)
                pairs = await client.pair_list()
                symbols = await client.exchange_info()  # no request: pair_list cached it
        except Redirected as exc:
            problem = redirect_problem(exc.status, exc.location, exc.endpoint)
            return [
                Check("exchange reachable", target, False, problem),
                Check("key accepted", account.id, False, "not tried: exchange redirects"),
            ]
        except AuthError as exc:
            # The public endpoints want a signature here and the signed call was refused.
            detail = "answered; public endpoints need a signature"
            return [
                Check("exchange reachable", target, True, detail),
                Check("key accepted", account.id, False, f"refused: {exc}"),
            ]
        except (ExchangeError, TimeoutError) as exc:
            return [
                Check("exchange reachable", target, False, str(exc) or type(exc).__name__),
                Check("key accepted", account.id, False, "not tried: exchange not reachable"),
            ]
        signed = ", public endpoints signed" if client.signs_public else ""
        reach = Check(
            "exchange reachable",
            target,
            True,
            f"{len(symbols)} pairs{_pair_source(pairs)}, clock offset {offset:+d} ms{signed}",
        )
        if not symbols:
            return [reach, Check("key accepted", account.id, False, "the exchange lists no pairs")]
        symbol = symbols[0].symbol
        try:
            async with asyncio.timeout(timeout_s):
                shown = await first_page(client, symbol, limit=page_size)
        except AuthError as exc:
            return [reach, Check("key accepted", account.id, False, f"refused: {exc}")]
        except InvalidRequest as exc:
            why = f"{exc}; listed {page_size} per page (engine.page_size): try fewer"
            return [reach, Check("key accepted", account.id, False, why)]
        except ExchangeUnavailable as exc:
            listing = unanswered_text(exc)
            why = f"not known, not refused: listing open orders, the exchange was {listing}"
            return [reach, Check("key accepted", account.id, False, why)]
        except (ExchangeError, TimeoutError) as exc:
            return [reach, Check("key accepted", account.id, False, str(exc) or "timeout")]
        detail = f"open orders on {symbol} answered ({shown} on the first page)"
        return [reach, Check("key accepted", account.id, True, detail)]


def _pair_source(pairs: PairList) -> str:
    """Where the pair list came from, when not the exchange's current answer."""
    if pairs.source == "exchange":
        return ""
    return f" ({pairs.source}; exchange-info failed: {pairs.error})"


async def run_checks(
    kafka: KafkaSettings,
    accounts: Sequence[AccountSettings],
    page_size: int,
    timeout_s: float = KAFKA_TIMEOUT_S,
) -> list[Check]:
    """Every check, Kafka first, then each account (concurrently); ``page_size`` is the
    engine's (each account is asked for a page that large)."""
    kafka_checks, *account_checks = await asyncio.gather(
        _kafka_checks(kafka, timeout_s),
        *(_exchange_checks(a, timeout_s, page_size) for a in accounts),
    )
    out = list(kafka_checks)
    for checks in account_checks:
        out.extend(checks)
    return out


def cli_check(args: argparse.Namespace) -> int:
    """``killswitch check``: a table of checks; exit 0 only when all pass."""
    settings = settings_from_args(args)
    if args.timeout <= 0:
        print("killswitch: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    # Every problem is a row of the table: no bare log line from a library (a pair list
    # fallback, a retry) on stderr, as Python prints one when logging is not set up.
    logging.getLogger("killswitch").addHandler(logging.NullHandler())
    checks = asyncio.run(
        run_checks(settings.kafka, settings.accounts, settings.engine.page_size, args.timeout)
    )
    print("\n".join(check_lines(checks)))
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED
