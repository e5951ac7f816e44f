"""Read a Prometheus text exposition (the daemon's ``/metrics``) into plain samples.

The parsing is ``prometheus_client``'s; this only flattens its metric families into
``(name, labels, value)`` tuples that ``killswitch.render.metrics_lines``, the demo and
the tests filter by name and label.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Sample", "metric_samples"]

Sample = tuple[str, dict[str, str], float]


def metric_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition as ``(name, labels, value)``."""
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
