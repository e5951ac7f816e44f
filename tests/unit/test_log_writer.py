"""The daemon's log lines are written by a thread of their own: a log output that does
not keep up never holds up the caller (the event loop), lines keep their order, lines
beyond the queue's bound are dropped and counted, and closing writes what is queued."""

from __future__ import annotations

import io
import json
import logging
import threading

from killswitch.daemon import report_failure
from killswitch.logs import MASK, JsonFormatter, SecretMasker, ThreadedLineHandler
from tests.support.waiting import wait_for_sync

SECRET = "sk-live-7d1e4c9a2b"


class BlockedStream(io.StringIO):
    """A log output whose writes wait until it is opened (a pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = threading.Event()

    def write(self, text: str) -> int:
        self.opened.wait(10)
        return super().write(text)


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.log_writer.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [handler]
    return logger


def _handler(stream: io.StringIO, max_lines: int = 100) -> ThreadedLineHandler:
    masker = SecretMasker()
    masker.register([SECRET])
    handler = ThreadedLineHandler(stream, max_lines=max_lines)
    handler.setFormatter(JsonFormatter(masker))
    return handler


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_blocked_output_does_not_hold_up_the_caller_and_lines_keep_their_order() -> None:
    stream = BlockedStream()
    handler = _handler(stream)
    logger = _logger(handler)
    logged = threading.Event()

    def log_three() -> None:
        for n in range(3):
            logger.info("line", extra={"n": n, "key": SECRET})
        logged.set()

    caller = threading.Thread(target=log_three, daemon=True)
    caller.start()
    # Every call returned while the output still refused to take a byte.
    assert logged.wait(5)
    assert stream.getvalue() == ""

    stream.opened.set()
    assert handler.drain(5)
    assert [line["n"] for line in _lines(stream)] == [0, 1, 2]
    assert all(line["key"] == MASK for line in _lines(stream))  # masked by the caller
    handler.close()


def test_lines_beyond_the_bound_are_dropped_and_counted_before_the_next_line() -> None:
    stream = BlockedStream()
    handler = _handler(stream, max_lines=2)
    logger = _logger(handler)
    # The writer takes the first line and waits on the output with it; two more fill the
    # queue; the three after them are dropped.
    logger.info("line", extra={"n": 0})
    wait_for_sync(lambda: handler.queued == 0, 5)
    for n in range(1, 6):
        logger.info("line", extra={"n": n})
    stream.opened.set()
    assert handler.drain(5)
    logger.info("line", extra={"n": 6})
    assert handler.drain(5)

    lines = _lines(stream)
    assert [line.get("n") for line in lines] == [0, 1, 2, None, 6]
    assert lines[3]["event"] == "log lines dropped: the log output did not keep up"
    assert lines[3]["dropped"] == 3
    assert lines[3]["level"] == "warning"
    handler.close()


def test_closing_writes_what_is_queued_and_stops_the_writer() -> None:
    stream = io.StringIO()
    handler = _handler(stream)
    logger = _logger(handler)
    for n in range(50):
        logger.info("line", extra={"n": n})

    handler.close()

    assert [line["n"] for line in _lines(stream)] == list(range(50))
    assert not handler.writing


def test_closing_gives_up_on_an_output_that_stays_blocked() -> None:
    stream = BlockedStream()
    handler = _handler(stream)
    _logger(handler).info("line")
    handler.drain(0.01)  # the writer holds the line, waiting on the output

    assert not handler.drain(0.05)
    handler.close()  # returns (at once: the drain gave up) although the output never opened
    stream.opened.set()


def test_a_failure_is_not_printed_to_an_output_that_takes_nothing() -> None:
    # The daemon's last words go to the log's output after its lines: when that output
    # has taken nothing for the whole wait, a print to it would block the exit for ever.
    stream = BlockedStream()
    handler = _handler(stream)
    _logger(handler).info("line")  # the writer waits on the output with it

    printed = report_failure(RuntimeError("broken"), handler, stream, drain_s=0.01)

    assert not printed
    stream.opened.set()
    handler.close()
    assert "daemon failed" not in stream.getvalue()


def test_a_failure_is_printed_after_the_log_lines_before_it() -> None:
    stream = io.StringIO()
    handler = _handler(stream)
    for n in range(50):
        _logger(handler).info("line", extra={"n": n})

    assert report_failure(RuntimeError("broken"), handler, stream)
    *lines, last = stream.getvalue().splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(50))
    assert last == "killswitch: daemon failed: RuntimeError: broken"
    handler.close()


def test_closing_after_a_drain_gave_up_does_not_wait_again() -> None:
    # The exit's wait for the log output is spent once: the failure's report waited
    # for it already, and the lines before that are still not written.
    stream = BlockedStream()
    handler = _handler(stream)
    _logger(handler).info("line")
    wait_for_sync(lambda: handler.queued == 0, 5)  # the writer holds the line
    assert not handler.drain(0.01)
    waiting = handler.queued  # the drain's marker, behind the line

    handler.close()

    assert handler.queued == waiting  # no second marker: close did not wait
    stream.opened.set()


def test_debug_lines_give_way_first_when_the_queue_is_half_full() -> None:
    stream = BlockedStream()
    handler = _handler(stream, max_lines=4)
    logger = _logger(handler)
    logger.setLevel(logging.DEBUG)
    logger.info("line", extra={"n": 0})  # the writer holds it, waiting on the output
    wait_for_sync(lambda: handler.queued == 0, 5)
    logger.debug("line", extra={"n": 1})
    logger.debug("line", extra={"n": 2})
    logger.debug("line", extra={"n": 3})  # half the queue (2 of 4) waits: dropped
    logger.info("line", extra={"n": 4})  # INFO still has room, after the notice
    stream.opened.set()
    assert handler.drain(5)

    lines = _lines(stream)
    assert [line.get("n") for line in lines] == [0, 1, 2, None, 4]
    assert lines[3]["dropped"] == 1
    handler.close()
