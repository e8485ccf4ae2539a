"""Drift on the live stream: the scored readings against the served version's training distribution.

The reference is the ``drift_reference`` the pipeline stored in the version's metadata on GCS
(fleetpulse.drift); it is read again whenever the model server answers with another version. Every
``window_s`` the counts of that window become a PSI per feature, exported as the gauge
``fleetpulse_transformer_feature_drift_psi{feature}``. When some feature among the reference's
triggers (fleetpulse.drift: those the model reads as they are) stays above ``threshold`` for
``windows`` windows in a row (each with at least ``min_rows`` readings), one retrain request goes to
``model-requests`` (JSON: reason, model, version, the drifted features with their PSI); at most one
per version per ``cooldown_s``, so a fleet that stays drifted does not flood the training loop.

Counting is vectorised (one searchsorted and bincount per feature per micro-batch). A version whose
metadata has no reference (published before the pipeline stored one), or a bucket that cannot be
read, turns drift off for that version with one line; scoring is never held up by it.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np

from fleetpulse.drift import DriftCounts, triggers
from inference.transformer import metrics


class DriftWatch:
    def __init__(self, load_reference: Callable[[str], dict | None], producer, topic: str, model: str,
                 threshold: float, window_s: float = 60.0, windows: int = 2, min_rows: int = 500, cooldown_s: float = 3600.0,
                 progress: Callable[[str], None] = lambda _: None, clock: Callable[[], float] = time.monotonic):
        self.load_reference = load_reference  # version -> the reference, None when there is none
        self.producer = producer
        self.topic = topic
        self.model = model
        self.threshold = threshold
        self.window_s = window_s
        self.windows = windows
        self.min_rows = min_rows
        self.cooldown_s = cooldown_s
        self.progress = progress
        self.clock = clock
        self.version = ""
        self.counts: DriftCounts | None = None
        self.triggers: set[str] = set()
        self.streak = 0
        self.requested: dict[str, float] = {}  # version -> when its last retrain request went out
        self.last_psi: dict[str, float] = {}
        self._window_start = clock()

    def add(self, values: np.ndarray, version: str) -> None:
        """Readings the model server scored with ``version`` (one micro-batch)."""
        if version != self.version:
            self._follow(version)
        if self.counts is not None:
            self.counts.add(values)
        if self.clock() - self._window_start >= self.window_s:
            self.close_window()

    def _follow(self, version: str) -> None:
        self.version, self.streak = version, 0
        try:
            ref = self.load_reference(version)
        except Exception as exc:  # noqa: BLE001 - drift is advisory: a bucket that cannot be read must not stop scoring
            ref = None
            self.progress(f"drift: reference of version {version} unreadable ({type(exc).__name__}: {str(exc)[:120]}); drift off")
        if ref is None:
            self.counts = None
            self.progress(f"drift: version {version} has no drift reference; drift off for it")
            return
        self.counts = DriftCounts(ref)
        self.triggers = triggers(ref)
        self._window_start = self.clock()
        self.progress(f"drift: watching {len(self.counts.names)} features against version {version}'s training window; "
                      f"a retrain is asked for on {', '.join(sorted(self.triggers))}")

    def close_window(self) -> dict[str, float]:
        """End the current window: PSI per feature (empty when drift is off or the window was too small)."""
        self._window_start = self.clock()
        if self.counts is None:
            return {}
        psi, rows = self.counts.take()
        if rows < self.min_rows:
            return {}
        self.last_psi = dict(zip(self.counts.names, psi.tolist()))
        for name, value in self.last_psi.items():
            metrics.FEATURE_DRIFT.labels(name).set(value)
        drifted = {n: round(v, 4) for n, v in self.last_psi.items() if v > self.threshold and n in self.triggers}
        self.streak = self.streak + 1 if drifted else 0
        if drifted and self.streak >= self.windows:
            self._request(drifted, rows)
        return self.last_psi

    def _request(self, drifted: dict[str, float], rows: int) -> None:
        now = self.clock()
        if now - self.requested.get(self.version, -float("inf")) < self.cooldown_s:
            return
        self.requested[self.version] = now
        record = {"reason": "drift", "model": self.model, "model_version": self.version, "features": drifted,
                  "threshold": self.threshold, "window_rows": rows, "requested_at_ms": int(time.time() * 1000)}
        self.producer.produce(self.topic, key=self.model.encode(), value=json.dumps(record).encode())
        self.producer.poll(0)
        metrics.RETRAIN_REQUESTS.inc()
        self.progress(f"drift: {', '.join(f'{n} PSI {v:.2f}' for n, v in drifted.items())} above {self.threshold:g} for "
                      f"{self.streak} windows; retrain requested on {self.topic}")
