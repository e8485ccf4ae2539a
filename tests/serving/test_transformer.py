"""`fleetpulse score` against real Kafka, the real model server and MongoDB (FerretDB)."""

from __future__ import annotations

import numpy as np
import pytest

from fleetpulse.alerts import decode_alert
from fleetpulse.topics import DLQ_KIND_HEADER, DLQ_REASON_HEADER
from tests.serving.harness import N_CARS, ModelServer, Run, cars, failing_rows, healthy_rows, produce_one_failing_car, stream_and_kill


def test_failing_car_goes_ok_warning_failing_with_an_alert_per_change_and_healthy_cars_stay_ok(
        model_server, kafka, unique):
    run = Run(unique, kafka, model_server)
    ids = produce_one_failing_car(run, np.random.default_rng(7))  # car-000 fails from its 11th reading on
    run.producer.produce(run.topic, key=b"car-garbage", value=b"\x00\x00\x00\x00\x01\xff")
    run.producer.flush()

    summary = run.score()
    assert summary["consumed"] == 30 * N_CARS + 1 and summary["scored"] == 30 * N_CARS and summary["dlq"] == 1

    alerts = [decode_alert(m.value()) for m in run.read(run.alerts, expect_at_least=2)]
    assert [(a["car_id"], a["previous_status"], a["status"]) for a in alerts] == [
        ("car-000", "ok", "warning"), ("car-000", "warning", "failing")]
    assert alerts[0]["source_offset"] < alerts[1]["source_offset"] and alerts[0]["score"] > alerts[0]["threshold"]
    assert all(a["event_ts_ms"] <= a["alert_ts_ms"] for a in alerts)

    twins = run.twins()
    assert set(twins) == set(ids)
    assert twins["car-000"]["status"] == "failing" and twins["car-000"]["counters"]["alerts"] == 2
    assert all(twins[c]["status"] == "ok" and twins[c]["counters"] == {"events": 30, "over_threshold": 0, "alerts": 0}
               for c in ids[1:])
    assert twins["car-000"]["model_version"] == "1" and twins["car-000"]["threshold"] == pytest.approx(3.0)

    dlq = run.read(run.dlq, expect_at_least=1)
    assert len(dlq) == 1 and dict(dlq[0].headers())[DLQ_REASON_HEADER]


def test_replaying_the_same_offsets_leaves_the_same_twins_and_no_new_alerts(model_server, kafka, unique):
    run = Run(unique, kafka, model_server)
    rng = np.random.default_rng(8)
    for step in range(20):
        rows = healthy_rows(N_CARS, rng)
        if step >= 5:
            rows[3] = failing_rows(1, rng)[0]
        run.produce(rows, cars())
    run.producer.flush()
    run.score()
    before = run.twins()
    alerts_before = len(run.read(run.alerts, expect_at_least=2))
    # A new group starts at the beginning: every event is a replay of one already in the twin.
    summary = run.score(group=f"replay-{unique}")
    assert summary["skipped_replayed"] == 20 * N_CARS and summary["scored"] == 0
    assert run.twins() == before
    assert len(run.read(run.alerts, expect_at_least=alerts_before)) == alerts_before == 2


@pytest.mark.slow
def test_model_server_killed_mid_stream_loses_nothing(serving_model, gcs_endpoint, kafka, unique, tmp_path):
    server = ModelServer(serving_model, gcs_endpoint, tmp_path / "serve.log").wait_ready()
    try:
        run = Run(unique, kafka, server)
        summary = stream_and_kill(run, server.kill, lambda: server.start().wait_ready(), tmp_path=tmp_path)
        assert summary["retries"].get("model-server", 0) > 0
    finally:
        server.stop()


@pytest.mark.slow
def test_kafka_killed_mid_stream_loses_nothing(model_server, private_service, unique, tmp_path):
    broker = private_service("kafka")
    run = Run(unique, broker.connection, model_server)
    # Idle only counts once Kafka answers again; give the test's own producer time to resend its backlog.
    stream_and_kill(run, broker.kill, broker.start, seconds=15.0, tmp_path=tmp_path, until_idle=10.0)


@pytest.mark.slow
def test_mongodb_killed_mid_stream_loses_nothing(model_server, kafka, private_service, unique, tmp_path):
    mongo = private_service("mongodb")
    run = Run(unique, kafka, model_server, mongodb=mongo.settings)
    # Every car's twin at every checkpoint, so writes meet the outage (deferred twins: test_twin_writes.py).
    run.env["FLEETPULSE_SCORE_TWIN_INTERVAL_S"] = "0.5"
    summary = stream_and_kill(run, mongo.kill, mongo.start, tmp_path=tmp_path)
    assert summary["retries"].get("mongodb", 0) > 0


def test_nan_infinite_and_impossible_readings_go_to_the_dlq_and_never_clear_a_failing_car(model_server, kafka, unique):
    run = Run(unique, kafka, model_server)
    rng = np.random.default_rng(12)
    produce_one_failing_car(run, rng, steps=20, fails_from=5)  # car-000 is failing by its 11th reading
    bad = healthy_rows(3, rng)
    bad[0, 2], bad[1, 5], bad[2, 3] = np.nan, np.inf, 7.0  # battery_percentage 7 is impossible (a fraction)
    for _ in range(4):  # more than the m = 5 clean readings would clear it, had they counted as clean
        run.produce(bad, ["car-000"] * 3)
    run.producer.flush()

    summary = run.score()
    assert summary["dlq"] == 12 and summary["scored"] == 20 * N_CARS
    twins = run.twins()
    assert twins["car-000"]["status"] == "failing" and twins["car-000"]["counters"]["events"] == 20
    assert all(np.isfinite(list(t["last_readings"].values())).all() for t in twins.values())
    kinds = sorted(dict(m.headers())[DLQ_KIND_HEADER].decode() for m in run.read(run.dlq, expect_at_least=12))
    assert kinds == ["non_finite"] * 8 + ["out_of_range"] * 4


@pytest.mark.slow
def test_sigterm_while_the_model_server_is_down_ends_the_transformer_within_its_stop_timeout(
        serving_model, gcs_endpoint, kafka, unique, tmp_path):
    import signal
    import time

    server = ModelServer(serving_model, gcs_endpoint, tmp_path / "serve.log").wait_ready()
    run = Run(unique, kafka, server)
    run.env["FLEETPULSE_SCORE_STOP_TIMEOUT_S"] = "5"
    with open(tmp_path / "score.log", "w") as log:
        proc = run.start_score(until_idle=600, log=log)
        try:
            rng = np.random.default_rng(5)
            for _ in range(20):
                run.produce(healthy_rows(N_CARS, rng), cars())
            run.producer.flush()
            time.sleep(8)
            server.kill()
            run.produce(healthy_rows(N_CARS, rng), cars())  # to score while nobody answers
            run.producer.flush()
            time.sleep(3)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            assert proc.returncode == 0, (tmp_path / "score.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 5 + 5
        finally:
            if proc.poll() is None:
                proc.kill()
            server.stop()
    # What it had not committed is replayed: a second run, with the server back, counts every event once.
    server = ModelServer(serving_model, gcs_endpoint, tmp_path / "serve2.log").wait_ready()
    try:
        run.env["FLEETPULSE_SCORE_MODEL_GRPC"] = server.grpc_target
        run.score(until_idle=4)
    finally:
        server.stop()
    assert all(t["counters"]["events"] == run.sent[c] for c, t in run.twins().items()) and len(run.twins()) == N_CARS
