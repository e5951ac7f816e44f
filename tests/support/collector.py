"""The cycle collector switched off, to show what reference counting alone frees."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cycle_collector_off() -> Iterator[None]:
    """Collect once (a clean start), then keep the cycle collector off until the end:
    an object still alive at a check inside is held by a reference or by a cycle, which
    in the daemon would last until the collector's next pass over it."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
