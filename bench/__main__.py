"""``python -m bench``: runs every benchmark module listed in ``BENCHMARKS``."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS: list[str] = [
    "simulator_throughput",
    "client_transport",
    "time_to_flat",
    "alert_latency",
]


def main() -> int:
    if not BENCHMARKS:
        print("no benchmarks yet")
        return 0
    for name in BENCHMARKS:
        module = importlib.import_module(f"bench.{name}")
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
