"""The local stack as one of its identities: how the demo, the benches, the fault rows, the load
generators and the tests connect, secured or not.

They get their identities the way a user does, from the stack's credential store (what `fleetpulse
stack credentials NAME --json` prints): ``admin`` for the harness's own reads and writes, a service's
identity for the `fleetpulse` process that plays the service. Without security every identity is a
plain connection, so the same call sites work both ways.

A service process gets its connection as environment variables of its own settings prefix
(``FLEETPULSE_<PREFIX>_KAFKA_...``, ``..._MONGODB_URI``); its password is in a 0600 file in a private directory of the
user's temp dir (``_secret_file``), named by ``..._PASSWORD_FILE``: never in argv.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleetpulse.settings import KafkaConnection, MqttConnection
from devtools.stack import control
from devtools.stack.credentials import IDENTITIES, IdentityStore
from devtools.stack.kafka import KafkaService
from devtools.stack.mongodb import FerretDBService
from devtools.stack.mqtt import MosquittoService
from devtools.stack.pki import Pki
from devtools.stack.rights import ADMIN
from devtools.stack.service import write_private
from devtools.stack.settings import StackSettings


def _settings(settings: StackSettings | None) -> StackSettings:
    return control.resolved(settings or StackSettings())


def secured(settings: StackSettings | None = None) -> bool:
    return bool(_settings(settings).secure)


def kafka(settings: StackSettings | None = None, identity: str = ADMIN) -> KafkaConnection:
    """``identity``'s connection to the stack's Kafka (secrets included)."""
    return KafkaService(_settings(settings)).connection(identity)


def mongodb_uri(settings: StackSettings | None = None, identity: str = ADMIN) -> str:
    """``identity``'s MongoDB URI (with its credentials when secured: a secret, never log it)."""
    return FerretDBService(_settings(settings)).uri_for(identity)


def kafka_env(prefix: str, settings: StackSettings | None = None, identity: str = ADMIN) -> dict[str, str]:
    """The ``FLEETPULSE_<prefix>_KAFKA_*`` variables that connect a service process as ``identity``."""
    return connection_env(prefix, kafka(settings, identity))


def connection_env(prefix: str, conn: KafkaConnection) -> dict[str, str]:
    """``FLEETPULSE_<prefix>_KAFKA_*`` for a given connection (a private server's, or one of ``kafka``'s);
    its password goes to a 0600 file, named by ``..._KAFKA_PASSWORD_FILE``."""
    env = {f"FLEETPULSE_{prefix}_KAFKA_BOOTSTRAP_SERVERS": conn.bootstrap_servers,
           f"FLEETPULSE_{prefix}_KAFKA_SECURITY_PROTOCOL": conn.security_protocol}
    if conn.sasl_mechanism:
        env[f"FLEETPULSE_{prefix}_KAFKA_SASL_MECHANISM"] = conn.sasl_mechanism
    if conn.username:
        env[f"FLEETPULSE_{prefix}_KAFKA_USERNAME"] = conn.username
    if conn.password is not None:
        env[f"FLEETPULSE_{prefix}_KAFKA_PASSWORD_FILE"] = str(_secret_file(conn.password.get_secret_value()))
    if conn.ca_file:
        env[f"FLEETPULSE_{prefix}_KAFKA_CA_FILE"] = conn.ca_file
    return env


def _secret_file(secret: str) -> Path:
    """A 0600 file holding ``secret``, in a private directory of this user's temp dir (one per secret)."""
    import hashlib
    import tempfile

    from devtools.stack.service import ensure_private_dir

    folder = Path(tempfile.gettempdir()) / f"fleetpulse-secrets-{os.getuid()}"
    ensure_private_dir(folder)
    path = folder / f"{hashlib.sha256(secret.encode()).hexdigest()[:16]}.password"
    if not path.exists():
        write_private(path, secret)
    return path


def mqtt(settings: StackSettings | None = None, identity: str = ADMIN) -> MqttConnection:
    """``identity``'s connection to the stack's Mosquitto brokers: TLS with a login when secured."""
    s = _settings(settings)
    brokers = [MosquittoService(s, i) for i in range(control.mqtt_broker_count(s))]
    if not s.secure:
        return MqttConnection(brokers=",".join(f"{b.host}:{b.port}" for b in brokers))
    from pydantic import SecretStr

    store = IdentityStore(s.identities_dir)
    password = store.password(identity) if identity in IDENTITIES else store.cars()[identity]
    return MqttConnection(brokers=",".join(f"{b.host}:{b.tls_port}" for b in brokers), tls=True,
                          ca_file=str(Pki(s.pki_dir).ca_file), username=identity, password=SecretStr(password))


def mqtt_env(prefix: str, settings: StackSettings | None = None, identity: str = ADMIN) -> dict[str, str]:
    """The ``FLEETPULSE_<prefix>_MQTT_*`` variables that connect a service process as ``identity``."""
    conn = mqtt(settings, identity)
    env = {f"FLEETPULSE_{prefix}_MQTT_BROKERS": conn.brokers, f"FLEETPULSE_{prefix}_MQTT_TLS": str(conn.tls).lower()}
    if conn.tls:
        env.update({f"FLEETPULSE_{prefix}_MQTT_CA_FILE": str(conn.ca_file), f"FLEETPULSE_{prefix}_MQTT_USERNAME": identity,
                    f"FLEETPULSE_{prefix}_MQTT_PASSWORD_FILE": str(_secret_file(conn.password.get_secret_value()))})
    return env


def mongodb_env(prefix: str, settings: StackSettings | None = None, identity: str = ADMIN) -> dict[str, str]:
    """The ``FLEETPULSE_<prefix>_MONGODB_*`` variables: the URI without credentials, the login from a file."""
    s = _settings(settings)
    svc = FerretDBService(s)
    if not s.secure:
        return {f"FLEETPULSE_{prefix}_MONGODB_URI": svc.uri}
    return {f"FLEETPULSE_{prefix}_MONGODB_URI": f"mongodb://{svc.host}:{svc.port}/",
            f"FLEETPULSE_{prefix}_MONGODB_USERNAME": identity,
            f"FLEETPULSE_{prefix}_MONGODB_PASSWORD_FILE": str(_secret_file(IdentityStore(s.identities_dir).password(identity))),
            f"FLEETPULSE_{prefix}_MONGODB_TLS": "true", f"FLEETPULSE_{prefix}_MONGODB_CA_FILE": str(Pki(s.pki_dir).ca_file)}


def car_credentials_file(settings: StackSettings | None, car_ids: list[str]) -> Path | None:
    """The provisioning file with an identity for every car in ``car_ids`` (created now if missing);
    None without security (cars connect anonymously then)."""
    s = _settings(settings)
    if not s.secure:
        return None
    control.provision_cars(s, car_ids)
    return IdentityStore(s.identities_dir).cars_file
