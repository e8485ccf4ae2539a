"""The nightly CronJob can submit the compiled pipeline: its arguments are ones the pipeline declares,
its image is the one the pipeline's steps run, and the submitter filters what it is given."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from tests.support.deploy import MANIFESTS, one, pod_spec
from tests.support.paths import REPO

PIPELINE = REPO / "kubeflow" / "pipeline.yaml"


def submitter():
    spec = importlib.util.spec_from_file_location("submit_pipeline", MANIFESTS / "base" / "pipeline" / "submit_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_PIPELINE = """
pipelineInfo:
  name: tiny
root:
  inputDefinitions:
    parameters:
      bucket: {parameterType: STRING}
      epochs: {parameterType: NUMBER_INTEGER}
schemaVersion: 2.1.0
"""


def test_submitter_reads_the_pipelines_declared_parameters():
    assert submitter().declared_parameters(TINY_PIPELINE) == {"bucket", "epochs"}


def test_submitter_passes_declared_arguments_and_names_the_rest():
    kept, dropped = submitter().run_arguments({"bucket": "b", "epochs": 3, "nope": 1}, {"bucket", "epochs"})
    assert kept == {"bucket": "b", "epochs": 3} and dropped == ["nope"]


def compiled() -> str:
    if not PIPELINE.exists():
        pytest.skip("kubeflow/pipeline.yaml is not compiled yet (training pipeline work)")
    return PIPELINE.read_text()


def test_every_scheduled_argument_is_a_parameter_of_the_compiled_pipeline(overlays):
    declared = submitter().declared_parameters(compiled())
    for name, objects in overlays.items():
        [cm] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fleetpulse-endpoints")]
        requested = json.loads(cm["data"]["pipeline-arguments"])
        assert set(requested) <= declared, f"{name}: pipeline does not declare {sorted(set(requested) - declared)}"


def test_the_cronjob_runs_the_image_the_pipeline_steps_run(overlays):
    docs = [d for d in yaml.safe_load_all(compiled()) if d]
    executors = docs[0]["deploymentSpec"]["executors"].values()
    step_images = {e["container"]["image"] for e in executors if "container" in e}
    cron = one(overlays["gke"], "CronJob", "train-car-anomaly")
    [c] = pod_spec(cron)["containers"]
    assert step_images == {c["image"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PIPELINE_PACKAGE"] == "/opt/fleetpulse/kubeflow/pipeline.yaml"
    assert "COPY kubeflow/pipeline.yaml /opt/fleetpulse/kubeflow/pipeline.yaml" in (REPO / "components" / "Dockerfile").read_text()


def test_the_cronjob_mounts_the_submitter_script_it_runs(overlays):
    cron = one(overlays["gke"], "CronJob", "train-car-anomaly")
    spec = pod_spec(cron)
    [c] = spec["containers"]
    script = c["command"][-1]
    mount = next(m for m in c["volumeMounts"] if script.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    cm = next(o for o in overlays["gke"] if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"])
    assert script.rsplit("/", 1)[1] in cm["data"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_dev_does_not_train_on_a_schedule(overlays):
    assert one(overlays["dev"], "CronJob", "train-car-anomaly")["spec"]["suspend"] is True
