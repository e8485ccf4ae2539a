"""train -> evaluate -> publish against the local stack, the compiled pipeline, and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components import models, steps
from components.publish import publish
from fleetpulse import model_store
from fleetpulse.clients import gcs_client
from fleetpulse.contract import N_FEATURES
from fleetpulse.errors import BrokerUnavailable

ROOT = Path(__file__).resolve().parents[2]
FP = str(Path(sys.executable).with_name("fleetpulse"))


@pytest.mark.slow
def test_trained_model_publishes_and_plain_tf_load_flags_failing_car_not_healthy(fleet_topics, model_bucket, gcs_endpoint, tmp_path):
    import tensorflow as tf

    from components.pipeline_local import run
    from components.settings import TrainSettings

    settings = TrainSettings(kafka_bootstrap_servers=fleet_topics.kafka.bootstrap_servers, gcs_endpoint=gcs_endpoint, bucket=model_bucket)
    params = steps.TrainParams(fleet_topics.kafka.bootstrap_servers, fleet_topics.topic, models.AUTOENCODER, epochs=8)
    result = run(settings, params, truth_topic=fleet_topics.truth_topic)

    assert result["model_uri"] == f"gs://{model_bucket}/car-anomaly/1/" and result["version"] == 1
    assert result["channel"] == model_store.STABLE  # the model's first version: nothing else could serve
    assert result["records"] == 24_000
    # 400 simulated cars, 60 events each: the held-out report half has ~70 cars, ~4 of them failing.
    # The goal figures (F1 >= 0.95) are measured at demo scale; this checks the pipeline learns.
    assert result["metrics"]["f1"] >= 0.85 and result["metrics"]["hysteresis"]["f1"] >= 0.85

    client = gcs_client(gcs_endpoint)
    version = model_store.latest_version(client, model_bucket, "car-anomaly")
    meta = model_store.read_metadata(client, version)
    for key in ("model", "model_type", "threshold", "features", "metrics", "kafka", "schema_id", "code_version", "trained_at", "records"):
        assert key in meta
    assert meta["kafka"]["topic"] == fleet_topics.topic and meta["schema_id"] == 1
    # The drift reference of the training rows: every contract field, firmware binned per value.
    drift_ref = {f["name"]: f for f in meta["drift_reference"]["features"]}
    assert list(drift_ref) == meta["features"] and drift_ref["control_unit_firmware"]["kind"] == "categorical"
    assert all(abs(sum(f["p"]) - 1) < 1e-9 for f in drift_ref.values())
    # Only what the model reads as it is may ask for a retrain: not how the fleet is driven.
    triggers = set(meta["drift_reference"]["triggers"])
    assert "control_unit_firmware" in triggers and "tire_pressure_1_1" in triggers
    assert not triggers & {"battery_percentage", "speed", "battery_voltage", "coolant_temp"}

    loaded = tf.saved_model.load(str(model_store.download(client, version, tmp_path)))
    serve = loaded.signatures["serving_default"]
    assert float(loaded.threshold.numpy()) == pytest.approx(meta["threshold"])
    fleet = fleet_topics.fleet
    failing = {r.car_id: r for r in fleet.truth if r.mode != "healthy"}
    failing_car, record = next((c, r) for c, r in failing.items() if r.mode == "overheating")
    healthy_car = next(c for c in fleet.car_ids if c not in failing)
    rows = lambda car, after: fleet.values[[i for i, (c, t) in enumerate(zip(fleet.car_ids, fleet.ts_ms)) if c == car and t >= after]]
    sick = serve(input=tf.constant(rows(failing_car, record.onset_ts + 30_000)))
    well = serve(input=tf.constant(rows(healthy_car, 0)))
    assert sick["score"].shape[0] > 0 and sick["score"].dtype == tf.float32
    assert sick["anomaly"].numpy().all() and (sick["score"].numpy() > meta["threshold"]).all()
    assert not well["anomaly"].numpy().any() and (well["score"].numpy() < meta["threshold"]).all()


def test_quality_gate_keeps_a_model_below_min_f1_as_rejected_and_fails_the_run(make_fleet_topics, model_bucket, gcs_endpoint, tmp_path):
    from components.pipeline_local import run
    from components.settings import TrainSettings

    ft = make_fleet_topics(n_cars=200, n_events=60)  # half of the cars fail: enough failures held out to judge F1
    settings = TrainSettings(kafka_bootstrap_servers=ft.kafka.bootstrap_servers, gcs_endpoint=gcs_endpoint, bucket=model_bucket)
    params = steps.TrainParams(ft.kafka.bootstrap_servers, ft.topic, models.AUTOENCODER, epochs=1)
    with pytest.raises(steps.QualityGateFailed, match=r"alert F1 \S+ on \d+ failures is below the floor --min-f1 1; kept as rejected version 1 of car-anomaly"):
        run(settings, params, ft.truth_topic, min_f1=1.0 + 1e-9, work_dir=tmp_path)
    assert (tmp_path / "evaluate" / "metrics.json").exists()

    client = gcs_client(gcs_endpoint)
    [entry] = model_store.catalog(client, model_bucket, "car-anomaly")
    gate = entry.metadata["metrics"]["gate"]
    assert entry.channel == model_store.REJECTED and entry.reason == gate["reason"]
    assert gate["judged"] == "alert_f1" and gate["failures"] >= gate["min_failures"] and gate["passed"] is False
    assert gate["value"] == entry.metadata["metrics"]["hysteresis"]["f1"] < 1.0 + 1e-9 == gate["min"]
    assert model_store.latest_version(client, model_bucket, "car-anomaly") is None


def test_a_floor_is_not_judged_on_too_few_failures_the_gate_judges_false_alerts_and_says_so(make_fleet_topics, model_bucket,
                                                                                            gcs_endpoint, tmp_path):
    from components.pipeline_local import run
    from components.settings import TrainSettings

    ft = make_fleet_topics(n_cars=20, n_events=60)  # a handful of failing cars, fewer held out than the gate needs
    settings = TrainSettings(kafka_bootstrap_servers=ft.kafka.bootstrap_servers, gcs_endpoint=gcs_endpoint, bucket=model_bucket)
    params = steps.TrainParams(ft.kafka.bootstrap_servers, ft.topic, models.AUTOENCODER, epochs=1)
    result = run(settings, params, ft.truth_topic, min_f1=1.0 + 1e-9, work_dir=tmp_path)

    gate = result["metrics"]["gate"]
    assert gate["judged"] == "false_alerts" and gate["failures"] < gate["min_failures"] and gate["passed"] is True
    assert gate["false_alerts"] < gate["false_alert_limit"]
    assert gate["reason"].startswith(f"alert F1 not judged on {gate['failures']} failures (fewer than 10)")
    assert result["channel"] == model_store.STABLE  # the model's first version, and nothing showed it is worse


def test_unreachable_gcs_fails_clearly_and_publishes_nothing(tmp_path, unique):
    saved = models.export(models.build_autoencoder(np.zeros(N_FEATURES, np.float32), np.ones(N_FEATURES, np.float32)),
                          tmp_path / "m", models.AUTOENCODER, 0, np.ones(N_FEATURES, np.float32), threshold=1.0)
    with pytest.raises(BrokerUnavailable, match="GCS at 127.0.0.1:9 is unreachable"):
        publish(saved, f"car-anomaly-{unique}", {}, "fleetpulse-models", "http://127.0.0.1:9")


def test_committed_pipeline_yaml_is_what_pipeline_py_compiles_to(tmp_path):
    from components.kfp_local import load_pipeline_module

    module = load_pipeline_module()
    fresh = module.compile_to(tmp_path / "pipeline.yaml").read_text()
    committed = (ROOT / "kubeflow" / "pipeline.yaml").read_text()
    assert fresh == committed, "kubeflow/pipeline.yaml is stale: run .venv/bin/python kubeflow/pipeline.py and commit it"
    assert "ghcr.io/fleetpulse/training:0.1.0" in committed and "pip install" not in committed


def _compiled_tasks() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "kubeflow" / "pipeline.yaml").read_text())["root"]["dag"]["tasks"]


KAFKA_STEPS, GCS_STEPS, PURE_STEPS = {"train", "evaluate"}, {"publish"}, {"gate"}


def test_compiled_pipeline_caches_no_step_that_reads_kafka_or_writes_gcs():
    tasks = _compiled_tasks()
    assert set(tasks) == KAFKA_STEPS | GCS_STEPS | PURE_STEPS, "a new step: say whether it reads Kafka or writes GCS"
    for name in KAFKA_STEPS | GCS_STEPS:
        assert tasks[name].get("cachingOptions", {}).get("enableCache", False) is False, name


def test_compiled_pipeline_retries_kafka_and_gcs_steps_with_backoff_but_not_the_gate():
    tasks = _compiled_tasks()
    for name in KAFKA_STEPS | GCS_STEPS:
        policy = tasks[name]["retryPolicy"]
        assert policy["maxRetryCount"] >= 2 and policy["backoffFactor"] > 1, name
        assert int(policy["backoffDuration"].rstrip("s")) >= 10, name
    assert "retryPolicy" not in tasks["gate"]


def test_kubeflow_folder_is_not_a_python_package():
    assert not list((ROOT / "kubeflow").rglob("__init__.py"))


def test_cli_rejects_reversed_window_naming_the_flag():
    out = subprocess.run([FP, "train", "--from-ts", "10", "--to-ts", "5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--to-ts" in out.stderr


def test_cli_unreachable_kafka_is_one_line_and_exit_1():
    out = subprocess.run([FP, "train", "--kafka-bootstrap-servers", "127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: Kafka at 127.0.0.1:9 is unreachable")
