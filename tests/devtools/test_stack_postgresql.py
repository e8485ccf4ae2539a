"""FerretDB on the stack's own PostgreSQL (``mongodb_backend=postgresql``): private servers on free ports,
started by the stack's own code, twins round-tripped with pymongo; never the shared stack."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.stack import control
from devtools.stack.mongodb import FerretDBService
from devtools.stack.postgres import DATABASE, ROLE, PostgresService
from devtools.stack.process import free_port, port_in_use
from devtools.stack.rights import ADMIN
from devtools.stack.settings import StackSettings
from fleetpulse.twin import TWIN_COLLECTION, TWIN_DATABASE

_DUPLICATE_KEY = 11000


def private_settings(state_dir: Path, secure: bool = False) -> StackSettings:
    ports = {f"{name}_port": free_port() for name in ("kafka", "kafka_controller", "mqtt", "mqtt_tls", "mongodb", "gcs", "postgresql")}
    return StackSettings(state_dir=state_dir, mongodb_backend="postgresql", secure=secure, **ports)


def start_postgresql_and_ferretdb(settings: StackSettings) -> tuple[PostgresService, FerretDBService]:
    """The two servers `stack up` starts for MongoDB on this backend, in its order."""
    postgres, ferretdb = [s for s in control.services(settings) if s.name in ("postgresql", "mongodb")]
    for svc in (postgres, ferretdb):
        svc.start()
    for svc in (postgres, ferretdb):
        svc.wait_ready(settings.start_timeout_s)
    return postgres, ferretdb


def stack_env(settings: StackSettings) -> dict[str, str]:
    """What points the `fleetpulse` CLI at a private stack."""
    env = {f"FLEETPULSE_STACK_{k.upper()}": str(v) for k, v in settings.model_dump().items()
           if k.endswith("_port") and v is not None}  # fmt: skip
    return {**env, "FLEETPULSE_STACK_STATE_DIR": str(settings.state_dir), "FLEETPULSE_STACK_MONGODB_BACKEND": "postgresql"}


def twin(car: str, partition: int, offset: int, status: str = "ok") -> dict:
    return {"_id": car, "status": status, "score": 0.25, "counters": {"events": 3}, "offsets": {str(partition): offset}}


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory):
    settings = private_settings(tmp_path_factory.mktemp("pg-stack"))
    postgres, ferretdb = start_postgresql_and_ferretdb(settings)
    yield settings, postgres, ferretdb
    control.down(settings, wipe=True)


@pytest.fixture
def twins(pg_stack, unique):
    from pymongo import MongoClient

    client = MongoClient(pg_stack[2].uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=30000)
    yield client[TWIN_DATABASE][f"cars_{unique}"]
    client.close()


def test_ferretdb_reports_the_postgresql_backend_and_keeps_no_sqlite_files(pg_stack):
    settings, postgres, ferretdb = pg_stack
    assert ferretdb.endpoint()["server"].endswith("(PostgreSQL)")
    state = control.status(settings)
    assert state["postgresql"]["running"] and state["mongodb"]["running"]
    assert not list((ferretdb.dir / "data").glob("*.sqlite"))


def test_twins_round_trip_through_postgresql(twins):
    from pymongo import UpdateOne

    twins.insert_many([twin(f"car-{i}", 0, i) for i in range(50)])
    twins.bulk_write([UpdateOne({"_id": f"car-{i}"}, {"$set": {"status": "alert", "offsets.1": 7}}, upsert=True)
                      for i in range(40, 60)], ordered=False)  # fmt: skip
    assert twins.count_documents({}) == 60
    assert twins.find_one({"_id": "car-45"}) == {**twin("car-45", 0, 45, "alert"), "offsets": {"0": 45, "1": 7}}
    assert twins.find_one({"_id": "car-55"}) == {"_id": "car-55", "status": "alert", "offsets": {"1": 7}}


def test_fence_in_the_filter_refuses_a_stale_write_and_passes_a_newer_one(twins):
    from pymongo.errors import DuplicateKeyError

    from inference.transformer.checkpoint import fence_filter

    twins.insert_one(twin("car-f", 2, 10))
    twins.update_one(fence_filter("car-f", 2, 11), {"$set": {"status": "alert", "offsets.2": 11}}, upsert=True)
    with pytest.raises(DuplicateKeyError):  # no match, so the upsert inserts: MongoDB's sign of a refusal
        twins.update_one(fence_filter("car-f", 2, 9), {"$set": {"status": "stale", "offsets.2": 9}}, upsert=True)
    assert twins.find_one({"_id": "car-f"})["status"] == "alert"


def test_the_documents_live_in_postgresql_with_the_id_lookup_index(pg_stack, twins):
    settings, postgres, ferretdb = pg_stack
    twins.insert_one(twin("car-x", 0, 1))
    ferretdb.after_ready()  # what the next `stack up` does for collections created meanwhile
    table = postgres.psql(f"""SELECT _jsonb->>'table' FROM "{TWIN_DATABASE}"._ferretdb_database_metadata
                              WHERE _jsonb->>'_id' = '{twins.name}'""", database=DATABASE).strip()
    indexes = postgres.psql(f"SELECT indexdef FROM pg_indexes WHERE tablename = '{table}'", database=DATABASE)
    assert "USING gin (((_jsonb -> '_id'::text)) jsonb_path_ops)" in indexes
    # A one-row table is scanned whatever the indexes: ask whether the pushed-down expression can use it.
    plan = postgres.psql(f"""SET enable_seqscan = off; EXPLAIN SELECT _jsonb FROM "{TWIN_DATABASE}"."{table}" WHERE _jsonb->'_id' @> '"car-x"'""", database=DATABASE)
    assert "_id_lookup" in plan


def test_postgresql_listens_on_loopback_only_and_runs_as_its_own_user(pg_stack):
    _, postgres, _ = pg_stack
    rows = postgres.psql("SHOW listen_addresses; SHOW unix_socket_directories; SHOW password_encryption").splitlines()
    assert rows == ["127.0.0.1", "", "scram-sha-256"]
    assert postgres.psql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{ROLE}'").strip() == "f"
    owner = os.stat(f"/proc/{postgres.process.pid()}").st_uid
    assert owner != 0 and (os.geteuid() != 0 or owner == pwd.getpwnam("postgres").pw_uid)


def test_secured_ferretdb_on_postgresql_takes_only_scram_logins(tmp_path):
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    settings = private_settings(tmp_path / "state", secure=True)
    try:
        _, ferretdb = start_postgresql_and_ferretdb(settings)
        anonymous = MongoClient(ferretdb.uri, serverSelectionTimeoutMS=5000)
        with pytest.raises(OperationFailure):
            anonymous[TWIN_DATABASE][TWIN_COLLECTION].find_one({})
        anonymous.close()
        client = MongoClient(ferretdb.uri_for("transformer"), serverSelectionTimeoutMS=5000)
        client[TWIN_DATABASE][TWIN_COLLECTION].replace_one({"_id": "car-s"}, twin("car-s", 0, 1), upsert=True)
        assert client[TWIN_DATABASE][TWIN_COLLECTION].find_one({"_id": "car-s"})["offsets"] == {"0": 1}
        client.close()
        admin = MongoClient(ferretdb.uri_for(ADMIN), serverSelectionTimeoutMS=5000)
        assert admin.admin.command("ping")["ok"] == 1
        admin.close()
    finally:
        control.down(settings, wipe=True)


def test_stack_down_wipe_stops_postgresql_and_removes_its_cluster(tmp_path):
    settings = private_settings(tmp_path / "state")
    postgres, _ = start_postgresql_and_ferretdb(settings)
    pid = postgres.process.pid()
    env = {**os.environ, **stack_env(settings)}
    status = subprocess.run([sys.executable, "-m", "fleetpulse.cli", "stack", "status", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(status.stdout)["postgresql"]["running"] is True, status.stderr
    down = subprocess.run([sys.executable, "-m", "fleetpulse.cli", "stack", "down", "--wipe"], capture_output=True, text=True, env=env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "postgresql" in down.stdout and "mongodb" in down.stdout
    assert _gone(pid)
    assert not port_in_use(settings.host, settings.postgresql_port)
    assert not settings.state_dir.exists()


def _gone(pid: int) -> bool:
    """``pid`` has exited (reaped here if this process started it: the CLI that stopped it cannot)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return not Path(f"/proc/{pid}").exists()
