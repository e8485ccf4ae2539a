"""PostgreSQL for FerretDB's ``postgresql`` backend: Debian's server, a cluster of the stack's own.

`stack up` with ``mongodb_backend=postgresql`` runs initdb into the state dir once, then starts the
server on loopback TCP only (no Unix socket), every login scram-sha-256: a superuser the stack uses
for set-up, and a role and database that only FerretDB uses (passwords in 0600 files beside the data).

PostgreSQL refuses to run as root, which is who runs the stack here and in CI: as root the server runs
as Debian's ``postgres`` user, with CAP_DAC_READ_SEARCH so it can reach a state dir under root's 0700
home (it can read, not write, outside its data directory).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

from devtools.stack.process import ManagedProcess
from devtools.stack.service import Service, ensure_private_dir, write_private

SUPERUSER = "fleetpulse"
ROLE = "ferretdb"
DATABASE = "ferretdb"
ID_LOOKUP_SUFFIX = "_id_lookup"
SERVER_USER = "postgres"
"""Who the server runs as when the stack runs as root (Debian's postgresql package creates it)."""

FERRETDB_POOL = 200
"""FerretDB's connections to PostgreSQL (pgx pool; FerretDB's default is 50).

FerretDB 1.24 keeps the query of every matched update of an `update` command open until the command
ends, each on its own pooled connection, and takes one more to write: more matched upserts in flight
at once than the pool holds, over all clients, hang the server until it restarts (as the SQLite
backend's 100 do; measured with this pool: a bulk of 199 passes, 200 hangs). 200 leaves the
transformer's chunks of 20 room for several writers, and a lone writer chunks up to 199."""
MAX_CONNECTIONS = FERRETDB_POOL + 10  # and a few for the stack's own psql sessions


class Postmaster(ManagedProcess):
    def stop(self, timeout: float = 20.0) -> bool:
        # SIGINT is PostgreSQL's fast shutdown; the SIGTERM that ManagedProcess sends waits for every
        # client to disconnect, and a FerretDB that is still up keeps its pool open.
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGINT)
        return super().stop(timeout)


class PostgresService(Service):
    name = "postgresql"

    def __init__(self, settings, index: int = 0):
        super().__init__(settings, index)
        self.process = Postmaster(self.label, self.dir / "pid", self.dir / f"{self.label}.log", self.marker())

    @property
    def port(self) -> int:
        return self.settings.postgresql_port

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def marker(self) -> str:
        return str(self.data)

    @property
    def bin_dir(self) -> Path:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
        if not versions:
            raise self.fail("PostgreSQL is not installed; install it (apt-get install -y postgresql)")
        return versions[-1].parent

    def install(self) -> None:
        self.bin_dir  # noqa: B018 - fails with the install hint when the server is missing
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise self.fail(f"running as root, the server needs the {SERVER_USER!r} user (apt-get install -y postgresql)") from None

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]

    def password(self, user: str) -> str:
        """``user``'s password, made on first use (a secret: never log it)."""
        path = ensure_private_dir(self.dir) / f"{user}.password"
        if not path.exists():
            write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def prepare(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        # Written at every start, so a cluster made by an older stack gets today's rules.
        (self.data / "pg_hba.conf").write_text(
            "# Written by the FleetPulse stack at every start (devtools/stack/postgres.py).\n"
            f"host all all {self.host}/32 scram-sha-256\n"
        )

    def _initdb(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)  # what a failed initdb left
        self.data.mkdir(parents=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        pwfile = self.dir / f"{SUPERUSER}.password"
        self.password(SUPERUSER)
        # C locale and UTF8: FerretDB refuses any other encoding and all but a few locales.
        proc = subprocess.run(
            [*self._as_server_user(), str(self.bin_dir / "initdb"), "-D", str(self.data), f"--username={SUPERUSER}",
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            (self.dir / "initdb.log").write_text(proc.stdout + proc.stderr)
            raise self.fail(f"initdb failed: {(proc.stdout + proc.stderr).strip()[-300:]}")

    def argv(self) -> list[str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": str(MAX_CONNECTIONS),
            "log_min_messages": "warning",
            "log_checkpoints": "off",
        }
        return [*self._as_server_user(), str(self.bin_dir / "postgres"), "-D", str(self.data),
                *(arg for k, v in settings.items() for arg in ("-c", f"{k}={v}"))]  # fmt: skip

    def psql(self, sql: str, database: str = "postgres", timeout: float = 30.0) -> str:
        """Run ``sql`` (from stdin, so passwords in it stay out of argv) as the superuser; returns its rows."""
        proc = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", database],
            input=sql, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PGPASSWORD": self.password(SUPERUSER), "PGCONNECT_TIMEOUT": "2"},
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"psql: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def round_trip(self) -> None:
        if self.psql("SELECT 1").strip() != "1":
            raise RuntimeError("SELECT 1 did not answer 1")

    def after_ready(self) -> None:
        # plan_cache_mode: FerretDB prepares its statements (pgx's statement cache), and the `_id` lookup
        # names its key as a parameter (``_jsonb->$1 @> $2``), which only a plan for the given values can
        # match to the lookup index; a generic plan, chosen while the collection was still small, kept
        # scanning the table as it grew (bench/twin.py: 159 against 689 upserts/s at 10,000 twins).
        self.psql(
            f"""
            DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN CREATE ROLE {ROLE} LOGIN; END IF;
            END $$;
            ALTER ROLE {ROLE} LOGIN PASSWORD '{self.password(ROLE)}';
            ALTER ROLE {ROLE} SET plan_cache_mode = force_custom_plan;
            SELECT 'CREATE DATABASE {DATABASE} OWNER {ROLE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')
            \\gexec
            """
        )

    def ferretdb_url(self) -> str:
        """FerretDB's ``--postgresql-url`` (a secret: pass it in the environment, never argv)."""
        return (f"postgres://{ROLE}:{quote(self.password(ROLE))}@{self.host}:{self.port}/{DATABASE}"
                f"?pool_max_conns={FERRETDB_POOL}")

    def ensure_id_lookup_indexes(self) -> list[str]:
        """Index the ``_id`` lookup FerretDB pushes down on every collection's table; returns the tables indexed now.

        FerretDB 1.24 pushes ``{_id: <string>}`` down as ``_jsonb->'_id' @> '"<id>"'`` (find, and the
        query of every update and upsert) but indexes ``_jsonb->'_id'`` with a btree, which ``@>``
        cannot use: each lookup by _id read the whole table. A GIN index on the same expression serves
        ``@>`` (10,000 small documents: 1,647 finds/s against 133). FerretDB does not know about it (an
        ordinary index, kept up by every write, dropped with the table). Without fastupdate: every
        update adds an entry, and GIN's pending list, which each lookup scans, made finds ~1.3-2.7x
        and upserts ~1.2-1.6x dearer in CPU at 30,000 twins. Idempotent, safe while FerretDB runs.
        """
        rows = self.psql(
            f"""
            SELECT c.table_schema || '.' || c.table_name FROM information_schema.columns c
            WHERE c.column_name = '_jsonb' AND c.table_name <> '_ferretdb_database_metadata'
              AND NOT EXISTS (SELECT FROM pg_indexes i WHERE i.schemaname = c.table_schema
                              AND i.indexname = c.table_name || '{ID_LOOKUP_SUFFIX}');
            """,
            database=DATABASE,
        ).split()
        for table in rows:
            schema, name = table.split(".", 1)
            self.psql(f"""CREATE INDEX IF NOT EXISTS "{name}{ID_LOOKUP_SUFFIX}" ON "{schema}"."{name}" """
                      f"""USING gin ((_jsonb->'_id') jsonb_path_ops) WITH (fastupdate = off)""", database=DATABASE)  # fmt: skip
        return rows

    def endpoint(self) -> dict:
        return {"host": self.host, "port": self.port, "database": DATABASE, "role": ROLE, "data_dir": str(self.data)}

