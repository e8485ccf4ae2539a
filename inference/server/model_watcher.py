"""Keeps the newest complete model version loaded: poll GCS, download, load, warm up, swap.

Requests read ``watcher.current`` once and keep that LoadedModel for the whole request, so a swap (one
reference assignment, atomic under the GIL) never changes the model under a request in flight, and
the new version only becomes visible after it has loaded and answered a warm-up call.
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

from inference.server.saved_model import LoadedModel

log = logging.getLogger("fleetpulse.serve")

MODEL_VERSION = Gauge("fleetpulse_model_version", "Model version being served")
MODEL_SWAPS = Counter("fleetpulse_model_swaps", "Model versions loaded and swapped in")


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the newest version if it is newer than the current one; True if swapped."""
        latest = model_store.latest_version(self.gcs, self.bucket, self.model)
        if latest is None or (self.current is not None and latest.version <= self.current.version):
            return False
        path = model_store.download(self.gcs, latest, self.cache_dir)
        model = LoadedModel.load(path, latest.version)
        model.warm_up()
        previous, self.current = self.current, model
        MODEL_VERSION.set(model.version)
        MODEL_SWAPS.inc()
        if self.on_swap is not None:
            self.on_swap(model)
        log.warning("serving %s version %d (threshold %.4g)%s", self.model, model.version, model.threshold,
                    f", replaced version {previous.version}" if previous else "")
        if previous is not None:
            # Old files can go; the old graph stays in memory until in-flight requests drop it.
            shutil.rmtree(previous.path, ignore_errors=True)
        return True

    def wait_for_first(self, progress: Callable[[str], None] = lambda _: None, timeout_s: float | None = None) -> LoadedModel:
        """Block until a version is loaded (the server is not useful without one)."""
        t0 = time.monotonic()
        announced = False
        while not self.refresh() and self.current is None:
            if not announced:
                progress(f"waiting for a first version under gs://{self.bucket}/{self.model}/ ...")
                announced = True
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise BrokerUnavailable(f"no version of {self.model} in gs://{self.bucket}/ after {timeout_s:.0f}s")
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
            except Exception as exc:  # noqa: BLE001 - the poll loop is an edge: a broken or unreachable
                # newer version (GCS down, bad SavedModel) must not kill the server; keep serving, retry next poll.
                self.last_error = str(exc)
                log.error("model refresh failed, still serving version %s: %s",
                          self.current.version if self.current else None, exc)
