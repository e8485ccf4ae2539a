"""Stock clients that record what a secured server answered: MQTT 5 reason codes, Kafka error codes."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86


class MqttProbe:
    """One paho MQTT 5 connection; each call waits for the broker's answer and returns its reason code."""

    def __init__(self, host: str, port: int, username: str | None = None, password: str | None = None,
                 client_id: str | None = None, ca_file: str | None = None, timeout: float = 5.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=ca_file)
        self.messages: list[tuple[str, bytes]] = []
        self._answers: dict[object, object] = {}
        self._answered = threading.Condition()
        self.client.on_connect = lambda c, u, flags, rc, props: self._answer("connack", rc.value)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self._answer(("suback", mid), rcs[0].value)
        self.client.on_publish = lambda c, u, mid, rc, props: self._answer(("puback", mid), rc.value)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))

    def _answer(self, key, value) -> None:
        with self._answered:
            self._answers[key] = value
            self._answered.notify_all()

    def _wait(self, key) -> int:
        with self._answered:
            if not self._answered.wait_for(lambda: key in self._answers, self.timeout):
                raise TimeoutError(f"no answer {key} from {self.host}:{self.port}")
            return self._answers[key]

    def connect(self) -> int:
        """CONNACK's reason code (0 = accepted). TLS failures raise from connect()."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        return self._wait("connack")

    def subscribe(self, topic: str) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        return self._wait(("suback", mid))

    def publish(self, topic: str, payload: bytes) -> int:
        """PUBACK's reason code at QoS 1 (0 = accepted, 0x10 = accepted, no subscriber)."""
        return self._wait(("puback", self.client.publish(topic, payload, qos=1).mid))

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def accepted(reason: int) -> bool:
    return reason < 0x80


def kafka_error_code(fn):
    """Run a client call that must fail; return the librdkafka error code it raised."""
    from confluent_kafka import KafkaException

    try:
        fn()
    except KafkaException as exc:
        return exc.args[0].code()
    raise AssertionError("the call succeeded")
