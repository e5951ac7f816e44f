"""``killswitch demo`` (``make demo``): the whole kill switch on one machine, in under a minute.

What it starts, all on loopback and all stopped at the end (also on Ctrl-C):

1. demo keys in ``config/demo/`` (one ECDSA key per account whose ``private_key_file``
   lies in a ``demo`` directory, plus an Ed25519 operator key), generated when missing;
2. the embedded Kafka-protocol broker (``killswitch.embedded``), in memory;
3. the exchange simulator on a free port, every configured account registered with the
   public half of its key and seeded with open orders on several pairs, with realistic
   faults on (a few 5xx answers, latency jitter, a per-key rate limit below the
   configured ceiling, orders filling on their own just before their cancel, new
   orders appearing during the kill);
4. the daemon itself (:func:`killswitch.daemon.async_run`) with the configuration's
   settings, except: the embedded broker, the simulator's URL, a free metrics port, and
   signed manual triggers required from the demo operator.

Then it triggers a kill on two accounts with the same code as ``killswitch trigger``
(signed, latched), shows the progress bars and the final result, what the simulator's
books say afterwards, the halted accounts (``killswitch status``) and a few numbers from
``/metrics``. Exit code 0 when every killed account is verified flat by the daemon and
has no open order left on the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO, cast, get_args

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from killswitch.config import (
    AccountSettings,
    ConfigError,
    OperatorKey,
    Settings,
    TriggerSigningSettings,
    load_settings,
    resolve_config_path,
)
from killswitch.daemon import async_run
from killswitch.embedded import BrokerUnavailable, EmbeddedBroker, free_port
from killswitch.exchange.keys import load_account_key
from killswitch.exchange.signing import (
    CurveName,
    KeyLoadError,
    generate_private_key,
    private_key_pem,
    public_key_pem,
)
from killswitch.exchange.simulator import EndpointFaults, Simulator, SimulatorServer
from killswitch.operator import (
    OperatorError,
    TriggerRequest,
    TriggerRun,
    load_operator_key,
    prepare_trigger,
    public_key_b64,
    read_status,
    run_trigger,
    write_operator_key,
)
from killswitch.render import metric_samples, metrics_lines, status_lines, table

log = logging.getLogger(__name__)

__all__ = ["DemoContext", "DemoOptions", "DemoReport", "cli_demo", "ensure_demo_keys", "run_demo"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEFAULT_ORDERS_PER_PAIR = 250
DEMO_PAIRS = ("BTC_USDT", "ETH_USDT", "SOL_USDT", "BTC_IDR")
DEMO_OPERATOR = "demo-operator"
OPERATOR_KEY_NAME = "operator-ed25519.pem"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Knobs of the demo (the defaults are what ``make demo`` runs)."""

    config: Path | None = None
    orders_per_pair: int = DEFAULT_ORDERS_PER_PAIR
    pairs: Sequence[str] = DEMO_PAIRS
    kill_accounts: Sequence[str] | None = None  # default: the first two configured
    faults: bool = True
    metrics_port: int = 0  # 0: a free port
    seed: int = 2026
    keep_running: bool = False


@dataclass
class DemoContext:
    """What is running while the kill's results are shown (for tests and ``--keep-running``)."""

    settings: Settings
    sim: Simulator
    simulator_url: str
    metrics_url: str
    bootstrap: str


@dataclass
class DemoReport:
    """How the demo went."""

    exit_code: int = EXIT_FAILED
    trigger: TriggerRun | None = None
    seeded: dict[str, int] = field(default_factory=dict)
    open_after: dict[str, int] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    metrics_url: str = ""


# ------------------------------------------------------------------------------ keys


_CURVES = get_args(CurveName)


def _demo_key_paths(config: Path) -> list[tuple[Path, CurveName]]:
    """``(private_key_file, curve)`` of every account whose key file lives in a ``demo`` dir.

    Only such files are ever generated: a missing production key is an error for
    ``config check``, never something the demo papers over.
    """
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []  # load_settings reports it properly
    out = []
    for account in data.get("accounts", []):
        if not isinstance(account, dict):
            continue
        raw, curve = account.get("private_key_file"), account.get("curve", "P-256")
        if isinstance(raw, str) and Path(raw).parent.name == "demo" and curve in _CURVES:
            out.append((Path(raw), cast(CurveName, curve)))
    return out


def ensure_demo_keys(config: Path | None, out: TextIO) -> Path | None:
    """Generate missing demo account keys and the operator key; the demo key directory."""
    if config is None:
        return None
    paths = _demo_key_paths(config)
    made = []
    for path, curve in paths:
        if path.exists():
            continue
        key = generate_private_key(curve)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_key_pem(key))
        path.with_suffix(".pub.pem").write_bytes(public_key_pem(key))
        made.append(path.name)
    directory = paths[0][0].parent if paths else None
    if directory is not None and not (directory / OPERATOR_KEY_NAME).exists():
        write_operator_key(directory / OPERATOR_KEY_NAME)
        made.append(OPERATOR_KEY_NAME)
    if made:
        out.write(f"generated demo keys in {directory}/: {', '.join(made)}\n")
    return directory


# ------------------------------------------------------------------------- exchange


def _register(sim: Simulator, account: AccountSettings, *, throttle: bool) -> None:
    try:
        key = load_account_key(account)
    except KeyLoadError as exc:
        raise ConfigError(str(exc)) from None
    sim.add_client(
        account.api_key.get_secret_value(),
        key.public_key(),
        signature_encoding=account.signature_encoding,
        # With faults, a little below the daemon's ceiling: the adaptive limiter meets
        # real 429s. Without, unlimited.
        rate_limit_per_second=account.rate_limit_per_second * 0.9 if throttle else None,
        burst=account.burst if throttle else None,
        name=account.id,
    )


def build_simulator(settings: Settings, options: DemoOptions) -> tuple[Simulator, dict[str, int]]:
    """The simulator with every account registered and seeded; faults on when asked."""
    sim = Simulator(seed=options.seed)
    seeded: dict[str, int] = {}
    for account in settings.accounts:
        _register(sim, account, throttle=options.faults)
        api_key = account.api_key.get_secret_value()
        for pair in options.pairs:
            sim.seed_orders(api_key, pair, options.orders_per_pair)
        seeded[account.id] = len(sim.open_order_ids(api_key))
    if options.faults:
        # 2 % of answers are 5xx (retried), 1-9 ms latency, a fill racing 2 % of cancels,
        # and 1 % of cancels making a fresh order appear (the next listing catches it).
        sim.set_faults(EndpointFaults(latency_ms=1.0, jitter_ms=8.0, error_rate=0.02))
        sim.set_races(close_before_cancel=0.02, spawn_on_cancel=0.01, max_spawned=50)
    return sim, seeded


def _fault_text(options: DemoOptions) -> str:
    if not options.faults:
        return "no faults"
    return "faults on: 2% 5xx, 1-9 ms latency, per-key 429s, fills racing cancels, new orders"


# ------------------------------------------------------------------------- the demo


def demo_settings(
    settings: Settings,
    *,
    bootstrap: str,
    base_url: str,
    metrics_port: int,
    operator_public_key: str,
) -> Settings:
    """The configuration with the demo's services swapped in."""
    # The embedded broker holds a consumer group's first join for half the session
    # timeout (measured: 5 s at the 10 s default); a shorter one starts the demo sooner.
    kafka = settings.kafka.model_copy(
        update={
            "bootstrap_servers": bootstrap,
            "session_timeout_ms": min(settings.kafka.session_timeout_ms, 3_000),
            "heartbeat_interval_ms": min(settings.kafka.heartbeat_interval_ms, 500),
        }
    )
    accounts = [a.model_copy(update={"base_url": base_url}) for a in settings.accounts]
    metrics = settings.metrics.model_copy(
        update={"enabled": True, "host": "127.0.0.1", "port": metrics_port}
    )
    signing = TriggerSigningSettings(
        required=True,
        max_age_s=settings.trigger_signing.max_age_s,
        operators=[OperatorKey(name=DEMO_OPERATOR, public_key=operator_public_key)],
    )
    return settings.model_copy(
        update={
            "kafka": kafka,
            "accounts": accounts,
            "metrics": metrics,
            "trigger_signing": signing,
        }
    )


def _header(out: TextIO, ctx: DemoContext, seeded: dict[str, int], options: DemoOptions) -> None:
    total = sum(seeded.values())
    pairs = len(options.pairs)
    rows = [
        ["kafka", f"embedded broker at {ctx.bootstrap} (in memory)"],
        [
            "exchange",
            f"simulator at {ctx.simulator_url}: {len(seeded)} accounts, {pairs} pairs, "
            f"{total:,} open orders; {_fault_text(options)}",
        ],
        ["daemon", f"metrics at {ctx.metrics_url}/metrics, health at /healthz and /readyz"],
        ["operator", f"signed triggers required; signing as {DEMO_OPERATOR!r}"],
    ]
    out.write("killswitch demo\n")
    for line in table(["", ""], rows)[1:]:
        out.write(f"  {line}\n")
    out.write("\n")
    out.flush()


async def _wait_ready(task: asyncio.Task[None], ready: asyncio.Event) -> None:
    waiter = asyncio.create_task(ready.wait())
    try:
        done, _ = await asyncio.wait(
            [task, waiter], timeout=_START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if task in done:
        task.result()  # raises what stopped the daemon
        raise RuntimeError("the daemon stopped during start-up")
    if not ready.is_set():
        raise RuntimeError(f"the daemon was not ready within {_START_TIMEOUT_S:.0f}s")


async def _stop_daemon(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), _STOP_TIMEOUT_S)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception:  # stopping must go on: the broker and simulator still need to stop
        log.exception("the daemon stopped with an error")


async def _metrics_text(url: str) -> str:
    async with httpx.AsyncClient(timeout=5.0) as http:
        response = await http.get(f"{url}/metrics")
        response.raise_for_status()
        return response.text


async def _show_after(
    out: TextIO, ctx: DemoContext, report: DemoReport, settings: Settings
) -> None:
    rows = []
    for account in settings.accounts:
        left = len(ctx.sim.open_order_ids(account.api_key.get_secret_value()))
        report.open_after[account.id] = left
        note = "killed" if account.id in report.killed else "not in the kill, untouched"
        rows.append([account.id, f"{left:,} open", f"(seeded {report.seeded[account.id]:,})", note])
    out.write("\nthe simulator's books after the kill:\n")
    out.writelines(f"  {line}\n" for line in table(["ACCOUNT", "NOW", "BEFORE", ""], rows)[1:])
    out.write("\nhalted accounts (killswitch status):\n")
    try:
        states = await read_status(settings, 10.0)
        out.writelines(f"  {line}\n" for line in status_lines(states, datetime.now(UTC)))
    except OperatorError as exc:
        out.write(f"  could not read the state topic: {exc}\n")
    out.write(f"\nmetrics ({ctx.metrics_url}/metrics):\n")
    try:
        samples = metric_samples(await _metrics_text(ctx.metrics_url))
        accounts = [a.id for a in settings.accounts]
        out.writelines(f"  {line}\n" for line in metrics_lines(samples, accounts))
    except (httpx.HTTPError, ValueError) as exc:
        out.write(f"  could not read /metrics: {type(exc).__name__}\n")
    out.write(f"  /readyz: {await _readiness(ctx.metrics_url)}\n")
    out.flush()


async def _readiness(url: str) -> str:
    """``ready``, or ``not ready: <reasons>`` as the daemon's /readyz says."""
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            body = (await http.get(f"{url}/readyz")).json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"no answer ({type(exc).__name__})"
    if body.get("ready") is True:
        return "ready"
    return "not ready: " + "; ".join(str(r) for r in body.get("reasons", []))


async def run_demo(
    options: DemoOptions,
    *,
    broker: EmbeddedBroker,
    out: TextIO,
    tty: bool,
    while_running: Callable[[DemoContext], Awaitable[None]] | None = None,
) -> DemoReport:
    """Start everything, kill two accounts, show the results, stop everything.

    ``broker`` is started here and left for the caller to stop as well (it is a child
    process: the caller's ``finally`` is the last line of defence). ``while_running``
    is awaited after the results are shown, while everything still runs.
    """
    report = DemoReport()
    key_dir = ensure_demo_keys(options.config, out)
    base = load_settings(options.config)
    if key_dir is None:
        raise ConfigError("the demo needs a configuration whose keys live in a 'demo' directory")
    operator_key = load_operator_key(key_dir / OPERATOR_KEY_NAME)
    known = [a.id for a in base.accounts]
    report.killed = list(options.kill_accounts or known[:2])
    unknown = sorted(set(report.killed) - set(known))
    if unknown:
        raise ConfigError(f"--account: not configured: {', '.join(unknown)}")

    await asyncio.to_thread(broker.start)
    sim, report.seeded = build_simulator(base, options)
    async with SimulatorServer(sim) as server:
        port = options.metrics_port or free_port()
        settings = demo_settings(
            base,
            bootstrap=broker.bootstrap,
            base_url=server.base_url,
            metrics_port=port,
            operator_public_key=public_key_b64(operator_key),
        )
        ctx = DemoContext(
            settings, sim, server.base_url, f"http://127.0.0.1:{port}", broker.bootstrap
        )
        report.metrics_url = ctx.metrics_url
        _header(out, ctx, report.seeded, options)
        ready, stop = asyncio.Event(), asyncio.Event()
        daemon = asyncio.create_task(async_run(settings, ready_event=ready, stop_event=stop))
        try:
            await _wait_ready(daemon, ready)
            await _kill(out, tty, settings, report, operator_key)
            await _show_after(out, ctx, report, settings)
            if while_running is not None:
                await while_running(ctx)
            if options.keep_running:
                out.write("\neverything keeps running; Ctrl-C to stop\n")
                out.flush()
                await asyncio.Event().wait()
        finally:
            out.write("\nstopping the daemon, the simulator and the broker\n")
            out.flush()
            await _stop_daemon(daemon, stop)
    await asyncio.to_thread(broker.stop)
    flat_on_books = all(report.open_after.get(a, 1) == 0 for a in report.killed)
    trigger_ok = report.trigger is not None and report.trigger.exit_code == EXIT_OK
    report.exit_code = EXIT_OK if trigger_ok and flat_on_books else EXIT_FAILED
    if not flat_on_books:
        out.write("the simulator still shows open orders on a killed account\n")
    out.write("demo finished: " + ("OK" if report.exit_code == EXIT_OK else "FAILED") + "\n")
    out.flush()
    return report


async def _kill(
    out: TextIO,
    tty: bool,
    settings: Settings,
    report: DemoReport,
    operator_key: Ed25519PrivateKey,
) -> None:
    request = TriggerRequest(
        action="kill",
        accounts=report.killed,
        reason="demo: VaR limit breached",
        operator=DEMO_OPERATOR,
        latch=True,
    )
    prepared = prepare_trigger(request, settings, now=datetime.now(UTC), signing_key=operator_key)
    accounts = " ".join(f"-a {a}" for a in report.killed)
    out.write(
        f'$ killswitch trigger {accounts} --latch -r "{request.reason}" '
        f"--operator {DEMO_OPERATOR} --signing-key ...\n"
    )
    out.flush()
    timeout = settings.engine.default_deadline_s + 15.0
    report.trigger = await run_trigger(settings, prepared, out=out, tty=tty, timeout_s=timeout)


# ------------------------------------------------------------------------------ CLI


def add_arguments_demo(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch demo``."""
    parser.description = (
        "Run the kill switch on embedded defaults (broker, exchange simulator, daemon), "
        "kill two accounts and show the result. Everything stops at the end."
    )
    parser.add_argument(
        "--orders", type=int, default=DEFAULT_ORDERS_PER_PAIR, help="open orders per pair"
    )
    parser.add_argument(
        "-a", "--account", action="append", help="account to kill (default: the first two)"
    )
    parser.add_argument("--no-faults", action="store_true", help="a well-behaved exchange")
    parser.add_argument("--metrics-port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--keep-running", action="store_true", help="keep everything up until Ctrl-C"
    )
    parser.add_argument(
        "--log-level", default="ERROR", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def cli_demo(args: argparse.Namespace) -> int:
    """``killswitch demo`` / ``make demo``."""
    from killswitch.logs import configure_logging  # noqa: PLC0415 - only the CLI configures

    if args.orders < 0 or not 0 <= args.metrics_port <= 65535:
        print("killswitch: --orders and --metrics-port must be non-negative", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level, "text")
    options = DemoOptions(
        config=resolve_config_path(args.config),
        orders_per_pair=args.orders,
        kill_accounts=args.account,
        faults=not args.no_faults,
        metrics_port=args.metrics_port,
        keep_running=args.keep_running,
    )
    broker = EmbeddedBroker()
    try:
        report = asyncio.run(
            run_demo(options, broker=broker, out=sys.stdout, tty=sys.stdout.isatty())
        )
    except BrokerUnavailable as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OperatorError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        broker.stop()  # idempotent; also after Ctrl-C or a crash
    return report.exit_code
