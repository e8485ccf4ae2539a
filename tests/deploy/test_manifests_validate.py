"""Every kustomization builds, and every object it renders is valid for the API that will receive it:
core kinds against the Kubernetes OpenAPI schema, custom resources against their CRD schemas."""

from __future__ import annotations

import json
from functools import cache

import jsonschema
import kubernetes_validate
import pytest

from tests.support.deploy import CRD_SCHEMAS, KUSTOMIZATIONS, MANIFESTS, OVERLAYS, is_core, kustomize_build

# The oldest Kubernetes minor the manifests promise to work on (GKE's stable channel at the time of
# writing), and the newest kubernetes-validate knows; strict mode rejects unknown fields.
K8S_VERSIONS = ("1.33", "1.37")


@cache
def crd_schema(group: str, kind: str, version: str) -> dict:
    path = CRD_SCHEMAS / group / f"{kind.lower()}_{version}.json"
    if not path.exists():
        pytest.fail(f"no CRD schema for {group}/{version} {kind} at {path}; add it to shared/schemas or use a kind that has one")
    return json.loads(path.read_text())


def all_objects(rendered):
    for where, objects in rendered.items():
        for obj in objects:
            yield where, obj


def label(where: str, obj: dict) -> str:
    return f"{where}: {obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_kustomization_builds(path):
    assert kustomize_build(path), f"{path} renders no objects"


def test_both_overlays_exist_and_render_the_whole_system(overlays):
    assert set(overlays) == set(OVERLAYS)
    for name, objects in overlays.items():
        kinds = {o["kind"] for o in objects}
        assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "MongoDBCommunity", "ServingRuntime",
                "InferenceService", "Deployment", "Job", "CronJob", "PodMonitor", "PrometheusRule"} <= kinds, name


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schema(rendered, k8s_version):
    errors = []
    for where, obj in all_objects(rendered):
        if not is_core(obj):
            continue
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{label(where, obj)}: {exc.message} at {'/'.join(map(str, exc.path))}")
    assert not errors, "\n".join(errors)


def test_custom_resources_validate_against_their_crd_schemas(rendered):
    errors = []
    checked = 0
    for where, obj in all_objects(rendered):
        if is_core(obj):
            continue
        group, _, version = obj["apiVersion"].partition("/")
        schema = crd_schema(group, obj["kind"], version)
        validator = jsonschema.Draft7Validator(schema)
        for err in validator.iter_errors(obj):
            errors.append(f"{label(where, obj)}: {err.message} at /{'/'.join(map(str, err.absolute_path))}")
        checked += 1
    assert checked > 0
    assert not errors, "\n".join(errors)


def test_the_crd_schemas_catch_a_misspelt_field():
    """Guard for the test above: the shared schemas reject unknown fields, so a typo cannot pass."""
    schema = crd_schema("kafka.strimzi.io", "KafkaTopic", "v1beta2")
    topic = {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaTopic", "metadata": {"name": "t"},
             "spec": {"partitions": 1, "replica": 3}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(topic))


def test_every_object_is_namespaced_into_its_overlay_namespace(overlays):
    from tests.support.deploy import NAMESPACES

    cluster_scoped = {"Namespace"}
    for name, objects in overlays.items():
        for obj in objects:
            if obj["kind"] in cluster_scoped:
                continue
            assert obj["metadata"].get("namespace") == NAMESPACES[name], f"{name}: {obj['kind']}/{obj['metadata']['name']}"
