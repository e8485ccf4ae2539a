"""Keeps the newest valid model version loaded: poll GCS, download, load, validate, warm up, swap.

Requests read ``watcher.current`` once and keep that LoadedModel for the whole request, so a swap (one
reference assignment, atomic under the GIL) never changes the model under a request in flight, and
the new version only becomes visible after it has loaded and answered a warm-up call.

A version that does not load or breaks the serving contract (saved_model.LoadedModel.validate:
signature, input shape against its metadata, finite threshold, finite scores on warm-up rows) is
skipped with one log line and ``fleetpulse_model_versions_invalid``, remembered, and never tried
again; the newest valid version serves (at start too: a fresh server goes down the list). A valid
version with another input shape (autoencoder <-> LSTM) is valid: the transformer follows its
metadata. GCS unreachable is not a property of a version: it is retried at the next poll.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from prometheus_client import Counter, Gauge

from fleetpulse import model_store
from fleetpulse.errors import BrokerUnavailable

from inference.server.saved_model import InvalidModel, LoadedModel

log = logging.getLogger("fleetpulse.serve")

MODEL_VERSION = Gauge("fleetpulse_model_version", "Model version being served")
MODEL_SWAPS = Counter("fleetpulse_model_swaps", "Model versions loaded and swapped in")
MODEL_INVALID = Counter("fleetpulse_model_versions_invalid", "Published versions skipped: they do not load or break the serving contract")
MODEL_INVALID_LATEST = Gauge("fleetpulse_model_version_invalid", "The newest version skipped as invalid (0: none)")


class ModelWatcher:
    def __init__(self, gcs, bucket: str, model: str, cache_dir: str | Path | None = None, poll_interval_s: float = 10.0,
                 on_swap: Callable[[LoadedModel], None] | None = None):
        self.gcs = gcs
        self.bucket = bucket
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix=f"fleetpulse-{model}-"))
        self.poll_interval_s = poll_interval_s
        self.on_swap = on_swap
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.invalid: dict[int, str] = {}  # version -> why it is not served
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the newest valid version if it is newer than the current one; True if swapped.

        BrokerUnavailable when GCS does not answer (nothing is marked invalid for that).
        """
        for version in self._candidates():
            try:
                model = self._load(version)
            except InvalidModel as exc:
                self._skip(version, str(exc))
                continue
            self._swap(model)
            return True
        return False

    def _candidates(self) -> list[int]:
        """Complete versions newer than the one served, not rejected and not found invalid, newest first."""
        versions = model_store.list_versions(self.gcs, self.bucket, self.model)
        newer = [v for v in versions if (self.current is None or v > self.current.version) and v not in self.invalid]
        if newer:
            rejected = model_store.read_channels(self.gcs, self.bucket, self.model)[0].rejected
            newer = [v for v in newer if v not in rejected]
        return sorted(newer, reverse=True)

    def _load(self, version: int) -> LoadedModel:
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

    def _skip(self, version: int, why: str) -> None:
        self.invalid[version] = why
        MODEL_INVALID.inc()
        MODEL_INVALID_LATEST.set(max(self.invalid))
        serving = f"still serving version {self.current.version}" if self.current else "trying older versions"
        log.error("model %s version %d is invalid and will not be served (%s): %s", self.model, version, serving, why)

    def _swap(self, model: LoadedModel) -> None:
        previous, self.current = self.current, model
        MODEL_VERSION.set(model.version)
        MODEL_SWAPS.inc()
        if self.on_swap is not None:
            self.on_swap(model)
        log.warning("serving %s version %d (input %s, threshold %.4g)%s", self.model, model.version, model.input_shape, model.threshold,
                    f", replaced version {previous.version}" if previous else "")
        if previous is not None:
            # Old files can go; the old graph stays in memory until in-flight requests drop it.
            shutil.rmtree(previous.path, ignore_errors=True)

    def wait_for_first(self, progress: Callable[[str], None] = lambda _: None, timeout_s: float | None = None) -> LoadedModel:
        """Block until a version is loaded (the server is not useful without one)."""
        t0 = time.monotonic()
        said = ""
        while self.current is None:
            try:
                if self.refresh():
                    break
                why = "no valid version yet"
            except BrokerUnavailable as exc:
                why = str(exc)
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
