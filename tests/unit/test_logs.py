"""Structured logs: JSON lines with context, readable text, and secrets that never get out."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, SecretStr

from killswitch.config import Settings, load_settings
from killswitch.exchange.signing import generate_private_key, private_key_pem
from killswitch.logs import (
    MASK,
    JsonFormatter,
    SecretMasker,
    TextFormatter,
    configure_logging,
    default_masker,
    register_secrets,
    register_settings_secrets,
    settings_secrets,
    skip_unwritten_record_fields,
)

API_KEY = "sk-live-7d1e4c9a2b"


@pytest.fixture
def masker() -> SecretMasker:
    m = SecretMasker()
    m.register([API_KEY])
    return m


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def lookup(message: str) -> None:
    raise KeyError(message)


def boom(message: str) -> None:
    """Raise a RuntimeError chained to a KeyError, both carrying ``message``."""
    try:
        lookup(message)
    except KeyError as inner:
        raise RuntimeError(f"wrapped: {message}") from inner


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_json_one_line_per_event_with_context(masker: SecretMasker) -> None:
    logger, stream = capture(JsonFormatter(masker))
    logger.info(
        "order cancelled",
        extra={"alert_id": "risk-7f3a", "account": "mm-1", "order_id": 123, "symbol": "BTC_USDT"},
    )
    logger.warning("sweep residual %d", 4, extra={"alert_id": "risk-7f3a", "account": "mm-2"})
    first, second = json_lines(stream)
    assert first["event"] == "order cancelled"
    assert first["level"] == "info"
    assert (first["alert_id"], first["account"], first["order_id"]) == ("risk-7f3a", "mm-1", 123)
    assert str(first["ts"]).endswith("Z")
    assert second["event"] == "sweep residual 4"
    assert second["level"] == "warning"


def test_json_exception_stays_on_one_line(masker: SecretMasker) -> None:
    logger, stream = capture(JsonFormatter(masker))
    try:
        boom("bad")
    except RuntimeError:
        logger.exception("sweep crashed", extra={"account": "mm-1"})
    (entry,) = json_lines(stream)
    assert entry["error"] == "RuntimeError: wrapped: bad"
    assert "KeyError" in str(entry["traceback"])  # the chained cause is kept
    assert entry["account"] == "mm-1"


def test_json_extra_cannot_overwrite_core_fields(masker: SecretMasker) -> None:
    logger, stream = capture(JsonFormatter(masker))
    logger.info("x", extra={"level": "fake", "event": "fake", "ts": 1})
    (entry,) = json_lines(stream)
    assert (entry["level"], entry["event"]) == ("info", "x")
    assert (entry["extra_level"], entry["extra_event"], entry["extra_ts"]) == ("fake", "fake", 1)


def test_json_non_serialisable_extras(masker: SecretMasker) -> None:
    logger, stream = capture(JsonFormatter(masker))
    logger.info("x", extra={"path": Path("relative/a"), "ids": (1, 2), "nested": {"k": {1, 2}}})
    (entry,) = json_lines(stream)
    assert entry["path"] == "relative/a"
    assert entry["ids"] == [1, 2]


def test_text_format(masker: SecretMasker) -> None:
    logger, stream = capture(TextFormatter(masker))
    logger.info(
        "order cancelled",
        extra={"order_id": 9, "account": "mm-1", "alert_id": "a-1", "note": "two words"},
    )
    line = stream.getvalue().rstrip("\n")
    assert "\n" not in line
    assert ' info    order cancelled  alert_id=a-1 account=mm-1 order_id=9 note="two words"' in line


def test_text_format_traceback_follows(masker: SecretMasker) -> None:
    logger, stream = capture(TextFormatter(masker))
    try:
        boom("bad")
    except RuntimeError:
        logger.exception("sweep crashed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("error=RuntimeError: wrapped: bad")
    assert rest[0].startswith("Traceback")


@pytest.mark.parametrize("formatter_cls", [JsonFormatter, TextFormatter])
@pytest.mark.parametrize(
    "secret",
    [
        API_KEY,
        'pass"word\\with-quotes',  # changes under JSON escaping
        "p\u00e4ssw\u00f6rd-unicode",
        "tab\tseparated-secret",
    ],
)
def test_a_registered_secret_never_appears(
    formatter_cls: type[JsonFormatter | TextFormatter], secret: str
) -> None:
    masker = SecretMasker()
    masker.register([secret])
    logger, stream = capture(formatter_cls(masker))
    logger.info("key is %s", secret)
    logger.info(f"inline {secret}")
    logger.info("extra", extra={"account": secret, "nested": {"k": [secret]}})
    try:
        boom(secret)
    except RuntimeError:
        logger.exception("failed with %r", secret)
    logger.info("stack", stack_info=True, extra={"v": secret})
    out = stream.getvalue()
    assert MASK in out
    assert secret not in out
    assert json.dumps(secret)[1:-1] not in out
    assert repr(secret)[1:-1] not in out  # KeyError shows the repr


def test_pem_fragments_are_masked() -> None:
    pem = private_key_pem(generate_private_key()).decode()
    body_line = pem.splitlines()[1]
    masker = SecretMasker()
    masker.register([pem])
    logger, stream = capture(JsonFormatter(masker))
    logger.info("parse failed near %s", body_line)
    logger.info("whole key %s", pem)
    out = stream.getvalue()
    for line in pem.splitlines():
        if not line.startswith("-----"):
            assert line not in out


def test_longest_secret_is_masked_whole() -> None:
    masker = SecretMasker()
    masker.register(["abcdef", "abcdefghijkl"])
    assert masker.mask("x abcdefghijkl y abcdef") == f"x {MASK} y {MASK}"


@pytest.mark.parametrize(
    ("values", "text", "expected"),
    [
        (["short"], "short stays", "short stays"),  # under 6 characters: ignored
        (["  padded-secret  "], "a padded-secret b", f"a {MASK} b"),
        (
            ["-----BEGIN KEY-----\nsecretline1\n-----END KEY-----"],
            "-----BEGIN KEY----- secretline1",
            f"-----BEGIN KEY----- {MASK}",
        ),
        ([], "nothing registered", "nothing registered"),
    ],
)
def test_masker_table(values: list[str], text: str, expected: str) -> None:
    masker = SecretMasker()
    masker.register(values)
    assert masker.mask(text) == expected


def test_unformattable_arguments_keep_the_event(masker: SecretMasker) -> None:
    logger, stream = capture(JsonFormatter(masker))
    logger.info("two %s %s", API_KEY)  # noqa: PLE1206 - one argument short on purpose
    (entry,) = json_lines(stream)
    assert "unformattable" in str(entry["event"])
    assert API_KEY not in stream.getvalue()


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers = handlers
    root.setLevel(level)


def test_configure_logging_is_idempotent_and_auto_picks_json(
    root_logger: logging.Logger, masker: SecretMasker
) -> None:
    stream = io.StringIO()  # not a terminal
    configure_logging("INFO", "auto", stream=stream, masker=masker)
    handler = configure_logging("DEBUG", "auto", stream=stream, masker=masker)
    ours = [h for h in root_logger.handlers if type(h) is type(handler)]
    assert ours == [handler]
    assert isinstance(handler.formatter, JsonFormatter)
    assert root_logger.level == logging.DEBUG
    logging.getLogger("killswitch.test").info("hello %s", API_KEY, extra={"account": "mm-1"})
    (entry,) = json_lines(stream)
    assert entry["account"] == "mm-1"
    assert entry["event"] == f"hello {MASK}"


def test_configure_logging_text(root_logger: logging.Logger) -> None:
    handler = configure_logging("INFO", "text", stream=io.StringIO())
    assert isinstance(handler.formatter, TextFormatter)
    assert logging.getLogger("aiokafka").level == logging.WARNING


def test_settings_secrets_finds_every_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "mm-2.pem"
    file_pem = private_key_pem(generate_private_key()).decode()
    key_file.write_text(file_pem)
    inline_pem = private_key_pem(generate_private_key()).decode()
    settings = load_settings(
        accounts=[
            {
                "id": "mm-1",
                "api_key": "api-key-one-111",
                "private_key": inline_pem,
                "private_key_passphrase": "passphrase-222",
            },
            {"id": "mm-2", "api_key": "api-key-two-333", "private_key_file": str(key_file)},
        ],
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl": {"username": "ks", "password": "sasl-password-444"},
            "ssl": {"password": "ssl-password-555"},
        },
    )
    found = settings_secrets(settings.kafka, settings.accounts)
    for expected in (
        "api-key-one-111",
        "api-key-two-333",
        "passphrase-222",
        "sasl-password-444",
        "ssl-password-555",
        inline_pem,
        file_pem,
    ):
        assert expected in found
    masker = SecretMasker()
    assert register_settings_secrets(settings.kafka, settings.accounts, masker) == len(found)
    logger, stream = capture(JsonFormatter(masker))
    for value in found:
        logger.error("leak %s", value, extra={"v": value})
    out = stream.getvalue()
    for value in found:
        for line in value.splitlines():
            if len(line.strip()) >= 6 and not line.startswith("-----"):
                assert line.strip() not in out


def _secret_paths(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """The dotted path of every field of ``model`` (nested models included) whose type
    mentions ``SecretStr``."""
    for name, info in model.model_fields.items():
        for kind in _types_in(info.annotation):
            if kind is SecretStr:
                yield f"{prefix}{name}"
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _secret_paths(kind, f"{prefix}{name}.")


def _types_in(annotation: object) -> Iterator[object]:
    yield annotation
    for arg in get_args(annotation):
        yield from _types_in(arg)


def test_secrets_live_only_in_the_sections_the_masker_reads() -> None:
    """settings_secrets reads the kafka section and the accounts: a secret added to any
    other section would go unmasked, so this fails first."""
    paths = set(_secret_paths(Settings, ""))
    assert "kafka.sasl.password" in paths
    assert "accounts.api_key" in paths
    assert {p.split(".")[0] for p in paths} == {"kafka", "accounts"}


def test_default_masker_via_register_secrets() -> None:
    secret = "global-secret-9a8b7c"
    register_secrets([secret])
    assert default_masker.mask(f"x {secret}") == f"x {MASK}"


def test_skipping_unwritten_record_fields_changes_no_line(
    masker: SecretMasker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon stops the logging module working out a record's source line, thread
    and process: neither formatter writes them, so every line reads the same."""
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    lines = []
    for skip in (False, True):
        if skip:
            skip_unwritten_record_fields()
        for formatter in (JsonFormatter(masker), TextFormatter(masker)):
            logger, stream = capture(formatter)
            logger.info("final result", extra={"alert_id": "a-1", "account": "mm-1"})
            lines.append(stream.getvalue())
    assert logging.logThreads is False
    assert logging._srcfile is None
    before, after = lines[:2], lines[2:]

    def steady(json_line: str, text_line: str) -> tuple[dict[str, object], str]:
        return json.loads(json_line) | {"ts": "", "logger": ""}, text_line[9:]  # no time

    assert steady(*after) == steady(*before)
