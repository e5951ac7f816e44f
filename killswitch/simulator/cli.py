"""``killswitch simulate-exchange``: serve the simulator standalone until SIGINT/SIGTERM.

Clients come from ``--client API_KEY=PUBLIC_KEY_FILE[,ENCODING]`` (repeatable) and,
when a configuration file is given, from its accounts (public key derived from each
account's private key, so the daemon and the simulator agree without extra files).
The first line on stdout is ``simulator listening on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from killswitch.config import ConfigError, load_settings, resolve_config_path
from killswitch.exchange.keys import load_account_key
from killswitch.exchange.signing import (
    KeyLoadError,
    SignatureEncoding,
    load_public_key,
)
from killswitch.simulator.admin import AdminError, apply_faults
from killswitch.simulator.core import (
    RATE_LIMIT_KINDS,
    RETRY_AFTER_FORMS,
    UNKNOWN_SYMBOL_ANSWERS,
    RetryAfter,
    Simulator,
)
from killswitch.simulator.faults import Races
from killswitch.simulator.server import SimulatorServer

DEFAULT_PORT = 8700  # the default base_url of an account points here
_ENCODINGS: dict[str, SignatureEncoding] = {
    "base64-der": "base64-der",
    "hex-der": "hex-der",
    "base64-raw": "base64-raw",
}


def add_arguments_simulate_exchange(parser: argparse.ArgumentParser) -> None:
    """Flags of ``killswitch simulate-exchange`` (``--config`` is added by the CLI)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add(
        "--port",
        type=int,
        default=None,
        help=f"port (default: the first account's base_url port, else {DEFAULT_PORT}; 0 = any)",
    )
    add(
        "--client",
        action="append",
        default=[],
        metavar="API_KEY=PUBKEY_FILE[,ENCODING]",
        help="register a client from a public key file (PEM, DER or OpenSSH); repeatable",
    )
    add("--seed", type=int, default=0, help="random seed (faults, races, seeded orders)")
    add(
        "--symbols",
        metavar="SYM,SYM",
        help="trading pairs to list (default: 22 built-in pairs such as BTC_USDT, BTC_IDR)",
    )
    add("--seed-orders", type=int, default=0, metavar="N", help="open orders per client and symbol")
    add(
        "--seed-symbols",
        metavar="SYM,SYM",
        help="symbols to seed orders on (default: BTC_USDT, or the first listed pair)",
    )
    add("--rate-limit", type=float, help="requests per second per API key (default: unlimited)")
    add("--burst", type=int, help="token bucket size per API key (default: one second's worth)")
    add("--global-rate-limit", type=float, help="requests per second over all keys")
    add("--global-burst", type=int, help="global token bucket size")
    add("--faults", metavar="JSON|@FILE", help='e.g. {"all": {"latency_ms": 5}, "cancel": {...}}')
    add("--races", metavar="JSON|@FILE", help='e.g. {"close_before_cancel": 0.05}')
    add("--time-window-ms", type=int, default=5000, help="accepted X-TIMESTAMP skew (ms)")
    add("--clock-offset-ms", type=int, default=0, help="skew of the server clock (ms)")
    add("--max-batch", type=int, default=1000, help="largest batch cancel accepted")
    add("--max-page-limit", type=int, default=1000, help="largest open-orders limit accepted")
    add("--log-max", type=int, default=200_000, help="request log entries kept")
    add("--auth-failure-status", type=int, choices=(401, 403), default=401)
    add("--no-admin", action="store_true", help="disable the unsigned /_admin/ calls")
    _add_knob_arguments(parser)


def _add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags modelling exchanges that read the documented API differently (all off)."""
    add = parser.add_argument
    add(
        "--public-auth",
        action="store_true",
        help="require a signature on public/time and public/exchange-info too",
    )
    add(
        "--unknown-symbol",
        choices=UNKNOWN_SYMBOL_ANSWERS,
        default="invalid",
        help="answer to a pair not traded: 400 invalid_request (default) or empty results",
    )
    add(
        "--rate-limit-kind",
        choices=RATE_LIMIT_KINDS,
        default="token_bucket",
        help="token_bucket (rate, burst) or sliding_window (floor(rate * window) per window)",
    )
    add("--sliding-window-s", type=float, default=1.0, help="sliding window length (s)")
    add(
        "--retry-after-on-429",
        action="store_true",
        help="rate-limit 429s carry Retry-After (whole seconds, at least 1)",
    )
    add(
        "--throttle-window",
        metavar="AFTER:SECONDS[:seconds|date|none]",
        help="after AFTER requests to the order endpoints, answer 429 to them for SECONDS",
    )
    add(
        "--redirect",
        metavar="STATUS:LOCATION",
        help="every non-public endpoint answers STATUS (3xx) with this Location",
    )
    add(
        "--replay-protection",
        action="store_true",
        help="a signature already accepted within the time window answers 401",
    )


def cli_simulate(args: argparse.Namespace) -> int:
    """Build the simulator from flags (and configuration) and serve until signalled."""
    sim, port = build_simulator(args)
    return asyncio.run(_serve(sim, args.host, port, admin=not args.no_admin))


def build_simulator(args: argparse.Namespace) -> tuple[Simulator, int]:
    """The configured simulator and the port to listen on (ConfigError when unusable)."""
    try:
        sim = Simulator(
            seed=args.seed,
            time_window_ms=args.time_window_ms,
            clock_offset_ms=args.clock_offset_ms,
            symbols=_split(args.symbols),
            rate_limit_per_second=args.rate_limit,
            burst=args.burst,
            global_rate_limit_per_second=args.global_rate_limit,
            global_burst=args.global_burst,
            max_batch=args.max_batch,
            max_page_limit=args.max_page_limit,
            log_max=args.log_max,
            auth_failure_status=args.auth_failure_status,
            public_auth=args.public_auth,
            unknown_symbol=args.unknown_symbol,
            rate_limit_kind=args.rate_limit_kind,
            sliding_window_s=args.sliding_window_s,
            retry_after_on_429=args.retry_after_on_429,
            replay_protection=args.replay_protection,
        )
        _set_throttle_window(sim, args.throttle_window)
        _set_redirect(sim, args.redirect)
        port = _add_config_accounts(sim, args.config)
        for spec in args.client:
            _add_cli_client(sim, spec)
        if args.faults:
            apply_faults(sim, _json_arg(args.faults, "--faults"))
        if args.races:
            races = Races.from_dict(_json_arg(args.races, "--races"))
            sim.set_races(
                races.close_before_cancel,
                races.spawn_on_cancel,
                races.max_spawned,
                races.lose_cancel,
            )
        _seed(sim, args)
    except (ValueError, TypeError) as exc:  # KeyLoadError and AdminError are ValueErrors
        raise ConfigError(f"simulate-exchange: {exc}") from None
    if args.port is not None:
        port = args.port
    return sim, DEFAULT_PORT if port is None else port


def _set_throttle_window(sim: Simulator, spec: str | None) -> None:
    """``AFTER:SECONDS[:seconds|date|none]``."""
    if spec is None:
        return
    parts = spec.split(":")
    form = parts[2] if len(parts) == 3 else "seconds"
    if len(parts) not in (2, 3) or form not in (*RETRY_AFTER_FORMS, "none"):
        raise AdminError("--throttle-window expects AFTER:SECONDS[:seconds|date|none]")
    try:
        after, seconds = int(parts[0]), float(parts[1])
    except ValueError:
        raise AdminError("--throttle-window expects AFTER:SECONDS[:seconds|date|none]") from None
    retry_after: RetryAfter | None = None
    if form == "seconds":
        retry_after = "seconds"
    elif form == "date":
        retry_after = "date"
    sim.set_throttle_window(after, seconds, retry_after)


def _set_redirect(sim: Simulator, spec: str | None) -> None:
    """``STATUS:LOCATION`` (the location may contain colons)."""
    if spec is None:
        return
    status, sep, location = spec.partition(":")
    if not sep or not status.isdigit():
        raise AdminError("--redirect expects STATUS:LOCATION, e.g. 307:https://host/path")
    sim.set_redirect(location, int(status))


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _json_arg(text: str, flag: str) -> dict[str, Any]:
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise AdminError(f"{flag}: not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise AdminError(f"{flag}: expected a JSON object")
    return data


def _add_cli_client(sim: Simulator, spec: str) -> None:
    api_key, sep, rest = spec.partition("=")
    if not sep or not api_key or not rest:
        raise AdminError("--client expects API_KEY=PUBKEY_FILE[,ENCODING]")
    path, _, encoding_name = rest.partition(",")
    encoding = _ENCODINGS.get(encoding_name or "base64-der")
    if encoding is None:
        raise AdminError(f"--client: encoding must be one of {', '.join(_ENCODINGS)}")
    try:
        public_key = load_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise AdminError(f"--client: cannot read {path} ({exc.strerror})") from None
    label = sim.add_client(api_key, public_key, signature_encoding=encoding)
    print(f"client {label}: public key {path} ({encoding})", file=sys.stderr)


def _add_config_accounts(sim: Simulator, config: str | None) -> int | None:
    """Register every configured account; return the first loopback base_url's port."""
    path = resolve_config_path(config)
    if path is None:
        return None
    settings = load_settings(path)
    port: int | None = None
    for account in settings.accounts:
        try:
            key = load_account_key(account)
        except KeyLoadError as exc:
            raise ConfigError(str(exc)) from None
        sim.add_client(
            account.api_key.get_secret_value(),
            key.public_key(),
            signature_encoding=account.signature_encoding,
            name=account.id,
        )
        url = urlsplit(account.base_url)
        if port is None and url.hostname in ("127.0.0.1", "localhost") and url.port:
            port = url.port
        print(f"client {account.id}: from configuration", file=sys.stderr)
    return port


def _seed(sim: Simulator, args: argparse.Namespace) -> None:
    if args.seed_orders <= 0:
        return
    symbols = _split(args.seed_symbols) or (
        ["BTC_USDT"] if "BTC_USDT" in sim.symbols else sim.symbols[:1]
    )
    for api_key in sim.api_keys():
        for symbol in symbols:
            sim.seed_orders(api_key, symbol, args.seed_orders)
    total = args.seed_orders * len(symbols) * len(sim.api_keys())
    print(f"seeded {total} open orders on {', '.join(symbols)}", file=sys.stderr)


async def _serve(sim: Simulator, host: str, port: int, *, admin: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with SimulatorServer(sim, host, port, admin=admin) as server:
            print(f"simulator listening on {server.base_url}", flush=True)
            await stop.wait()
            print("simulator stopping", file=sys.stderr)
    except OSError as exc:
        raise ConfigError(
            f"simulate-exchange: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0
