"""The demo report: one self-contained page that renders in a real browser with its plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from devtools.demo import report
from devtools.demo.collect import EventLog, alerting
from fleetpulse.evaluation import label, quality
from fleetpulse.ground_truth import TruthRecord

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def small_run() -> tuple[dict, object]:
    cars = [f"electric-vehicle-{i:05d}" for i in range(1, 5)]
    rows = [(c, i) for i in range(60) for c in cars]
    log = EventLog(
        car=np.array([r[0] for r in rows], dtype=object),
        partition=np.zeros(len(rows), dtype=np.int32),
        offset=np.arange(len(rows)),
        ts_ms=np.array([r[1] * 1000 for r in rows]),
    )
    truth = [TruthRecord(c, "healthy", 0, 0.0, 0, 10.0) for c in cars] + [TruthRecord(cars[0], "overheating", 30_000, 1.0, 30, 10.0)]
    off = int(log.offset[(log.car == cars[0]) & (log.ts_ms == 32_000)][0])
    alerts = [{"car_id": cars[0], "status": "failing", "source_partition": 0, "source_offset": off, "event_ts_ms": 32_000, "alert_ts_ms": 32_040}]
    ev = quality(alerting(log, alerts), label(log.car, log.ts_ms, truth))
    run = {
        "cars": 4, "alerts": 1, "twins": 4, "latencies_ms": [40], "events_per_s": 1234.0, "model_uri": "gs://fleetpulse-models/car-anomaly/1/",
        "threshold": 2.5, "throughput": [(0, 100.0), (1, 200.0)], "latency_timeline": [(0, 40.0)],
        "score_traces": {cars[0]: {"seq": list(range(60)), "score": [1.0] * 30 + [9.0] * 30, "onset_seq": 30, "mode": "overheating"}},
        "stages_s": {"train": 1.0}, "parameters": {"cars": 4},
    }  # fmt: skip
    return run, ev


def test_summary_has_every_documented_key(tmp_path):
    run, ev = small_run()
    summary = report.write(tmp_path, run, ev)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("cars", "events", "alerts", "twins", "f1", "precision", "recall", "median_detection_delay_events",
                "false_alerts_per_1000_car_hours", "events_per_s", "p99_latency_ms", "model_uri", "per_failure_mode"):  # fmt: skip
        assert key in on_disk, key
    assert on_disk["median_detection_delay_events"] == 2
    assert on_disk["per_failure_mode"]["overheating"]["recall"] == pytest.approx(28 / 30, abs=1e-4)


def test_report_is_self_contained(tmp_path):
    run, ev = small_run()
    report.write(tmp_path, run, ev)
    html = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html), "the report must not load anything from the network"
    assert html.count("<svg") >= 5  # architecture, score trace, delay histogram, throughput, latency


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make setup installs it)")
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    run, ev = small_run()
    report.write(tmp_path, run, ev)
    page = (tmp_path / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "FleetPulse demo report" in dom.stdout
    assert dom.stdout.count("<svg") >= 5 and "<polyline" in dom.stdout
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "ERROR" in line)]
    assert console_errors == []
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
