"""The ``killswitch`` command: entry point and wiring.

Every subcommand is a small function ``(args) -> exit code``; the codes are defined
in ``killswitch.exitcodes``: 0 success, 1 the job itself failed (e.g. a kill ended
not flat), 2 bad usage or bad configuration (one-screen message, no traceback) or a
trigger the daemon refused (dead letter), 3 a kill that ended flat but did not find
some of the order ids it named (``not_found``) or a release of an account that was
not halted, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from killswitch import __version__
from killswitch.config import ConfigError, redacted_dump, settings_from_args
from killswitch.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from killswitch.logs import quiet_libraries

Handler = Callable[[argparse.Namespace], int]


def _config_show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    print(json.dumps(redacted_dump(settings), indent=2))
    return EXIT_OK


def _config_check(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    from killswitch.exchange.keys import load_account_key  # noqa: PLC0415
    from killswitch.exchange.signing import KeyLoadError  # noqa: PLC0415

    for account in settings.accounts:
        try:
            load_account_key(account)
        except KeyLoadError as exc:
            raise ConfigError(str(exc)) from None
    names = ", ".join(a.id for a in settings.accounts)
    print(f"configuration OK: {len(settings.accounts)} account(s) ({names})")
    return EXIT_OK


def _keygen(args: argparse.Namespace) -> int:
    if (args.out is None) == (args.config is None):
        print("error: keygen needs exactly one of --out FILE and --config FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.config is not None:
        return _keygen_from_config(Path(args.config))
    if args.ed25519:
        from killswitch.commands.operator_keys import keygen_operator  # noqa: PLC0415

        return keygen_operator(args)
    from killswitch.keyfiles import write_account_key  # noqa: PLC0415

    out = Path(args.out)
    try:
        pub_path = write_account_key(out, args.curve, force=args.force)
    except FileExistsError:
        print(f"error: {out} exists (use --force to overwrite)", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key: {out} (mode 600)\npublic key:  {pub_path} (send this to the exchange)")
    return EXIT_OK


def _keygen_from_config(config: Path) -> int:
    """``keygen --config FILE``: every missing key file the accounts name (never overwrites)."""
    from killswitch.keyfiles import configured_keys, make_missing_keys, public_key_path  # noqa: PLC0415

    if not config.is_file():
        raise ConfigError(f"configuration file not found: {config}")
    try:
        made = {key.path for key in make_missing_keys(config)}
    except OSError as exc:
        print(f"error: cannot write a key file: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for key in configured_keys(config):
        if key.path in made:
            print(
                f"{key.account}: wrote {key.path} ({key.curve}, mode 600) and "
                f"{public_key_path(key.path)} (give this one to the exchange)"
            )
        else:
            print(f"{key.account}: {key.path} exists, left alone")
    if not made:
        print("no key file was missing")
    return EXIT_OK


def _not_built(name: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        print(f"error: '{name}' is not available in this build", file=sys.stderr)
        return EXIT_USAGE

    return handler


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (default: $KILLSWITCH_CONFIG, else none)",
    )


# Subcommands whose implementation lives in another module: name -> "module:function".
# Imported lazily so that `killswitch --version` stays fast and light.
_LAZY: dict[str, str] = {
    "run": "killswitch.daemon:cli_run",
    "simulate-exchange": "killswitch.simulator.cli:cli_simulate",
    "demo": "killswitch.demo:cli_demo",
    "trigger": "killswitch.commands.trigger:cli_trigger",
    "release": "killswitch.commands.release:cli_release",
    "status": "killswitch.commands.status:cli_status",
    "results": "killswitch.commands.results:cli_results",
    "check": "killswitch.commands.check:cli_check",
    "broker": "killswitch.broker:cli_broker",
}

# Each lazily-loaded module may add its own arguments: "module:add_arguments_<name>".
_ARGS_HOOK = "add_arguments"


def _lazy(name: str) -> Handler:
    target = _LAZY[name]
    module_name, func_name = target.split(":")

    def handler(args: argparse.Namespace) -> int:
        import importlib  # noqa: PLC0415

        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return _not_built(name)(args)
            raise
        func: Handler = getattr(module, func_name)
        return func(args)

    return handler


def _add_lazy_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    import importlib  # noqa: PLC0415

    module_name = _LAZY[name].split(":")[0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return
    hook = getattr(module, f"{_ARGS_HOOK}_{name.replace('-', '_')}", None)
    if hook is not None:
        hook(parser)


_HELP = {
    "run": "run the daemon (consume alerts, sweep accounts, publish results)",
    "simulate-exchange": "serve the Ajaib exchange simulator over HTTP",
    "demo": "embedded broker + simulator + daemon, then a kill with a progress bar",
    "trigger": "publish a manual kill and follow it to its final result "
    "(--direct: run it from here, no Kafka or daemon needed)",
    "release": "publish a release that lifts an account's halt latch",
    "status": "show halted accounts from the state topic (who latched them, and why)",
    "results": "print (or --follow) an alert's results from the results topic",
    "check": "check Kafka, topics, the exchange and every account's key (read-only)",
    "broker": "run the embedded Kafka-protocol broker in the foreground (local use, in memory)",
}


def build_parser(with_lazy_args: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="killswitch", description="Risk kill switch for the Ajaib Coin Exchange."
    )
    parser.add_argument("--version", action="version", version=f"killswitch {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show the libraries' own log lines (e.g. the Kafka client's connection "
        "errors), which are hidden by default",
    )
    parser.add_argument(
        "--config",
        dest="global_config",
        metavar="FILE",
        help="the TOML configuration, for any command (also taken after the command)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    config = sub.add_parser("config", help="show or check the effective configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print effective settings, secrets redacted")
    _add_config_arg(show)
    show.set_defaults(handler=_config_show)
    check = config_sub.add_parser("check", help="validate settings and load every key")
    _add_config_arg(check)
    check.set_defaults(handler=_config_check)

    keygen = sub.add_parser(
        "keygen",
        help="generate an ECDSA key pair for an API key (--ed25519: an operator key; "
        "--config: every missing key file a configuration names)",
    )
    keygen.add_argument("--out", help="private key file to write (PEM)")
    keygen.add_argument(
        "--config",
        metavar="FILE",
        help="instead of --out: write every accounts.private_key_file of this TOML file "
        "that does not exist yet (relative paths: to the file's directory)",
    )
    keygen.add_argument("--curve", default="P-256", choices=["P-256", "P-384", "secp256k1"])
    keygen.add_argument("--force", action="store_true", help="overwrite an existing file")
    keygen.add_argument(
        "--ed25519",
        action="store_true",
        help="an operator's Ed25519 key for signing manual triggers (ignores --curve)",
    )
    keygen.set_defaults(handler=_keygen)

    for name, help_text in _HELP.items():
        cmd = sub.add_parser(name, help=help_text)
        _add_config_arg(cmd)
        if with_lazy_args:
            _add_lazy_arguments(name, cmd)
        cmd.set_defaults(handler=_lazy(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``killswitch`` and ``python -m killswitch``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.global_config is not None:
        if getattr(args, "config", None) not in (None, args.global_config):
            print("killswitch: --config given twice, with different files", file=sys.stderr)
            return EXIT_USAGE
        args.config = args.global_config
    if not args.verbose:
        quiet_libraries()
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"killswitch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("killswitch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read stdout went away (``| head``): no traceback, and stdout pointed
        # at /dev/null so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
