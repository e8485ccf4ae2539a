"""FerretDB 1.24, the MongoDB-wire server, built from the Go module proxy, over SQLite or PostgreSQL.

The backend is ``mongodb_backend`` (SQLite by default: files in FerretDB's state dir). With
``postgresql`` the stack runs a PostgreSQL server of its own (postgres.py) and FerretDB's own command
(cmd/ferretdb: the embeddable build in assets/ferretdb is SQLite only) with ``--handler=postgresql``.

Secured (`stack up --secure`), FerretDB runs its own command (cmd/ferretdb, built from the same module)
with ``--test-enable-new-auth``: SCRAM-SHA-256 users stored by FerretDB itself, which works with both
backends (without it, 1.24 only passes PLAIN credentials through to a PostgreSQL backend; with it, an
authenticated client's commands reach PostgreSQL as FerretDB's own role), and every command but the
handshake refused until a client authenticates. The flag is marked experimental,
and 1.24 has no roles (``createUser`` rejects any): a user may read and write every database. So only
``admin`` and the services that use MongoDB get a user (rights.MONGODB_USERS), and the server listens
on loopback only, with TLS from the stack's CA.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from devtools.stack.credentials import IdentityStore
from devtools.stack.pki import SERVER, Pki, ensure_pki
from devtools.stack.postgres import PostgresService
from devtools.stack.rights import ADMIN, MONGODB_USERS
from devtools.stack.service import Service, ensure_dir
from devtools.stack.settings import FERRETDB_VERSION

AUTH_MARKER = "auth-initialised"
"""Written once FerretDB has its admin user: a data dir without it was created without authentication."""
POSTGRESQL_SERVED = "postgresql-served"
"""Written once FerretDB has served from the stack's PostgreSQL (its data lives there, not in data/)."""

ASSETS = resources.files("devtools.stack") / "assets" / "ferretdb"


class FerretDBService(Service):
    name = "mongodb"

    @property
    def port(self) -> int:
        return self.settings.mongodb_port

    @property
    def uri(self) -> str:
        """Where clients connect, without credentials (secured: add a user's, `stack credentials NAME`)."""
        if not self.settings.secure:
            return f"mongodb://{self.host}:{self.port}/"
        return f"mongodb://{self.host}:{self.port}/?tls=true&tlsCAFile={quote(str(Pki(self.settings.pki_dir).ca_file))}"

    def uri_for(self, name: str) -> str:
        """``uri`` with ``name``'s credentials (a secret: never log it)."""
        if not self.settings.secure:
            return self.uri
        password = IdentityStore(self.settings.identities_dir).password(name)
        ca_file = quote(str(Pki(self.settings.pki_dir).ca_file))
        return (f"mongodb://{quote(name)}:{quote(password)}@{self.host}:{self.port}/"
                f"?tls=true&tlsCAFile={ca_file}&authSource=admin&authMechanism=SCRAM-SHA-256")

    def marker(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def on_postgresql(self) -> bool:
        return self.settings.mongodb_backend == "postgresql"

    @property
    def own_command(self) -> bool:
        """FerretDB's cmd/ferretdb rather than the stack's embeddable build (SQLite without authentication only)."""
        return bool(self.settings.secure) or self.on_postgresql

    @property
    def binary(self):
        if self.own_command:
            return self.settings.cache_dir / f"ferretdb-{FERRETDB_VERSION}" / "cmd" / "ferretdb"
        return self.settings.cache_dir / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"

    def install(self) -> None:
        if self.binary.exists():
            return
        go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
        if go is None:
            raise self.fail("Go is not installed; FerretDB is built from its Go module (install Go 1.24+)")
        if self.own_command:
            self._build_command(go)
            return
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

    def _build_command(self, go: str) -> None:
        """Build FerretDB's own command: the embeddable package above cannot switch on its new authentication."""
        proc = subprocess.run([go, "mod", "download", "-json", f"github.com/FerretDB/FerretDB@v{FERRETDB_VERSION}"],
                              capture_output=True, text=True, cwd=ensure_dir(self.binary.parent))
        if proc.returncode != 0:
            raise self.fail(f"go mod download of FerretDB {FERRETDB_VERSION} failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
        src = self.binary.parent / "src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(json.loads(proc.stdout)["Dir"], src)
        for path in [src, *src.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
        # cmd/ferretdb panics at start unless build/version/version.txt names the version (FerretDB's
        # release tooling writes it; a module download does not carry it).
        (src / "build" / "version" / "version.txt").write_text(f"v{FERRETDB_VERSION}\n")
        ensure_dir(self.dir)
        proc = subprocess.run([go, "build", "-o", str(self.binary), "./cmd/ferretdb"], cwd=src, capture_output=True, text=True,
                              env={**os.environ, "CGO_ENABLED": "0"})
        if proc.returncode != 0:
            (self.dir / "install.log").write_text(proc.stdout + proc.stderr)
            raise self.fail(f"go build of FerretDB {FERRETDB_VERSION}'s command failed (see {self.dir / 'install.log'})")
        shutil.rmtree(src, ignore_errors=True)

    def prepare(self) -> None:
        data = self.dir / "data"
        has_data = (self.dir / POSTGRESQL_SERVED).exists() if self.on_postgresql else any(data.glob("*.sqlite"))
        if self.settings.secure and has_data and not (self.dir / AUTH_MARKER).exists():
            raise self.fail(
                f"its data ({data}) was created without authentication and has no admin user; "
                "`fleetpulse stack down --wipe` (drops the twins) or another FLEETPULSE_STACK_STATE_DIR"
            )

    def sqlite_url(self) -> str:
        """FerretDB's SQLite directory URL; FerretDB adds its own pragmas (WAL, busy timeout) beside this one."""
        return f"file:{ensure_dir(self.dir / 'data')}/?_pragma=synchronous({self.settings.mongodb_sqlite_synchronous})"

    def argv(self) -> list[str]:
        if not self.own_command:
            return [str(self.binary), "-listen-addr", f"{self.host}:{self.port}", "-sqlite-url", self.sqlite_url(), "-log-level", "warn"]
        # The PostgreSQL URL holds FerretDB's password: it goes in the environment (env()), not argv.
        backend = ["--handler=postgresql"] if self.on_postgresql else ["--handler=sqlite", f"--sqlite-url={self.sqlite_url()}"]
        common = ["--telemetry=disable", "--debug-addr=-", "--log-level=warn", f"--state-dir={self.dir}"]
        if not self.settings.secure:
            return [str(self.binary), *backend, f"--listen-addr={self.host}:{self.port}", *common]
        server = ensure_pki(self.settings.pki_dir, [self.host]).certificate(SERVER)
        return [
            str(self.binary), *backend,
            "--listen-addr=", f"--listen-tls={self.host}:{self.port}",
            f"--listen-tls-cert-file={server.cert_file}", f"--listen-tls-key-file={server.key_file}",
            # The first start creates the admin user (password from the environment, not argv).
            "--test-enable-new-auth", f"--setup-username={ADMIN}", "--setup-database=admin",
            *common,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = {"GOGC": str(self.settings.mongodb_gogc)}
        if self.on_postgresql:
            env["FERRETDB_POSTGRESQL_URL"] = PostgresService(self.settings).ferretdb_url()
        if self.settings.secure:
            env["FERRETDB_SETUP_PASSWORD"] = IdentityStore(self.settings.identities_dir).password(ADMIN)
        return env

    def round_trip(self) -> None:
        from pymongo import MongoClient

        client = MongoClient(self.uri_for(ADMIN), serverSelectionTimeoutMS=1500, socketTimeoutMS=3000, connectTimeoutMS=1500)
        try:
            client.admin.command("ping")
            health = client["fleetpulse_health"]["ping"]
            health.replace_one({"_id": "stack"}, {"_id": "stack", "ok": True}, upsert=True)
            if health.find_one({"_id": "stack"}) is None:
                raise RuntimeError("write did not read back")
            # FerretDB pools SQLite connections per database, so one database can hang while others
            # answer: look at the twin collection too (on PostgreSQL, a database is a schema).
            from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE

            client[TWIN_DATABASE][TWIN_COLLECTION].find_one({"_id": "__health__"})
        finally:
            client.close()

    def after_ready(self) -> None:
        from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE

        if self.settings.secure:
            (self.dir / AUTH_MARKER).touch()
            self._ensure_users()
        self._ensure_collection(TWIN_DATABASE, TWIN_COLLECTION)
        if self.on_postgresql:
            (self.dir / POSTGRESQL_SERVED).touch()
            PostgresService(self.settings).ensure_id_lookup_indexes()
        else:
            ensure_id_lookup_indexes(self.dir / "data")

    def _ensure_users(self) -> None:
        """A user per service that uses MongoDB, with the store's password (set again if it differs)."""
        from pymongo import MongoClient

        store = IdentityStore(self.settings.identities_dir)
        client = MongoClient(self.uri_for(ADMIN), serverSelectionTimeoutMS=1500, socketTimeoutMS=10000, connectTimeoutMS=1500)
        try:
            existing = {u["user"] for u in client.admin.command("usersInfo")["users"]}
            for name in MONGODB_USERS:
                command = "updateUser" if name in existing else "createUser"
                client.admin.command(command, name, pwd=store.password(name), roles=[])
        finally:
            client.close()

    def _ensure_collection(self, database: str, collection: str) -> None:
        from pymongo import MongoClient
        from pymongo.errors import CollectionInvalid

        client = MongoClient(self.uri_for(ADMIN), serverSelectionTimeoutMS=1500, socketTimeoutMS=10000, connectTimeoutMS=1500)
        try:
            if collection not in client[database].list_collection_names():
                try:
                    client[database].create_collection(collection)
                except CollectionInvalid:
                    pass  # created concurrently
        finally:
            client.close()

    def endpoint(self) -> dict:
        auth = {"auth": "SCRAM-SHA-256"} if self.settings.secure else {}
        backend = "PostgreSQL" if self.on_postgresql else "SQLite"
        return {"uri": self.uri, "server": f"FerretDB {FERRETDB_VERSION} ({backend})", **auth}


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
