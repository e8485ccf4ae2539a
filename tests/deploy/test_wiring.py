"""The manifests agree with the code's contract and with themselves: topic specs, settings names,
endpoints that point at objects that exist, secrets that someone creates, the original load scenario."""

from __future__ import annotations

import importlib
import json
import re
import xml.etree.ElementTree as ET

import pytest
import yaml

from fleetpulse.topics import SENSOR_DATA, TOPICS
from tests.support.deploy import MANIFESTS, NAMESPACES, TERRAFORM, env_of, find, one, pod_spec
from tests.support.paths import SHARED

GKE_SENSOR_DATA_PARTITIONS = 12


def endpoints(objects) -> dict[str, str]:
    [cm] = [o for o in find(objects, "ConfigMap") if o["metadata"]["name"].startswith("fleetpulse-endpoints")]
    return cm["data"]


def container(objects, kind, name) -> dict:
    return pod_spec(one(objects, kind, name))["containers"][0]


def test_base_topics_match_fleetpulse_topics(rendered):
    topics = {t["metadata"]["name"]: t["spec"] for t in find(rendered["base"], "KafkaTopic")}
    assert set(topics) == set(TOPICS)
    for name, spec in TOPICS.items():
        assert topics[name]["partitions"] == spec.partitions, name
        assert str(topics[name]["config"]["retention.ms"]) == str(spec.retention_ms), name


def test_gke_gives_sensor_data_twelve_partitions_and_leaves_the_rest(overlays):
    topics = {t["metadata"]["name"]: t["spec"] for t in find(overlays["gke"], "KafkaTopic")}
    assert topics[SENSOR_DATA]["partitions"] == GKE_SENSOR_DATA_PARTITIONS
    for name, spec in TOPICS.items():
        if name != SENSOR_DATA:
            assert topics[name]["partitions"] == spec.partitions


def test_ground_truth_is_kept_forever(overlays):
    for objects in overlays.values():
        assert str(one(objects, "KafkaTopic", "ground-truth")["spec"]["config"]["retention.ms"]) == "-1"


def test_topic_replication_never_exceeds_the_brokers(overlays):
    for name, objects in overlays.items():
        brokers = sum(p["spec"]["replicas"] for p in find(objects, "KafkaNodePool") if "broker" in p["spec"]["roles"])
        for topic in find(objects, "KafkaTopic"):
            assert topic["spec"]["replicas"] <= brokers, f"{name}: {topic['metadata']['name']}"
            assert int(topic["spec"]["config"]["min.insync.replicas"]) < topic["spec"]["replicas"] or brokers == 1, \
                f"{name}: {topic['metadata']['name']} cannot lose a broker and still accept acks=all writes"


def test_every_acl_names_a_topic_that_exists(overlays):
    for name, objects in overlays.items():
        topics = {t["metadata"]["name"] for t in find(objects, "KafkaTopic")}
        for user in find(objects, "KafkaUser"):
            for acl in user["spec"]["authorization"]["acls"]:
                if acl["resource"]["type"] == "topic":
                    assert acl["resource"]["name"] in topics, f"{name}: {user['metadata']['name']}"


def test_transformer_acl_group_is_the_group_it_consumes_as_and_keda_watches(overlays):
    objects = overlays["gke"]
    group = env_of(container(objects, "Deployment", "transformer"))["FLEETPULSE_SCORE_GROUP_ID"]["value"]
    assert group == "fleetpulse-transformer"
    acl_groups = [a["resource"]["name"] for a in one(objects, "KafkaUser", "transformer")["spec"]["authorization"]["acls"]
                  if a["resource"]["type"] == "group"]
    assert acl_groups == [group]
    trigger = one(objects, "ScaledObject", "transformer")["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == group and trigger["metadata"]["topic"] == SENSOR_DATA


def test_keda_never_wants_more_transformers_than_sensor_data_partitions(overlays):
    objects = overlays["gke"]
    partitions = one(objects, "KafkaTopic", SENSOR_DATA)["spec"]["partitions"]
    assert one(objects, "ScaledObject", "transformer")["spec"]["maxReplicaCount"] <= partitions


def test_keda_reaches_kafka_on_the_authenticated_listener_of_its_own_namespace(overlays):
    for name, objects in overlays.items():
        for so in find(objects, "ScaledObject"):
            for trigger in so["spec"]["triggers"]:
                if trigger["type"] != "kafka":
                    continue
                host, _, port = trigger["metadata"]["bootstrapServers"].rpartition(":")
                kafka = one(objects, "Kafka", "fleetpulse")
                assert host == f"{kafka['metadata']['name']}-kafka-bootstrap.{NAMESPACES[name]}.svc", name
                listener = next(l for l in kafka["spec"]["kafka"]["listeners"] if l["port"] == int(port))
                assert listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"
                assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"


def tls_scram_ports(kafka: dict) -> set[int]:
    return {l["port"] for l in kafka["spec"]["kafka"]["listeners"]
            if l["tls"] and l.get("authentication", {}).get("type") == "scram-sha-512"}  # fmt: skip


def test_services_bootstrap_from_the_kafka_clusters_authenticated_tls_listener(overlays):
    for name, objects in overlays.items():
        kafka = one(objects, "Kafka", "fleetpulse")
        host, _, port = endpoints(objects)["kafka-bootstrap-servers"].rpartition(":")
        assert host == "fleetpulse-kafka-bootstrap" and int(port) in tls_scram_ports(kafka), name


def test_mqtt_endpoints_point_at_the_overlays_broker(overlays):
    dev = endpoints(overlays["dev"])
    services = {s["metadata"]["name"]: s for s in find(overlays["dev"], "Service")}
    for key in ("mqtt-brokers", "simulator-mqtt-brokers"):
        for hostport in dev[key].split(","):
            host, _, port = hostport.rpartition(":")
            assert host in services and int(port) in [p["port"] for p in services[host]["spec"]["ports"]]

    gke = endpoints(overlays["gke"])
    emqx = one(overlays["gke"], "EMQX", "emqx")
    config = emqx["spec"]["config"]["data"]
    listener_ports = {int(p) for p in re.findall(r'listeners\.tcp\.\w+\.bind = "0\.0\.0\.0:(\d+)"', config)}
    for key in ("mqtt-brokers", "simulator-mqtt-brokers"):
        for hostport in gke[key].split(","):
            host, _, port = hostport.rpartition(":")
            assert host == "emqx-listeners" and int(port) in listener_ports


def test_one_simulator_pod_has_enough_source_ports_for_the_original_fleet(overlays):
    cars = 100_000
    ports_per_destination = 65535 - 1024
    for name, objects in [("gke", overlays["gke"])]:
        job = one(objects, "Job", "simulator")
        args = container(objects, "Job", "simulator")["args"]
        assert int(args[args.index("--cars") + 1]) == cars
        assert int(args[args.index("--connections") + 1]) == cars
        sysctls = {s["name"]: s["value"] for s in job["spec"]["template"]["spec"]["securityContext"]["sysctls"]}
        assert sysctls["net.ipv4.ip_local_port_range"] == "1024 65535"
        destinations = len(endpoints(objects)["simulator-mqtt-brokers"].split(","))
        assert destinations * ports_per_destination > cars


def test_model_grpc_goes_through_knative_in_the_overlays_namespace(overlays):
    for name, objects in overlays.items():
        [isvc] = find(objects, "InferenceService")
        expected = f"{isvc['metadata']['name']}-predictor.{NAMESPACES[name]}.svc.cluster.local:80"
        assert endpoints(objects)["model-grpc"] == expected


def test_pipeline_arguments_are_json_naming_the_overlays_kafka(overlays):
    for name, objects in overlays.items():
        args = json.loads(endpoints(objects)["pipeline-arguments"])
        host, _, port = args["kafka_bootstrap"].rpartition(":")
        assert host == f"fleetpulse-kafka-bootstrap.{NAMESPACES[name]}.svc", name
        assert int(port) in tls_scram_ports(one(objects, "Kafka", "fleetpulse")), name
        assert args["bucket"] == "fleetpulse-models"


def test_inference_service_serves_the_model_bucket_with_canary_rollouts(overlays):
    for name, objects in overlays.items():
        isvc = one(objects, "InferenceService", "car-anomaly")
        predictor = isvc["spec"]["predictor"]
        model = predictor["model"]
        assert model["storageUri"] == "gs://fleetpulse-models/car-anomaly"
        assert env_of(model)["FLEETPULSE_SERVE_MODEL_URI"]["value"] == model["storageUri"]
        assert 0 <= predictor["canaryTrafficPercent"] <= 100
        # Canary traffic splitting exists only in KServe's Serverless (Knative) mode.
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
        runtime = one(objects, "ServingRuntime", model["runtime"])
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        assert {"name": model["modelFormat"]["name"], "version": model["modelFormat"]["version"]}.items() <= \
            runtime["spec"]["supportedModelFormats"][0].items()
        assert predictor["serviceAccountName"] in {s["metadata"]["name"] for s in find(objects, "ServiceAccount")}


def test_serving_runtime_runs_fleetpulse_serve_on_the_contract_ports(overlays):
    runtime = one(overlays["gke"], "ServingRuntime", "fleetpulse-model-server")
    [c] = runtime["spec"]["containers"]
    args = c["args"]
    assert args[0] == "serve"
    assert args[args.index("--http-port") + 1] == "8080" and args[args.index("--grpc-port") + 1] == "8081"
    assert c["ports"] == [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]
    # The server reads gs:// itself; KServe must not also copy the bucket into the pod.
    assert runtime["spec"]["storageHelper"]["disabled"] is True


def test_gke_model_server_acts_as_the_google_service_account_terraform_makes(overlays):
    sa = one(overlays["gke"], "ServiceAccount", "model-server")
    gsa = sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    account_id = gsa.split("@")[0]
    iam = (TERRAFORM / "iam.tf").read_text()
    assert f'account_id   = "{account_id}"' in iam
    assert f'[${{var.namespace}}/{sa["metadata"]["name"]}]' in iam


def test_transformer_reads_mongodb_from_the_secret_the_operator_writes(overlays):
    for name, objects in overlays.items():
        ref = env_of(container(objects, "Deployment", "transformer"))["FLEETPULSE_SCORE_MONGODB_URI"]["valueFrom"]["secretKeyRef"]
        [mdb] = find(objects, "MongoDBCommunity")
        [user] = [u for u in mdb["spec"]["users"] if u["name"] == "transformer"]
        assert ref["name"] == user["connectionStringSecretName"]
        assert ref["key"] == "connectionString.standard"
        assert {"db": "fleetpulse", "name": "readWrite"} in user["roles"]


SETTINGS = {
    "FLEETPULSE_BRIDGE_": "bridges.settings:BridgeSettings",
    "FLEETPULSE_SIMULATOR_": "simulator.settings:SimulatorSettings",
    "FLEETPULSE_SCORE_": "inference.transformer.settings:ScoreSettings",
    "FLEETPULSE_SERVE_": "inference.server.settings:ServeSettings",
    "FLEETPULSE_DECIDE_": "components.settings:DecideSettings",
    "FLEETPULSE_RETRAIN_": "components.settings:RetrainSettings",
}
SERVICE_PREFIX = {"bridge": "FLEETPULSE_BRIDGE_", "transformer": "FLEETPULSE_SCORE_", "simulator": "FLEETPULSE_SIMULATOR_",
                  "model-decider": "FLEETPULSE_DECIDE_", "retrain-trigger": "FLEETPULSE_RETRAIN_"}


def env_names(overlays) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for objects in overlays.values():
        for obj in objects:
            spec = pod_spec(obj)
            containers = spec["containers"] if spec else obj["spec"].get("containers", []) if obj["kind"] == "ServingRuntime" else []
            if obj["kind"] == "InferenceService":
                containers = [obj["spec"]["predictor"]["model"]]
            for c in containers:
                for e in c.get("env", []):
                    if e["name"].startswith("FLEETPULSE_"):
                        names.setdefault(obj["metadata"]["name"], set()).add(e["name"])
    return names


def test_each_service_gets_only_its_own_settings_prefix(overlays):
    names = env_names(overlays)
    for workload, prefix in SERVICE_PREFIX.items():
        assert names[workload] and all(n.startswith(prefix) for n in names[workload]), workload
    assert all(n.startswith("FLEETPULSE_SERVE_") for n in names["fleetpulse-model-server"] | names["car-anomaly"])


@pytest.mark.parametrize("prefix", [p for p, target in SETTINGS.items() if target])
def test_every_setting_the_manifests_set_exists_in_the_settings_class(overlays, prefix):
    module_name, _, cls_name = SETTINGS[prefix].partition(":")
    module = pytest.importorskip(module_name, reason=f"{module_name} is not written yet")
    fields = {f"{prefix}{f.upper()}" for f in getattr(module, cls_name).model_fields}
    used = {n for names in env_names(overlays).values() for n in names if n.startswith(prefix)}
    assert used and used <= fields, f"unknown settings: {sorted(used - fields)}"


def test_simulator_job_replays_the_original_load_scenario(overlays):
    scenario = ET.parse(SHARED / "reference" / "original-load-scenario.xml").getroot()
    cars = int(scenario.find("./clientGroups/clientGroup[@id='cg1']/count").text)
    publish = scenario.find(".//publish")
    every_s = int(re.fullmatch(r"1/(\d+)s", publish.get("rate")).group(1))
    args = container(overlays["gke"], "Job", "simulator")["args"]

    def arg(flag):
        return args[args.index(flag) + 1]

    assert args[0] == "simulate"
    assert int(arg("--cars")) == cars == 100_000
    # The original had one MQTT 5 client per car, with the car's id as client id.
    assert int(arg("--connections")) == cars
    assert float(arg("--rate")) == 1 / every_s
    # The original published at QoS 0; FleetPulse's cars publish at QoS 1 so the at-least-once chain
    # starts at the car (MQTT delivers at the lower of the publisher's and subscriber's QoS).
    assert publish.get("qos") == "0" and arg("--qos") == "1"
    assert int(arg("--duration")) == int(publish.get("count")) * every_s


def test_no_secret_values_are_committed(rendered):
    for where, objects in rendered.items():
        assert not find(objects, "Secret"), f"{where} renders a Secret"
    for path in MANIFESTS.rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path
    for path in MANIFESTS.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(path.read_text()), path


# Secrets the manifests read, and who creates each one.
OPERATOR_SECRETS = {
    "keda": "Strimzi User Operator (KafkaUser keda)",
    "fleetpulse-cluster-ca-cert": "Strimzi Cluster Operator",
    "fleetpulse-transformer-mongodb": "MongoDB Community Operator (connectionStringSecretName)",
}


def referenced_secrets(obj) -> set[str]:
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for key in ("secretKeyRef", "passwordSecretRef"):
                if key in node:
                    found.add(node[key]["name"])
            if "secretTargetRef" in node:
                found.update(ref["name"] for ref in node["secretTargetRef"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(obj.get("spec", {}))
    return found


def test_every_secret_referenced_is_made_by_an_operator_or_terraform(overlays):
    terraform = (TERRAFORM / "kubernetes.tf").read_text()
    made_by_terraform = set(re.findall(r'name\s*=\s*"([a-z0-9-]+)"', terraform))
    for name, objects in overlays.items():
        for obj in objects:
            for secret in referenced_secrets(obj):
                assert secret in OPERATOR_SECRETS or secret in made_by_terraform, \
                    f"{name}: {obj['kind']}/{obj['metadata']['name']} reads Secret {secret}, which nobody creates"


def test_argo_cd_deploys_the_gke_overlay_into_its_namespace(rendered):
    objects = rendered["argocd"]
    app = one(objects, "Application", "fleetpulse")
    assert app["spec"]["source"]["path"] == "manifests/overlays/gke"
    assert (MANIFESTS.parent / app["spec"]["source"]["path"] / "kustomization.yaml").exists()
    assert app["spec"]["destination"]["namespace"] == NAMESPACES["gke"]
    project = one(objects, "AppProject", app["spec"]["project"])
    assert app["spec"]["source"]["repoURL"] in project["spec"]["sourceRepos"]


def test_argo_cd_project_admits_every_kind_the_gke_overlay_renders(rendered, overlays):
    project = one(rendered["argocd"], "AppProject", "fleetpulse")
    allowed = project["spec"]["namespaceResourceWhitelist"]
    for obj in overlays["gke"]:
        group = obj["apiVersion"].rpartition("/")[0]
        assert any(a["group"] == group and a["kind"] in ("*", obj["kind"]) for a in allowed), f"{group} {obj['kind']}"


def cli_invocations(overlays):
    """(subcommand, args) of every `fleetpulse` container the overlays run (ENTRYPOINT is fleetpulse)."""
    seen = []
    for objects in overlays.values():
        for obj in objects:
            spec = pod_spec(obj)
            containers = spec["containers"] if spec else obj["spec"].get("containers", []) if obj["kind"] == "ServingRuntime" else []
            for c in containers:
                if c["image"].startswith("ghcr.io/fleetpulse/") and "command" not in c and c.get("args"):
                    seen.append((c["args"][0], c["args"][1:]))
    return seen


@pytest.mark.parametrize("subcommand", ["simulate", "bridge", "serve", "score"])
def test_every_flag_the_manifests_pass_is_an_option_of_the_cli(overlays, subcommand):
    project = __import__("tomllib").loads((MANIFESTS.parent / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["fleetpulse.commands"][subcommand]
    module_name, _, attr = target.partition(":")
    try:
        command = getattr(importlib.import_module(module_name), attr)
    except ModuleNotFoundError:
        pytest.skip(f"{module_name} is not written yet")
    options = {opt for p in command.params for opt in p.opts}
    invocations = [args for sub, args in cli_invocations(overlays) if sub == subcommand]
    assert invocations, f"no manifest runs fleetpulse {subcommand}"
    for args in invocations:
        flags = {a for a in args if a.startswith("--")}
        assert flags <= options, f"fleetpulse {subcommand} has no {sorted(flags - options)}"
