"""Publish a calibrated SavedModel as the next integer version of a model in the GCS bucket, on its channel."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import fleetpulse
from fleetpulse import model_store
from fleetpulse.clients import gcs_client, require_tcp
from fleetpulse.errors import BrokerUnavailable


def code_version() -> str:
    """fleetpulse version plus the git commit this code runs from, when there is one."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{fleetpulse.__version__}+{sha}" if sha else fleetpulse.__version__


@contextlib.contextmanager
def gcs_bucket(bucket: str, gcs_endpoint: str | None):
    """A client for ``bucket``, checked to exist; GCS errors inside the block become one BrokerUnavailable line."""
    from google.api_core.exceptions import GoogleAPIError
    from requests.exceptions import ConnectionError as RequestsConnectionError

    if gcs_endpoint:
        # Fail in seconds, not after google-cloud-storage's two-minute retry deadline.
        url = urlsplit(gcs_endpoint)
        require_tcp("GCS", url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80))
    client = gcs_client(gcs_endpoint or None)
    where = f"GCS bucket {bucket!r}" + (f" at {gcs_endpoint}" if gcs_endpoint else "")
    try:
        if not client.bucket(bucket).exists():
            raise BrokerUnavailable(f"{where} does not exist")
        yield client
    except (GoogleAPIError, RequestsConnectionError) as exc:
        raise BrokerUnavailable(f"{where} is unreachable: {str(exc).splitlines()[0][:200]}") from None


def publish(saved_model_dir: Path, model_name: str, metadata: dict, bucket: str, gcs_endpoint: str | None,
            rejected: str | None = None) -> tuple[model_store.ModelVersion, str]:
    """Claim the next version (generation precondition), upload, write metadata.json last, then put it
    on a channel; returns the version and its channel.

    A failure mid-upload leaves a claimed prefix without metadata.json, which readers ignore. A version
    that passed its gate becomes the candidate (stable when the model has none); one that failed it
    (``rejected`` says why) is kept with its metrics, marked rejected.
    """
    with gcs_bucket(bucket, gcs_endpoint) as client:
        version = model_store.claim_next_version(client, bucket, model_name)
        model_store.publish(client, version, Path(saved_model_dir), metadata, rejected=rejected)
        channel = model_store.REJECTED if rejected is not None else model_store.release(client, version)
    return version, channel
