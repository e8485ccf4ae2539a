"""Mosquitto 2.x from Debian; several processes when the fleet needs more connections than one holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid
from importlib import resources

from devtools.stack.service import Service, ensure_dir

TEMPLATE = resources.files("devtools.stack") / "assets" / "mosquitto.conf.template"


class MosquittoService(Service):
    name = "mqtt"

    @property
    def port(self) -> int:
        return self.settings.mqtt_port + self.index

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
        (self.dir / "mosquitto.conf").write_text(
            TEMPLATE.read_text().format(port=self.port, data_dir=data, log_file=self.process.log_file, user_line=user_line)
        )

    def argv(self) -> list[str]:
        return [_mosquitto() or "mosquitto", "-c", str(self.dir / "mosquitto.conf")]

    def round_trip(self) -> None:
        mqtt_round_trip(self.host, self.port)

    def endpoint(self) -> dict:
        return {"host": self.host, "port": self.port}


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or (os.path.exists("/usr/sbin/mosquitto") and "/usr/sbin/mosquitto") or None


def mqtt_round_trip(host: str, port: int, timeout: float = 3.0) -> None:
    """Subscribe, publish at QoS 1 and receive our own message back."""
    import paho.mqtt.client as mqtt

    topic = f"fleetpulse/health/{uuid.uuid4().hex}"
    got = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleetpulse-health-{uuid.uuid4().hex[:8]}")
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
