"""Is the transformer making progress? ``/healthz`` (liveness) and ``/readyz`` (readiness) on the metrics port.

Stuck means: there is work that is not durable yet (records applied but not committed, twins not
written, infer requests in flight) and the commit has not advanced for ``stuck_after_s``. The loop
reports what it has (``work``) and each commit (``progressed``); while it is blocked (a dependency
down, a write that never returns) it reports nothing, so the time since the work appeared keeps
growing and the probes see it from their own thread. Idle is not stuck: with everything committed
there is nothing to wait for. Commits lag the stream by up to ``twin_interval_s`` by design (deferred
twins hold them), so ``stuck_after_s`` must be longer than that.

``fleetpulse_transformer_stuck{reason}`` is 1 for the reason while stuck: the dependency being
retried (``mongodb``, ``kafka``, ``model-server``), else the one a call has been waiting on longest
(a server that is down often makes a call hang until its timeout before any retry), else ``loop``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from fleetpulse.probes import serve_probes

REASONS = ("mongodb", "kafka", "model-server", "loop")


class Health:
    def __init__(self, stuck_after_s: float, clock: Callable[[], float] = time.monotonic):
        self.stuck_after_s = stuck_after_s
        self.clock = clock
        self.ready = False  # the loop has started: model metadata read, consumer subscribed
        self._pending_since: float | None = None  # work not durable yet, since the last commit
        self._retrying: dict[str, tuple[float, str]] = {}  # dependency -> (since, last message)
        self._calling: dict[tuple[str, int], float] = {}  # (dependency, thread) -> since
        self._lock = threading.Lock()

    # ---- what the loop reports --------------------------------------------------------------

    def work(self, pending: bool) -> None:
        """Called every loop iteration: is there work that is not durable yet?"""
        if not pending:
            self._pending_since = None
        elif self._pending_since is None:
            self._pending_since = self.clock()

    def progressed(self) -> None:
        """A commit advanced: what is still pending counts from now."""
        if self._pending_since is not None:
            self._pending_since = self.clock()

    def retrying(self, dependency: str, message: str) -> None:
        with self._lock:
            since = self._retrying.get(dependency, (self.clock(), ""))[0]
            self._retrying[dependency] = (since, message)

    def recovered(self, dependency: str) -> None:
        with self._lock:
            self._retrying.pop(dependency, None)

    def calling(self, dependency: str) -> None:
        """This thread now waits on ``dependency`` (until ``returned``)."""
        with self._lock:
            self._calling[(dependency, threading.get_ident())] = self.clock()

    def returned(self, dependency: str) -> None:
        with self._lock:
            self._calling.pop((dependency, threading.get_ident()), None)

    # ---- what the probes read -----------------------------------------------------------------

    def seconds_without_progress(self) -> float:
        since = self._pending_since
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def stuck(self) -> tuple[str, str] | None:
        """(reason, detail) while stuck, else None."""
        if self.seconds_without_progress() < self.stuck_after_s:
            return None
        with self._lock:
            retrying = sorted(self._retrying.items(), key=lambda item: item[1][0])
            calling = sorted(self._calling.items(), key=lambda item: item[1])
        if retrying:
            dependency, (_, message) = retrying[0]
            return (dependency if dependency in REASONS else "loop"), message
        if calling:
            (dependency, _), since = calling[0]
            return (dependency if dependency in REASONS else "loop"), f"waiting on {dependency} for {self.clock() - since:.0f}s"
        return "loop", "work pending but the loop is not advancing (no dependency is being retried)"

    def live(self) -> tuple[bool, dict]:
        stuck = self.stuck()
        body = {"ok": stuck is None, "seconds_without_progress": round(self.seconds_without_progress(), 1)}
        if stuck:
            body["reason"], body["detail"] = stuck
        return stuck is None, body

    def readiness(self) -> tuple[bool, dict]:
        ok, body = self.live()
        if not self.ready:
            return False, {**body, "ok": False, "reason": "starting"}
        return ok, body


class _HealthCollector:
    """Stuck gauges computed at scrape time, so a blocked loop still shows."""

    def __init__(self, health: Health):
        self.health = health

    def collect(self):
        stuck = self.health.stuck()
        family = GaugeMetricFamily("fleetpulse_transformer_stuck", "1 while work is pending and no commit advanced "
                                   "for stuck_after_s, labelled with why", labels=["reason"])
        for reason in REASONS:
            family.add_metric([reason], 1.0 if stuck and stuck[0] == reason else 0.0)
        yield family
        yield GaugeMetricFamily("fleetpulse_transformer_seconds_without_progress",
                                "Seconds since the commit last advanced while work is pending", value=self.health.seconds_without_progress())


_collector: _HealthCollector | None = None


def serve(health: Health, port: int) -> ThreadingHTTPServer:
    """/metrics, /healthz and /readyz on ``port``, from a daemon thread."""
    global _collector
    if _collector is None:
        _collector = _HealthCollector(health)
        REGISTRY.register(_collector)
    _collector.health = health

    def probe(result: tuple[bool, dict]) -> tuple[bool, bytes, str]:
        return result[0], json.dumps(result[1]).encode(), "application/json"

    return serve_probes(port, lambda: probe(health.live()), lambda: probe(health.readiness()), name="health")
