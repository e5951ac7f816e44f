"""``python -m bench``: the benchmark suite (what ``make bench`` runs).

    python -m bench                  every module in SUITE, each in its own process
    python -m bench NAME [ARGS...]   one module with its own arguments (e.g. time_to_flat)
    python -m bench --list           the module names

In the suite every module runs as ``python -m bench.NAME ARGS`` in a new process
group with a time limit: past it the group gets SIGINT (the module's ``finally``
blocks stop what it started), then SIGKILL. Each module prints one line per figure
and writes ``bench/results/NAME.json``; the suite writes ``bench/results/suite.json``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# (module, arguments in the suite, time limit in seconds). Arguments trim the two
# transport/throughput studies so the suite stays within about ten minutes; run a
# module alone for its full defaults.
SUITE: list[tuple[str, list[str], float]] = [
    ("simulator_throughput", ["--cancels", "30000"], 180),
    ("client_transport", ["--requests", "2000", "--server", "sim"], 300),
    ("time_to_flat", [], 300),
    ("cpu_per_cancel", [], 300),
    ("memory", [], 420),
    ("alert_latency", [], 420),
    ("storm", [], 420),
    ("scale_out", [], 300),
    ("latch_reaction", [], 120),
    ("failover", [], 300),
]
BENCHMARKS: list[str] = [name for name, _, _ in SUITE]
RESULTS = Path(__file__).parent / "results"


def _run_one(name: str, args: list[str], limit: float) -> tuple[int, float]:
    """Run ``bench.NAME`` in its own process group, bounded by ``limit`` seconds."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"bench.{name}", *args],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own group: a timeout ends every process it started
    )
    try:
        code = proc.wait(limit)
    except subprocess.TimeoutExpired:
        print(f"bench: {name} exceeded {limit:.0f}s; stopping it", flush=True)
        code = _stop_group(proc)
    except BaseException:
        _stop_group(proc)
        raise
    return code, time.monotonic() - started


def _stop_group(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT (clean-up runs), then SIGKILL the whole group."""
    for sig, wait in ((signal.SIGINT, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            if sig == signal.SIGINT:
                break
        except subprocess.TimeoutExpired:
            continue
    # Whatever is left in the group (a child that ignored SIGINT) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(10) if proc.returncode is None else proc.returncode


def suite() -> int:
    """Every module of SUITE in turn; 1 when one of them failed."""
    summary: list[dict[str, object]] = []
    total = time.monotonic()
    for name, args, limit in SUITE:
        print(f"== bench {name} {' '.join(args)}".rstrip(), flush=True)
        code, seconds = _run_one(name, args, limit)
        print(f"== bench {name}: exit {code} in {seconds:.0f}s", flush=True)
        summary.append({"module": name, "args": args, "exit": code, "seconds": round(seconds, 1)})
    elapsed = time.monotonic() - total
    failed = [s["module"] for s in summary if s["exit"] != 0]
    print(f"== bench: {len(summary)} modules in {elapsed:.0f}s; failed: {failed or 'none'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"modules": summary, "seconds": round(elapsed, 1), "failed": failed}
    (RESULTS / "suite.json").write_text(json.dumps(record, indent=2) + "\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return suite()
    if argv[0] in ("--list", "-l"):
        print("\n".join(BENCHMARKS))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"bench: unknown benchmark {name!r}; one of: {', '.join(BENCHMARKS)}")
        return 2
    module = importlib.import_module(f"bench.{name}")
    module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
