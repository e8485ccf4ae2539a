"""The deployed Kafka stays on 3.x until the training pipeline's Kafka client can talk to Kafka 4.

Training reads Kafka through TensorFlow I/O 0.37.1, whose bundled librdkafka fails against Kafka 4.x
with "Required feature not supported by broker" (Kafka 4.0 removed old protocol versions, KIP-896).
The local stack pins Kafka 3.9.2 for the same reason (devtools/stack/assets/kafka/pom.xml)."""

from __future__ import annotations

import pytest

from tests.support.deploy import OVERLAYS, find, one

TF_IO_REASON = (
    "training reads Kafka through TensorFlow I/O 0.37.1, whose bundled librdkafka fails against Kafka 4.x "
    "('Required feature not supported by broker', KIP-896); keep Kafka 3.x until a TF-IO build with a newer "
    "librdkafka passes the training tests against a 4.x broker (see the header of manifests/base/kafka.yaml)"
)

# Strimzi 0.47 is the newest Strimzi that runs Kafka 3.9 (3.9.0, 3.9.1, 4.0.0) and serves only v1beta2.
STRIMZI_API = "kafka.strimzi.io/v1beta2"
STRIMZI_KINDS = ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_cluster_runs_kafka_3_because_tensorflow_io_cannot_talk_to_kafka_4(overlays, overlay):
    kafka = one(overlays[overlay], "Kafka", "fleetpulse")["spec"]["kafka"]
    version = str(kafka["version"])
    assert version.split(".")[0] == "3", f"{overlay}: spec.kafka.version is {version}: {TF_IO_REASON}"
    metadata = str(kafka.get("metadataVersion", ""))
    assert metadata.startswith("3."), (
        f"{overlay}: spec.kafka.metadataVersion is {metadata!r}, expected the 3.x level matching {version}: {TF_IO_REASON}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_cluster_is_kraft_with_node_pools_on_a_strimzi_that_supports_kafka_3_9(overlays, overlay):
    objects = overlays[overlay]
    annotations = one(objects, "Kafka", "fleetpulse")["metadata"].get("annotations", {})
    # Strimzi 0.46/0.47 run KRaft with node pools only when both annotations are set.
    assert annotations.get("strimzi.io/kraft") == "enabled", overlay
    assert annotations.get("strimzi.io/node-pools") == "enabled", overlay
    pools = find(objects, "KafkaNodePool")
    assert pools and all({"controller", "broker"} & set(p["spec"]["roles"]) for p in pools), overlay
    for kind in STRIMZI_KINDS:
        for obj in find(objects, kind):
            assert obj["apiVersion"] == STRIMZI_API, (
                f"{overlay}: {kind}/{obj['metadata']['name']} uses {obj['apiVersion']}; Strimzi 0.47 (the newest "
                f"release with Kafka 3.9, needed because {TF_IO_REASON}) serves only {STRIMZI_API}")
