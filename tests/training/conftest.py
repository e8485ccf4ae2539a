"""Fixtures for training tests: a small fleet on unique Kafka topics, a unique model bucket.

The fleet that quality is asserted on comes from the simulator's own car model (stepped here without
MQTT: the same values, failures and ground truth `fleetpulse simulate` publishes). The smaller
synthetic fleet (components/synthetic.py) serves the plumbing tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from components.synthetic import Fleet, make_fleet, produce_fleet
from devtools.stack import access
from fleetpulse.settings import KafkaConnection
from tests.support.stack import stack_with


# Training needs neither MongoDB nor MQTT: these override the shared fixtures so that training tests
# do not wait for those servers' round trips.
@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return stack_with("kafka", "gcs")["kafka"]["bootstrap_servers"]


@pytest.fixture(scope="session")
def kafka(kafka_bootstrap) -> KafkaConnection:
    """The operator's (``admin``) connection: the tests' topics are their own, on which no service
    principal has rights."""
    return access.kafka()


@pytest.fixture(scope="session")
def gcs_endpoint() -> str:
    return stack_with("kafka", "gcs")["gcs"]["endpoint"]


@pytest.fixture(autouse=True)
def training_login(kafka, monkeypatch) -> None:
    """The training steps get a bare bootstrap (what a KFP step is given) and take the login from
    FLEETPULSE_TRAIN_KAFKA_*, as in their pod; here the operator's, for the tests' own topics."""
    for name, value in access.connection_env("TRAIN", kafka).items():
        monkeypatch.setenv(name, value)


@dataclass
class FleetTopics:
    kafka: KafkaConnection
    topic: str
    truth_topic: str
    fleet: Fleet


def simulated_fleet(n_cars: int, n_events: int, failures: float, seed: int, interval_s: float = 10.0) -> Fleet:
    """The simulator's car model, stepped in memory; Kafka timestamps and truth on one clock, as it publishes."""
    import time

    from devtools.memory_fleet import stepped_fleet

    t0 = int(time.time() * 1000) - n_events * int(interval_s * 1000)
    f = stepped_fleet(n_cars, n_events, failures, seed, interval_s=interval_s, t0_ms=t0)
    return Fleet(f.values, f.ids * n_events, f.ts_ms, f.truth, interval_s)


def _fleet_topics(kafka: KafkaConnection, simulated: bool = False, **kwargs) -> FleetTopics:
    suffix = uuid.uuid4().hex[:10]
    fleet = simulated_fleet(**kwargs) if simulated else make_fleet(**kwargs)
    ft = FleetTopics(kafka, f"train-sensor-{suffix}", f"train-truth-{suffix}", fleet)
    produce_fleet(kafka, fleet, ft.topic, ft.truth_topic)
    return ft


@pytest.fixture(scope="session")
def fleet_topics(kafka) -> FleetTopics:
    """The simulator's cars: 400 x 60 events (24,000 records over 3 partitions); 5% develop a failure, its default."""
    return _fleet_topics(kafka, simulated=True, n_cars=400, n_events=60, failures=0.05, seed=11)


@pytest.fixture
def make_fleet_topics(kafka):
    return lambda **kwargs: _fleet_topics(kafka, **kwargs)


@pytest.fixture
def model_bucket(gcs_endpoint, unique) -> str:
    from fleetpulse.clients import gcs_client

    name = f"fp-train-{unique}"
    gcs_client(gcs_endpoint).create_bucket(name)
    return name
