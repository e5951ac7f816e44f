"""Differential test: the transport's answer reader (llhttp through httptools, plus our
rules) against h11, an independent HTTP/1.1 implementation, on the same bytes.

Hypothesis generates answers (interim 1xx answers, any header set, Content-Length,
chunked with extensions and trailers, or read until close), optionally broken in one
of the ways both must refuse, and splits them at random points. Both readers must
agree on accept or refuse and, when they accept, on the status and the body. Where
the two are known to differ on purpose (we refuse LF-only heads, obs-fold, codings
other than chunked/identity; h11 accepts some), the generator does not go: those
refusals are pinned in ``test_http1_parse.py``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.http1_answers import answers, ours, split, theirs


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_reader_agrees_with_h11(data: st.DataObject) -> None:
    answer, broken = data.draw(answers())
    pieces = data.draw(split(answer))
    mine, other = ours(pieces), theirs(pieces)
    assert mine == other, (broken, answer)
    if broken == "none":
        assert mine.accepted
    whole = ours([answer])
    assert whole == mine  # and however the bytes arrive, the same verdict
