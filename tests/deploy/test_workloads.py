"""Every container FleetPulse runs is bounded, probed, unprivileged and labelled."""

from __future__ import annotations

import pytest

from tests.support.deploy import find, pod_spec, pod_template_labels

REQUIRED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")


def containers(objects: list[dict]):
    """(where, container, pod spec) for every container FleetPulse defines, KServe runtimes included."""
    for obj in objects:
        ref = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        if spec is not None:
            for c in spec.get("initContainers", []) + spec["containers"]:
                yield ref, c, spec
        elif obj["kind"] == "ServingRuntime":
            for c in obj["spec"]["containers"]:
                yield ref, c, {}


def workload_names(overlays) -> list[str]:
    return sorted({ref for objects in overlays.values() for ref, _, _ in containers(objects)})


def test_there_are_workloads_to_check(overlays):
    refs = workload_names(overlays)
    for expected in ("StatefulSet/bridge", "Deployment/transformer", "Deployment/model-decider", "Deployment/retrain-trigger", "Job/simulator",
                     "CronJob/train-car-anomaly", "ServingRuntime/fleetpulse-model-server"):
        assert expected in refs


def test_every_container_requests_and_limits_cpu_and_memory(overlays):
    missing = []
    for name, objects in overlays.items():
        for ref, c, _ in containers(objects):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(part, {}):
                        missing.append(f"{name}: {ref} {c['name']} {part}.{resource}")
    assert not missing, "\n".join(missing)


def test_memory_limit_is_never_below_the_request(overlays):
    from kubernetes.utils.quantity import parse_quantity

    for name, objects in overlays.items():
        for ref, c, _ in containers(objects):
            res = c["resources"]
            assert parse_quantity(res["limits"]["memory"]) >= parse_quantity(res["requests"]["memory"]), f"{name}: {ref}"


def test_every_container_has_liveness_and_readiness_probes(overlays):
    missing = [f"{name}: {ref} {c['name']} {probe}"
               for name, objects in overlays.items()
               for ref, c, _ in containers(objects)
               for probe in ("livenessProbe", "readinessProbe") if probe not in c]
    assert not missing, "\n".join(missing)


def test_http_probes_use_a_port_the_container_declares(overlays):
    for name, objects in overlays.items():
        for ref, c, _ in containers(objects):
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                if action:
                    assert action["port"] in ports, f"{name}: {ref} {probe} port {action['port']} not in {ports}"


def test_every_container_runs_as_non_root_without_privilege_escalation(overlays):
    bad = []
    for name, objects in overlays.items():
        for ref, c, spec in containers(objects):
            ctx = c.get("securityContext", {})
            pod_ctx = spec.get("securityContext", {})
            if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
                bad.append(f"{name}: {ref} {c['name']} may run as root")
            if (ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) == 0):
                bad.append(f"{name}: {ref} {c['name']} runs as uid 0")
            if ctx.get("allowPrivilegeEscalation") is not False:
                bad.append(f"{name}: {ref} {c['name']} allows privilege escalation")
            if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                bad.append(f"{name}: {ref} {c['name']} keeps Linux capabilities")
    assert not bad, "\n".join(bad)


def test_fleetpulse_images_run_as_the_uid_their_dockerfiles_create(overlays):
    for name, objects in overlays.items():
        for ref, c, spec in containers(objects):
            if c["image"].startswith("ghcr.io/fleetpulse/"):
                uid = c.get("securityContext", {}).get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
                assert uid == 10001, f"{name}: {ref}"


def test_every_image_is_pinned_to_a_version(overlays):
    for name, objects in overlays.items():
        for ref, c, _ in containers(objects):
            image = c["image"]
            tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
            assert tag and tag != "latest", f"{name}: {ref} image {image} has no fixed tag"


def test_every_object_and_pod_template_carries_the_recommended_labels(overlays):
    bad = []
    for name, objects in overlays.items():
        for obj in objects:
            labels = obj["metadata"].get("labels", {})
            bad += [f"{name}: {obj['kind']}/{obj['metadata']['name']} lacks {k}" for k in REQUIRED_LABELS if k not in labels]
            if pod_spec(obj) is not None:
                tmpl = pod_template_labels(obj)
                bad += [f"{name}: {obj['kind']}/{obj['metadata']['name']} pod template lacks {k}" for k in REQUIRED_LABELS if k not in tmpl]
        for isvc in find(objects, "InferenceService"):
            labels = isvc["spec"]["predictor"].get("labels", {})
            bad += [f"{name}: predictor pods of {isvc['metadata']['name']} lack {k}" for k in REQUIRED_LABELS if k not in labels]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("kind,path", [
    ("KafkaNodePool", ("spec", "resources")),
    ("Kafka", ("spec", "entityOperator", "topicOperator", "resources")),
    ("Kafka", ("spec", "entityOperator", "userOperator", "resources")),
    ("Kafka", ("spec", "kafkaExporter", "resources")),
    ("EMQX", ("spec", "coreTemplate", "spec", "resources")),
    ("EMQX", ("spec", "replicantTemplate", "spec", "resources")),
])
def test_operator_managed_pods_are_sized_too(overlays, kind, path):
    seen = 0
    for name, objects in overlays.items():
        for obj in find(objects, kind):
            node = obj
            for key in path:
                node = node.get(key, {})
            assert {"cpu", "memory"} <= set(node.get("requests", {})), f"{name}: {kind}/{obj['metadata']['name']} {'.'.join(path)}"
            seen += 1
    assert seen, f"no {kind} rendered"


def test_mongodb_containers_are_sized(overlays):
    for name, objects in overlays.items():
        for mdb in find(objects, "MongoDBCommunity"):
            for c in mdb["spec"]["statefulSet"]["spec"]["template"]["spec"]["containers"]:
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]), f"{name}: {c['name']}"
