"""Where the local stack listens; every service's settings default to these.

Derived from the stack's settings, so moving a stack port (``FLEETPULSE_STACK_KAFKA_PORT=...``)
moves every service's default with it.
"""

from __future__ import annotations

from fleetpulse.stack.settings import StackSettings

_stack = StackSettings()

HOST = _stack.host
KAFKA_BOOTSTRAP = f"{HOST}:{_stack.kafka_port}"
MQTT_BROKERS = f"{HOST}:{_stack.mqtt_port}"
MONGODB_URI = f"mongodb://{HOST}:{_stack.mongodb_port}/"
GCS_ENDPOINT = f"http://{HOST}:{_stack.gcs_port}"
MODEL_BUCKET = _stack.model_bucket
