"""Keeps the versions the channels name loaded: poll GCS, download, load, validate, warm up, swap.

Two slots, each one V2 model name: ``stable`` (the model's own name) serves the version
``channels.json`` calls stable, ``candidate`` (model_store.candidate_model_name) the candidate while
there is one; a slot swaps whenever its channel names another version, higher or lower (a rollback),
and the candidate slot empties when the channel does. Without a stable in channels.json (a bucket
from before channels, or no version has passed a gate yet) the stable slot keeps the older rule: the
newest complete version that is not rejected.

Requests read ``slot.current`` once and keep that LoadedModel for the whole request, so a swap (one
reference assignment, atomic under the GIL) never changes the model under a request in flight, and
the new version only becomes visible after it has loaded and answered a warm-up call.

A version that does not load or breaks the serving contract (saved_model.LoadedModel.validate:
signature, input shape against its metadata, finite threshold, finite scores on warm-up rows) is
skipped with one log line and ``fleetpulse_model_versions_invalid``, remembered, and never tried
again; the slot keeps what it serves. A fresh server whose stable is invalid goes down the list
(the earlier stables, or the older versions) so it can start at all. A valid version with another
input shape (autoencoder <-> LSTM) is valid: the transformer follows its metadata. GCS unreachable
is not a property of a version: it is retried at the next poll.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prometheus_client import Counter, Gauge

from fleetpulse import model_store
from fleetpulse.errors import BrokerUnavailable
from fleetpulse.model_store import CANDIDATE, STABLE, Channels

from inference.server.saved_model import InvalidModel, LoadedModel

log = logging.getLogger("fleetpulse.serve")

MODEL_VERSION = Gauge("fleetpulse_model_version", "Model version being served (the stable channel's)")
MODEL_CANDIDATE_VERSION = Gauge("fleetpulse_model_candidate_version", "Candidate version being served (0: none)")
MODEL_SWAPS = Counter("fleetpulse_model_swaps", "Model versions loaded and swapped in")
MODEL_INVALID = Counter("fleetpulse_model_versions_invalid", "Published versions skipped: they do not load or break the serving contract")
MODEL_INVALID_LATEST = Gauge("fleetpulse_model_version_invalid", "The newest version skipped as invalid (0: none)")


@dataclass
class Slot:
    """One V2 model name and the version it serves (None: nothing, the name is not served)."""

    channel: str  # STABLE or CANDIDATE
    name: str
    current: LoadedModel | None = None


class ModelWatcher:
    def __init__(self, gcs, bucket: str, model: str, cache_dir: str | Path | None = None, poll_interval_s: float = 10.0,
                 on_change: Callable[[Slot], None] | None = None):
        self.gcs = gcs
        self.bucket = bucket
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix=f"fleetpulse-{model}-"))
        self.poll_interval_s = poll_interval_s
        self.on_change = on_change
        self.stable = Slot(STABLE, model)
        self.candidate = Slot(CANDIDATE, model_store.candidate_model_name(model))
        self.last_error: str | None = None
        self.invalid: dict[int, str] = {}  # version -> why it is not served
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> LoadedModel | None:
        """What the model's own name serves."""
        return self.stable.current

    def refresh(self) -> bool:
        """Bring both slots to what the channels say; True if either changed.

        BrokerUnavailable when GCS does not answer (nothing is marked invalid for that).
        """
        channels = model_store.read_channels(self.gcs, self.bucket, self.model)[0]
        changed = self._follow_stable(channels)
        return self._follow_candidate(channels) or changed

    def _follow_stable(self, channels: Channels) -> bool:
        if channels.stable is None:
            versions = model_store.list_versions(self.gcs, self.bucket, self.model)
            newer = sorted((v for v in versions if self.current is None or v > self.current.version), reverse=True)
            order = [(v, "the newest published" if i == 0 else "an older version") for i, v in enumerate(newer)]
        elif self.current is not None:
            order = [] if self.current.version == channels.stable else [(channels.stable, "stable in channels.json")]
        else:
            order = [(channels.stable, "stable in channels.json"), *((v, "an earlier stable") for v in reversed(channels.previous))]
        return self._first_valid(self.stable, [(v, role) for v, role in order if v not in channels.rejected])

    def _follow_candidate(self, channels: Channels) -> bool:
        slot, target = self.candidate, channels.candidate
        if target is None:
            if slot.current is None:
                return False
            self._swap(slot, None)
            return True
        if slot.current is not None and slot.current.version == target:
            return False
        return self._first_valid(slot, [(target, "candidate in channels.json")])

    def _first_valid(self, slot: Slot, order: list[tuple[int, str]]) -> bool:
        """Swap in the first version of ``order`` that loads and validates; (version, why it is tried) pairs."""
        for version, role in order:
            if version in self.invalid:
                continue
            try:
                model = self._load(version)
            except InvalidModel as exc:
                self._skip(slot, version, role, str(exc))
                continue
            self._swap(slot, model)
            return True
        return False

    def _load(self, version: int) -> LoadedModel:
        for slot in (self.stable, self.candidate):
            if slot.current is not None and slot.current.version == version:
                return slot.current  # a promotion: the candidate's loaded graph becomes stable as it is
        from google.api_core.exceptions import GoogleAPIError
        from requests.exceptions import RequestException

        try:
            path = model_store.download(self.gcs, model_store.ModelVersion(self.bucket, self.model, version), self.cache_dir)
        except (GoogleAPIError, RequestException, OSError) as exc:
            raise BrokerUnavailable(f"GCS: downloading {self.model} version {version} failed: {str(exc).splitlines()[0][:200]}") from None
        try:
            return LoadedModel.load(path, version)
        except InvalidModel:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def _skip(self, slot: Slot, version: int, role: str, why: str) -> None:
        self.invalid[version] = why
        MODEL_INVALID.inc()
        MODEL_INVALID_LATEST.set(max(self.invalid))
        serving = f"{slot.name} still serves version {slot.current.version}" if slot.current else f"{slot.name} serves nothing yet"
        log.error("model %s version %d (%s) is invalid and will not be served (%s): %s", self.model, version, role, serving, why)

    def _swap(self, slot: Slot, model: LoadedModel | None) -> None:
        previous, slot.current = slot.current, model
        (MODEL_VERSION if slot.channel == STABLE else MODEL_CANDIDATE_VERSION).set(model.version if model else 0)
        if self.on_change is not None:
            self.on_change(slot)
        was = f", replaced version {previous.version}" if previous else ""
        if model is None:
            log.warning("no longer serving %s (version %d): the %s channel is empty", slot.name, previous.version, slot.channel)
        else:
            MODEL_SWAPS.inc()
            log.warning("serving %s version %d (%s; input %s, threshold %.4g)%s", slot.name, model.version, slot.channel,
                        model.input_shape, model.threshold, was)
        if previous is not None and all(s.current is None or s.current.version != previous.version for s in (self.stable, self.candidate)):
            # Old files can go; the old graph stays in memory until in-flight requests drop it.
            shutil.rmtree(previous.path, ignore_errors=True)

    def wait_for_first(self, progress: Callable[[str], None] = lambda _: None, timeout_s: float | None = None) -> LoadedModel:
        """Block until a stable version is loaded (the server is not useful without one)."""
        t0 = time.monotonic()
        said = ""
        while self.current is None:
            try:
                self.refresh()
                why = "no valid version yet"
            except BrokerUnavailable as exc:
                why = str(exc)
            if self.current is not None:
                break
            if why != said:  # one line per reason, not one per poll
                progress(f"waiting for a first valid version under gs://{self.bucket}/{self.model}/ ({why}) ...")
                said = why
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise BrokerUnavailable(f"no valid version of {self.model} in gs://{self.bucket}/ after {timeout_s:.0f}s ({why})")
            time.sleep(min(self.poll_interval_s, 2.0))
        return self.current

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - the poll loop is an edge: nothing a poll meets (GCS down,
                # an unexpected error) may kill the server; keep serving, try again at the next poll, say it once.
                if str(exc) != self.last_error:
                    log.error("model refresh failed, still serving version %s: %s", self.current.version if self.current else None, exc)
                self.last_error = str(exc)
