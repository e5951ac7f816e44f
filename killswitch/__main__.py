"""``python -m killswitch`` and the ``killswitch`` command's entry point."""

from __future__ import annotations

import sys

from killswitch.exitcodes import EXIT_INTERRUPTED


def entry() -> int:
    """Run the CLI. Loading its modules takes a second or so (the Kafka client, the
    crypto and HTTP libraries): Ctrl-C then is an interrupted command like any other, one
    line and exit 130, not a traceback of whichever import it landed in."""
    try:
        from killswitch.cli import main  # noqa: PLC0415 - imported inside the Ctrl-C guard

        return main()
    except KeyboardInterrupt:
        print("killswitch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(entry())
