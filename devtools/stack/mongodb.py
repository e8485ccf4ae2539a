"""FerretDB 1.24 with its SQLite backend: the MongoDB-wire server, built from the Go module proxy."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from importlib import resources
from pathlib import Path

from devtools.stack.service import Service, ensure_dir
from devtools.stack.settings import FERRETDB_VERSION

ASSETS = resources.files("devtools.stack") / "assets" / "ferretdb"


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

    def after_ready(self) -> None:
        from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE

        self._ensure_collection(TWIN_DATABASE, TWIN_COLLECTION)
        ensure_id_lookup_indexes(self.dir / "data")

    def _ensure_collection(self, database: str, collection: str) -> None:
        from pymongo import MongoClient
        from pymongo.errors import CollectionInvalid

        client = MongoClient(self.uri, serverSelectionTimeoutMS=1500, socketTimeoutMS=10000, connectTimeoutMS=1500)
        try:
            if collection not in client[database].list_collection_names():
                try:
                    client[database].create_collection(collection)
                except CollectionInvalid:
                    pass  # created concurrently
        finally:
            client.close()

    def endpoint(self) -> dict:
        return {"uri": self.uri, "server": f"FerretDB {FERRETDB_VERSION} (SQLite)"}


# FerretDB 1.24's SQLite backend pushes a `{_id: <string>}` filter down as
# `WHERE _ferretdb_sjson->'$._id' = ?` (find, and every statement of update/upsert) but creates the
# `_id_` index on `_ferretdb_sjson->"_id"`. SQLite uses an expression index only for the identical
# expression, so every lookup by _id scanned the whole table: twin upserts ran at ~60/s with 1k
# documents and ~1/s with 50k (bench/twin.py). An index on the pushed-down expression turns them
# into index searches (~750-850 upserts/s at 1k-50k documents in bench/twin.py). It is an ordinary SQLite index
# FerretDB does not know about: it is maintained by every insert/update and dropped with the table.
ID_LOOKUP_SUFFIX = "_id_lookup"


def ensure_id_lookup_indexes(data_dir: Path) -> list[str]:
    """Create the _id lookup index on every collection of every FerretDB database in ``data_dir``.

    Idempotent and safe while FerretDB runs (WAL; waits for its write lock). Returns the tables indexed now.
    """
    created = []
    for db_file in sorted(Path(data_dir).glob("*.sqlite")):
        con = sqlite3.connect(db_file, timeout=30)
        try:
            tables = [row[0] for row in con.execute("SELECT table_name FROM _ferretdb_collections")]
            existing = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
            for table in tables:
                name = f"{table}{ID_LOOKUP_SUFFIX}"
                if name not in existing:
                    con.execute(f"""CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" (_ferretdb_sjson->'$._id')""")
                    created.append(table)
            con.commit()
        except sqlite3.OperationalError as exc:
            if "no such table: _ferretdb_collections" not in str(exc):
                raise
        finally:
            con.close()
    return created
