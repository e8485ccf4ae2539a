"""Helpers for the deployment checks: where manifests, CRD schemas and Terraform live, kustomize
builds, and lookups in rendered objects.

Everything here is offline and fast: `kubectl kustomize` (or a kustomize built once from the Go module
proxy when kubectl is absent), JSON-schema validation, and plain parsing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO, SHARED

MANIFESTS = REPO / "manifests"
CRD_SCHEMAS = SHARED / "schemas" / "crds"
TERRAFORM = REPO / "terraform"

OVERLAYS = {"gke": MANIFESTS / "overlays" / "gke", "dev": MANIFESTS / "overlays" / "dev"}
NAMESPACES = {"gke": "fleetpulse", "dev": "fleetpulse-dev"}
# Every kustomization in the tree, overlays first; each must build on its own.
KUSTOMIZATIONS = sorted({p.parent for p in MANIFESTS.rglob("kustomization.yaml")})

KUSTOMIZE_VERSION = "v5.5.0"
KUSTOMIZE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleetpulse" / "bin"
GO = shutil.which("go") or "/usr/local/go/bin/go"


def kustomize_command() -> list[str]:
    """`kubectl kustomize` if kubectl exists, else a kustomize binary built once from the Go module proxy."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    binary = KUSTOMIZE_CACHE / "kustomize"
    if not binary.exists():
        if not Path(GO).exists():
            pytest.fail("neither kubectl nor Go is installed: install kubectl, or Go to build kustomize "
                        f"(go install sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION})")
        KUSTOMIZE_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([GO, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
                       env={**os.environ, "GOBIN": str(KUSTOMIZE_CACHE)}, check=True, timeout=900)
    return [str(binary), "build"]


def kustomize_build(path: Path) -> list[dict]:
    out = subprocess.run([*kustomize_command(), str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"kustomize build {path.relative_to(REPO)} failed:\n{out.stderr}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict) -> dict | None:
    """The pod spec inside a workload, or None for kinds without one."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return spec["template"]["spec"]
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return spec
    return None


def pod_template_labels(obj: dict) -> dict:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return spec["template"]["metadata"].get("labels", {})


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def is_core(obj: dict) -> bool:
    """Kinds built into Kubernetes (validated by kubernetes-validate), as opposed to custom resources."""
    group = obj["apiVersion"].rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")
