"""The demo's CPU meter: a process's CPU seconds over a stretch, its children's included."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from devtools.demo.cpu import CpuMeter


def test_a_launcher_is_charged_with_the_cpu_its_busy_child_uses_and_an_idle_process_with_none():
    # The launcher itself sleeps; its child spins for the whole stretch.
    busy = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                             "'import time\\nt = time.time()\\nwhile time.time() - t < 3: pass'])"])  # fmt: skip
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    time.sleep(0.5)
    meter = CpuMeter({"busy": busy.pid, "idle": idle.pid})
    meter.start()
    time.sleep(2.0)
    out = meter.stop()
    busy.wait(10)
    idle.wait(10)
    assert out["cpu_s"]["busy"] > 0.3  # a spinning child on a box shared with others: a good part of a core
    assert out["cpu_s"]["idle"] < 0.2
    assert out["cpu_share"] == pytest.approx((out["cpu_s"]["busy"] + out["cpu_s"]["idle"]) / (out["wall_s"] * out["cores"]), abs=0.03)
