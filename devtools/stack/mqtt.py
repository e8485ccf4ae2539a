"""Mosquitto 2.x from Debian; several processes when the fleet needs more connections than one holds.

Secured (`stack up --secure`), each broker refuses anonymous clients and takes identities and ACLs from
Mosquitto's dynamic-security plugin: per-car username/password, the car's client id bound to its
username, one role per car that may publish its own topic only (rights.py says why not acl_file or
%u patterns). Its configuration is written from the identity store at every start; a car created while
the broker runs is added through the plugin's control topic. Two listeners, both authenticated: TLS
(``tls_port``) with the stack's CA, and plain TCP on loopback for load tools on this host.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import threading
import uuid
from importlib import resources

from devtools.stack.credentials import MQTT_HASH_ITERATIONS, IdentityStore, mqtt_hash
from devtools.stack.pki import SERVER, Pki, ensure_pki
from devtools.stack.rights import ADMIN, MQTT_ROLES, MqttAcl, car_acls
from devtools.stack.service import Service, ensure_dir, ensure_private_dir

TEMPLATE = resources.files("devtools.stack") / "assets" / "mosquitto.conf.template"
PLAINTEXT_LISTENERS = "listener {port} 127.0.0.1\nprotocol mqtt\nallow_anonymous true"
SECURED_LISTENERS = """\
plugin {plugin}
plugin_opt_config_file {dynsec_file}
allow_anonymous false
listener {port} 127.0.0.1
protocol mqtt
listener {tls_port} 127.0.0.1
protocol mqtt
cafile {ca_file}
certfile {cert_file}
keyfile {key_file}"""
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
DEFAULT_ACL_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True}


class MosquittoService(Service):
    name = "mqtt"

    @property
    def port(self) -> int:
        return self.settings.mqtt_port + self.index

    @property
    def tls_port(self) -> int:
        return self.settings.tls_port_base + self.index

    def ports(self) -> list[int]:
        return [self.port, self.tls_port] if self.settings.secure else [self.port]

    @property
    def dynsec_file(self):
        return self.dir / "dynamic-security.json"

    def marker(self) -> str:
        return str(self.dir / "mosquitto.conf")

    def install(self) -> None:
        if _mosquitto() is not None:
            return
        if os.geteuid() != 0:
            raise self.fail("mosquitto is not installed; run: sudo apt-get install -y mosquitto")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "mosquitto"], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            proc = subprocess.run(["apt-get", "install", "-y", "-q", "mosquitto"], capture_output=True, text=True, env=env)
        if proc.returncode != 0 or _mosquitto() is None:
            raise self.fail(f"apt-get install mosquitto failed: {proc.stderr.strip()[-200:]}")
        # Debian's package may start a system broker on 1883; it is not ours and does not clash with our ports.

    def prepare(self) -> None:
        data = ensure_dir(self.dir / "data")
        # Running as root, mosquitto would drop to the 'mosquitto' user and lose access to our state dir.
        user_line = "user root" if os.geteuid() == 0 else ""
        listeners = self._secured_listeners() if self.settings.secure else PLAINTEXT_LISTENERS.format(port=self.port)
        (self.dir / "mosquitto.conf").write_text(
            TEMPLATE.read_text().format(listeners=listeners, data_dir=data, log_file=self.process.log_file, user_line=user_line)
        )

    def _secured_listeners(self) -> str:
        plugin = _dynsec_plugin()
        if plugin is None:
            raise self.fail("Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is missing; reinstall mosquitto 2.x")
        pki = ensure_pki(self.settings.pki_dir, [self.host])
        # The plugin rewrites its file (password hashes) with the process umask: keep the directory private.
        ensure_private_dir(self.dir)
        self.dynsec_file.write_text(dynsec_config(IdentityStore(self.settings.identities_dir)))
        server = pki.certificate(SERVER)
        return SECURED_LISTENERS.format(plugin=plugin, dynsec_file=self.dynsec_file, port=self.port, tls_port=self.tls_port,
                                        ca_file=pki.ca_file, cert_file=server.cert_file, key_file=server.key_file)

    def argv(self) -> list[str]:
        return [_mosquitto() or "mosquitto", "-c", str(self.dir / "mosquitto.conf")]

    def round_trip(self) -> None:
        if not self.settings.secure:
            mqtt_round_trip(self.host, self.port)
            return
        password = IdentityStore(self.settings.identities_dir).password(ADMIN)
        mqtt_round_trip(self.host, self.tls_port, username=ADMIN, password=password, ca_file=str(Pki(self.settings.pki_dir).ca_file))

    def add_cars(self, cars: dict[str, str], timeout: float = 60.0) -> None:
        """Create identities for ``cars`` (id -> password) in this running broker, through its control topic."""
        commands = []
        for car, password in cars.items():
            commands.append({"command": "createRole", "rolename": _car_role(car), "acls": [_acl(a) for a in car_acls(car)]})
            commands.append({"command": "createClient", "username": car, "password": password, "clientid": car,
                             "roles": [{"rolename": _car_role(car)}]})
        store = IdentityStore(self.settings.identities_dir)
        responses = mqtt_request(self.host, self.port, ADMIN, store.password(ADMIN), CONTROL_TOPIC, {"commands": commands}, timeout)
        # "already exists": a concurrent `stack credentials` for the same car got there first.
        errors = [r["error"] for r in responses.get("responses", []) if r.get("error") and "already exists" not in r["error"]]
        if errors:
            raise self.fail(f"dynamic-security refused new car identities: {errors[0]}")

    def endpoint(self) -> dict:
        return {"host": self.host, "port": self.port, "tls_port": self.tls_port if self.settings.secure else None}


def dynsec_config(store: IdentityStore) -> str:
    """The dynamic-security plugin's configuration for every identity in ``store``.

    Written as text, not through json.dumps of 200,000 dicts: 100,000 cars take ~0.2 s instead of
    seconds. Car ids, salts and hashes need no escaping (credentials.CAR_ID, base64).
    """
    clients, roles = [], []
    for name, acls in MQTT_ROLES.items():
        salt, digest = mqtt_hash(store.password(name))
        clients.append(json.dumps({"username": name, "password": digest, "salt": salt, "iterations": MQTT_HASH_ITERATIONS,
                                   "roles": [{"rolename": name}]}))
        roles.append(json.dumps({"rolename": name, "acls": [_acl(a) for a in acls]}))
    for car, salt, digest in store.mqtt_cars():
        role = _car_role(car)
        clients.append(f'{{"username":"{car}","clientid":"{car}","password":"{digest}","salt":"{salt}",'
                       f'"iterations":{MQTT_HASH_ITERATIONS},"roles":[{{"rolename":"{role}"}}]}}')
        roles.append(f'{{"rolename":"{role}","acls":[{",".join(json.dumps(_acl(a)) for a in car_acls(car))}]}}')
    sep = ",\n"
    return (f'{{"defaultACLAccess":{json.dumps(DEFAULT_ACL_ACCESS)},"groups":[],\n'
            f'"clients":[\n{sep.join(clients)}],\n"roles":[\n{sep.join(roles)}]}}\n')


def _car_role(car: str) -> str:
    return f"car:{car}"


def _acl(acl: MqttAcl) -> dict:
    return {"acltype": acl.acltype, "topic": acl.topic, "priority": 0, "allow": True}


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or (os.path.exists("/usr/sbin/mosquitto") and "/usr/sbin/mosquitto") or None


def _dynsec_plugin() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
    return found[0] if found else None


def _client(username: str | None, password: str | None, ca_file: str | None, client_id: str):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if username is not None:
        client.username_pw_set(username, password)
    if ca_file is not None:
        client.tls_set(ca_certs=ca_file)
    return client


def mqtt_round_trip(host: str, port: int, timeout: float = 3.0, username: str | None = None, password: str | None = None,
                    ca_file: str | None = None) -> None:
    """Subscribe, publish at QoS 1 and receive our own message back."""
    topic = f"fleetpulse/health/{uuid.uuid4().hex}"
    got = threading.Event()
    client = _client(username, password, ca_file, f"fleetpulse-health-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: got.set()
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)[0]
        client.publish(topic, b"ping", qos=1)
        if not got.wait(timeout):
            raise TimeoutError("no message came back")
    finally:
        client.loop_stop()
        client.disconnect()


def mqtt_request(host: str, port: int, username: str, password: str, topic: str, request: dict, timeout: float) -> dict:
    """Publish ``request`` as JSON to ``topic`` and return the JSON published back on ``topic + "/response"``."""
    reply: list[dict] = []
    got, subscribed = threading.Event(), threading.Event()
    client = _client(username, password, None, f"fleetpulse-control-{uuid.uuid4().hex[:8]}")
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    client.on_message = lambda c, u, m: (reply.append(json.loads(m.payload)), got.set())
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        client.subscribe(topic + "/response", qos=1)
        if not subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK from {host}:{port}")
        client.publish(topic, json.dumps(request), qos=1)
        if not got.wait(timeout):
            raise TimeoutError(f"no answer on {topic}/response from {host}:{port} within {timeout:.0f}s")
    finally:
        client.loop_stop()
        client.disconnect()
    return reply[0]
