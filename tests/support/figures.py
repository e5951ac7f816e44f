"""Figures the reliability suite measures (inputs tried, faults survived, things lost).

Tests add to :data:`FIGURES`; ``tests/conftest.py`` prints them at the end of the run
(adding up the counts of pytest-xdist workers), and writes them as JSON to
``$KILLSWITCH_RELIABILITY_FIGURES`` when that is set (the numbers in docs/RELIABILITY.md
come from there).
"""

from __future__ import annotations

from collections import Counter

FIGURES: Counter[str] = Counter()


def add(name: str, amount: int = 1) -> None:
    """Count ``amount`` more of ``name`` (e.g. ``fuzz: parser inputs``)."""
    FIGURES[name] += amount
