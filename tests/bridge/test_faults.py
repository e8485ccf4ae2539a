"""The bridge's own guarantees under faults, with real servers and the bridge as a real process: it
acks only what Kafka confirmed, bounds what it holds, shows a stall in its probes and stops in bounded
time. Each test publishes numbered QoS 1 messages and reads the Kafka topic back: every sequence
number must be there (duplicates allowed, never missing ones). The fault matrix rows (kill -9 of the
bridge, Kafka down, Mosquitto restart and kill -9, poison pills) are in tests/faults/test_edge_faults.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from devtools.loadgen import bridge_load as loadgen
from fleetpulse.settings import KafkaConnection
from tests.support.stack import start_private

pytestmark = pytest.mark.slow


class Stream:
    """Publishes ``n`` numbered QoS 1 messages at ``rate`` in a thread; reconnects if the broker restarts."""

    def __init__(self, endpoint: str, n: int, rate: float, prefix: str):
        host, port = endpoint.rsplit(":", 1)
        self.pkts = loadgen.packets(loadgen.payloads(n), 500, prefix, qos=1)
        self.publisher = loadgen.Publisher(host, int(port), qos=1)
        self.rate, self.error, self.report = rate, None, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.report = self.publisher.publish(self.pkts, rate=self.rate, chunk=100, reconnect_for_s=60)
        except Exception as exc:  # noqa: BLE001 - re-raised in the test thread by join()
            self.error = exc

    def join(self, timeout: float = 120) -> loadgen.PublishReport:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.report is not None, "publisher did not finish"
        self.publisher.close()
        return self.report


def assert_all_delivered(kafka: KafkaConnection, topic: str, n: int, timeout_s: float = 90) -> int:
    """Every sequence number 0..n-1 is in ``topic``; return the number of duplicates."""
    recs = loadgen.read_topic(kafka, topic, n, timeout_s=timeout_s, idle_s=1.5)
    seq = loadgen.sequence_numbers(recs.values)
    missing = np.setdiff1d(np.arange(n), seq)
    assert len(missing) == 0, f"{len(missing)} of {n} messages missing in Kafka (first: {missing[:10].tolist()})"
    dups = len(seq) - n
    print(f"\n{topic}: {n} published, {len(seq)} in Kafka, {dups} duplicates")
    return dups


def test_bridge_acks_mqtt_only_after_kafka_delivery_and_bounds_what_is_in_flight(bridge_process, private_mqtt, private_server, unique):
    kafka = private_server("kafka")
    bridge = bridge_process(private_mqtt, kafka=kafka.connection, max_in_flight=1_000, read_bytes=4096, keepalive_s=5).start()
    kafka.stop()
    Stream(private_mqtt, 2_000, 20_000, f"car{unique}").join()
    bridge.wait_metric("fleetpulse_bridge_received_total", 1_000)
    time.sleep(8.0)  # longer than 1.5 keepalives: not reading must not look like a dead broker
    m = bridge.metrics()
    assert m["fleetpulse_bridge_mqtt_acks_total"] == 0
    assert 1_000 <= m["fleetpulse_bridge_in_flight"] == m["fleetpulse_bridge_received_total"] < 1_100, "in-flight bound not kept"
    assert m["fleetpulse_bridge_mqtt_connects_total"] == 1
    # Had the bridge acked before Kafka confirmed, the messages it holds would now be gone with it.
    bridge.kill9()
    start_private(kafka)
    bridge.start()
    assert_all_delivered(kafka.connection, f"bridge-{unique}", 2_000)
    bridge.wait_metric("fleetpulse_bridge_mqtt_acks_total", 2_000)


def probe(bridge, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{bridge.metrics_port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_probe(bridge, path: str, status: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = probe(bridge, path)
        if code == status:
            return body
        time.sleep(0.2)
    raise TimeoutError(f"{path} stayed {code} ({body.strip()}) instead of {status}")


def test_kafka_away_turns_the_probes_unhealthy_and_sigterm_still_stops_the_bridge_in_bounded_time(bridge_process, private_mqtt, private_server, unique):
    kafka = private_server("kafka")
    settings = dict(kafka=kafka.connection, stall_timeout_s=2, live_stall_timeout_s=4, shutdown_timeout_s=3)
    bridge = bridge_process(private_mqtt, **settings).start()
    assert probe(bridge, "/readyz")[0] == probe(bridge, "/healthz")[0] == 200
    kafka.stop()
    Stream(private_mqtt, 2_000, 5_000, f"car{unique}").join()
    assert "no_progress" in wait_probe(bridge, "/readyz", 503, timeout=20)
    assert bridge.metrics()["fleetpulse_bridge_stalled"] == 1
    assert "no_progress" in wait_probe(bridge, "/healthz", 503, timeout=20)

    t0 = time.monotonic()
    summary = bridge.stop()  # SIGTERM while nothing it holds is confirmed
    stopped_in = time.monotonic() - t0
    print(f"\nSIGTERM with Kafka away: exited in {stopped_in:.1f}s (shutdown timeout 3 s)")
    assert stopped_in < 3 + 3, f"SIGTERM took {stopped_in:.1f}s with a 3 s shutdown timeout"
    assert summary["mqtt_acks"] == 0 and summary["in_flight"] == 2_000

    start_private(kafka)
    bridge.start()
    assert_all_delivered(kafka.connection, f"bridge-{unique}", 2_000)
    wait_probe(bridge, "/readyz", 200)
