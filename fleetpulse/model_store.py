"""Versioned SavedModels in a GCS bucket, in the layout TF Serving and KServe expect:

    gs://<bucket>/<model>/<version>/saved_model.pb, variables/..., metadata.json

A version number is claimed with a generation precondition on ``<model>/<version>/.claim``
(``if_generation_match=0``: create only if absent), so two runs never publish the same version.
Files are uploaded under the claimed prefix and ``metadata.json`` is written last: a version without
it is incomplete and invisible to readers. TensorFlow's own gs:// file system ignores
STORAGE_EMULATOR_HOST, so models move through google-cloud-storage and load from local disk.

Versions never change once complete. What serves is said by one small object per model,
``<model>/channels.json``: the ``stable`` version, the ``candidate`` on trial, the earlier stables a
rollback returns to, and the rejected versions with why. Every change reads it with its generation
and writes it back with ``if_generation_match`` (0 when absent: create only), so of two writers that
read the same state exactly one wins and the other changes nothing (ChannelConflict). One object
rather than one per pointer, so a promotion (stable moves, the candidate slot empties, the old stable
joins the history) is one atomic write and no reader sees half of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from fleetpulse.errors import BrokerUnavailable, FleetPulseError
from fleetpulse.retry import Backoff, retry

CLAIM = ".claim"
METADATA = "metadata.json"
CHANNELS = "channels.json"
STABLE, CANDIDATE, REJECTED, RETIRED = "stable", "candidate", "rejected", "retired"
ROLLED_BACK = "rolled back"
# The model server serves a model's stable version under the model's own V2 name and its candidate
# under this name; the transformer's shadow scoring asks for the same.
CANDIDATE_SUFFIX = "-candidate"


def candidate_model_name(model: str) -> str:
    """The V2 model name of ``model``'s candidate (``car-anomaly`` -> ``car-anomaly-candidate``)."""
    return model + CANDIDATE_SUFFIX


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
    """The newest complete version that is not rejected (what the model server loads today)."""
    versions = list_versions(client, bucket, model)
    if versions:
        rejected = read_channels(client, bucket, model)[0].rejected
        versions = [v for v in versions if v not in rejected]
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


def publish(client, version: ModelVersion, saved_model_dir: Path, metadata: dict, rejected: str | None = None) -> str:
    """Upload a SavedModel directory under a claimed version; metadata.json last. Returns the gs:// URI.

    A version published as ``rejected`` (the reason) is marked so before it is complete: no reader
    ever sees it complete and unmarked, so the newest-complete rule never serves it.
    """
    bucket = client.bucket(version.bucket)
    saved_model_dir = Path(saved_model_dir)
    for path in sorted(p for p in saved_model_dir.rglob("*") if p.is_file()):
        if path.name == METADATA:
            continue
        bucket.blob(version.prefix + path.relative_to(saved_model_dir).as_posix()).upload_from_filename(str(path))
    if rejected is not None:
        _settle(client, version.bucket, version.model, lambda ch: ch.reject(version.version, rejected))
    meta = {**metadata, "version": version.version, "uri": version.uri, "published_at": _now()}
    bucket.blob(version.prefix + METADATA).upload_from_string(json.dumps(meta, indent=2), content_type="application/json")
    return version.uri


def read_metadata(client, version: ModelVersion) -> dict:
    return json.loads(client.bucket(version.bucket).blob(version.prefix + METADATA).download_as_bytes())


def published_ms(metadata: dict) -> int:
    """When a version was published (its metadata's ``published_at``, to the second), in epoch ms; 0
    when the metadata does not say. Records on Kafka that name the version and are older than this
    are about another model that had the same number (a bucket made again numbers from 1)."""
    at = metadata.get("published_at")
    return int(datetime.fromisoformat(at).timestamp() * 1000) if at else 0


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


class ChannelError(FleetPulseError):
    """A channel change the versions' state does not allow (promote a rejected version, reject stable, ...)."""


class ChannelConflict(ChannelError):
    """The channels changed between this writer's read and its write; this writer wrote nothing."""


@dataclass(frozen=True)
class Channels:
    """One model's channels. Transitions return a new Channels or raise ChannelError; they touch no
    storage, so the rules are tested as plain code and applied by ``update_channels``."""

    stable: int | None = None
    candidate: int | None = None
    previous: tuple[int, ...] = ()  # earlier stables, oldest first: where a rollback returns
    rejected: dict[int, str] = field(default_factory=dict)  # version -> why
    changed_at: str | None = None

    def channel(self, version: int) -> str:
        if version == self.stable:
            return STABLE
        if version == self.candidate:
            return CANDIDATE
        return REJECTED if version in self.rejected else RETIRED

    def release(self, version: int) -> "Channels":
        """A version that passed its offline gate: the candidate, or stable if there is none yet. A
        newer candidate replaces an untried one, which retires without a verdict."""
        self._not_rejected(version)
        if self.stable is None:
            return replace(self, stable=version)
        return replace(self, candidate=version)

    def promote(self, version: int) -> "Channels":
        self._not_rejected(version)
        if version == self.stable:
            raise ChannelError(f"version {version} is already stable")
        previous = tuple(v for v in self.previous if v != version) + (() if self.stable is None else (self.stable,))
        return replace(self, stable=version, previous=previous, candidate=None if self.candidate == version else self.candidate)

    def rollback(self) -> "Channels":
        """Stable goes back to the newest earlier stable that is not rejected; the one it leaves is rejected."""
        earlier = [i for i, v in enumerate(self.previous) if v not in self.rejected]
        if self.stable is None or not earlier:
            raise ChannelError("no earlier stable version to roll back to")
        i = earlier[-1]
        return replace(self, stable=self.previous[i], previous=self.previous[:i], rejected={**self.rejected, self.stable: ROLLED_BACK})

    def reject(self, version: int, reason: str) -> "Channels":
        if version == self.stable:
            raise ChannelError(f"version {version} is stable: roll back instead of rejecting it")
        self._not_rejected(version)
        return replace(self, candidate=None if self.candidate == version else self.candidate, rejected={**self.rejected, version: reason})

    def _not_rejected(self, version: int) -> None:
        if version in self.rejected:
            raise ChannelError(f"version {version} is rejected ({self.rejected[version]})")

    def to_json(self) -> dict:
        return {"stable": self.stable, "candidate": self.candidate, "previous": list(self.previous),
                "rejected": {str(v): why for v, why in sorted(self.rejected.items())}, "changed_at": self.changed_at}  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict) -> "Channels":
        return cls(doc.get("stable"), doc.get("candidate"), tuple(doc.get("previous", ())),
                   {int(v): why for v, why in doc.get("rejected", {}).items()}, doc.get("changed_at"))  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _unreachable(bucket: str, exc: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(f"GCS bucket {bucket!r} is unreachable: {str(exc).splitlines()[0][:200]}")


def read_channels(client, bucket: str, model: str) -> tuple[Channels, int]:
    """The channels and the generation they were read at (0: no channels object yet)."""
    from google.api_core.exceptions import GoogleAPIError, NotFound
    from requests.exceptions import ConnectionError as RequestsConnectionError

    blob = client.bucket(bucket).blob(f"{model}/{CHANNELS}")
    try:
        data = blob.download_as_bytes()
    except NotFound:
        return Channels(), 0
    except (GoogleAPIError, RequestsConnectionError) as exc:
        raise _unreachable(bucket, exc) from None
    # One GET gives both: the client library takes the generation from the download's headers.
    return Channels.from_json(json.loads(data)), int(blob.generation)


def update_channels(client, bucket: str, model: str, change: Callable[[Channels], Channels]) -> tuple[Channels, Channels]:
    """Read, apply ``change``, write back only if nobody wrote in between (else ChannelConflict).
    Returns the channels before and after."""
    from google.api_core.exceptions import GoogleAPIError, PreconditionFailed
    from requests.exceptions import ConnectionError as RequestsConnectionError

    current, generation = read_channels(client, bucket, model)
    new = replace(change(current), changed_at=_now())
    blob = client.bucket(bucket).blob(f"{model}/{CHANNELS}")
    try:
        blob.upload_from_string(json.dumps(new.to_json(), indent=2), content_type="application/json", if_generation_match=generation)
    except PreconditionFailed:
        now = read_channels(client, bucket, model)[0]
        raise ChannelConflict(f"the channels of {model} changed while this ran (now stable {now.stable}, candidate "
                              f"{now.candidate}); nothing was written, run it again if it still applies") from None  # fmt: skip
    except (GoogleAPIError, RequestsConnectionError) as exc:
        raise _unreachable(bucket, exc) from None
    return current, new


def _settle(client, bucket: str, model: str, change: Callable[[Channels], Channels]) -> tuple[Channels, Channels]:
    """update_channels for a machine's change that is right whatever the state it lands on (a publish):
    on a conflict, read again and re-apply, rather than failing the run."""
    return retry(lambda: update_channels(client, bucket, model, change), retry_on=(ChannelConflict,),
                 backoff=Backoff(initial=0.05, maximum=1.0, deadline_s=30.0))  # fmt: skip


def release(client, version: ModelVersion) -> str:
    """Put a complete version that passed its gate on a channel; returns which (stable or candidate)."""
    return _settle(client, version.bucket, version.model, lambda ch: ch.release(version.version))[1].channel(version.version)


def _complete(client, bucket: str, model: str, version: int) -> int:
    if version not in list_versions(client, bucket, model):
        raise ChannelError(f"no complete version {version} of {model} in gs://{bucket}/")
    return version


def promote(client, bucket: str, model: str, version: int) -> tuple[Channels, Channels]:
    """Make ``version`` stable. A person's decision on the state they saw: a conflict fails, never retries."""
    _complete(client, bucket, model, version)
    return update_channels(client, bucket, model, lambda ch: ch.promote(version))


def rollback(client, bucket: str, model: str) -> tuple[Channels, Channels]:
    return update_channels(client, bucket, model, lambda ch: ch.rollback())


def reject(client, bucket: str, model: str, version: int, reason: str) -> tuple[Channels, Channels]:
    _complete(client, bucket, model, version)
    return update_channels(client, bucket, model, lambda ch: ch.reject(version, reason))


@dataclass(frozen=True)
class CatalogEntry:
    version: int
    channel: str
    metadata: dict
    reason: str | None  # why it is rejected


def catalog(client, bucket: str, model: str) -> list[CatalogEntry]:
    """Every complete version, ascending, with its channel and metadata."""
    channels = read_channels(client, bucket, model)[0]
    return [CatalogEntry(v, channels.channel(v), read_metadata(client, ModelVersion(bucket, model, v)), channels.rejected.get(v))
            for v in list_versions(client, bucket, model)]  # fmt: skip
