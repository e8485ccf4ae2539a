"""Shadow scoring: while the server serves a candidate, the transformer scores the shadowed cars' events
with it too and publishes both verdicts to model-shadow; alerts and twins stay the stable model's."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from fleetpulse.alerts import decode_alert
from fleetpulse.clients import kafka_config
from fleetpulse.model_store import candidate_model_name
from fleetpulse.settings import KafkaConnection
from fleetpulse.shadow import decode_shadow, in_shadow
from tests.serving.harness import ModelServer, Run, build_saved_model, cars, failing_rows, healthy_rows, release_model, release_saved

pytestmark = pytest.mark.slow

EAGER = 0.2
"""The candidate's threshold: it flags healthy readings (~0.25) that stable (3.0) lets pass."""


@pytest.fixture(scope="module")
def stable_and_candidate(gcs_endpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadow")
    model = f"shadow-{uuid.uuid4().hex[:8]}"
    assert release_model(gcs_endpoint, model, tmp) == (1, "stable")
    eager = build_saved_model(tmp / "eager", threshold=EAGER)
    assert release_saved(gcs_endpoint, model, eager, {"model_type": "autoencoder", "threshold": EAGER, "features": 18}) == (2, "candidate")
    server = ModelServer(model, gcs_endpoint, tmp / "serve.log").wait_ready()
    server.wait_serving(candidate_model_name(model), 2)
    yield server
    server.stop()


def create_topic(kafka: KafkaConnection, name: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_config(kafka))
    for f in admin.create_topics([NewTopic(name, 3, 1)]).values():
        f.result()
    return name


def stream(run: Run, fleet: list[str], rng) -> None:
    for step in range(12):
        rows = healthy_rows(len(fleet), rng)
        if step >= 6:
            rows[: len(fleet) // 10] = failing_rows(len(fleet) // 10, rng)  # a tenth of the fleet fails half-way
        run.produce(rows, fleet)
    run.producer.flush(30)


def test_the_candidate_scores_the_shadowed_cars_beside_stable_and_never_alerts_or_touches_twins(
        stable_and_candidate, kafka, unique):
    run = Run(unique, kafka, stable_and_candidate)
    shadow_topic = create_topic(kafka, f"shadow-{unique}")
    run.env.update({"FLEETPULSE_SCORE_SHADOW_TOPIC": shadow_topic, "FLEETPULSE_SCORE_SHADOW_SHARE": "0.5"})
    fleet = cars(400)
    stream(run, fleet, np.random.default_rng(3))
    summary = run.score(until_idle=4.0)
    assert summary["scored"] == 400 * 12

    batches = [decode_shadow(m.value()) for m in run.read(shadow_topic, expect_at_least=1)]
    assert {(b.stable_version, b.candidate_version) for b in batches} == {("1", "2")}
    shadowed = {c for b in batches for c in b.car_ids}
    assert shadowed == {c for c, member in zip(fleet, in_shadow(fleet, 0.5)) if member}
    assert sum(len(b) for b in batches) == 12 * len(shadowed)  # every event of a shadowed car, once
    stable_flags = sum(sum(b.stable_flag) for b in batches)
    candidate_flags = sum(sum(b.candidate_flag) for b in batches)
    assert candidate_flags > 2 * stable_flags > 0  # the eager candidate's own verdicts, not stable's copied

    alerts = [decode_alert(m.value()) for m in run.read(run.alerts, expect_at_least=1)]
    assert alerts and {a["model_version"] for a in alerts} == {"1"}
    alerted = {a["car_id"] for a in alerts}
    assert alerted <= set(fleet[:40])  # only the failing tenth: the candidate's would-be alerts are not alerts
    twins = run.twins()
    assert len(twins) == 400
    assert {c for c, t in twins.items() if t["status"] != "ok"} <= set(fleet[:40])


def test_without_a_candidate_nothing_is_shadowed(model_server, kafka, unique):
    run = Run(unique, kafka, model_server)
    shadow_topic = create_topic(kafka, f"shadow-{unique}")
    run.env.update({"FLEETPULSE_SCORE_SHADOW_TOPIC": shadow_topic})
    fleet = cars(50)
    stream(run, fleet, np.random.default_rng(4))
    assert run.score(until_idle=3.0)["scored"] == 50 * 12
    assert run.read(shadow_topic, timeout=4.0) == []
