"""A `fleetpulse` service process a test talks to: waits for its output lines, reads its probes, stops it."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request


class WatchedProcess:
    def __init__(self, argv: list[str], env: dict[str, str], metrics_port: int):
        self.metrics_port = metrics_port
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self._lines: queue.Queue = queue.Queue()
        for stream, name in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            threading.Thread(target=self._pump, args=(stream, name), daemon=True).start()

    def _pump(self, stream, name: str) -> None:
        for line in stream:
            self._lines.put((name, line.rstrip()))

    def next_line(self, where: str, containing: str, timeout: float = 60.0) -> str:
        """The next line on ``where`` ("out" or "err") that contains ``containing``; earlier lines are passed over."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                name, line = self._lines.get(timeout=1)
            except queue.Empty:
                continue
            if name == where and containing in line:
                return line
        raise AssertionError(f"no {where} line with {containing!r} within {timeout:.0f} s")

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of an HTTP GET on its metrics/probe port."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM, then its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
