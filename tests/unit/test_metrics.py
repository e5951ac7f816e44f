"""Metrics: contract names, types and labels; pre-initialised series; bounded labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from killswitch.config import load_settings
from killswitch.core.outcomes import Outcome
from killswitch.core.ports import Observer
from killswitch.exchange.signing import generate_private_key, private_key_pem
from killswitch.metrics import (
    ALERT_RESULTS,
    OTHER,
    LabelBudget,
    Metrics,
)

ACCOUNTS = ["mm-1", "mm-2"]

# The metric table of docs/CONTRACTS.md (a contract): family name -> (type, labels).
CONTRACT = {
    "killswitch_cancels": ("counter", {"account", "outcome"}),
    "killswitch_alerts": ("counter", {"source", "result"}),
    "killswitch_alert_to_first_cancel_seconds": ("histogram", set()),
    "killswitch_time_to_flat_seconds": ("histogram", set()),
    "killswitch_exchange_requests": ("counter", {"account", "endpoint", "status"}),
    "killswitch_exchange_request_duration_seconds": ("histogram", {"endpoint"}),
    "killswitch_rate_limit_per_second": ("gauge", {"account"}),
    "killswitch_inflight_cancels": ("gauge", {"account"}),
    "killswitch_account_halted": ("gauge", {"account"}),
    "killswitch_residual_open_orders": ("gauge", {"account"}),
    "killswitch_residual_unlisted_pairs": ("gauge", {"account"}),
    "killswitch_ready": ("gauge", set()),
    "killswitch_outputs_refused": ("counter", {"output"}),
    "killswitch_sweeps_failed": ("counter", {"account"}),
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, ACCOUNTS, sources=["mm-bot"], rate_ceilings={"mm-1": 50.0})


def exercise(m: Metrics) -> None:
    """Touch every method once, so every labelled family has a sample."""
    m.request_done("mm-1", "cancel", "200", 0.004)
    m.rate_changed("mm-1", 25.0)
    m.inflight_cancels("mm-1", 1)
    m.cancel_outcome("mm-1", Outcome.SENT)
    m.first_cancel(0.01)
    m.flat([0.5])
    m.halted("mm-1", True)
    m.residual("mm-1", 3, 1)
    m.sweep_failed("mm-1")
    m.alert_read("var-monitor", "processed")
    m.deadman_fired("mm-bot")
    m.dlq("invalid")
    m.output_refused("result")
    m.consumer_lag("killswitch.alerts", 0, 7)
    m.loop_lag(0.002)
    m.set_ready(True)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_metrics_is_an_observer(metrics: Metrics) -> None:
    observer: Observer = metrics  # mypy checks the protocol; this line checks it at runtime too
    for name in Observer.__dict__:
        if not name.startswith("_"):
            assert callable(getattr(observer, name)), name


def test_contract_names_types_and_labels(registry: CollectorRegistry, metrics: Metrics) -> None:
    exercise(metrics)
    families = {f.name: f for f in registry.collect()}
    for name, (kind, labels) in CONTRACT.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        main = [s for s in family.samples if not s.name.endswith("_created")]
        assert main, name
        for sample in main:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)


def test_exposition_parses_and_counters_end_in_total(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    exercise(metrics)
    text = generate_latest(registry).decode()
    sample_names = {
        s.name for f in text_string_to_metric_families(text) for s in f.samples if s.name
    }
    for required in (
        "killswitch_cancels_total",
        "killswitch_alerts_total",
        "killswitch_exchange_requests_total",
        "killswitch_deadman_fired_total",
        "killswitch_dlq_total",
        "killswitch_outputs_refused_total",
        "killswitch_time_to_flat_seconds_bucket",
        "killswitch_event_loop_lag_seconds_bucket",
        "killswitch_consumer_lag",
        "killswitch_build_info",
    ):
        assert required in sample_names, required


@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        ("killswitch_cancels_total", {"account": "mm-1", "outcome": "sent"}, 0.0),
        ("killswitch_cancels_total", {"account": "mm-2", "outcome": "already_closed"}, 0.0),
        ("killswitch_cancels_total", {"account": "mm-2", "outcome": "rejected"}, 0.0),
        ("killswitch_cancels_total", {"account": "mm-2", "outcome": "failed"}, 0.0),
        ("killswitch_cancels_total", {"account": "mm-2", "outcome": "skipped"}, 0.0),
        ("killswitch_alerts_total", {"source": "mm-bot", "result": "processed"}, 0.0),
        ("killswitch_alerts_total", {"source": "mm-bot", "result": "unauthorized"}, 0.0),
        ("killswitch_deadman_fired_total", {"source": "mm-bot"}, 0.0),
        ("killswitch_dlq_total", {"reason": "invalid"}, 0.0),
        ("killswitch_outputs_refused_total", {"output": "result"}, 0.0),
        ("killswitch_outputs_refused_total", {"output": "dead_letter"}, 0.0),
        ("killswitch_outputs_refused_total", {"output": "forward"}, 0.0),
        ("killswitch_inflight_cancels", {"account": "mm-2"}, 0.0),
        ("killswitch_account_halted", {"account": "mm-2"}, 0.0),
        ("killswitch_residual_open_orders", {"account": "mm-1"}, 0.0),
        ("killswitch_residual_unlisted_pairs", {"account": "mm-2"}, 0.0),
        ("killswitch_sweeps_failed_total", {"account": "mm-2"}, 0.0),
        ("killswitch_rate_limit_per_second", {"account": "mm-1"}, 50.0),
        ("killswitch_rate_limit_ceiling_per_second", {"account": "mm-1"}, 50.0),
        ("killswitch_ready", {}, 0.0),
        ("killswitch_time_to_flat_seconds_count", {}, 0.0),
    ],
)
def test_series_exist_before_anything_happens(
    metrics: Metrics,
    name: str,
    labels: dict[str, str],
    expected: float,
) -> None:
    assert value(metrics.registry, name, **labels) == expected


@pytest.mark.parametrize(
    ("calls", "name", "labels", "expected"),
    [
        (
            [("cancel_outcome", ("mm-1", Outcome.SENT))] * 3,
            "killswitch_cancels_total",
            {"account": "mm-1", "outcome": "sent"},
            3.0,
        ),
        (
            [("cancel_outcome", ("mm-2", Outcome.ALREADY_CLOSED))],
            "killswitch_cancels_total",
            {"account": "mm-2", "outcome": "already_closed"},
            1.0,
        ),
        (
            [("request_done", ("mm-1", "cancel", "429", 0.01))] * 2,
            "killswitch_exchange_requests_total",
            {"account": "mm-1", "endpoint": "cancel", "status": "429"},
            2.0,
        ),
        (
            [("request_done", ("mm-1", "open_orders", "timeout", 5.0))],
            "killswitch_exchange_request_duration_seconds_count",
            {"endpoint": "open_orders"},
            1.0,
        ),
        (
            [("request_done", ("mm-1", "open_orders", "200", 0.003))],
            "killswitch_exchange_request_duration_seconds_bucket",
            {"endpoint": "open_orders", "le": "0.005"},
            1.0,
        ),
        (
            [("inflight_cancels", ("mm-1", 1))] * 3 + [("inflight_cancels", ("mm-1", -1))],
            "killswitch_inflight_cancels",
            {"account": "mm-1"},
            2.0,
        ),
        (
            [("rate_changed", ("mm-2", 12.5))],
            "killswitch_rate_limit_per_second",
            {"account": "mm-2"},
            12.5,
        ),
        ([("halted", ("mm-2", True))], "killswitch_account_halted", {"account": "mm-2"}, 1.0),
        (
            [("halted", ("mm-2", True)), ("halted", ("mm-2", False))],
            "killswitch_account_halted",
            {"account": "mm-2"},
            0.0,
        ),
        (
            [("residual", ("mm-1", 4, 0))],
            "killswitch_residual_open_orders",
            {"account": "mm-1"},
            4.0,
        ),
        (
            [("residual", ("mm-1", -4, 0))],
            "killswitch_residual_open_orders",
            {"account": "mm-1"},
            0.0,
        ),
        (
            [("sweep_failed", ("mm-1",)), ("sweep_failed", ("mm-1",))],
            "killswitch_sweeps_failed_total",
            {"account": "mm-1"},
            2.0,
        ),
        (
            [("residual", ("mm-1", 0, 3))],
            "killswitch_residual_unlisted_pairs",
            {"account": "mm-1"},
            3.0,
        ),
        (
            [("residual", ("mm-1", 0, 3)), ("residual", ("mm-1", 2, 0))],
            "killswitch_residual_unlisted_pairs",
            {"account": "mm-1"},
            0.0,
        ),
        ([("first_cancel", (0.002,))], "killswitch_alert_to_first_cancel_seconds_count", {}, 1.0),
        ([("flat", ([1.5],))], "killswitch_time_to_flat_seconds_sum", {}, 1.5),
        ([("flat", ([-1.0],))], "killswitch_time_to_flat_seconds_sum", {}, 0.0),
        ([("flat", ([0.5, 1.0],))], "killswitch_time_to_flat_seconds_count", {}, 2.0),
        (
            [("alert_read", ("var-monitor", "duplicate"))],
            "killswitch_alerts_total",
            {"source": "var-monitor", "result": "duplicate"},
            1.0,
        ),
        (
            [("alert_read", ("var-monitor", "processed", 3))],
            "killswitch_alerts_total",
            {"source": "var-monitor", "result": "processed"},
            3.0,
        ),
        (
            [("alert_read", ("var-monitor", "weird"))],
            "killswitch_alerts_total",
            {"source": "var-monitor", "result": OTHER},
            1.0,
        ),
        (
            [("deadman_fired", ("mm-bot",))],
            "killswitch_deadman_fired_total",
            {"source": "mm-bot"},
            1.0,
        ),
        ([("dlq", ("too_large",))], "killswitch_dlq_total", {"reason": "too_large"}, 1.0),
        (
            [("output_refused", ("forward",))],
            "killswitch_outputs_refused_total",
            {"output": "forward"},
            1.0,
        ),
        (
            [("output_refused", ("state",))],
            "killswitch_outputs_refused_total",
            {"output": OTHER},
            1.0,
        ),
        (
            [("consumer_lag", ("killswitch.alerts", 2, 40))],
            "killswitch_consumer_lag",
            {"topic": "killswitch.alerts", "partition": "2"},
            40.0,
        ),
        ([("loop_lag", (0.03,))], "killswitch_event_loop_lag_seconds_bucket", {"le": "0.05"}, 1.0),
        ([("set_ready", (True,))], "killswitch_ready", {}, 1.0),
        ([("set_ready", (True,)), ("set_ready", (False,))], "killswitch_ready", {}, 0.0),
        ([], "killswitch_kafka_up", {}, 0.0),
        ([("set_kafka_up", (True,))], "killswitch_kafka_up", {}, 1.0),
        ([("set_kafka_up", (True,)), ("set_kafka_up", (False,))], "killswitch_kafka_up", {}, 0.0),
        ([], "killswitch_kafka_producer_failed", {}, 0.0),
        ([("producer_failed", ())], "killswitch_kafka_producer_failed", {}, 1.0),
    ],
)
def test_events_move_the_right_series(
    metrics: Metrics,
    calls: list[tuple[str, tuple[object, ...]]],
    name: str,
    labels: dict[str, str],
    expected: float,
) -> None:
    for method, args in calls:
        getattr(metrics, method)(*args)
    assert value(metrics.registry, name, **labels) == expected


def test_account_label_is_only_ever_a_configured_id(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    api_key = "sk-live-0123456789abcdef"
    metrics.request_done(api_key, "cancel", "200", 0.01)
    metrics.cancel_outcome(api_key, Outcome.SENT)
    text = generate_latest(registry).decode()
    assert api_key not in text
    assert value(registry, "killswitch_cancels_total", account=OTHER, outcome="sent") == 1.0


def test_free_form_labels_are_bounded(registry: CollectorRegistry, metrics: Metrics) -> None:
    for i in range(500):
        metrics.alert_read(f"source-{i}", "invalid")
    sources = {
        s.labels["source"]
        for f in registry.collect()
        if f.name == "killswitch_alerts"
        for s in f.samples
    }
    assert len(sources) <= 51  # the budget plus "other"
    assert OTHER in sources
    assert value(registry, "killswitch_alerts_total", source=OTHER, result="invalid") is not None


@pytest.mark.parametrize(
    ("limit", "preset", "inputs", "expected"),
    [
        (2, (), ["a", "b", "c", "a"], ["a", "b", OTHER, "a"]),
        (1, ["x"], ["x", "y"], ["x", OTHER]),
        (5, (), ["", "  "], ["unknown", "unknown"]),
        (5, (), ["a\nb"], ["a?b"]),
        (5, (), ["z" * 200], ["z" * 64]),
        (5, (), [429], ["429"]),
    ],
)
def test_label_budget(
    limit: int, preset: tuple[str, ...], inputs: list[object], expected: list[str]
) -> None:
    budget = LabelBudget(limit, preset)
    assert [budget(v) for v in inputs] == expected


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def test_methods_never_raise(metrics: Metrics, registry: CollectorRegistry) -> None:
    # Bad input from a buggy caller is dropped, never raised into a sweep: no call below
    # raises, none changes a sample, and the methods still count good input afterwards.
    before = samples(registry)
    metrics.cancel_outcome("mm-1", "not-an-outcome")  # type: ignore[arg-type]
    metrics.first_cancel("soon")  # type: ignore[arg-type]
    metrics.rate_changed("mm-1", "fast")  # type: ignore[arg-type]
    assert samples(registry) == before
    metrics.cancel_outcome("mm-1", Outcome.SENT)
    metrics.rate_changed("mm-1", 25.0)
    assert value(registry, "killswitch_cancels_total", account="mm-1", outcome="sent") == 1
    assert value(registry, "killswitch_rate_limit_per_second", account="mm-1") == 25.0


def test_registries_are_independent() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a, ["mm-1"]).cancel_outcome("mm-1", Outcome.SENT)
    Metrics(b, ["mm-1"])
    assert (
        a.get_sample_value("killswitch_cancels_total", {"account": "mm-1", "outcome": "sent"}) == 1
    )
    assert (
        b.get_sample_value("killswitch_cancels_total", {"account": "mm-1", "outcome": "sent"}) == 0
    )


def test_alert_results_cover_the_contract() -> None:
    assert set(ALERT_RESULTS) == {
        "processed",
        "duplicate",
        "invalid",
        "unauthorized",
        "expired",
        "dry_run",
    }


def test_from_sections(tmp_path: Path, registry: CollectorRegistry) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(private_key_pem(generate_private_key()))
    settings = load_settings(
        accounts=[
            {
                "id": "mm-1",
                "api_key": "key-aaaaaaaa",
                "private_key_file": str(key),
                "rate_limit_per_second": 40,
            },
            {"id": "arb-1", "api_key": "key-bbbbbbbb", "private_key_file": str(key)},
        ],
        deadman=[{"source": "bot-7", "timeout_s": 5, "scope": {"accounts": ["mm-1"]}}],
    )
    Metrics.from_sections(registry, settings.accounts, settings.deadman)
    text = generate_latest(registry).decode()
    assert "key-aaaaaaaa" not in text
    assert value(registry, "killswitch_rate_limit_per_second", account="mm-1") == 40.0
    assert value(registry, "killswitch_cancels_total", account="arb-1", outcome="failed") == 0.0
    assert value(registry, "killswitch_deadman_fired_total", source="bot-7") == 0.0


def test_cached_label_children_keep_label_safety(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    # The hot-path caches must map exactly as `.labels()` did, on the first and later calls.
    api_key = "sk-live-0123456789abcdef"
    for _ in range(3):
        metrics.request_done("mm-1", "cancel", "200", 0.01)
        metrics.request_done(api_key, "cancel", "200", 0.01)
        metrics.inflight_cancels(api_key, 1)
        metrics.cancel_outcome(api_key, Outcome.SENT)
        metrics.cancel_outcome("mm-1", Outcome.FAILED)
    requests = "killswitch_exchange_requests_total"
    assert value(registry, requests, account="mm-1", endpoint="cancel", status="200") == 3
    assert value(registry, requests, account=OTHER, endpoint="cancel", status="200") == 3
    assert value(registry, "killswitch_inflight_cancels", account=OTHER) == 3
    assert value(registry, "killswitch_cancels_total", account=OTHER, outcome="sent") == 3
    assert value(registry, "killswitch_cancels_total", account="mm-1", outcome="failed") == 3
    assert api_key not in generate_latest(registry).decode()


def test_cached_children_stay_bounded_and_correct(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    # Far more distinct raw inputs than the cache holds: counts stay right, labels bounded.
    for i in range(3000):
        metrics.request_done(f"key-{i}", "cancel", str(i), 0.001)
    for i in range(3000):
        metrics.request_done(f"key-{i}", "cancel", str(i), 0.001)
    statuses = {
        s.labels["status"]
        for f in registry.collect()
        if f.name == "killswitch_exchange_requests"
        for s in f.samples
        if s.name.endswith("_total") and s.labels["account"] == OTHER
    }
    assert len(statuses) <= 51  # the budget plus "other"
    total = sum(
        s.value
        for f in registry.collect()
        if f.name == "killswitch_exchange_requests"
        for s in f.samples
        if s.name.endswith("_total")
    )
    assert total == 6000
    assert len(metrics._request_children) <= 1024
