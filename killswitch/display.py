"""The live progress board of the operator commands: redrawn in place in a terminal,
a few plain lines at an interval when the output is a log or a pipe."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

from killswitch.board import Board
from killswitch.render import plain_updates, progress_lines, redraw, terminal_frame

__all__ = ["Display"]

_PLAIN_INTERVAL_S = 2.0  # not a terminal: one line per account at most this often
_TTY_MIN_REDRAW_S = 0.1


class Display:
    """Shows the board: redrawn in place in a terminal, a few plain lines in a log."""

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool,
        interval_s: float = _PLAIN_INTERVAL_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._out = out
        self._tty = tty
        self._interval = interval_s
        # A monotonic clock of its own: `killswitch results --follow` makes its display
        # before the event loop runs, so the loop's clock is not there to be had yet.
        self._clock = clock or time.monotonic
        self._drawn = 0
        self._last = -float("inf")
        self._printed: dict[str, str] = {}

    def show(self, board: Board, *, changed: bool, final: bool = False) -> None:
        now = self._clock()
        if self._tty:
            lines = terminal_frame(board, shutil.get_terminal_size().columns)
            if final or (changed and now - self._last >= _TTY_MIN_REDRAW_S) or not self._drawn:
                self._out.write(redraw(lines, self._drawn))
                self._drawn = len(lines)
                self._last = now
        else:
            lines = progress_lines(board)
            periodic = final or now - self._last >= self._interval
            rows = board.ordered()
            current = [(r.account, line, r.final) for r, line in zip(rows, lines, strict=True)]
            for account, line in plain_updates(self._printed, current, periodic=periodic):
                self._out.write(line + "\n")
                self._printed[account] = line
            if periodic:
                self._last = now
        self._out.flush()
