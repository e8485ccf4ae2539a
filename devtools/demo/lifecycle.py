"""`fleetpulse demo --lifecycle`: a model's lifecycle on the live stream, told by its own processes.

v1 trains on a fleet that runs one firmware, and serves. During the detection stretch the simulator
rolls an over-the-air update out to a growing share of the fleet: a new ``control_unit_firmware``,
healthy behaviour otherwise, a change v1 never saw. What follows is none of the demo's doing: the
transformer's drift watch sees firmware drift and writes a retrain request to model-requests;
`fleetpulse models retrain` trains on the last minutes of sensor data and publishes v2 as the
candidate; the model server serves it beside stable and the transformer shadows it; `fleetpulse
models decide` promotes or rejects it on both models' figures over the same events; the server swaps;
the decider watches v2's first alerts for a rollback. The demo starts those processes (as their own
identities on a secured stack), notes what channels.json and the transformer's metrics say once per
``poll_s`` (the timeline's markers), and judges afterwards against the simulator's ground truth.

Figures (``lifecycle_figures``), per event: which model scored it (v2 from the event time of its
first alert record, v1 before), whether its car reported the rollout's firmware, whether it was
failing. Per period and group: false alerts (a car's transition into alerting at a healthy event,
counted where it happens, so a status v1 raised and v2 later cleared is v1's) per 1,000 healthy
car-hours, and recall over the failing events, as the demo's headline figures define them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devtools.demo import collect
from devtools.demo.processes import StageFailed, wait_http_ok
from devtools.demo.run import Demo, DemoParams
from devtools.stack import access
from devtools.stack.process import free_port
from fleetpulse import evaluation, model_store
from fleetpulse.drift import DRIFT_THRESHOLD
from fleetpulse.evaluation import Labels

FIRMWARE = "control_unit_firmware"


@dataclass
class LifecycleParams(DemoParams):
    duration: float = 240.0  # the detection stretch: rollout, drift, retrain, shadow, promotion, and v2 alone
    ota_firmware: int = 2100
    ota_start_s: float = 10.0
    ota_ramp_s: float = 10.0
    ota_share: float = 0.6  # the rest stays on the old version: both groups are measured side by side
    drift_window_s: float = 10.0  # the transformer's drift window (production: 60 s)
    drift_windows: int = 3  # drifted windows in a row before a retrain is asked for: the ramp is over by then
    retrain_window_minutes: float = 0.5  # what the retrain trains on: mostly the fleet as the rollout left it
    decide_s: float = 18.0  # shadow before a verdict, and the rollback watch, in seconds of the fleet's driving
    decide_interval_s: float = 5.0
    poll_s: float = 1.0  # the server's channel reads, the transformer's candidate probe, the demo's markers
    bucket_s: float = 10.0  # the timeline's resolution
    decider_metrics_port: int = 0
    retrain_metrics_port: int = 0
    out_dir: Path = Path("reports/lifecycle")


@dataclass
class Mark:
    t_s: float  # seconds into the detection stretch
    stable: int | None
    candidate: int | None
    firmware_psi: float | None
    retrain_requests: int
    shadow_active: bool


class LifecycleDemo(Demo):
    p: LifecycleParams

    def __init__(self, params: LifecycleParams, console=None):
        super().__init__(params, console)
        for name in ("decider_metrics_port", "retrain_metrics_port"):
            if not getattr(self.p, name):
                setattr(self.p, name, free_port())
        self.log_column = FIRMWARE
        # A bucket of the run's own: v1 is then the model's first version, and the decider's rollback
        # watch does not take the run's start for a promotion over an earlier run's stable (measured:
        # v1's OTA alerts against the previous run's stable rolled v1 back 42 s in).
        self.bucket = f"fleetpulse-lifecycle-{self.run_id}"
        self.marks: list[Mark] = []
        self.markers: dict[str, float] = {}
        self.watching = False

    def _story(self) -> tuple[dict, int]:
        self.stage("stack up", self._stack_up)
        self.stage(f"model bucket gs://{self.bucket}", self._create_bucket)
        self.stage("bridge", self._start_bridge)
        train_sim = self.stage(f"simulate: training stretch ({self.p.train_profile} fleet, one firmware)",
                               lambda: self._simulate(self.p.train_duration, self.p.seed, self.p.train_profile))  # fmt: skip
        trained = self.stage("train v1 (KFP pipeline)", lambda: self._train(train_sim))
        self.stage("promote v1 to stable", lambda: self._promote(trained))
        self.v1 = int(trained["version"])
        self.stage("model server (stable and candidate)", lambda: self._start_server("--poll-interval", str(self.p.poll_s)))
        self.stage("transformer (shadow, drift watch)", lambda: self._start_scorer(self._lifecycle_env()))
        self.stage("retrain loop and decider", self._start_loops)
        self.t0 = time.time()
        threading.Thread(target=self._watch, daemon=True).start()
        ota = ("--ota-firmware", str(self.p.ota_firmware), "--ota-start-s", str(self.p.ota_start_s),
               "--ota-ramp-s", str(self.p.ota_ramp_s), "--ota-share", str(self.p.ota_share))  # fmt: skip
        live_sim = self.stage(f"simulate: detection stretch, OTA firmware {self.p.ota_firmware} to {self.p.ota_share:.0%} of the fleet",
                              lambda: self._measured(lambda: self._simulate(self.p.duration, self.p.seed + 1, self.p.profile, *ota)))  # fmt: skip
        scored = self.stage("drain transformer", self._drain)
        self.watching = False
        run = self.stage("collect and evaluate", lambda: self._collect(trained, live_sim, scored))
        run["lifecycle"] = self.stage("lifecycle figures", self._lifecycle)
        return run, train_sim.get("events_sent", 0) + live_sim.get("events_sent", 0)

    def _stop_watching(self) -> None:
        super()._stop_watching()
        self.watching = False

    # -- the processes ---------------------------------------------------------------------------
    def _lifecycle_env(self) -> dict[str, str]:
        return {"FLEETPULSE_SCORE_SHADOW_PROBE_S": str(self.p.poll_s), "FLEETPULSE_SCORE_DRIFT_WINDOW_S": str(self.p.drift_window_s),
                "FLEETPULSE_SCORE_DRIFT_WINDOWS": str(self.p.drift_windows)}  # fmt: skip

    def _create_bucket(self) -> None:
        from fleetpulse import endpoints
        from fleetpulse.clients import gcs_client

        gcs_client(endpoints.GCS_ENDPOINT).create_bucket(self.bucket)

    def _start_loops(self) -> None:
        # Groups of this run's own (under each principal's prefix): a request or decision of an
        # earlier run is none of this one's.
        retrain_env = {"FLEETPULSE_RETRAIN_METRICS_PORT": str(self.p.retrain_metrics_port), "FLEETPULSE_RETRAIN_BUCKET": self.bucket,
                       **access.kafka_env("RETRAIN", self.stack_settings, identity="training"),
                       **access.kafka_env("TRAIN", self.stack_settings, identity="training")}  # fmt: skip
        self.children.start("retrain", "models", "retrain", "--json", "--window-minutes", str(self.p.retrain_window_minutes),
                            "--interval", str(self.p.poll_s), "--min-f1", str(self.p.min_f1), "--epochs", str(self.p.epochs),
                            "--group-id", f"fleetpulse-train-requests-demo-{self.run_id}", env=retrain_env)  # fmt: skip
        decide_env = {"FLEETPULSE_DECIDE_METRICS_PORT": str(self.p.decider_metrics_port),
                      "FLEETPULSE_DECIDE_GROUP_ID": f"fleetpulse-decider-demo-{self.run_id}",
                      **access.kafka_env("DECIDE", self.stack_settings, identity="decider")}  # fmt: skip
        # The rule's car-hours, in what this fleet drives in decide_s (2,000 cars: 500; production: 1,000).
        car_hours = f"{self.p.cars * self.p.rate * self.p.sample_interval * self.p.decide_s / 3600:.1f}"
        self.children.start("decide", "models", "decide", "--json", "--model", self.p.model_name, "--bucket", self.bucket, "--interval", str(self.p.decide_interval_s),
                            "--min-car-hours", car_hours, "--watch-car-hours", car_hours, env=decide_env)  # fmt: skip
        for name, port in (("retrain", self.p.retrain_metrics_port), ("decide", self.p.decider_metrics_port)):
            wait_http_ok(f"http://127.0.0.1:{port}/healthz", 90, alive=lambda n=name: self.children.check_alive(n))

    def _watch(self) -> None:
        """Once per poll: channels.json and the transformer's drift and shadow gauges; a marker the first time each changes."""
        from fleetpulse import endpoints
        from fleetpulse.clients import gcs_client

        gcs = gcs_client(endpoints.GCS_ENDPOINT)
        bucket = self.bucket
        self.watching = True
        while self.watching:
            t = round(time.time() - self.t0, 1)
            try:
                channels, _ = model_store.read_channels(gcs, bucket, self.p.model_name)
            except Exception:  # noqa: BLE001 - a missed look is a gap in the timeline, not a failed demo
                channels = None
            gauges = _scrape(f"http://127.0.0.1:{self.p.score_metrics_port}/metrics")
            mark = Mark(t, channels.stable if channels else None, channels.candidate if channels else None,
                        gauges.get(f'fleetpulse_transformer_feature_drift_psi{{feature="{FIRMWARE}"}}'),
                        int(gauges.get("fleetpulse_transformer_retrain_requests_total", 0)),
                        gauges.get("fleetpulse_transformer_shadow_active", 0) > 0)  # fmt: skip
            self.marks.append(mark)
            self._note("retrain requested (drift)", t, mark.retrain_requests > 0)
            self._note(f"candidate v{mark.candidate}", t, mark.candidate is not None and mark.candidate != self.v1)
            self._note("shadow on", t, mark.shadow_active)
            self._note(f"v{mark.stable} stable", t, mark.stable is not None and mark.stable != self.v1)
            if "rolled back" not in self.markers and mark.stable == self.v1 and any(m.stable not in (None, self.v1) for m in self.marks):
                self._note("rolled back", t, True)
            time.sleep(self.p.poll_s)

    def _note(self, name: str, t: float, happened: bool) -> None:
        if happened and name not in self.markers:
            self.markers[name] = t
            self.console.print(f"  [bold magenta]{t:6.1f} s[/]  {name}")

    # -- the figures -----------------------------------------------------------------------------
    def _lifecycle(self) -> dict:
        log, alerts, truth = self.collected
        if log.column is None or not len(log.car):
            raise StageFailed("the detection stretch's event log is empty")
        labels = evaluation.label(log.car, log.ts_ms, truth)
        alerting = collect.alerting(log, alerts)
        scored_from = self._scored_from(alerts)
        figures = lifecycle_figures(log, alerting, labels, self.p.ota_firmware, scored_from, int(self.t0 * 1000), self.p.bucket_s)
        decisions = [d for d in _json_lines(self.children.log_dir / "decide.log") if d.get("action") not in ("idle", "wait")]
        markers = {"OTA starts": self.p.ota_start_s, **self.markers}
        for version, at in scored_from[1:]:
            markers[f"v{version} scores"] = round(at / 1000 - self.t0, 1)
        v2 = next((v for v, _ in scored_from if v != self.v1), None)
        last = list(figures["periods"].values())[-1]
        return {
            "v1": self.v1, "v2": v2, "versions": [v for v, _ in scored_from],
            "ota": {"firmware": self.p.ota_firmware, "start_s": self.p.ota_start_s, "ramp_s": self.p.ota_ramp_s, "share": self.p.ota_share},
            "markers_s": markers,
            "retrain": [r for r in _json_lines(self.children.log_dir / "retrain.log") if r.get("outcome") != "skipped"],
            "decisions": [{k: d.get(k) for k in ("action", "version", "against", "applied", "reason", "figures")} for d in decisions],
            **figures,
            "firmware_psi": [(m.t_s, m.firmware_psi) for m in self.marks if m.firmware_psi is not None],
            "drift_threshold": DRIFT_THRESHOLD,
            "goals": {
                "a retrained version promoted": any(d.get("action") == "promote" and d.get("applied") for d in decisions),
                "false alerts on updated cars < 1 per 1,000 car-h, last version": bool(v2 is not None
                    and last["updated"]["false_alerts_per_1000_car_hours"] < 1.0),
                "recall >= 0.95, last version": bool(v2 is not None and (last["all"]["recall"] or 0.0) >= 0.95),
            },
        }  # fmt: skip


    def _scored_from(self, alerts: list[dict]) -> list[tuple[int, int | None]]:
        """Which stable version scored from when: each change of channels.json's stable the watch saw,
        dated by the new version's first alert record after the look before (a version that takes
        over clears v1's false statuses at once), else by the look that saw it."""
        out: list[tuple[int, int | None]] = [(self.v1, None)]
        previous_look = 0.0
        for mark in self.marks:
            if mark.stable is not None and mark.stable != out[-1][0]:
                since_ms = int((self.t0 + previous_look) * 1000)
                first = min((a["event_ts_ms"] for a in alerts
                             if str(a.get("model_version")) == str(mark.stable) and a["alert_ts_ms"] >= since_ms), default=None)  # fmt: skip
                out.append((mark.stable, first if first is not None else int((self.t0 + mark.t_s) * 1000)))
            previous_look = mark.t_s
        return out


def lifecycle_figures(log: collect.EventLog, alerting: np.ndarray, labels: Labels, ota_firmware: float,
                      scored_from: list[tuple[int, int | None]], t0_ms: int, bucket_s: float) -> dict:
    """Per version that scored (``scored_from``: each version and the event time it began at, the
    first from the start) and group (cars on the rollout's firmware or not), and per time bucket:
    false alerts per 1,000 healthy car-hours and recall (module docstring)."""
    alerting = np.asarray(alerting, bool)
    failing = labels.failing
    healthy = ~failing
    updated = log.column == ota_firmware
    order = np.lexsort((log.offset, labels.car))
    first = np.r_[True, labels.car[order][1:] != labels.car[order][:-1]]
    a = alerting[order]
    raised = np.zeros(len(a), bool)
    raised[order] = a & ~(np.r_[False, a[:-1]] & ~first)
    false_alert = raised & healthy

    def figures(mask: np.ndarray) -> dict:
        hours = float(labels.hours[mask & healthy].sum())
        n_false, n_failing = int((mask & false_alert).sum()), int((mask & failing).sum())
        return {"events": int(mask.sum()), "cars": int(len(np.unique(labels.car[mask]))), "healthy_car_hours": round(hours, 1),
                "false_alerts": n_false, "false_alerts_per_1000_car_hours": round(1000.0 * n_false / hours, 2) if hours else 0.0,
                "failing_events": n_failing,
                "recall": round(int((mask & failing & alerting).sum()) / n_failing, 4) if n_failing else None}  # fmt: skip

    periods = {}
    for i, (version, since) in enumerate(scored_from):
        until = scored_from[i + 1][1] if i + 1 < len(scored_from) else None
        period = np.ones(len(a), bool)
        if since is not None:
            period &= log.ts_ms >= since
        if until is not None:
            period &= log.ts_ms < until
        if period.any():
            name = f"v{version}" if f"v{version}" not in periods else f"v{version} again"
            periods[name] = {"version": version, "all": figures(period), "updated": figures(period & updated),
                                      "not_updated": figures(period & ~updated)}  # fmt: skip
    bucket = (log.ts_ms - t0_ms) // int(bucket_s * 1000)
    timeline = []
    for b in np.unique(bucket[bucket >= 0]):
        inside = bucket == b
        upd, rest = figures(inside & updated), figures(inside & ~updated)
        timeline.append({"t_s": float(b * bucket_s), "updated_share": round(float(updated[inside].mean()), 3),
                         "false_alerts_per_1000_car_hours_updated": upd["false_alerts_per_1000_car_hours"],
                         "false_alerts_per_1000_car_hours_not_updated": rest["false_alerts_per_1000_car_hours"],
                         "recall": figures(inside)["recall"]})  # fmt: skip
    return {"periods": periods, "timeline": timeline}


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def _json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
