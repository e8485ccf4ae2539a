"""`stack credentials` and `stack status --json` on the secured stack: what they print, and where secrets never go."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from devtools.stack import control
from devtools.stack.settings import StackSettings
from fleetpulse.errors import StackError
from fleetpulse.identity import read_car_credentials
from tests.support.paths import FLEETPULSE


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLEETPULSE, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


def every_secret(settings: StackSettings) -> list[str]:
    identities = settings.identities_dir
    passwords = list(json.loads((identities / "services.json").read_text()).values())
    return passwords + list(read_car_credentials(identities / "cars.tsv").values())


def test_status_json_names_the_secured_endpoints(stack_env, secure_settings):
    proc = run_cli(stack_env, "stack", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["secure"] is True and Path(state["ca_file"]).is_file()
    assert {k: state["mqtt"][k] for k in ("host", "port", "tls_port")} == {
        "host": "127.0.0.1", "port": secure_settings.mqtt_port, "tls_port": secure_settings.mqtt_tls_port}
    assert {k: state["kafka"][k] for k in ("bootstrap_servers", "security_protocol", "sasl_mechanism")} == {
        "bootstrap_servers": f"127.0.0.1:{secure_settings.kafka_port}", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}


def test_status_json_holds_no_secret(stack_env, secure_settings, credentials):
    credentials("status-check-car")  # a car's secret exists too
    out = run_cli(stack_env, "stack", "status", "--json").stdout
    assert not [s for s in every_secret(secure_settings) if s in out]


@pytest.mark.parametrize("name, keys", [
    ("admin", {"username", "password", "ca_file", "mongodb_uri"}),
    ("transformer", {"username", "password", "ca_file", "mongodb_uri"}),
    ("bridge", {"username", "password", "ca_file"}),
    ("simulator", {"username", "password", "ca_file"}),
    ("training", {"username", "password", "ca_file"}),
])
def test_credentials_json_gives_a_service_what_a_stock_client_needs(stack_env, name, keys):
    proc = run_cli(stack_env, "stack", "credentials", name, "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert set(found) == keys and found["username"] == name and len(found["password"]) >= 20


def test_a_cars_identity_is_created_on_first_use_and_kept(stack_env, secure_settings, unique):
    car = f"first-use-{unique}"
    first = json.loads(run_cli(stack_env, "stack", "credentials", car, "--json").stdout)
    again = json.loads(run_cli(stack_env, "stack", "credentials", car, "--json").stdout)
    assert first == again
    assert first["username"] == first["client_id"] == car
    assert read_car_credentials(secure_settings.identities_dir / "cars.tsv")[car] == first["password"]


@pytest.mark.parametrize("name", ["a/b", "+", "kafka-broker", ""])
def test_names_that_are_no_car_or_client_are_refused_in_one_line(stack_env, name):
    proc = run_cli(stack_env, "stack", "credentials", name, "--json")
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_unsecured_stack_has_no_credentials_to_give(tmp_path):
    with pytest.raises(StackError, match="without security"):
        control.credentials(StackSettings(state_dir=tmp_path, secure=False), "bridge")  # `stack up --insecure`


def test_a_new_stack_is_secured_unless_asked_otherwise(tmp_path):
    assert control.resolved(StackSettings(state_dir=tmp_path)).secure is True


def test_secrets_live_in_files_only_their_owner_reads(secure_settings, credentials):
    credentials("mode-check-car")
    state = secure_settings.state_dir
    private_dirs = [secure_settings.identities_dir, secure_settings.pki_dir, state / "mqtt"]
    secret_files = [*secure_settings.identities_dir.iterdir(), *secure_settings.pki_dir.glob("*.key"),
                    *secure_settings.pki_dir.glob("*.keystore.pem"), state / "kafka" / "server.properties"]
    assert {str(d): stat.S_IMODE(d.stat().st_mode) for d in private_dirs} == {str(d): 0o700 for d in private_dirs}
    assert {str(f): stat.S_IMODE(f.stat().st_mode) for f in secret_files} == {str(f): 0o600 for f in secret_files}


def test_no_process_has_a_secret_in_its_command_line(secure_settings, credentials):
    credentials("argv-check-car")
    secrets = every_secret(secure_settings)
    leaked = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue  # the process exited
        leaked += [cmdline.parent.name for s in secrets if s in argv]
    assert leaked == []


def test_no_server_log_holds_a_secret(secure_settings, credentials):
    credentials("log-check-car")
    secrets = every_secret(secure_settings)
    logs = {p: p.read_text(errors="replace") for p in secure_settings.state_dir.rglob("*.log")}
    assert logs and {str(p): [s for s in secrets if s in text] for p, text in logs.items() if any(s in text for s in secrets)} == {}
