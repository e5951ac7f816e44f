"""``Retry-After`` values (RFC 9110 10.2.3): seconds or an HTTP date."""

from __future__ import annotations

import email.utils

import pytest

from killswitch.core.outcomes import MAX_RETRY_AFTER_S, retry_after_s

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("120", 120.0),
        (email.utils.formatdate(NOW + 5, usegmt=True), 5.0),
        (email.utils.formatdate(NOW - 5, usegmt=True), 0.0),  # already past: no wait
        ("Tue, 14 Nov 2023 22:13:25 GMT", 5.0),
        ("Tuesday, 14-Nov-23 22:13:25 GMT", 5.0),  # the obsolete RFC 850 form
        ("99999999", MAX_RETRY_AFTER_S),
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
        ("1.5", None),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    got = retry_after_s(value, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)
