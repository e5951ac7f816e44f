"""The exchange's own error text, as shown in a rejection's reason: plain, short, and
without anything that looks like a key or a signature echoed back."""

from __future__ import annotations

from killswitch.core.outcomes import REDACTED, error_message, exchange_text


def test_a_short_plain_message_is_kept() -> None:
    assert exchange_text("limit must be within [1, 50]") == "limit must be within [1, 50]"
    assert error_message({"error": "invalid_request", "message": "unknown symbol"}) == (
        "unknown symbol"
    )


def test_not_text_or_empty_is_nothing() -> None:
    for value in (None, 50, ["a"], {"a": 1}, "", "  \n\t "):
        assert exchange_text(value) is None
    assert error_message({"error": "invalid_request"}) is None
    assert error_message(["message"]) is None
    assert error_message({"message": 7}) is None


def test_control_characters_cannot_break_a_log_line() -> None:
    text = exchange_text("bad\r\nINFO forged line\x1b[31m\u2028more\u202eevil\x00")
    assert text == "bad INFO forged line [31m more evil"


def test_echoed_keys_and_signatures_are_redacted() -> None:
    signature = "x4Vb9QmZp0K1s2d3f4g5h6j7k8l9zXcVbNmQwErTyUiOpAsDfGhJkL+/=="
    api_key = "ak_live_0123456789abcdef0123"
    text = exchange_text(f"bad signature {signature} for key {api_key}")
    assert text == f"bad signature {REDACTED} for key {REDACTED}"
    assert signature not in (text or "")
    assert api_key not in (text or "")


def test_long_text_is_cut() -> None:
    text = exchange_text("word " * 200, limit=40)
    assert text is not None
    assert len(text) == 40
    assert text.endswith("\u2026")


def test_half_of_a_surrogate_pair_is_not_kept() -> None:
    # What an exchange's JSON message cut inside an emoji decodes to: UTF-8 cannot write it.
    text = exchange_text("bad \ud83d value")
    assert text == "bad value"
    assert text.encode("utf-8")
