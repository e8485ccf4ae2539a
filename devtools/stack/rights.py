"""Who may do what on the secured stack: the one table Kafka's ACLs and Mosquitto's roles are written from.

Every identity is denied what this table does not grant (Kafka: ``allow.everyone.if.no.acl.found=false``;
Mosquitto: dynamic-security's default ACL access all false but unsubscribe). ``admin`` is the operator:
a super user on Kafka and every topic on Mosquitto. ``kafka-broker`` is the broker's own principal
(inter-broker and controller traffic), also a Kafka super user, and no client's.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetpulse.contract import MQTT_TOPIC_PREFIX
from fleetpulse.topics import ALERTS, GROUND_TRUTH, MODEL_REQUESTS, MODEL_SHADOW, SENSOR_DATA, SENSOR_DATA_DLQ

ADMIN = "admin"
KAFKA_BROKER = "kafka-broker"
SERVICES = ("simulator", "bridge", "training", "transformer", "decider")
"""The services a user asks `fleetpulse stack credentials` for, besides ``admin`` and car ids."""

MQTT_CAR_DATA = MQTT_TOPIC_PREFIX + "+"


@dataclass(frozen=True)
class KafkaRights:
    """Literal topics read or written (each with Describe) and consumer-group prefixes joined (Read, Describe)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    group_prefixes: tuple[str, ...] = ()


KAFKA_RIGHTS: dict[str, KafkaRights] = {
    "simulator": KafkaRights(write=(GROUND_TRUTH,)),
    "bridge": KafkaRights(write=(SENSOR_DATA, SENSOR_DATA_DLQ)),
    # Evaluation joins predictions with the labels; the TF-IO reader and the offset look-ups name
    # groups under fleetpulse-train (TF-IO's own default, "test-consumer-group", is not granted).
    # model-requests: `fleetpulse models retrain` acts on drift, in group fleetpulse-train-requests.
    "training": KafkaRights(read=(SENSOR_DATA, GROUND_TRUTH, MODEL_REQUESTS), group_prefixes=("fleetpulse-train",)),
    # The DLQ is shared with the bridge: what either cannot decode goes to sensor-data-dlq.
    # A group prefix, not the literal group, so a test's or the demo's transformer runs in its own group.
    # model-shadow: both models' verdicts for the promotion decision; model-requests: a retrain on drift.
    "transformer": KafkaRights(read=(SENSOR_DATA,), write=(ALERTS, SENSOR_DATA_DLQ, MODEL_SHADOW, MODEL_REQUESTS),
                               group_prefixes=("fleetpulse-transformer",)),
    # The promotion decision (`fleetpulse models decide`): both models' shadow verdicts, the labels,
    # and the new stable's alerts for the rollback watch. Its group is only named: it reads by assignment.
    "decider": KafkaRights(read=(MODEL_SHADOW, GROUND_TRUTH, ALERTS), group_prefixes=("fleetpulse-decider",)),
}
"""No Kafka right needs IDEMPOTENT_WRITE on the cluster: since Kafka 2.8 (KIP-679) Write on a topic
admits an idempotent producer (the bridge's and the transformer's are), tested in tests/security."""


@dataclass(frozen=True)
class MqttAcl:
    """One Mosquitto dynamic-security ACL entry (its ``acltype`` names are Mosquitto's)."""

    acltype: str
    topic: str


MQTT_ROLES: dict[str, tuple[MqttAcl, ...]] = {
    ADMIN: (
        MqttAcl("publishClientSend", "#"),
        MqttAcl("publishClientReceive", "#"),
        MqttAcl("subscribePattern", "#"),
        MqttAcl("unsubscribePattern", "#"),
        # `stack credentials` creates a car's identity on a running broker through its control topic.
        MqttAcl("publishClientSend", "$CONTROL/dynamic-security/#"),
        MqttAcl("publishClientReceive", "$CONTROL/dynamic-security/#"),
        MqttAcl("subscribePattern", "$CONTROL/dynamic-security/#"),
    ),
    # Only shared subscriptions to car data, in any share group (tests and the demo use their own).
    # A plain subscription is refused, so the bridge identity cannot take another group's messages either.
    "bridge": (
        MqttAcl("subscribePattern", f"$share/+/{MQTT_CAR_DATA}"),
        MqttAcl("publishClientReceive", MQTT_CAR_DATA),
    ),
    # The simulator's multiplexed mode (many cars per connection) is a fleet gateway: it may publish
    # any car's data and nothing else. With one connection per car (--connections = --cars) each car
    # connects as itself instead.
    "simulator": (MqttAcl("publishClientSend", MQTT_CAR_DATA),),
}


MONGODB_USERS = ("transformer",)
"""Who gets a MongoDB user besides ``admin`` (the transformer writes the twins). FerretDB 1.24 has no
roles, so a user may read and write every database: the services that do not use MongoDB get none."""


def car_acls(car_id: str) -> tuple[MqttAcl, ...]:
    """A car publishes its own topic and nothing else; it subscribes to nothing.

    One role per car, with the literal topic: Mosquitto 2.0's dynamic-security plugin does not
    substitute %u/%c in ACL topics (measured on 2.0.11), and its acl_file, which does, grants every
    SUBSCRIBE (so a car could join the bridge's share group and have the broker drop the messages
    it assigns to the car: half the fleet's, with one such car, measured).
    """
    return (MqttAcl("publishClientSend", MQTT_TOPIC_PREFIX + car_id),)
