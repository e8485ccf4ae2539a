"""FerretDB 1.24 with its SQLite backend: the MongoDB-wire server, built from the Go module proxy."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources

from fleetpulse.stack.service import Service, ensure_dir
from fleetpulse.stack.settings import FERRETDB_VERSION

ASSETS = resources.files("fleetpulse.stack") / "assets" / "ferretdb"


class FerretDBService(Service):
    name = "mongodb"

    @property
    def port(self) -> int:
        return self.settings.mongodb_port

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def marker(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def binary(self):
        return self.settings.cache_dir / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"

    def install(self) -> None:
        if self.binary.exists():
            return
        go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
        if go is None:
            raise self.fail("Go is not installed; FerretDB is built from its Go module (install Go 1.24+)")
        src = ensure_dir(self.binary.parent / "src")
        for name in ("go.mod", "go.sum", "main.go"):
            (src / name).write_bytes((ASSETS / name).read_bytes())
        ensure_dir(self.dir)
        # `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` refuses the module (its go.mod has
        # replace directives), so build a tiny main over FerretDB's embeddable package from our own go.mod.
        proc = subprocess.run(
            [go, "build", "-o", str(self.binary), "."], cwd=src, capture_output=True, text=True, env={**os.environ, "CGO_ENABLED": "0"}
        )
        if proc.returncode != 0:
            (self.dir / "install.log").write_text(proc.stdout + proc.stderr)
            raise self.fail(f"go build of FerretDB {FERRETDB_VERSION} failed (see {self.dir / 'install.log'})")

    def argv(self) -> list[str]:
        data = ensure_dir(self.dir / "data")
        return [str(self.binary), "-listen-addr", f"{self.host}:{self.port}", "-sqlite-url", f"file:{data}/", "-log-level", "warn"]

    def round_trip(self) -> None:
        from pymongo import MongoClient

        client = MongoClient(self.uri, serverSelectionTimeoutMS=1500, socketTimeoutMS=3000, connectTimeoutMS=1500)
        try:
            client.admin.command("ping")
            health = client["fleetpulse_health"]["ping"]
            health.replace_one({"_id": "stack"}, {"_id": "stack", "ok": True}, upsert=True)
            if health.find_one({"_id": "stack"}) is None:
                raise RuntimeError("write did not read back")
            # FerretDB pools SQLite connections per database, so one database can hang while others
            # answer: look at the twin collection too.
            from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE

            client[TWIN_DATABASE][TWIN_COLLECTION].find_one({"_id": "__health__"})
        finally:
            client.close()

    def endpoint(self) -> dict:
        return {"uri": self.uri, "server": f"FerretDB {FERRETDB_VERSION} (SQLite)"}
