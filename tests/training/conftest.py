"""Fixtures for training tests: a small synthetic fleet on unique Kafka topics, a unique model bucket."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from components.synthetic import Fleet, make_fleet, produce_fleet


@pytest.fixture(scope="session")
def training_stack() -> dict:
    """The local stack's Kafka and GCS, started if needed. Training needs neither MongoDB nor MQTT,
    so unlike the shared ``stack`` fixture this does not wait for them to answer a round trip."""
    from fleetpulse.stack import control
    from fleetpulse.stack.settings import StackSettings

    settings = StackSettings()
    state = control.status(settings)
    if not (state["kafka"]["running"] and state["gcs"]["running"]):
        control.up(settings, mqtt_brokers=max(1, control.mqtt_broker_count(settings)))
        state = control.status(settings)
    return state


@pytest.fixture(scope="session")
def kafka_bootstrap(training_stack) -> str:
    return training_stack["kafka"]["bootstrap_servers"]


@pytest.fixture(scope="session")
def gcs_endpoint(training_stack) -> str:
    return training_stack["gcs"]["endpoint"]


@dataclass
class FleetTopics:
    bootstrap: str
    topic: str
    truth_topic: str
    fleet: Fleet


def _fleet_topics(bootstrap: str, **kwargs) -> FleetTopics:
    suffix = uuid.uuid4().hex[:10]
    fleet = make_fleet(**kwargs)
    ft = FleetTopics(bootstrap, f"train-sensor-{suffix}", f"train-truth-{suffix}", fleet)
    produce_fleet(bootstrap, fleet, ft.topic, ft.truth_topic)
    return ft


@pytest.fixture(scope="session")
def fleet_topics(kafka_bootstrap) -> FleetTopics:
    """60 cars x 300 events (18,000 records over 3 partitions), half of the cars develop a failure."""
    return _fleet_topics(kafka_bootstrap, n_cars=60, n_events=300)


@pytest.fixture
def make_fleet_topics(kafka_bootstrap):
    return lambda **kwargs: _fleet_topics(kafka_bootstrap, **kwargs)


@pytest.fixture
def model_bucket(gcs_endpoint, unique) -> str:
    from fleetpulse.clients import gcs_client

    name = f"fp-train-{unique}"
    gcs_client(gcs_endpoint).create_bucket(name)
    return name
