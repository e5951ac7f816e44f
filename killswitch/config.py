"""Configuration: one settings tree, built once at the entry point and passed down.

Sources, highest priority first: keyword arguments, environment variables
(``KILLSWITCH_`` prefix, ``__`` between nested names, JSON for lists), the
optional TOML file (``--config`` or ``KILLSWITCH_CONFIG``), then defaults that
run against the embedded broker and the exchange simulator on loopback.

Relative paths in the TOML file resolve against the file's directory; relative
paths from environment variables against the working directory. Errors name the
environment variable or the file each bad setting came from.

Secrets are :class:`pydantic.SecretStr`; they print as ``**********``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tomllib
import types
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from killswitch.core.pairs import EXCHANGE_PAIR_RE
from killswitch.core.planning import OrderPriority, StrategyName
from killswitch.core.ports import EngineConfig
from killswitch.loops import EventLoopChoice

log = logging.getLogger(__name__)

ENV_PREFIX = "KILLSWITCH_"
CONFIG_ENV = "KILLSWITCH_CONFIG"

ACCOUNT_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Validation error type of an account whose private_key_file does not exist.
KEY_FILE_MISSING = "key_file_missing"

_toml_path: ContextVar[Path | None] = ContextVar("killswitch_toml_path", default=None)


class ConfigError(Exception):
    """The configuration cannot be used. ``str()`` is a one-screen operator message."""


class _Section(BaseModel):
    """Base for every section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSettings(_Section):
    """Kafka topic names (the contract in docs; renaming is allowed, not required)."""

    alerts: str = Field("killswitch.alerts", description="automatic alerts from risk engines")
    manual: str = Field("killswitch.manual", description="operator triggers")
    heartbeats: str = Field("killswitch.heartbeats", description="dead-man heartbeats")
    results: str = Field("killswitch.results", description="per alert and account results")
    state: str = Field("killswitch.state", description="compacted halt latch state")
    dlq: str = Field("killswitch.dlq", description="unreadable or refused input")


class SslSettings(_Section):
    """TLS towards Kafka (``security_protocol`` SSL or SASL_SSL)."""

    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    password: SecretStr | None = None
    check_hostname: bool = True


class SaslSettings(_Section):
    """SASL towards Kafka (``security_protocol`` SASL_PLAINTEXT or SASL_SSL)."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = None


Assignor = Literal["range", "roundrobin"]


class KafkaSettings(_Section):
    """Broker connection, consumer tuning and producer behaviour."""

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "killswitch"
    group_id: str = "killswitch"
    topics: TopicSettings = TopicSettings()
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl: SslSettings = SslSettings()
    sasl: SaslSettings = SaslSettings()
    # A kill switch wants latency, not throughput: a short fetch wait. On the
    # embedded broker end-to-end latency is about half of this value.
    fetch_max_wait_ms: int = Field(10, ge=0, le=60_000)
    fetch_min_bytes: int = Field(1, ge=1)
    max_poll_records: int = Field(500, ge=1, le=100_000)
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    # Above the worst-case drain time (engine.shutdown_grace_s) so a rebalance
    # waits for in-flight sweeps to finish and commit.
    rebalance_timeout_ms: int = Field(60_000, ge=1_000)
    # How the group spreads partitions, in order of preference. "range" gives
    # partition i of the alerts and the manual topic to one member, so a trigger
    # reaches the daemon owning the account; add "roundrobin" only while older
    # daemons that offer nothing else are still in the group (a rolling upgrade).
    assignors: tuple[Assignor, ...] = Field(("range",), min_length=1, max_length=2)
    # Off by default: the embedded broker rejects idempotent producers.
    enable_idempotence: bool = False
    request_timeout_ms: int = Field(30_000, ge=1_000)

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl.username and self.sasl.password
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl.username and sasl.password"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self


SignatureEncoding = Literal["base64-der", "hex-der", "base64-raw"]
Curve = Literal["P-256", "P-384", "secp256k1"]
# The exchange client's HTTP transport (killswitch.exchange.transport.TransportKind):
# one, HTTP/1.1 framed by llhttp (docs/CLIENT.md); the key is kept so that configuration
# files that set it still load.
HttpTransport = Literal["http1"]
# A base_url: http(s)://host[:port][/path], visible ASCII only, no credentials, query or
# fragment (the client appends the endpoint's path and query to it).
_BASE_URL_RE = (
    r"^https?://(?:[A-Za-z0-9\-._~]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
    r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*)?$"
)


class ExchangeTlsSettings(_Section):
    """TLS towards the exchange (``https`` base URLs): verification is always on."""

    cafile: Path | None = Field(None, description="CA bundle (PEM); default: the system store")
    certfile: Path | None = Field(None, description="client certificate (PEM), mutual TLS")
    keyfile: Path | None = Field(None, description="its private key (PEM); default: certfile")
    key_password: SecretStr | None = None
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @model_validator(mode="after")
    def _check_files(self) -> ExchangeTlsSettings:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")
        for name in ("cafile", "certfile", "keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: file not found: {path}")
        return self

    def is_default(self) -> bool:
        """Nothing set: the process-wide default context serves."""
        return self == _DEFAULT_TLS


_DEFAULT_TLS = ExchangeTlsSettings()


class AccountSettings(_Section):
    """One exchange API key: its own limiter and connection pool."""

    id: str = Field(pattern=ACCOUNT_ID_RE, description="account id used in alerts and metrics")
    api_key: SecretStr
    private_key_file: Path | None = None
    private_key: SecretStr | None = Field(None, description="inline PEM or OpenSSH key")
    private_key_passphrase: SecretStr | None = None
    curve: Curve = "P-256"
    signature_encoding: SignatureEncoding = "base64-der"
    base_url: str = "http://127.0.0.1:8700"
    tls: ExchangeTlsSettings = ExchangeTlsSettings()
    rate_limit_per_second: float = Field(10.0, gt=0, le=100_000)
    burst: int = Field(10, ge=1)
    max_concurrency: int = Field(8, ge=1, le=1_024)
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)
    write_timeout_s: float = Field(5.0, gt=0)
    pool_timeout_s: float = Field(5.0, gt=0)
    request_deadline_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(6, ge=1, le=100)
    backoff_base_s: float = Field(0.05, gt=0)
    backoff_cap_s: float = Field(2.0, gt=0)
    clock_sync_interval_s: float = Field(60.0, gt=0)
    # The pairs this account trades, used only when the exchange's pair list
    # (public/exchange-info) cannot be had: scopes are checked against it and a
    # whole-account kill lists these. None: no fallback.
    symbols: list[str] | None = Field(None, description="fallback pair list")
    # Cancel on disconnect (opt-in): alerts cannot reach a daemon that lost its broker,
    # so after this many seconds without it the daemon kills and latches the account on
    # its own. A flapping broker or a partition flattens the account; see the README.
    on_broker_loss_after_s: float | None = Field(
        None, gt=0, le=86_400, description="kill and latch after this long without Kafka"
    )

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one pair (or be left out)")
        bad = [name for name in value if not re.match(EXCHANGE_PAIR_RE, name)]
        if bad:
            shown = ", ".join(repr(name[:48]) for name in bad[:5])
            raise ValueError(
                f"not a pair name as the exchange writes it: {shown} "
                "(upper-case BASE_QUOTE, e.g. BTC_USDT; names are case-sensitive)"
            )
        return list(dict.fromkeys(value))

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        # The message never echoes the value: a URL with credentials holds a secret.
        netloc = value.partition("//")[2].partition("/")[0]
        if "@" in netloc:
            raise ValueError("must not hold credentials (user:password@)")
        if not re.match(_BASE_URL_RE, value):
            raise ValueError(
                "must be http(s)://host[:port][/path]: visible ASCII only, no credentials,"
                " query or fragment"
            )
        port = urlsplit(value).port  # range-checked here (ValueError), not at the first request
        if port == 0:
            raise ValueError("port must be 1-65535")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_key_source(self) -> AccountSettings:
        if (self.private_key_file is None) == (self.private_key is None):
            raise ValueError("set exactly one of private_key_file and private_key")
        if self.private_key_file is not None and not self.private_key_file.is_file():
            # Its own error type: the message then says how to make the file.
            raise PydanticCustomError(
                KEY_FILE_MISSING,
                "private_key_file: file not found: {path}",
                {"path": str(self.private_key_file)},
            )
        return self

    def private_key_bytes(self) -> bytes:
        """The private key material (PEM or OpenSSH), read at the point of use."""
        if self.private_key is not None:
            return self.private_key.get_secret_value().encode()
        assert self.private_key_file is not None
        return self.private_key_file.read_bytes()


class MetricsSettings(_Section):
    """The one HTTP listener for /metrics, /healthz and /readyz."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    # /readyz fails when an account's exchange has not answered for this long.
    exchange_stale_after_s: float = Field(120.0, gt=0)


class EngineSettings(_Section):
    """How sweeps run."""

    default_deadline_s: float = Field(30.0, gt=0, description="per alert, when it sets none")
    strategy: StrategyName = Field(
        "auto",
        description=(
            "auto: fewest requests (cancel-all for whole pairs, batches for partial"
            " scopes, per-order fallback); per_order, batch or symbol"
        ),
    )
    batch_size: int = Field(50, ge=1, le=10_000)
    page_size: int = Field(100, ge=1, le=10_000)
    priority: OrderPriority = "notional_desc"
    latch_budget_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "share of each account's rate_limit_per_second a halted account's guard"
            " spends listing its pairs, one pair per request, continuously"
        ),
    )
    latch_sweep_interval_s: float | None = Field(
        None,
        gt=0,
        description="deprecated and ignored (the guard lists continuously): use latch_budget_share",
    )
    progress_interval_s: float = Field(1.0, gt=0)
    max_passes: int = Field(50, ge=1)
    shutdown_grace_s: float = Field(20.0, ge=0)
    settle_grace_s: float = Field(
        2.0,
        ge=0,
        description=(
            "past a sweep's deadline: how long cancels in flight may still answer, and"
            " then how long one final listing of the pairs in scope may take; 0 = none"
        ),
    )
    cancel_named_pairs_first: bool = Field(
        True,
        description=(
            "auto: a kill naming whole pairs sends each pair's cancel-all before"
            " listing it (one round trip sooner; a listing after it verifies); false:"
            " list first, as for a whole-account kill"
        ),
    )
    exchange_info_ttl_s: float = Field(300.0, gt=0)
    http_transport: HttpTransport = Field(
        "http1", description="exchange client transport (one: HTTP/1.1, framing by llhttp)"
    )

    def engine_config(self) -> EngineConfig:
        """What the engine reads of this section (the engine never sees the settings)."""
        if self.latch_sweep_interval_s is not None:
            log.warning(
                "engine.latch_sweep_interval_s is deprecated and ignored: the guard lists"
                " continuously at engine.latch_budget_share of each account's rate"
            )
        return EngineConfig(
            default_deadline_s=self.default_deadline_s,
            strategy=self.strategy,
            batch_size=self.batch_size,
            page_size=self.page_size,
            priority=self.priority,
            latch_budget_share=self.latch_budget_share,
            progress_interval_s=self.progress_interval_s,
            max_passes=self.max_passes,
            settle_grace_s=self.settle_grace_s,
            cancel_named_pairs_first=self.cancel_named_pairs_first,
        )


class OperatorKey(_Section):
    """An operator allowed to sign manual triggers."""

    name: str = Field(min_length=1, max_length=128)
    public_key: str = Field(description="Ed25519 public key: base64 raw 32 bytes, or PEM")


class TriggerSigningSettings(_Section):
    """Signatures on manual triggers."""

    required: bool = False
    operators: list[OperatorKey] = []
    max_age_s: float = Field(300.0, gt=0, description="freshness window for created_at")


class AlertScope(_Section):
    """Scope of a dead-man kill (same shape as an alert's scope)."""

    accounts: list[str] | Literal["*"]
    symbols: list[str] | None = None
    sides: list[Literal["BUY", "SELL"]] | None = None


class DeadmanSource(_Section):
    """A trading system that must keep sending heartbeats."""

    source: str = Field(min_length=1)
    timeout_s: float = Field(gt=0)
    scope: AlertScope
    latch: bool = False


class IntakeSettings(_Section):
    """Consumer-side limits."""

    dedup_window: int = Field(100_000, ge=1, description="alert ids remembered")
    max_queued_per_account: int = Field(1_000, ge=1)
    max_message_bytes: int = Field(1_000_000, ge=1_024)
    max_order_ids: int = Field(10_000, ge=1)
    # On a rebalance, how long records of revoked partitions may still run before
    # they are cancelled and their sweeps handed to the next owner (who replays
    # them). Every member of the group waits this long at most before rejoining,
    # so it adds to failover when a survivor is busy; a sweep cut off restarts on
    # the new owner with the counts carried over.
    rebalance_drain_s: float = Field(1.0, ge=0.0, le=300.0)


class RuntimeSettings(_Section):
    """How the daemon process runs."""

    # auto: uvloop when installed (a dependency on Linux and macOS), else asyncio's loop.
    event_loop: EventLoopChoice = "auto"


class LoggingSettings(_Section):
    """Structured logs on stderr."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


def default_audit_file() -> Path:
    """``$XDG_STATE_HOME/killswitch/audit.jsonl``, else under ``~/.local/state``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(state) / "killswitch" / "audit.jsonl"


class DirectSettings(_Section):
    """The break-glass kill, ``killswitch trigger --direct`` (not ``operator``: the
    variable ``KILLSWITCH_OPERATOR`` names the operator)."""

    audit_file: Path | None = Field(
        None,
        description="JSON-lines file every direct kill's final results are appended to "
        "(default: $XDG_STATE_HOME/killswitch/audit.jsonl, else "
        "~/.local/state/killswitch/audit.jsonl)",
    )
    kafka_connect_timeout_s: float = Field(
        3.0, gt=0, le=60, description="how long a direct kill tries to reach Kafka"
    )

    def audit_path(self) -> Path:
        """The audit file to append to (``~`` expanded)."""
        return (self.audit_file or default_audit_file()).expanduser()


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    accounts: list[AccountSettings] = Field(min_length=1)
    metrics: MetricsSettings = MetricsSettings()
    engine: EngineSettings = EngineSettings()
    trigger_signing: TriggerSigningSettings = TriggerSigningSettings()
    deadman: list[DeadmanSource] = []
    intake: IntakeSettings = IntakeSettings()
    logging: LoggingSettings = LoggingSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    direct: DirectSettings = DirectSettings()

    @field_validator("accounts")
    @classmethod
    def _unique_ids(cls, accounts: list[AccountSettings]) -> list[AccountSettings]:
        seen: set[str] = set()
        for account in accounts:
            if account.id in seen:
                raise ValueError(f"duplicate account id {account.id!r}")
            seen.add(account.id)
        return accounts

    def account(self, account_id: str) -> AccountSettings:
        """The account with this id (KeyError when not configured)."""
        for account in self.accounts:
            if account.id == account_id:
                return account
        raise KeyError(account_id)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(_TomlRelativePaths(settings_cls, toml_file=path))
        return tuple(sources)


# --------------------------------------------------------------- paths in the TOML file


def config_relative(raw: str, config_dir: Path) -> Path:
    """A path written in the TOML file: relative ones are relative to the file's directory
    (so a configuration works from any working directory); absolute ones and ``~`` are kept."""
    path = Path(raw)
    if path.is_absolute() or raw.startswith("~"):
        return path
    return config_dir / path


class _TomlRelativePaths(TomlConfigSettingsSource):
    """The TOML source, with every path-typed setting resolved against the file's directory."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        self._model = settings_cls
        super().__init__(settings_cls, toml_file=toml_file)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        return rebase_paths(data, self._model, Path(str(file_path)).parent)


def rebase_paths(
    data: Mapping[str, Any], model: type[BaseModel], config_dir: Path
) -> dict[str, Any]:
    """``data`` (as read from the TOML file) with the values of ``Path`` fields of ``model``
    and its nested sections made relative to ``config_dir``."""
    out = dict(data)
    for name, field in model.model_fields.items():
        if name in out:
            out[name] = _rebase_value(out[name], field.annotation, config_dir)
    return out


def _rebase_value(value: Any, annotation: Any, config_dir: Path) -> Any:
    members = _union_members(annotation)
    if isinstance(value, str) and Path in members:
        return str(config_relative(value, config_dir))
    for member in members:
        is_model = isinstance(member, type) and issubclass(member, BaseModel)
        if isinstance(value, Mapping) and is_model:
            return rebase_paths(value, member, config_dir)
        if isinstance(value, list) and get_origin(member) is list:
            (item,) = get_args(member)
            return [_rebase_value(v, item, config_dir) for v in value]
    return value


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def resolve_config_path(
    cli_path: str | None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The TOML file to read: ``--config`` wins over ``KILLSWITCH_CONFIG``."""
    env = os.environ if environ is None else environ
    raw = cli_path or env.get(CONFIG_ENV)
    return Path(raw) if raw else None


def load_settings(config_path: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from overrides, environment, the TOML file and defaults.

    Relative paths in the TOML file are relative to the file's directory; relative paths
    from environment variables to the working directory. Raises :class:`ConfigError`
    with an operator-readable message naming where each bad setting came from.
    """
    if config_path is not None and not config_path.is_file():
        raise ConfigError(f"configuration file not found: {config_path}")
    token = _toml_path.set(config_path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, config_path)) from None
    except SettingsError as exc:  # malformed JSON in an environment variable
        raise ConfigError(_format_settings_error(exc, os.environ)) from None
    except (ValueError, OSError) as exc:  # malformed TOML
        where = f" in {config_path}" if config_path else ""
        raise ConfigError(f"cannot read configuration{where}: {_scrub(str(exc))}") from None
    finally:
        _toml_path.reset(token)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings of a command: ``--config`` / ``KILLSWITCH_CONFIG`` and the environment."""
    return load_settings(resolve_config_path(getattr(args, "config", None)))


_MAX_ERRORS_SHOWN = 12


def format_validation_error(
    exc: ValidationError, config_path: Path | None, environ: Mapping[str, str] | None = None
) -> str:
    """One line per problem, naming the setting, what is wrong and where it came from
    (an environment variable or the TOML file); never a value."""
    env = os.environ if environ is None else environ
    toml_data = _read_toml_quietly(config_path)
    errors = exc.errors(include_url=False, include_input=False)
    lines = [f"invalid configuration: {len(errors)} problem(s)"]
    hints: list[str] = []
    from_file_only = True
    for err in errors[:_MAX_ERRORS_SHOWN]:
        loc = tuple(err["loc"])
        where = error_source(loc, config_path, toml_data, env)
        from_file = where == f"in {config_path}"
        from_file_only = from_file_only and from_file
        text = ".".join(str(part) for part in loc) or "(top level)"
        account = _account_named(loc, toml_data, env)
        if account is not None:
            text = f"{text} (account {account!r})"
        lines.append(f"  - {text}: {_describe(err)} ({where})")
        if err.get("type") == KEY_FILE_MISSING:
            hints.append(_key_file_hint(config_path, from_file=from_file))
    if len(errors) > _MAX_ERRORS_SHOWN:
        lines.append(f"  ... and {len(errors) - _MAX_ERRORS_SHOWN} more")
    if config_path is None:
        hints.append(
            f"No configuration file was given: pass --config FILE or set {CONFIG_ENV} "
            "(config/killswitch.example.toml is one to start from)."
        )
    lines.extend(dict.fromkeys(hints))  # each hint once
    if not from_file_only:  # the file alone is to blame: the variables are beside the point
        lines.append(
            "KILLSWITCH_* environment variables (nested with __, lists as JSON) override the "
            "TOML file; see config/killswitch.example.toml."
        )
    return "\n".join(lines)


def _account_named(
    loc: tuple[int | str, ...], toml_data: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> str | None:
    """The id of the account at ``loc`` (``accounts.N...``), from where the accounts came
    (the environment's list overrides the file's), so a problem names the account, not
    only its place in the list; None when it has no readable id."""
    if len(loc) < 2 or loc[0] != "accounts" or not isinstance(loc[1], int):
        return None
    accounts: Any = toml_data.get("accounts") if toml_data is not None else None
    raw = environ.get(ENV_PREFIX + "ACCOUNTS")
    if raw is not None:
        try:
            accounts = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(accounts, list) or not 0 <= loc[1] < len(accounts):
        return None
    entry = accounts[loc[1]]
    name = entry.get("id") if isinstance(entry, dict) else None
    return name[:64] if isinstance(name, str) and name else None


def error_source(
    loc: tuple[int | str, ...],
    config_path: Path | None,
    toml_data: Mapping[str, Any] | None,
    environ: Mapping[str, str],
) -> str:
    """Where the setting at ``loc`` came from: ``from KILLSWITCH_...`` (one or more
    environment variables), ``in FILE``, both, or ``not set`` (a default or nothing)."""
    exact, nested = _env_names(loc, environ)
    names = exact + nested
    parts = [f"from {', '.join(names)}"] if names else []
    if not exact and config_path is not None and _has_path(toml_data, loc):
        parts.append(f"in {config_path}")
    if parts:
        return " and ".join(parts)
    if config_path is None:
        return "not set: no configuration file was given, and no environment variable sets it"
    return "not set in the file or the environment"


def _env_names(
    loc: tuple[int | str, ...], environ: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """Set environment variables naming ``loc`` or a section above it (exact), and those
    naming settings below it (nested). List indices end the name: a list is one JSON value."""
    keys: list[str] = []
    for part in loc:
        if not isinstance(part, str):
            break
        keys.append(part.upper())
    present = {name.upper(): name for name in environ if name.upper().startswith(ENV_PREFIX)}
    exact = [
        present[name]
        for i in range(1, len(keys) + 1)
        if (name := ENV_PREFIX + "__".join(keys[:i])) in present
    ]
    below = ENV_PREFIX + "__".join(keys) + "__" if keys else ENV_PREFIX
    nested = sorted(v for k, v in present.items() if k.startswith(below) and k != CONFIG_ENV)
    return exact, nested


def _has_path(data: Any, loc: tuple[int | str, ...]) -> bool:
    for part in loc:
        in_table = isinstance(data, Mapping) and isinstance(part, str) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_table or in_list):
            return False
        data = data[part]
    return data is not None


def _read_toml_quietly(config_path: Path | None) -> dict[str, Any] | None:
    if config_path is None:
        return None
    try:
        return tomllib.loads(config_path.read_text())
    except (OSError, ValueError):
        return None


def _key_file_hint(config_path: Path | None, *, from_file: bool) -> str:
    if from_file and config_path is not None:
        return (
            "Make the key files this configuration names (missing ones only) with: "
            f"killswitch keygen --config {config_path}  (then give the exchange each .pub.pem)"
        )
    return (
        "Make a key pair with: killswitch keygen --out FILE  "
        "(then give the exchange the .pub.pem written next to it)"
    )


def _format_settings_error(exc: SettingsError, environ: Mapping[str, str]) -> str:
    """A value that could not be parsed before validation: JSON in an environment variable."""
    match = re.search(r'field "([^"]+)" from source "(\w+)"', str(exc))
    if match is None or match.group(2) != "EnvSettingsSource":
        return f"cannot read configuration: {_scrub(str(exc))}"
    exact, nested = _env_names((match.group(1),), environ)
    names = ", ".join(exact + nested) or ENV_PREFIX + match.group(1).upper()
    cause = exc.__cause__
    detail = f": {cause}" if isinstance(cause, json.JSONDecodeError) else ""
    return (
        f"cannot read configuration from environment variable {names}: not valid JSON{detail} "
        "(lists and tables are JSON in the environment)"
    )


def _describe(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown setting"
    if kind == "missing":
        return "required setting is missing"
    msg = str(err.get("msg", "invalid value"))
    return _scrub(msg.removeprefix("Value error, "))


def _scrub(text: str) -> str:
    """Drop anything that looks like key material from an error text."""
    return re.sub(r"-----BEGIN[^\n]*?-----.*?(-----END[^\n]*?-----|$)", "<key>", text, flags=re.S)


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced by ``**********``."""
    return settings.model_dump(mode="json")
