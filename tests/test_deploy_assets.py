"""Deploy assets: well-formed, consistent with each other, and naming only real metrics.

What can be validated here is: YAML/JSON syntax, the Prometheus rules and config with
``promtool`` (Debian's ``prometheus`` package; ``make system-deps`` installs it), the
Kustomize rendering with ``kubectl`` when present, every metric and label a rule or a
dashboard panel names against the daemon's own ``/metrics``, and the settings files
against the real settings model. Building the image needs a Docker daemon and is not done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from killswitch.cli import build_parser
from killswitch.config import AccountSettings, MetricsSettings, load_settings
from killswitch.core.outcomes import Outcome
from killswitch.exchange.signing import generate_private_key, private_key_pem
from killswitch.health import HealthServer, Readiness
from killswitch.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "killswitch.json"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
WRITABLE = "/tmp"  # noqa: S108 - a mount path in the manifest, not a file this test creates

METRIC_RE = re.compile(r"\b(killswitch_[a-zA-Z0-9_]+)\b")
SELECTOR_RE = re.compile(r"\b(killswitch_[a-zA-Z0-9_]+)\{([^}]*)\}")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s by kind (one object per kind here)."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                assert doc["kind"] not in docs, f"two {doc['kind']} objects"
                docs[doc["kind"]] = doc
    return docs


# --- syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_is_well_formed(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"


def test_found_the_assets() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in yaml_files()}
    for expected in (
        "compose.yaml",
        "prometheus/prometheus.yml",
        "prometheus/rules.yml",
        "k8s/deployment.yaml",
        "k8s/pdb.yaml",
        "k8s/service.yaml",
        "k8s/secret.yaml",
        "k8s/servicemonitor.yaml",
        "k8s/configmap.yaml",
    ):
        assert expected in names


def test_dashboard_json_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "killswitch"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]


# --- promtool --------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not installed (Debian package 'prometheus'; `make system-deps` installs it)"
        )
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", str(RULES)],
        ["test", "rules", str(DEPLOY / "prometheus" / "rules.test.yml")],
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool(args: list[str]) -> None:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- metric names against the daemon's /metrics ----------------------------------------


def exercise(metrics: Metrics) -> None:
    """One event of every kind, so every labelled family has a series to show."""
    metrics.request_done("mm-1", "cancel", "403", 0.01)
    metrics.rate_changed("mm-1", 10.0)
    metrics.inflight_cancels("mm-1", 1)
    for outcome in Outcome:
        metrics.cancel_outcome("mm-1", outcome)
    metrics.first_cancel(0.01)
    metrics.flat([0.5])
    metrics.halted("mm-1", True)
    metrics.residual("mm-1", 1, 1)
    metrics.latch_reaction("mm-1", 1.0)
    metrics.alert_read("var-monitor", "processed")
    metrics.deadman_fired("mm-bot")
    metrics.dlq("invalid")
    metrics.consumer_lag("killswitch.alerts", 0, 3)
    metrics.loop_lag(0.001)


@pytest.fixture(scope="module")
def exposed() -> dict[str, set[str]]:
    """Sample name -> label names, as served by the daemon's listener at /metrics."""
    import asyncio

    async def scrape() -> str:
        registry = CollectorRegistry()
        metrics = Metrics(registry, ["mm-1"], rate_ceilings={"mm-1": 50.0})
        exercise(metrics)
        readiness = Readiness.for_accounts(["mm-1"], 120)
        server = HealthServer(
            MetricsSettings(host="127.0.0.1", port=0),
            registry,
            readiness,
            on_ready=metrics.set_ready,
        )
        async with server, httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"{server.url}/metrics")
            response.raise_for_status()
            return response.text

    text = asyncio.run(scrape())
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def rule_exprs() -> Iterator[tuple[str, str]]:
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            yield f"variable {variable['name']}", query["query"]


ALL_EXPRS = [*rule_exprs(), *dashboard_exprs()]


def test_rules_and_panels_name_metrics() -> None:
    named = {m for _, expr in ALL_EXPRS for m in METRIC_RE.findall(expr)}
    assert len(named) >= 12


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_every_named_metric_and_label_exists(
    exposed: dict[str, set[str]], where: str, expr: str
) -> None:
    for metric in METRIC_RE.findall(expr):
        assert metric in exposed, f"{where}: {metric} is not in the daemon's /metrics"
    for metric, matchers in SELECTOR_RE.findall(expr):
        for label in MATCHER_RE.findall(matchers):
            assert label in exposed[metric], f"{where}: {metric} has no label {label!r}"
    for labels in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        metrics = METRIC_RE.findall(expr)
        for label in (part.strip() for part in labels.split(",")):
            if label in ("le", "instance", "job"):
                continue  # le: histogram buckets; instance/job: added by Prometheus
            assert any(label in exposed[m] for m in metrics), f"{where}: no metric has {label!r}"


def test_the_alerts_the_issue_asks_for_exist() -> None:
    exprs = " ".join(expr for _, expr in rule_exprs())
    for metric in (
        "killswitch_exchange_requests_total",  # auth rejections (401/403)
        "killswitch_cancels_total",  # failed cancels
        "killswitch_residual_open_orders",  # residual orders after a kill
        "killswitch_residual_unlisted_pairs",  # pairs a kill never listed to the end
        "killswitch_ready",  # not ready
        "killswitch_consumer_lag",
        "killswitch_deadman_fired_total",
        "killswitch_event_loop_lag_seconds_bucket",
        "killswitch_latch_reaction_seconds",  # a halted account's guard too slow
    ):
        assert metric in exprs, metric
    assert 'status=~"401|403"' in exprs
    assert 'outcome="failed"' in exprs


def test_every_alert_has_severity_and_summary() -> None:
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]


def test_prometheus_rule_matches_rules_file() -> None:
    rule = k8s_docs()["PrometheusRule"]
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"]


# --- Kubernetes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return k8s_docs()


def container(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    (only,) = containers
    return only


def test_deployment_probes(k8s: dict[str, dict[str, Any]]) -> None:
    c = container(k8s)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    (port,) = c["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", 9464)


def test_deployment_limits_and_security(k8s: dict[str, dict[str, Any]]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    c = container(k8s)
    assert set(c["resources"]["limits"]) >= {"cpu", "memory"}
    assert set(c["resources"]["requests"]) >= {"cpu", "memory"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert WRITABLE in mounts  # the only writable place
    assert all(m.get("readOnly") for path, m in mounts.items() if path != WRITABLE)


def test_grace_period_covers_the_shutdown_grace(k8s: dict[str, dict[str, Any]]) -> None:
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    toml = k8s["ConfigMap"]["data"]["killswitch.toml"]
    grace = tomllib.loads(toml)["engine"]["shutdown_grace_s"]
    assert pod["terminationGracePeriodSeconds"] > grace


def test_selectors_line_up(k8s: dict[str, dict[str, Any]]) -> None:
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        selector = k8s[kind]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), kind
    assert k8s["Service"]["spec"]["selector"].items() <= pod_labels.items()
    monitor = k8s["ServiceMonitor"]["spec"]
    assert (
        monitor["selector"]["matchLabels"].items() <= k8s["Service"]["metadata"]["labels"].items()
    )
    service_ports = {p["name"] for p in k8s["Service"]["spec"]["ports"]}
    assert {e["port"] for e in monitor["endpoints"]} <= service_ports
    replicas = k8s["Deployment"]["spec"]["replicas"]
    assert k8s["PodDisruptionBudget"]["spec"]["minAvailable"] < replicas


def test_secret_feeds_the_deployment(k8s: dict[str, dict[str, Any]]) -> None:
    secret = k8s["Secret"]
    c = container(k8s)
    refs = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in c["env"]
        if "valueFrom" in e and e["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    }
    assert refs <= set(secret["stringData"])
    volumes = k8s["Deployment"]["spec"]["template"]["spec"]["volumes"]
    (keys,) = [v for v in volumes if "secret" in v]
    assert {i["key"] for i in keys["secret"]["items"]} <= set(secret["stringData"])
    for value in secret["stringData"].values():
        assert "REPLACE-ME" in value  # placeholders only, never a real key in the repo


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "k.pem"
    path.write_bytes(private_key_pem(generate_private_key()))
    return path


def test_k8s_settings_load(
    k8s: dict[str, dict[str, Any]], tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("KILLSWITCH_")]:
        monkeypatch.delenv(name)
    toml = tmp_path / "killswitch.toml"
    toml.write_text(k8s["ConfigMap"]["data"]["killswitch.toml"])
    accounts = json.loads(k8s["Secret"]["stringData"]["KILLSWITCH_ACCOUNTS"])
    for account in accounts:
        account["private_key_file"] = str(key_file)
    # Exactly how the pod gets them: TOML from the ConfigMap, accounts from the environment.
    monkeypatch.setenv("KILLSWITCH_ACCOUNTS", json.dumps(accounts))
    settings = load_settings(toml)
    assert settings.metrics.port == container(k8s)["ports"][0]["containerPort"]
    assert [a.id for a in settings.accounts] == ["mm-1"]


# --- compose and image -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["killswitch"]["command"][0] == "run"
    assert services["simulator"]["command"][0] == "simulate-exchange"
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name in ("killswitch", "simulator", "keys"):
        assert services[name]["read_only"] is True, name
        assert services[name]["user"] != "0", name


def test_compose_commands_exist_in_the_cli(compose: dict[str, Any]) -> None:
    parser = build_parser(with_lazy_args=False)
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    commands = set(sub.choices)  # type: ignore[arg-type]
    for name in ("killswitch", "simulator"):
        assert compose["services"][name]["command"][0] in commands
    assert "keygen" in " ".join(compose["services"]["keys"]["command"])


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source}"


def test_compose_scrape_target_matches_listener(compose: dict[str, Any], key_file: Path) -> None:
    config_path = DEPLOY / "compose" / "killswitch.toml"
    raw = tomllib.loads(config_path.read_text())
    for account in raw["accounts"]:
        AccountSettings(**{**account, "private_key_file": key_file})
    settings = load_settings(
        config_path,
        accounts=[{**a, "private_key_file": str(key_file)} for a in raw["accounts"]],
    )
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = prometheus["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    assert target == f"killswitch:{settings.metrics.port}"
    assert settings.metrics.host == "0.0.0.0"
    assert job["job_name"] == "killswitch"  # the rules' up{job="killswitch"}


def test_grafana_provisioning_matches_the_dashboard(compose: dict[str, Any]) -> None:
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    (source,) = datasources["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    (ds_var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert ds_var["current"]["value"] == source["uid"]
    providers = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "killswitch.yaml")
    path = providers["providers"][0]["options"]["path"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\w+))?", text, flags=re.M)
    assert len(stages) >= 2, "multi-stage"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users, "no USER: the image would run as root"
    uid = re.search(r"^ARG UID=(\d+)", text, flags=re.M)
    assert uid is not None
    assert int(uid.group(1)) >= 1000
    assert users[-1] == "${UID}:${UID}"
    assert re.search(r"^HEALTHCHECK .*healthz", text, flags=re.M | re.S)
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    for source in re.findall(r"^COPY\s+(?!--from)(\S+)", text, flags=re.M):
        assert (ROOT / source).exists(), source
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for source in re.findall(r"^COPY\s+(?!--from)(\S+)", text, flags=re.M):
        assert f"!{source.rstrip('/')}" in ignore.replace("/\n", "\n"), source


def test_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the Kustomize rendering is not checked")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert kinds >= {"Deployment", "Service", "PodDisruptionBudget", "Secret", "ConfigMap"}
