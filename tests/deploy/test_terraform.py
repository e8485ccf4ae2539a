"""Terraform is formatted and declares what the issue asks for: a GKE cluster on a release channel
with autoscaling pools and Workload Identity, a versioned uniform-access model bucket, and Google
service accounts bound to the model server's and the pipeline's Kubernetes service accounts.
(`terraform validate` needs provider downloads, which this machine cannot make; it is not run.)"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support.deploy import TERRAFORM


def tf(name: str) -> str:
    return (TERRAFORM / name).read_text()


def all_tf() -> str:
    return "\n".join(p.read_text() for p in sorted(TERRAFORM.glob("*.tf")))


def block(text: str, header: str) -> str:
    """The body of the first block whose header line matches `header` (a regex), braces balanced."""
    m = re.search(header + r"\s*\{", text)
    assert m, f"no block {header}"
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end():i - 1]


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed on this machine")
def test_terraform_fmt_is_clean():
    out = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cluster_is_on_a_release_channel_with_workload_identity():
    cluster = block(all_tf(), r'resource "google_container_cluster" "fleetpulse"')
    assert re.search(r"release_channel\s*\{\s*channel\s*=\s*var\.release_channel", cluster)
    assert 'workload_pool = "${var.project_id}.svc.id.goog"' in cluster
    assert "remove_default_node_pool = true" in cluster


@pytest.mark.parametrize("pool", ["general", "training"])
def test_node_pools_autoscale_and_use_the_gke_metadata_server(pool):
    body = block(all_tf(), rf'resource "google_container_node_pool" "{pool}"')
    assert re.search(r"autoscaling\s*\{[^}]*min_node_count[^}]*max_node_count", body)
    assert 'mode = "GKE_METADATA"' in body


def test_model_bucket_is_versioned_uniform_and_private():
    bucket = block(tf("bucket.tf"), r'resource "google_storage_bucket" "models"')
    assert "uniform_bucket_level_access = true" in bucket
    assert re.search(r"versioning\s*\{\s*enabled\s*=\s*true", bucket)
    assert 'public_access_prevention    = "enforced"' in bucket


def test_model_bucket_default_is_the_bucket_the_manifests_read():
    default = re.search(r'variable "model_bucket" \{.*?default\s*=\s*"([^"]+)"', tf("variables.tf"), re.S).group(1)
    assert default == "fleetpulse-models"


# The pipeline's narrower, conditioned bucket roles are checked in test_security_manifests.py.
@pytest.mark.parametrize("gsa,roles,ksa", [
    ("model_server", ["roles/storage.objectViewer"], "[${var.namespace}/model-server]"),
    ("pipeline", ["roles/storage.objectViewer", "roles/storage.objectCreator", "roles/storage.objectUser"],
     "[${var.pipeline_namespace}/${var.pipeline_service_account}]"),
    ("transformer", ["roles/storage.objectViewer"], "[${var.namespace}/transformer]"),
    ("decider", ["roles/storage.objectViewer", "roles/storage.objectUser"], "[${var.namespace}/model-decider]"),
    ("retrain", ["roles/storage.objectViewer"], "[${var.namespace}/retrain-trigger]"),
])
def test_each_google_service_account_gets_its_bucket_roles_and_one_kubernetes_identity(gsa, roles, ksa):
    iam = tf("iam.tf")
    bindings = [b for b in re.findall(r'resource "google_storage_bucket_iam_member" "\w+" \{(.*?)\n\}', iam, re.S)
                if f"google_service_account.{gsa}.email" in b]
    assert sorted(re.search(r'role\s*=\s*"([^"]+)"', b).group(1) for b in bindings) == sorted(roles)
    assert not any("objectAdmin" in b for b in bindings)
    wi = [b for b in re.findall(r'resource "google_service_account_iam_member" "\w+" \{(.*?)\n\}', iam, re.S)
          if f"google_service_account.{gsa}.name" in b]
    assert len(wi) == 1 and "roles/iam.workloadIdentityUser" in wi[0] and ksa in wi[0]


def test_every_variable_but_the_project_has_a_default_and_a_description():
    variables = re.findall(r'variable "(\w+)" \{(.*?)\n\}', tf("variables.tf"), re.S)
    assert variables
    for name, body in variables:
        assert re.search(r"^\s*description\s*=", body, re.M), name
        assert bool(re.search(r"^\s*default\s*=", body, re.M)) == (name != "project_id"), name


def test_outputs_tell_the_user_what_the_manifests_need():
    outputs = set(re.findall(r'output "(\w+)"', tf("outputs.tf")))
    assert {"get_credentials", "model_bucket_uri", "model_server_gsa_email", "pipeline_gsa_email"} <= outputs


def test_no_credentials_or_state_are_committed():
    names = {p.name for p in TERRAFORM.rglob("*")}
    assert not any(n.endswith(".tfstate") or n == "terraform.tfvars" or n.endswith(".json") for n in names)
