"""A private secured stack for the security tests: free ports, a temp state dir, started by the stack's own code.

Never the shared stack: other engineers' tests use it, and turning security on there would restart it.
"""

from __future__ import annotations

import pytest

from devtools.stack import control
from devtools.stack.process import free_port
from devtools.stack.settings import StackSettings


@pytest.fixture(scope="session")
def secure_settings(tmp_path_factory) -> StackSettings:
    settings = StackSettings(
        state_dir=tmp_path_factory.mktemp("secure-stack"),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mqtt_port=free_port(),
        mqtt_tls_port=free_port(),
        mongodb_port=free_port(),
        gcs_port=free_port(),
        kafka_heap="512m",
        secure=True,
    )
    control.up(settings)
    yield settings
    control.down(settings)


@pytest.fixture(scope="session")
def secure_stack(secure_settings) -> dict:
    """`stack status --json` of the private secured stack."""
    return control.status(secure_settings)


@pytest.fixture(scope="session")
def credentials(secure_settings):
    """``credentials("bridge")``: what `stack credentials NAME --json` prints, for a service, admin or a car."""
    return lambda name: control.credentials(secure_settings, name)


@pytest.fixture(scope="session")
def stack_env(secure_settings) -> dict[str, str]:
    """Environment that points the `fleetpulse` CLI at the private stack."""
    s = secure_settings
    return {
        "FLEETPULSE_STACK_STATE_DIR": str(s.state_dir),
        "FLEETPULSE_STACK_KAFKA_PORT": str(s.kafka_port),
        "FLEETPULSE_STACK_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port),
        "FLEETPULSE_STACK_MQTT_PORT": str(s.mqtt_port),
        "FLEETPULSE_STACK_MQTT_TLS_PORT": str(s.mqtt_tls_port),
        "FLEETPULSE_STACK_MONGODB_PORT": str(s.mongodb_port),
        "FLEETPULSE_STACK_GCS_PORT": str(s.gcs_port),
    }
