"""Fixtures for the deployment checks: every kustomization rendered once per session."""

from __future__ import annotations

import pytest

from tests.support.deploy import KUSTOMIZATIONS, MANIFESTS, OVERLAYS, kustomize_build


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Every kustomization's output, keyed by its path relative to manifests/ ("overlays/gke", ...)."""
    return {str(path.relative_to(MANIFESTS)): kustomize_build(path) for path in KUSTOMIZATIONS}


@pytest.fixture(scope="session")
def overlays(rendered) -> dict[str, list[dict]]:
    return {name: rendered[str(path.relative_to(MANIFESTS))] for name, path in OVERLAYS.items()}
