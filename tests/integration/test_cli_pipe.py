"""A command whose reader goes away (``killswitch ... | head``) ends without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_closed_stdout_is_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "killswitch.toml"
    config.write_text('[[accounts]]\nid = "mm-1"\napi_key = "k"\nprivate_key = "unused"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    read, write = os.pipe()
    os.close(read)  # nobody will read: the first write fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "killswitch", "config", "show", "--config", str(config)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1
