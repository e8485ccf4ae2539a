"""Child processes of the demo: started as `fleetpulse <command>`, all stopped on exit or Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fleetpulse.errors import FleetPulseError


class StageFailed(FleetPulseError):
    """A demo stage's process failed; the message names it and its log."""


class Children:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fleetpulse.cli", *args]

    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            self.argv(*args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def run_json(self, name: str, *args: str, env: dict | None = None, show_progress: bool = True, timeout: float | None = None) -> dict:
        """Run a command to completion; its stderr (progress) goes to the terminal, the last stdout line is JSON."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                self.argv(*args), stdout=subprocess.PIPE, stderr=None if show_progress else log, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )  # fmt: skip
            self.procs[name] = proc
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop(name)
                raise StageFailed(f"{name} did not finish in {timeout:.0f}s (log: {log_path})") from None
            log.write(out)
        self.procs.pop(name, None)
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        if proc.returncode != 0:
            tail = lines[-1] if lines else ""
            raise StageFailed(f"`fleetpulse {' '.join(args[:1])}` failed with exit {proc.returncode}: {tail} (log: {log_path})")
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            raise StageFailed(f"`fleetpulse {args[0]}` printed no JSON summary (log: {log_path})") from None

    def check_alive(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise StageFailed(f"{name} exited with {proc.returncode} (log: {self.log_dir / f'{name}.log'})")

    def stop(self, name: str, timeout: float = 15) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


def wait_http_ok(url: str, timeout: float, alive=lambda: None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.3)
    raise StageFailed(f"{url} did not answer 200 within {timeout:.0f}s")
