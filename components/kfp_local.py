"""Run kubeflow/pipeline.py's car_anomaly_training with kfp.local (SubprocessRunner, no Docker).

``use_venv=False`` makes kfp.local run each component with this interpreter (sys.executable), which
has the training image's packages, so nothing is installed. kubeflow/ is a folder of files, not a
package, so the pipeline module is loaded by path. kfp.local prints every step's output on stdout;
that goes to a log file, the steps' progress lines go to stderr, and a failed step's exception
becomes the one-line error (stdout stays free for --json).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

from fleetpulse.errors import FleetPulseError

PIPELINE_FILE = Path(__file__).resolve().parents[1] / "kubeflow" / "pipeline.py"
_PROGRESS = re.compile(r"^\s*(train|evaluate|publish): ")
_EXCEPTION = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Unavailable|Failed)): (.+)$")
_STATUS = re.compile(r"Task .*'(\w+)'.* finished with status")


def load_pipeline_module():
    if not PIPELINE_FILE.exists():
        raise FleetPulseError(f"{PIPELINE_FILE} not found (an installed copy without the repo?); use --runner direct")
    spec = importlib.util.spec_from_file_location("fleetpulse_kubeflow_pipeline", PIPELINE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _StepLog(io.TextIOBase):
    """Receives kfp.local's stdout: keeps all of it in a log, forwards progress, remembers errors."""

    def __init__(self, log_path: Path, progress):
        self.log = open(log_path, "w")
        self.progress = progress
        self.buffer = ""
        self.last_error: str | None = None

    def write(self, text: str) -> int:
        self.log.write(text)
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            clean = re.sub(r"\x1b\[[0-9;]*m", "", line)
            if _PROGRESS.match(clean):
                self.progress(clean.strip())
            elif m := _EXCEPTION.match(clean):
                self.last_error = m.group(2).strip()
            elif m := _STATUS.search(clean):
                self.progress(f"kfp.local: step {m.group(1)} {'succeeded' if 'SUCCESS' in clean else 'failed'}")
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def run(arguments: dict, progress=lambda message: None, pipeline_root: Path | None = None) -> dict:
    """Run the pipeline locally; returns the publish step's JSON result."""
    from kfp import local

    module = load_pipeline_module()
    log_path = Path(tempfile.gettempdir()) / f"fleetpulse-train-{time.strftime('%Y%m%d-%H%M%S')}.log"
    sink = _StepLog(log_path, progress)
    with tempfile.TemporaryDirectory(prefix="fleetpulse-kfp-") as tmp:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root or tmp), raise_on_error=True)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            # kfp.local warns that a non-Python base image may differ from this interpreter; the
            # training image is built from the same lock, which is the point of use_venv=False.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
            try:
                task = module.car_anomaly_training(**arguments)
            except RuntimeError as exc:
                sink.flush()
                reason = sink.last_error or str(exc).splitlines()[0]
                raise FleetPulseError(f"{reason} (kfp.local log: {log_path})") from None
            finally:
                sys.stdout.flush()
    sink.flush()
    return json.loads(task.output)
