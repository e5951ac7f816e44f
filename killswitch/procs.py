"""Child processes that never outlive their parent.

:func:`die_with_parent` (and :func:`killed_with_parent`, with SIGKILL) is a ``preexec_fn``
for :class:`subprocess.Popen`: it asks Linux
(``prctl(PR_SET_PDEATHSIG)``) to signal the child when its parent dies, even by SIGKILL,
when no clean-up code of the parent's runs. Elsewhere it does nothing. The standard
library has no such option and no maintained package offers just this: hence ctypes.

Linux ties the signal to the parent *thread* that started the child: start it from a
thread that lives as long as the child is meant to (the main thread, or an event loop's
executor thread when the child is stopped before the loop ends).
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent", "killed_with_parent"]

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, loaded here in the parent: loading a library in the forked child
    could take a lock some other thread of the parent held at the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _prctl()


def die_with_parent() -> None:
    """In the child, between fork and exec: SIGTERM this process when its parent dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def killed_with_parent() -> None:
    """As :func:`die_with_parent`, with SIGKILL: for a child with nothing to save."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
