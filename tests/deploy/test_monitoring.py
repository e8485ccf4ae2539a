"""Every /metrics is scraped, the rules cover what the issue asks for, and the fleetpulse_* series
the rules and dashboard use are ones the code exports."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.deploy import MANIFESTS, find, one, pod_spec, pod_template_labels
from tests.support.paths import REPO

DASHBOARD = MANIFESTS / "base" / "monitoring" / "grafana-dashboard.json"


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_every_metrics_port_is_scraped_by_a_pod_monitor(overlays):
    for name, objects in overlays.items():
        monitors = find(objects, "PodMonitor")
        for obj in objects:
            spec = pod_spec(obj)
            if spec is None:
                continue
            for c in spec["containers"]:
                for port in c.get("ports", []):
                    if port.get("name") != "metrics":
                        continue
                    labels = pod_template_labels(obj)
                    assert any(selects(m["spec"]["selector"], labels) and
                               any(e.get("port") == "metrics" for e in m["spec"]["podMetricsEndpoints"])
                               for m in monitors), f"{name}: {obj['kind']}/{obj['metadata']['name']} /metrics is not scraped"


def test_model_server_metrics_are_scraped_on_its_rest_port(overlays):
    objects = overlays["gke"]
    monitor = one(objects, "PodMonitor", "model-server")
    isvc = one(objects, "InferenceService", "car-anomaly")
    assert monitor["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    [c] = one(objects, "ServingRuntime", isvc["spec"]["predictor"]["model"]["runtime"])["spec"]["containers"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert str(endpoint["portNumber"]) == c["args"][c["args"].index("--http-port") + 1]
    assert endpoint["path"] == "/metrics"


def test_every_pod_monitor_labels_its_targets_with_the_service_name(overlays):
    for monitor in find(overlays["gke"], "PodMonitor"):
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert {"action": "replace", "targetLabel": "fleetpulse_service", "replacement": monitor["metadata"]["name"]} \
                in endpoint["relabelings"]


def alerts(objects) -> list[dict]:
    rule = one(objects, "PrometheusRule", "fleetpulse")
    return [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


@pytest.mark.parametrize("concern,pattern", [
    ("consumer lag", r'kafka_consumergroup_lag\{consumergroup="fleetpulse-transformer"'),
    ("dead-letter rate", r'topic="sensor-data-dlq"'),
    ("alert rate", r'topic="alerts"'),
    ("model server errors", r'fleetpulse_transformer_retries_total\{dependency="model-server"\}'),
    ("model server down", r'up\{fleetpulse_service="model-server"\}'),
])
def test_an_alert_covers(overlays, concern, pattern):
    assert any(re.search(pattern, a["expr"]) for a in alerts(overlays["gke"])), concern


def test_every_alert_has_severity_summary_and_a_pending_period(overlays):
    for a in alerts(overlays["gke"]):
        assert a["labels"]["severity"] in ("warning", "critical"), a["alert"]
        assert a["annotations"]["summary"] and a["for"], a["alert"]


def test_recording_rules_used_by_alerts_are_defined(overlays):
    rule = one(overlays["gke"], "PrometheusRule", "fleetpulse")
    records = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
    for a in alerts(overlays["gke"]):
        for used in re.findall(r"\b(\w+:\w+:\w+)\b", a["expr"]):
            assert used in records, f"{a['alert']} uses undefined {used}"


def test_dashboard_is_valid_grafana_json_with_queries(overlays):
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert dash["uid"] and len(ids) == len(set(ids))
    assert all(t["expr"] for p in dash["panels"] for t in p["targets"])
    [cm] = [o for o in overlays["gke"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fleetpulse-grafana-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["grafana-dashboard.json"]) == dash


def fleetpulse_series(overlays) -> set[str]:
    rule = one(overlays["gke"], "PrometheusRule", "fleetpulse")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\bfleetpulse_[a-z_]+", e) if m != "fleetpulse_service"}


PACKAGE_OF = {"bridge": "bridges", "score": "inference", "simulator": "simulator", "serve": "inference"}


@pytest.mark.parametrize("service", sorted(PACKAGE_OF))
def test_fleetpulse_series_in_rules_and_dashboard_are_exported_by_the_code(overlays, service):
    series = {s for s in fleetpulse_series(overlays) if s.startswith(f"fleetpulse_{service}_")}
    if not series:
        pytest.skip(f"no fleetpulse_{service}_* series used")
    package = REPO / PACKAGE_OF[service]
    source = "\n".join(p.read_text() for p in package.rglob("*.py"))
    if not source:
        pytest.skip(f"{PACKAGE_OF[service]}/ has no code yet")
    for name in series:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        # prometheus_client names a Counter without _total and appends it on export.
        assert f'"{base}"' in source or f'"{name}"' in source, f"{name} is not exported by {PACKAGE_OF[service]}/"
