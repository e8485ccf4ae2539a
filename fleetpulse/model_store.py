"""Versioned SavedModels in a GCS bucket, in the layout TF Serving and KServe expect:

    gs://<bucket>/<model>/<version>/saved_model.pb, variables/..., metadata.json

A version number is claimed with a generation precondition on ``<model>/<version>/.claim``
(``if_generation_match=0``: create only if absent), so two runs never publish the same version.
Files are uploaded under the claimed prefix and ``metadata.json`` is written last: a version without
it is incomplete and invisible to readers. TensorFlow's own gs:// file system ignores
STORAGE_EMULATOR_HOST, so models move through google-cloud-storage and load from local disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fleetpulse.errors import BrokerUnavailable

CLAIM = ".claim"
METADATA = "metadata.json"


@dataclass(frozen=True)
class ModelVersion:
    bucket: str
    model: str
    version: int

    @property
    def prefix(self) -> str:
        return f"{self.model}/{self.version}/"

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"


def _versions(client, bucket: str, model: str, complete_only: bool) -> list[int]:
    from google.api_core.exceptions import GoogleAPIError
    from requests.exceptions import ConnectionError as RequestsConnectionError

    found: set[int] = set()
    try:
        for blob in client.list_blobs(bucket, prefix=f"{model}/"):
            parts = blob.name[len(model) + 1 :].split("/", 1)
            if len(parts) == 2 and parts[0].isdigit() and (not complete_only or parts[1] == METADATA):
                found.add(int(parts[0]))
    except (GoogleAPIError, RequestsConnectionError) as exc:
        raise BrokerUnavailable(f"GCS bucket {bucket!r} is unreachable: {exc}") from None
    return sorted(found)


def list_versions(client, bucket: str, model: str) -> list[int]:
    """Complete versions (with metadata.json), ascending."""
    return _versions(client, bucket, model, complete_only=True)


def latest_version(client, bucket: str, model: str) -> ModelVersion | None:
    versions = list_versions(client, bucket, model)
    return ModelVersion(bucket, model, versions[-1]) if versions else None


def claim_next_version(client, bucket: str, model: str, attempts: int = 20) -> ModelVersion:
    """Claim the next integer version atomically (a create-if-absent precondition on a claim object)."""
    from google.api_core.exceptions import PreconditionFailed

    existing = _versions(client, bucket, model, complete_only=False)
    candidate = (existing[-1] + 1) if existing else 1
    for _ in range(attempts):
        blob = client.bucket(bucket).blob(f"{model}/{candidate}/{CLAIM}")
        try:
            blob.upload_from_string(b"", if_generation_match=0)
            return ModelVersion(bucket, model, candidate)
        except PreconditionFailed:
            candidate += 1
    raise RuntimeError(f"could not claim a version of {model} in {attempts} attempts")


def publish(client, version: ModelVersion, saved_model_dir: Path, metadata: dict) -> str:
    """Upload a SavedModel directory under a claimed version; metadata.json last. Returns the gs:// URI."""
    bucket = client.bucket(version.bucket)
    saved_model_dir = Path(saved_model_dir)
    for path in sorted(p for p in saved_model_dir.rglob("*") if p.is_file()):
        if path.name == METADATA:
            continue
        bucket.blob(version.prefix + path.relative_to(saved_model_dir).as_posix()).upload_from_filename(str(path))
    meta = {**metadata, "version": version.version, "uri": version.uri}
    bucket.blob(version.prefix + METADATA).upload_from_string(json.dumps(meta, indent=2), content_type="application/json")
    return version.uri


def read_metadata(client, version: ModelVersion) -> dict:
    return json.loads(client.bucket(version.bucket).blob(version.prefix + METADATA).download_as_bytes())


def download(client, version: ModelVersion, dest: Path) -> Path:
    """Download a complete version to ``dest/<version>/`` and return that directory."""
    target = Path(dest) / str(version.version)
    for blob in client.list_blobs(version.bucket, prefix=version.prefix):
        rel = blob.name[len(version.prefix) :]
        if not rel or rel == CLAIM or rel.endswith("/"):
            continue
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(out))
    return target
