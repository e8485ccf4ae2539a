"""What every local-stack server has: install on first use, start, a real round-trip readiness check."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path

from fleetpulse.errors import StackError
from devtools.stack.process import ManagedProcess, port_in_use, port_owner
from devtools.stack.settings import StackSettings


class Service(ABC):
    name: str

    def __init__(self, settings: StackSettings, index: int = 0):
        self.settings = settings
        self.index = index
        label = self.name if index == 0 else f"{self.name}-{index}"
        self.label = label
        self.dir = settings.service_dir(label)
        self.process = ManagedProcess(label, self.dir / "pid", self.dir / f"{label}.log", self.marker())

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    @abstractmethod
    def port(self) -> int: ...

    def ports(self) -> list[int]:
        return [self.port]

    @abstractmethod
    def marker(self) -> str:
        """A string in the server's command line that identifies this stack's process."""

    @abstractmethod
    def install(self) -> None:
        """Fetch or build the server into the cache (no-op when already there)."""

    @abstractmethod
    def argv(self) -> list[str]: ...

    def prepare(self) -> None:
        """Write config, format storage; runs before every start."""

    @abstractmethod
    def round_trip(self) -> None:
        """One real request/response against the server; raise on failure."""

    @abstractmethod
    def endpoint(self) -> dict: ...

    def after_ready(self) -> None:
        """Create topics, buckets and the like; idempotent."""

    def env(self) -> dict[str, str]:
        return {}

    def fail(self, why: str) -> StackError:
        return StackError(f"{self.label}: {why} (log: {self.process.log_file})")

    def start(self) -> bool:
        """Start unless already running; return True if it was started now."""
        if self.process.running():
            return False
        for port in self.ports():
            if port_in_use(self.host, port):
                raise StackError(
                    f"{self.label}: port {self.host}:{port} is taken by {port_owner(port)}; stop it or choose "
                    f"another port with FLEETPULSE_STACK_* settings"
                )
        self.install()
        self.prepare()
        self.process.start(self.argv(), env=self.env(), cwd=self.dir)
        return True

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.process.running():
                tail = self.process.log_tail(3).replace("\n", " | ")
                raise self.fail(f"exited during start-up: {tail[-300:]}")
            try:
                self.round_trip()
                self.after_ready()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"; reported on timeout
                last = exc
                time.sleep(0.3)
        raise self.fail(f"not answering after {timeout:.0f}s ({type(last).__name__}: {last})")

    def status(self) -> dict:
        return {**self.endpoint(), "running": self.process.running()}


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_private_dir(path: Path) -> Path:
    """A directory only its owner can enter (it holds keys, passwords or their hashes)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``data`` to a file only its owner can read, never briefly readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    path.chmod(0o600)
