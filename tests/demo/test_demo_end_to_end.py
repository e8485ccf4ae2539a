"""`fleetpulse demo` end to end on the local stack: every stage as its own process, measured output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devtools.stack import access, control
from devtools.stack.rights import ADMIN, SERVICES
from devtools.stack.settings import StackSettings


def _secrets() -> dict[str, str]:
    """Every service's and the operator's password, when the stack is secured (else none)."""
    if not access.secured():
        return {}
    return {name: control.credentials(StackSettings(), name)["password"] for name in (ADMIN, *SERVICES)}


@pytest.mark.slow
def test_demo_runs_the_whole_story_and_reports_measured_quality(stack, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fleetpulse.cli", "demo", "--cars", "500", "--rate", "5", "--train-duration", "30",
         "--duration", "24", "--epochs", "4", "--min-f1", "0", "--keep-stack", "--out", str(out), "--json"],  # fmt: skip
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["cars"] == 500
    assert summary["twins"] == summary["cars"], "every car that sent events has a twin"
    assert summary["events"] >= 0.99 * 500 * 5 * 24, "the detection stretch reached the scorer (QoS 1, nothing dropped)"
    assert summary["model_uri"].startswith("gs://fleetpulse-models/car-anomaly/")
    # Alerts come from the model this run trained and reports, not from an earlier run's stable.
    assert f"serving car-anomaly version {summary['model_version']} " in (out / "logs" / "serve.log").read_text()
    assert summary["alerts"] > 0 and summary["p99_latency_ms"] is not None
    # Quality is measured, not assumed: a floor that a working pipeline clears with margin.
    quality = {k: summary[k] for k in ("f1", "precision", "recall", "false_alerts_per_1000_car_hours")}
    assert summary["precision"] > 0.8 and summary["recall"] > 0.5, quality
    assert (out / "report.html").read_text().count("<svg") >= 5
    # What the stretch cost: the box's CPU share, each server and service named, the simulator not.
    assert 0 < summary["cpu_share"] <= 1 and {"kafka", "mongodb", "bridge", "score", "serve"} <= set(summary["cpu"]["cpu_s"])
    assert not any(name.startswith("simulate") for name in summary["cpu"]["cpu_s"])
    assert summary["twin_freshness_p99_s"] is not None and summary["drain_s"] is not None
    # Secured, every service logged in as itself: no password on the terminal, in a log or a report.
    written = proc.stdout + proc.stderr + "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    leaked = [name for name, secret in _secrets().items() if secret in written]
    assert not leaked, f"the passwords of {leaked} were printed or written"
