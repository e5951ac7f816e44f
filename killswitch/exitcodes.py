"""Every exit code a ``killswitch`` command returns, in one place (see README).

Some values carry two meanings, named apart so each caller says which it means:
1 is a job that failed (:data:`EXIT_FAILED`) or a kill/release that did not end in the
success status (:data:`EXIT_NOT_DONE`); 2 is bad usage or configuration
(:data:`EXIT_USAGE`) or a trigger the daemon refused to the dead-letter topic
(:data:`EXIT_REFUSED`); 130 is an interrupted command (:data:`EXIT_INTERRUPTED`) or a
daemon whose graceful stop a second signal cut short (:data:`EXIT_FORCED`).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_FAILED",
    "EXIT_FORCED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_DONE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
]

EXIT_OK: Final = 0
# The command could not do its job (e.g. Kafka unreachable, a check failed).
EXIT_FAILED: Final = 1
# A kill or release whose results are not all the success status.
EXIT_NOT_DONE: Final = 1
# A command line or configuration that is not valid (one-screen message, no traceback).
EXIT_USAGE: Final = 2
# The daemon refused the trigger (dead letter).
EXIT_REFUSED: Final = 2
# A kill that ended flat but never found some order ids it named, or a release of an
# account that was not halted.
EXIT_NOT_FOUND: Final = 3
# Interrupted (SIGINT) before the command finished.
EXIT_INTERRUPTED: Final = 130
# A second SIGTERM/SIGINT cut the daemon's graceful stop short.
EXIT_FORCED: Final = 130
