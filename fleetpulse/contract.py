"""The cardata-v1 event contract: schema ids, field order, topic-to-car-id mapping."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import fastavro

CARDATA_V1_ID = 1
"""Schema id of cardata-v1 in the Confluent wire framing."""

MQTT_TOPIC_PREFIX = "vehicles/sensor/data/"
"""Topic layout of the original load scenario: ``vehicles/sensor/data/<car-id>``."""

CAR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What a car id is (fullmatch): it keys Kafka records and twins and names the car's MQTT topic level."""

SENSOR_FIELDS: tuple[str, ...] = (
    "coolant_temp",
    "intake_air_temp",
    "intake_air_flow_speed",
    "battery_percentage",
    "battery_voltage",
    "current_draw",
    "speed",
    "engine_vibration_amplitude",
    "throttle_pos",
    "tire_pressure_1_1",
    "tire_pressure_1_2",
    "tire_pressure_2_1",
    "tire_pressure_2_2",
    "accelerometer_1_1_value",
    "accelerometer_1_2_value",
    "accelerometer_2_1_value",
    "accelerometer_2_2_value",
    "control_unit_firmware",
)
"""The 18 sensor fields in schema order; the column order of every feature matrix."""

INT_FIELDS = frozenset(
    {"tire_pressure_1_1", "tire_pressure_1_2", "tire_pressure_2_1", "tire_pressure_2_2", "control_unit_firmware"}
)
N_FEATURES = len(SENSOR_FIELDS)


@dataclass(frozen=True)
class SchemaVersion:
    schema_id: int
    name: str
    resource: str


# Add a compatible cardata-v2 here (new fields with defaults) and bump writers one at a time.
SCHEMAS: dict[int, SchemaVersion] = {
    CARDATA_V1_ID: SchemaVersion(CARDATA_V1_ID, "cardata-v1", "cardata-v1.avsc"),
}

ALERT_V1_ID = 101
ALERT_SCHEMA = SchemaVersion(ALERT_V1_ID, "alert-v1", "alert-v1.avsc")


def schema_json(version: SchemaVersion) -> dict:
    text = resources.files("fleetpulse.schemas").joinpath(version.resource).read_text()
    return json.loads(text)


@cache
def parsed_schema(schema_id: int):
    """The fastavro-parsed schema for a known schema id."""
    version = SCHEMAS.get(schema_id) or (ALERT_SCHEMA if schema_id == ALERT_V1_ID else None)
    if version is None:
        raise KeyError(schema_id)
    return fastavro.parse_schema(schema_json(version))


def topic_for_car(car_id: str) -> str:
    return MQTT_TOPIC_PREFIX + car_id
