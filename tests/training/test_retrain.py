"""`fleetpulse models retrain`: a drift request on model-requests trains on the recent window and publishes
the candidate, once per drifted version; old requests are ignored (real Kafka and fake-gcs-server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from components.retrain import Request, declared_parameters, run_arguments, why_skip
from components.settings import RetrainSettings
from devtools.stack import access
from fleetpulse import model_store
from fleetpulse.clients import ensure_topics, gcs_client, kafka_config
from fleetpulse.model_store import CANDIDATE, STABLE
from fleetpulse.topics import MODEL_REQUESTS, TOPICS
from tests.support.watched import WatchedProcess

ROOT = Path(__file__).resolve().parents[2]
FP = str(Path(sys.executable).with_name("fleetpulse"))
MODEL = "car-anomaly"
HOUR_MS = 3_600_000


def drift_request(version: str, requested_at_ms: int) -> dict:
    """What the transformer's drift watch writes (inference/transformer/drift_watch.py)."""
    return {"reason": "drift", "model": MODEL, "model_version": version, "features": {"control_unit_firmware": 3.1},
            "threshold": 0.2, "window_rows": 6000, "requested_at_ms": requested_at_ms}  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


def test_a_request_is_acted_on_unless_it_is_old_handled_or_answered_by_a_newer_version():
    fresh, handled = Request(MODEL, 1, 1_000_000), set()
    assert why_skip(fresh, 1_000_000 + 60_000, 3600, handled, newest=1) is None
    assert "older than 3600 s" in why_skip(fresh, 1_000_000 + 3_601_000, 3600, handled, newest=1)
    assert "newer than the drifted version 1" in why_skip(fresh, 1_000_000, 3600, handled, newest=2)
    assert "retrained for already" in why_skip(fresh, 1_000_000, 3600, {(MODEL, 1)}, newest=1)
    assert "unknown model" in why_skip(replace(fresh, model="nope"), 1_000_000, 3600, handled, newest=None)


def test_a_request_about_a_version_this_bucket_does_not_have_or_published_after_it_is_about_another_model():
    fresh, handled = Request(MODEL, 2, 1_000_000), set()
    assert "not in this bucket" in why_skip(fresh, 1_000_000, 3600, handled, newest=1, published=None)
    assert "requested before version 2 was published" in why_skip(fresh, 1_000_000, 3600, handled, newest=2, published=1_000_001)
    assert why_skip(fresh, 1_000_000, 3600, handled, newest=2, published=999_000) is None


def test_a_drift_record_parses_and_garbage_is_a_decode_error():
    from fleetpulse.errors import DecodeError

    r = Request.parse(json.dumps(drift_request("3", 42)).encode())
    assert (r.model, r.model_version, r.requested_at_ms, r.features) == (MODEL, 3, 42, {"control_unit_firmware": 3.1})
    for raw in (b"not json", b"[1, 2]", json.dumps({"model": MODEL}).encode()):
        with pytest.raises(DecodeError):
            Request.parse(raw)


def test_kfp_run_arguments_carry_the_window_and_only_what_the_compiled_pipeline_declares():
    declared = declared_parameters((ROOT / "kubeflow" / "pipeline.yaml").read_text())
    settings = RetrainSettings(topic="sensor-data", epochs=5)
    base = {"kafka_bootstrap": "k:9093", "bucket": "b", "gcs_endpoint": "", "not_a_parameter": 1}
    args = run_arguments(settings, base, declared, "autoencoder", (1_000, None))
    assert args == {"kafka_bootstrap": "k:9093", "bucket": "b", "gcs_endpoint": "", "topic": "sensor-data",
                    "truth_topic": "ground-truth", "model_type": "autoencoder", "epochs": 5, "min_f1": settings.min_f1,
                    "from_ts": 1_000, "to_ts": -1}  # fmt: skip


def test_an_unusable_pipeline_package_or_arguments_fail_at_start_up_in_one_line(tmp_path):
    from components.retrain import submit_to_kfp
    from fleetpulse.errors import SettingsError

    package = str(ROOT / "kubeflow" / "pipeline.yaml")
    for settings in (RetrainSettings(pipeline_package=str(tmp_path / "missing.yaml")),
                     RetrainSettings(pipeline_package=package, pipeline_arguments="{not json"),
                     RetrainSettings(pipeline_package=package, pipeline_arguments="[1]")):  # fmt: skip
        with pytest.raises(SettingsError, match="PIPELINE_"):
            submit_to_kfp(settings, print)


@pytest.fixture
def stable_v1(model_bucket, gcs_endpoint, tmp_path) -> None:
    """A stable version 1 as the pipeline publishes it (its files are never opened here)."""
    client = gcs_client(gcs_endpoint)
    saved = tmp_path / "saved"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"v1: the drifted model")
    version = model_store.claim_next_version(client, model_bucket, MODEL)
    model_store.publish(client, version, saved, {"metrics": {"f1": 0.97, "false_alerts_per_1000_car_hours": 0.4}})
    assert model_store.release(client, version) == STABLE


@pytest.mark.slow
def test_drift_request_publishes_a_candidate_trained_on_the_recent_window_once(
        kafka, model_bucket, gcs_endpoint, stable_v1, unique):  # fmt: skip
    from confluent_kafka import Producer

    from components.synthetic import produce_fleet
    from tests.training.conftest import simulated_fleet

    topic, truth_topic = f"retrain-sensor-{unique}", f"retrain-truth-{unique}"
    fleet = simulated_fleet(n_cars=400, n_events=60, failures=0.05, seed=11)
    # Three hours before the fleet's last ten minutes the topic took another 24,000 readings, which
    # the window must leave out (Kafka's time index finds the first offset at a time: old ones go first).
    produce_fleet(kafka, replace(fleet, ts_ms=fleet.ts_ms - 3 * HOUR_MS, truth=[]), topic, truth_topic)
    produce_fleet(kafka, fleet, topic, truth_topic)
    requests_topic = f"model-requests-{unique}"
    ensure_topics(kafka, [replace(TOPICS[MODEL_REQUESTS], name=requests_topic)])
    producer = Producer(kafka_config(kafka))

    def request(record: dict) -> None:
        producer.produce(requests_topic, key=MODEL.encode(), value=json.dumps(record).encode())
        assert producer.flush(10) == 0

    env = {**os.environ, **access.connection_env("RETRAIN", kafka), "FLEETPULSE_RETRAIN_GCS_ENDPOINT": gcs_endpoint}

    def retrain() -> list[dict]:
        out = subprocess.run([FP, "models", "retrain", "--once", "--json", "--requests-topic", requests_topic,
                              "--group-id", f"fleetpulse-train-requests-{unique}", "--topic", topic,
                              "--truth-topic", truth_topic, "--window-minutes", "20", "--max-age", "600",
                              "--epochs", "4", "--min-f1", "0", "--bucket", model_bucket],
                             capture_output=True, text=True, timeout=540, env=env)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return [json.loads(line) for line in out.stdout.splitlines()]

    client = gcs_client(gcs_endpoint)
    drift = drift_request("1", now_ms())
    request(drift)
    [first] = retrain()
    assert (first["outcome"], first["model_version"], first["version"], first["channel"]) == ("retrained", 1, 2, CANDIDATE)
    assert first["records"] == 24_000  # the last 20 minutes, not the readings of three hours ago
    channels = model_store.read_channels(client, model_bucket, MODEL)[0]
    assert (channels.stable, channels.candidate) == (1, 2)

    # The same request again (the watch asks again after its cooldown), and one from two hours ago
    # about the new candidate: neither trains. The first request, handled, is not read again.
    request(drift)
    request(drift_request("2", now_ms() - 2 * HOUR_MS))
    again, old = retrain()
    assert (again["outcome"], again["model_version"]) == ("skipped", 1) and "version 2 is newer" in again["detail"]
    assert (old["outcome"], old["model_version"]) == ("skipped", 2) and "older than 600 s" in old["detail"]
    assert model_store.list_versions(client, model_bucket, MODEL) == [1, 2]
    channels = model_store.read_channels(client, model_bucket, MODEL)[0]
    assert (channels.stable, channels.candidate) == (1, 2)


def test_with_an_unreachable_kfp_the_request_stays_unhandled_and_is_asked_again(kafka, model_bucket, gcs_endpoint, stable_v1, unique):
    from confluent_kafka import Producer

    requests_topic = f"model-requests-{unique}"
    ensure_topics(kafka, [replace(TOPICS[MODEL_REQUESTS], name=requests_topic)])
    producer = Producer(kafka_config(kafka))
    producer.produce(requests_topic, key=MODEL.encode(), value=json.dumps(drift_request("1", now_ms())).encode())
    assert producer.flush(10) == 0
    env = {**os.environ, **access.connection_env("RETRAIN", kafka), "FLEETPULSE_RETRAIN_GCS_ENDPOINT": gcs_endpoint,
           "FLEETPULSE_RETRAIN_PIPELINE_PACKAGE": str(ROOT / "kubeflow" / "pipeline.yaml")}  # fmt: skip
    command = [FP, "models", "retrain", "--once", "--requests-topic", requests_topic, "--group-id",
               f"fleetpulse-train-requests-{unique}", "--kfp-host", "http://127.0.0.1:9", "--bucket", model_bucket]  # fmt: skip
    for _ in range(2):  # the second run is asked again: nothing was committed
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 1, out.stderr[-2000:]
        assert "KFP at http://127.0.0.1:9 did not take the run" in out.stderr and "Traceback" not in out.stderr
    assert model_store.list_versions(gcs_client(gcs_endpoint), model_bucket, MODEL) == [1]


def test_the_loop_says_each_outcome_serves_its_probes_retries_an_unreachable_kfp_and_ends_on_sigterm(
        kafka, model_bucket, gcs_endpoint, stable_v1, unique):  # fmt: skip
    from confluent_kafka import Producer

    from devtools.stack.process import free_port

    requests_topic = f"model-requests-{unique}"
    ensure_topics(kafka, [replace(TOPICS[MODEL_REQUESTS], name=requests_topic)])
    producer = Producer(kafka_config(kafka))

    def request(record: dict) -> None:
        producer.produce(requests_topic, key=MODEL.encode(), value=json.dumps(record).encode())
        assert producer.flush(10) == 0

    port = free_port()
    env = {**os.environ, **access.connection_env("RETRAIN", kafka), "FLEETPULSE_RETRAIN_GCS_ENDPOINT": gcs_endpoint,
           "FLEETPULSE_RETRAIN_PIPELINE_PACKAGE": str(ROOT / "kubeflow" / "pipeline.yaml"),
           "FLEETPULSE_RETRAIN_METRICS_PORT": str(port)}  # fmt: skip
    proc = WatchedProcess([FP, "models", "retrain", "--interval", "0.5", "--requests-topic", requests_topic, "--group-id",
                           f"fleetpulse-train-requests-{unique}", "--kfp-host", "http://127.0.0.1:9", "--bucket", model_bucket],
                          env, port)  # fmt: skip
    try:
        proc.next_line("err", "retraining on requests from")
        request(drift_request("1", now_ms() - 2 * HOUR_MS))
        assert proc.next_line("out", "skipped").startswith("skipped drift on car-anomaly version 1 (control_unit_firmware PSI 3.10)")
        assert proc.get("/readyz")[0] == 200 and proc.get("/healthz")[0] == 200
        assert 'fleetpulse_retrain_requests_total{outcome="skipped"} 1.0' in proc.get("/metrics")[1]
        request(drift_request("1", now_ms()))
        # Not submitted: not ready, still alive, and asked again every interval until KFP takes it.
        for _ in range(2):
            line = proc.next_line("err", "trying again in 0.5 s")
            assert line.strip().startswith("KFP at http://127.0.0.1:9 did not take the run:")
        assert proc.get("/readyz")[0] == 503 and proc.get("/healthz")[0] == 200
        assert proc.terminate() == 0
    finally:
        proc.kill()
