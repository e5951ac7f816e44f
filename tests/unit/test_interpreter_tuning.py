"""The daemon's interpreter settings (``daemon.tune_interpreter``), checked in a fresh
interpreter: they are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

from killswitch.daemon import GC_YOUNG_THRESHOLD

_PROBE = """
import gc, json
from killswitch.daemon import tune_interpreter
tune_interpreter()
print(json.dumps({"young": gc.get_threshold()[0], "frozen": gc.get_freeze_count()}))
"""


def test_the_daemon_collects_its_youngest_objects_rarely_and_freezes_its_start() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    tuned = json.loads(out)
    assert tuned["young"] == GC_YOUNG_THRESHOLD
    assert tuned["frozen"] > 0
