"""Start and stop the stack's server processes, tracked by pid files so `down` stops only its own."""

from __future__ import annotations

import math
import os
import signal
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    pid_file: Path
    log_file: Path
    marker: str  # a string that must appear in the process's command line (guards against pid reuse)

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except FileNotFoundError:
            return None
        if _is_zombie(pid):
            return None
        # Right after fork, before exec, the child's cmdline is briefly empty: that is still ours.
        if cmdline.strip():
            return pid if self.marker in cmdline else None
        try:
            os.readlink(f"/proc/{pid}/exe")  # kernel threads (also empty cmdline) have no exe
        except OSError:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # survives the CLI process; Ctrl-C in the terminal does not reach it
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)  # a stopped (wedged) process only acts on SIGTERM once continued
        if not _gone_within(pid, timeout, tick=0.1):
            os.kill(pid, signal.SIGKILL)
            _gone_within(pid, math.inf, tick=0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self, timeout: float = 20.0) -> bool:
        """SIGKILL, and return once the process is gone: its ports closed, its files released.

        The kernel tears a killed process down after kill() returns, and its command line empties
        first: pid() stops recognising it while its listening sockets are still open (measured: a
        process holding 400 MB still had its port 20 times in 20 right after SIGKILL), so a server
        started on the same port at once found it "taken" (the Mosquitto kill -9 row, seen in CI).
        So the pid is kept from before the signal and waited on.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGKILL)
        if not _gone_within(pid, timeout, tick=0.02):
            raise TimeoutError(f"{self.name} (pid {pid}) still alive {timeout:g} s after SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _gone_within(pid: int, timeout: float, tick: float) -> bool:
    """Wait until ``pid`` has exited (reaped if it is our child); False if it still runs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(tick)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if _is_zombie(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (another process may still take it before the caller binds),
    outside the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) can be taken while its server is down:
    a client reconnecting to it may be given that very port as its own source port and connect to
    itself (TCP simultaneous open), and then the restarted server cannot bind (seen: the Mosquitto kill -9
    row, "port is taken" on restart, its publisher reconnecting meanwhile).
    """
    low, high = _ephemeral_range()
    candidates = range(high + 1, 65536) if 65535 - high >= 1000 else range(10000, low)
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def port_owner(port: int) -> str:
    """Best-effort name of the program listening on ``port`` (for error messages)."""
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "another program"
    if 'users:(("' in out:
        name = out.split('users:(("', 1)[1].split('"', 1)[0]
        pid = out.split("pid=", 1)[1].split(",", 1)[0] if "pid=" in out else "?"
        return f"{name} (pid {pid})"
    return "another program"
