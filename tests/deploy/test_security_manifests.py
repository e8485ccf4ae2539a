"""The manifests and Terraform grant each identity what the local stack grants it and nothing else (#14):
Kafka only through SCRAM on TLS with no super user, every credential from a Secret someone creates,
the pipeline's namespace admitted to Kafka, the model server cluster-local, least-privilege GCP accounts."""

from __future__ import annotations

import re

import pytest

from devtools.stack.rights import KAFKA_RIGHTS, MQTT_ROLES
from tests.support.deploy import TERRAFORM, env_of, find, one, pod_spec

KAFKA_CLIENTS = {"bridge": ("StatefulSet", "bridge", "FLEETPULSE_BRIDGE_"),
                 "transformer": ("Deployment", "transformer", "FLEETPULSE_SCORE_"),
                 "simulator": ("Job", "simulator", "FLEETPULSE_SIMULATOR_"),
                 "decider": ("Deployment", "model-decider", "FLEETPULSE_DECIDE_"),
                 "training": ("Deployment", "retrain-trigger", "FLEETPULSE_RETRAIN_")}
"""Kafka identity -> the workload that logs in as it (kind, name) and its settings prefix."""
PIPELINE_NAMESPACE = "kubeflow"
STRIMZI_SECRETS = {*KAFKA_RIGHTS, "keda", "fleetpulse-cluster-ca-cert"}
"""Secrets Strimzi writes: one per KafkaUser (its password), and the cluster CA's certificate."""
OPERATOR_SECRETS = {"fleetpulse-transformer-mongodb"}
"""Written by the MongoDB Community Operator (connectionStringSecretName)."""
DEV_SECRETS = {"mosquitto-dynsec", "mqtt-bridge"}
"""dev has no Terraform: the developer makes these from the local stack (overlays/dev/mosquitto.yaml says how)."""


def all_tf() -> str:
    return "\n".join(p.read_text() for p in sorted(TERRAFORM.glob("*.tf")))


def tf_block(text: str, header: str) -> str:
    m = re.search(re.escape(header) + r"\s*\{", text)
    assert m, f"no block {header}"
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end():i - 1]


def terraform_secrets() -> set[str]:
    blocks = re.findall(r'resource "kubernetes_secret" "\w+" \{(.*?)\n\}', all_tf(), re.S)
    return {re.search(r'name\s*=\s*"([a-z0-9-]+)"', b).group(1) for b in blocks}


def container(objects, kind, name) -> dict:
    return pod_spec(one(objects, kind, name))["containers"][0]


def secrets_read(obj: dict) -> set[str]:
    """Every Secret a workload or custom resource reads: env references and volumes (EMQX's too)."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                found.add(node["secretKeyRef"]["name"])
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                found.add(node["secret"]["secretName"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(obj.get("spec", {}))
    return found


def test_kafka_has_no_listener_without_tls_and_scram_and_no_super_user(overlays):
    for name, objects in overlays.items():
        kafka = one(objects, "Kafka", "fleetpulse")["spec"]["kafka"]
        assert kafka["listeners"], name
        for listener in kafka["listeners"]:
            assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512", f"{name}: {listener['name']}"
        assert kafka["authorization"]["type"] == "simple"
        assert not kafka["authorization"].get("superUsers"), f"{name}: super users {kafka['authorization'].get('superUsers')}"
        assert kafka["config"]["auto.create.topics.enable"] is False


def test_kafka_admits_fleetpulse_pods_the_pipeline_namespace_and_keda_and_nobody_else(overlays):
    default_ns = re.search(r'variable "pipeline_namespace" \{.*?default\s*=\s*"([^"]+)"', (TERRAFORM / "variables.tf").read_text(), re.S)
    assert default_ns.group(1) == PIPELINE_NAMESPACE
    for name, objects in overlays.items():
        [listener] = one(objects, "Kafka", "fleetpulse")["spec"]["kafka"]["listeners"]
        assert listener["networkPolicyPeers"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "fleetpulse"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": PIPELINE_NAMESPACE}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "keda-operator"}}},
        ], name


def kafka_user_rights(user: dict) -> dict[str, set]:
    rights = {"read": set(), "write": set(), "groups": set()}
    for acl in user["spec"]["authorization"]["acls"]:
        resource, ops = acl["resource"], set(acl["operations"])
        if resource["type"] == "group":
            assert ops == {"Read", "Describe"}
            rights["groups"].add(resource["name"])
        else:
            assert resource["patternType"] == "literal" and ops in ({"Read", "Describe"}, {"Write", "Describe"})
            rights["read" if "Read" in ops else "write"].add(resource["name"])
    return rights


@pytest.mark.parametrize("service", sorted(KAFKA_RIGHTS))
def test_each_kafka_user_has_the_rights_the_local_stack_grants_it(overlays, service):
    expected = KAFKA_RIGHTS[service]
    for name, objects in overlays.items():
        assert kafka_user_rights(one(objects, "KafkaUser", service)) == {
            "read": set(expected.read), "write": set(expected.write), "groups": set(expected.group_prefixes)}, name


@pytest.mark.parametrize("service", sorted(KAFKA_CLIENTS))
def test_each_service_logs_in_to_kafka_as_its_own_user_with_secrets_from_files(overlays, service):
    kind, workload, prefix = KAFKA_CLIENTS[service]
    for name, objects in overlays.items():
        spec = pod_spec(one(objects, kind, workload))
        c = spec["containers"][0]
        env = env_of(c)
        conf = {k: e["valueFrom"]["configMapKeyRef"]["key"] for k, e in env.items() if "configMapKeyRef" in e.get("valueFrom", {})}
        assert conf[f"{prefix}KAFKA_BOOTSTRAP_SERVERS"] == "kafka-bootstrap-servers"
        assert conf[f"{prefix}KAFKA_SECURITY_PROTOCOL"] == "kafka-security-protocol"
        assert conf[f"{prefix}KAFKA_SASL_MECHANISM"] == "kafka-sasl-mechanism"
        assert env[f"{prefix}KAFKA_USERNAME"]["value"] == service
        assert f"{prefix}KAFKA_PASSWORD" not in env
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}

        def secret_behind(path: str) -> tuple[str, str]:
            directory, _, file = path.rpartition("/")
            secret = volumes[mounts[directory]]["secret"]
            [item] = [i for i in secret["items"] if i["path"] == file]
            return secret["secretName"], item["key"]

        assert secret_behind(env[f"{prefix}KAFKA_PASSWORD_FILE"]["value"]) == (service, "password")
        assert secret_behind(env[f"{prefix}KAFKA_CA_FILE"]["value"]) == ("fleetpulse-cluster-ca-cert", "ca.crt")


def test_the_endpoints_name_the_tls_listener_in_librdkafka_spelling(overlays):
    for name, objects in overlays.items():
        [listener] = one(objects, "Kafka", "fleetpulse")["spec"]["kafka"]["listeners"]
        [cm] = [o for o in find(objects, "ConfigMap") if o["metadata"]["name"].startswith("fleetpulse-endpoints")]
        assert cm["data"]["kafka-bootstrap-servers"] == f"fleetpulse-kafka-bootstrap:{listener['port']}"
        assert (cm["data"]["kafka-security-protocol"], cm["data"]["kafka-sasl-mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")


def test_no_workload_has_a_password_in_its_spec(overlays):
    for name, objects in overlays.items():
        for obj in objects:
            spec = pod_spec(obj)
            for c in (spec or {}).get("containers", []):
                literal = [e["name"] for e in c.get("env", []) if re.search("PASSWORD|SECRET|TOKEN", e["name"]) and "value" in e
                           and not e["name"].endswith("_FILE") and not e["name"].endswith("_PATH")]
                assert not literal, f"{name}: {obj['kind']}/{obj['metadata']['name']} sets {literal} in the manifest"


def test_every_secret_read_is_made_by_an_operator_or_terraform(overlays):
    made = STRIMZI_SECRETS | OPERATOR_SECRETS | terraform_secrets()
    for name, objects in overlays.items():
        for obj in objects:
            missing = secrets_read(obj) - made - (DEV_SECRETS if name == "dev" else set())
            assert not missing, f"{name}: {obj['kind']}/{obj['metadata']['name']} reads {sorted(missing)}, which nobody creates"


def test_the_training_password_terraform_makes_reaches_the_kafka_user_and_the_pipeline_namespace():
    tf = all_tf()
    this_ns = tf_block(tf, 'resource "kubernetes_secret" "training_kafka_password"')
    pipeline_ns = tf_block(tf, 'resource "kubernetes_secret" "pipeline_training_kafka"')
    assert 'name      = "training-kafka-password"' in this_ns and "random_password.kafka_training.result" in this_ns
    assert "namespace = var.pipeline_namespace" in pipeline_ns
    assert "random_password.kafka_training.result" in pipeline_ns and "tls_self_signed_cert.kafka_cluster_ca.cert_pem" in pipeline_ns


def test_the_kafka_cluster_ca_is_terraforms_so_the_pipeline_namespace_can_trust_it(overlays):
    assert one(overlays["gke"], "Kafka", "fleetpulse")["spec"]["clusterCa"]["generateCertificateAuthority"] is False
    assert {"fleetpulse-cluster-ca-cert", "fleetpulse-cluster-ca"} <= terraform_secrets()
    ref = one(overlays["gke"], "KafkaUser", "training")["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "training-kafka-password", "key": "password"}


def test_every_inference_service_is_cluster_local(rendered):
    services = [(where, isvc) for where, objects in rendered.items() for isvc in find(objects, "InferenceService")]
    assert services
    for where, isvc in services:
        assert isvc["metadata"]["labels"].get("networking.knative.dev/visibility") == "cluster-local", where


def emqx_config(overlays) -> str:
    return one(overlays["gke"], "EMQX", "emqx")["spec"]["config"]["data"]


def test_emqx_authenticates_every_client_and_denies_what_no_rule_allows(overlays):
    config = emqx_config(overlays)
    assert re.search(r"mechanism = password_based\s+backend = built_in_database\s+user_id_type = username", config)
    assert "no_match = deny" in config
    assert 'sources = [{type = file, enable = true, path = "/opt/emqx/etc/fleetpulse/acl/acl.conf"}]' in config
    assert "zones.cars.mqtt.use_username_as_clientid = true" in config
    tls = re.search(r"listeners\.ssl\.default \{(.*?)\n\}", config, re.S).group(1)
    assert 'bind = "0.0.0.0:8883"' in tls and "zone = cars" in tls
    for template in ("coreTemplate", "replicantTemplate"):
        spec = one(overlays["gke"], "EMQX", "emqx")["spec"][template]["spec"]
        mounted = {m["mountPath"]: m["name"] for m in spec["extraVolumeMounts"]}
        volumes = {v["name"]: v for v in spec["extraVolumes"]}
        assert volumes[mounted["/opt/emqx/etc/fleetpulse/acl"]]["configMap"]["name"] == "emqx-acl"
        assert volumes[mounted["/opt/emqx/etc/fleetpulse/users"]]["secret"]["secretName"] == "emqx-mqtt-users"
        assert volumes[mounted["/opt/emqx/etc/fleetpulse/tls"]]["secret"]["secretName"] == "emqx-tls"


def test_emqx_acl_is_the_local_stacks(overlays):
    rules = [line for line in one(overlays["gke"], "ConfigMap", "emqx-acl")["data"]["acl.conf"].splitlines()
             if line and not line.startswith("%%")]
    assert rules == [
        '{allow, {username, "bridge"}, subscribe, [{eq, "$share/fleetpulse/vehicles/sensor/data/+"}]}.',
        '{deny, {username, "bridge"}, all, ["#"]}.',
        '{allow, {username, "simulator"}, publish, ["vehicles/sensor/data/+"]}.',
        '{deny, {username, "simulator"}, all, ["#"]}.',
        '{allow, all, publish, ["vehicles/sensor/data/${username}"]}.',
        "{deny, all}.",
    ]
    # The same identities as the local stack's Mosquitto (admin is the operator's, local only).
    assert set(MQTT_ROLES) - {"admin"} == {"bridge", "simulator"}
    bridge_share_group = env_of(container(overlays["gke"], "StatefulSet", "bridge"))["FLEETPULSE_BRIDGE_SHARE_GROUP"]["value"]
    assert f"$share/{bridge_share_group}/" in rules[0]


def test_dev_mosquitto_refuses_anonymous_clients_and_takes_identities_from_dynamic_security(overlays):
    conf = one(overlays["dev"], "ConfigMap", "mosquitto")["data"]["mosquitto.conf"].splitlines()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    assert "plugin /usr/lib/mosquitto_dynamic_security.so" in conf
    assert "plugin_opt_config_file /mosquitto/data/dynamic-security.json" in conf
    spec = pod_spec(one(overlays["dev"], "Deployment", "mosquitto"))
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in spec["volumes"]}["identities"] == "mosquitto-dynsec"


def test_the_bridge_reads_its_mqtt_password_from_a_secret(overlays):
    for name, objects in overlays.items():
        env = env_of(container(objects, "StatefulSet", "bridge"))
        assert env["FLEETPULSE_BRIDGE_MQTT_USERNAME"]["value"] == "bridge"
        assert env["FLEETPULSE_BRIDGE_MQTT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mqtt-bridge", "key": "password"}


def bucket_bindings(gsa: str) -> list[str]:
    return [b for b in re.findall(r'resource "google_storage_bucket_iam_member" "\w+" \{(.*?)\n\}', all_tf(), re.S)
            if f"google_service_account.{gsa}.email" in b]


def test_the_pipeline_creates_under_the_model_prefix_and_rewrites_only_channels_json():
    roles = {re.search(r'role\s*=\s*"([^"]+)"', b).group(1): b for b in bucket_bindings("pipeline")}
    assert set(roles) == {"roles/storage.objectViewer", "roles/storage.objectCreator", "roles/storage.objectUser"}
    assert "condition" not in roles["roles/storage.objectViewer"]
    assert 'resource.name.startsWith(\\"${local.model_objects}\\")' in roles["roles/storage.objectCreator"]
    assert 'resource.name == \\"${local.model_objects}channels.json\\"' in roles["roles/storage.objectUser"]
    assert 'model_objects = "projects/_/buckets/${google_storage_bucket.models.name}/objects/${var.model_name}/"' in all_tf()


def test_serving_only_reads_the_bucket():
    [binding] = bucket_bindings("model_server")
    assert 'role   = "roles/storage.objectViewer"' in binding


def test_pipeline_runs_use_fleetpulses_own_service_account_not_kfps_shared_one(overlays):
    tf = all_tf()
    assert "pipeline-runner" not in re.search(r'variable "pipeline_service_account" \{(.*?)\n\}', tf, re.S).group(1)
    ksa = tf_block(tf, 'resource "kubernetes_service_account" "pipeline"')
    assert '"iam.gke.io/gcp-service-account" = google_service_account.pipeline.email' in ksa
    assert 'resource "kubernetes_annotations"' not in tf
    default = re.search(r'variable "pipeline_service_account" \{.*?default\s*=\s*"([^"]+)"', tf, re.S).group(1)
    env = env_of(container(overlays["gke"], "CronJob", "train-car-anomaly"))
    assert env["PIPELINE_SERVICE_ACCOUNT"]["value"] == default


@pytest.mark.parametrize("pool", ["general", "training"])
def test_nodes_run_as_their_own_minimal_service_account(pool):
    tf = all_tf()
    assert "service_account = google_service_account.nodes.email" in tf_block(tf, f'resource "google_container_node_pool" "{pool}"')
    members = re.findall(r'resource "google_project_iam_member" "\w+" \{(.*?)\n\}', tf, re.S)
    node_roles = [re.search(r'role\s*=\s*"([^"]+)"', m).group(1) for m in members if "google_service_account.nodes.email" in m]
    assert node_roles == ["roles/container.defaultNodeServiceAccount"]
