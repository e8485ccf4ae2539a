"""Settings of the local stack: ports, state and cache directories (env prefix ``FLEETPULSE_STACK_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from fleetpulse.endpoints import LocalEndpoints


KAFKA_VERSION = "3.9.2"
FERRETDB_VERSION = "1.24.2"


class StackSettings(LocalEndpoints):
    """The kernel's endpoints plus where the stack keeps its state and downloads."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_STACK_", extra="ignore")

    state_dir: Path = Field(default_factory=lambda: Path.home() / ".local/state/fleetpulse")
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache/fleetpulse")
    kafka_heap: str = "1g"
    start_timeout_s: float = 90.0
    secure: bool | None = None
    """TLS, an identity per car and service, and ACLs (`stack up --insecure` turns them off); None: as
    the stack was last brought up (on for a new one)."""
    mqtt_tls_port: int | None = None
    """Mosquitto's first TLS port (broker i listens on it + i); default mqtt_port + 7000, MQTT's 1883 -> 8883."""
    mongodb_backend: Literal["sqlite", "postgresql"] = "sqlite"
    """Where FerretDB keeps the documents: SQLite files in its state dir, or a PostgreSQL server the stack
    runs itself (devtools/stack/postgres.py)."""
    mongodb_sqlite_synchronous: Literal["FULL", "NORMAL"] = "NORMAL"
    """SQLite's ``synchronous`` under FerretDB (WAL mode). NORMAL: a commit is in the WAL (the OS's page
    cache) when FerretDB answers, so it survives FerretDB and the transformer crashing, not the machine
    losing power; FULL also fsyncs every commit. NORMAL is what the rest of the stack already promises:
    its single Kafka broker acknowledges before any fsync (Kafka's default flush policy), so a power loss
    takes acknowledged events there too. Measured: bench/twin.py ``--tuning``."""
    mongodb_gogc: int = 400
    """GOGC for FerretDB: how far its heap may grow past the live heap before Go collects (Go's default
    100). FerretDB allocates per document decoded; a live heap of ~20 MB lets 400 cost some tens of MB."""
    postgresql_port: int = 25432
    """That PostgreSQL server's port (loopback only; not 5432, where Debian's own cluster may listen)."""

    def service_dir(self, name: str) -> Path:
        return self.state_dir / name

    @property
    def tls_port_base(self) -> int:
        return self.mqtt_tls_port if self.mqtt_tls_port is not None else self.mqtt_port + 7000

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def identities_dir(self) -> Path:
        return self.state_dir / "identities"
