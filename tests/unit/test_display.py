"""The progress display of the operator commands."""

from __future__ import annotations

import io

from killswitch.board import Board
from killswitch.display import Display


def test_a_display_is_made_and_shown_without_a_running_event_loop() -> None:
    # `killswitch results --follow` makes its display before asyncio.run starts a loop.
    out = io.StringIO()
    display = Display(out, tty=False)
    display.show(Board("op-1", ["mm-1"]), changed=True, final=True)
    assert out.getvalue().startswith("mm-1")
