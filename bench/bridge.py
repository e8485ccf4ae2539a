"""Bridge throughput and latency, MQTT publish -> Kafka, against a naive paho baseline in the same run.

Everything runs on the local stack (Mosquitto, Kafka) on this machine, each bridge as its own
process (`fleetpulse bridge`); on a secured stack over TLS with logins: the publisher as the fleet
gateway ``simulator``, the bridges as ``bridge`` on MQTT and as the operator on Kafka (the run's topics
are its own, which the ``bridge`` principal has no rights on). Throughput: N messages published flat out (raw-socket publisher,
several connections for QoS 1), timed from the first publish until Kafka's end offsets reach N.
Backlog: the same, published while the bridges are SIGSTOPped, timing only the drain (the bridge's own
capacity; live figures on this 2-core box are capped by Mosquitto and the publisher sharing the cores).
Latency: 10,000 msg/s offered at QoS 1; publish -> consumed from Kafka (includes the consumer's
fetch wait, an upper bound) and publish -> bridge arrival (the record timestamp).
The naive baseline is paho on_message -> produce() + poll(0) per message, same producer settings.
Writes bench/results/bridge.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bridges.settings import BridgeSettings
from devtools.benchmarking import write_result
from devtools.loadgen import bridge_load as loadgen
from devtools.stack import access
from devtools.stack.process import free_port
from devtools.stack.settings import StackSettings
from fleetpulse.clients import ensure_topics
from fleetpulse.settings import KafkaConnection, MqttConnection
from fleetpulse.topics import SENSOR_DATA, SENSOR_DATA_DLQ, TOPICS

ROOT = Path(__file__).resolve().parents[1]
FLEETPULSE = str(ROOT / ".venv" / "bin" / "fleetpulse")
WARMUP = 2_000


@dataclass(frozen=True)
class Target:
    """The servers a run uses and how each side logs in (plain connections on an open stack)."""

    mqtt: MqttConnection
    """The publisher's: the fleet gateway ``simulator`` may publish every car's topic over one connection."""
    kafka: KafkaConnection
    """The harness's (the operator): it creates the run's topics and counts their records."""
    bridge_env: dict[str, str]
    """``FLEETPULSE_BRIDGE_MQTT_*`` (identity ``bridge``) and ``_KAFKA_*`` (the operator) of the bridges."""

    @property
    def secured(self) -> bool:
        return self.mqtt.tls


def stack_target(settings: StackSettings | None = None) -> Target:
    """The stack of ``settings`` (the local one by default), secured or not, as the identities above."""
    return Target(mqtt=access.mqtt(settings, identity="simulator"), kafka=access.kafka(settings),
                  bridge_env={**access.mqtt_env("BRIDGE", settings, identity="bridge"), **access.kafka_env("BRIDGE", settings)})


def create_topics(target: Target, topic: str) -> None:
    """The run's data and dead-letter topics, by the operator: on a secured Kafka a login creates none."""
    ensure_topics(target.kafka, [replace(TOPICS[SENSOR_DATA], name=topic), replace(TOPICS[SENSOR_DATA_DLQ], name=f"{topic}-dlq")])


def naive_worker(topic: str, share_group: str, client_id: str, qos: int) -> None:
    """The baseline: paho-mqtt 2.x on_message -> produce() + poll(0) per message (connections from the env, as the bridge's)."""
    import paho.mqtt.client as mqtt
    from confluent_kafka import Producer

    from bridges.kafka_sink import producer_config

    settings = BridgeSettings(topic=topic, client_id=client_id)
    producer = Producer(producer_config(settings))
    conn = settings.mqtt
    host, port = conn.endpoints[0]

    def on_message(client, userdata, msg):
        ts = int(time.time() * 1000)
        producer.produce(topic, msg.payload, msg.topic.rsplit("/", 1)[-1].encode(), headers=[("mqtt.topic", msg.topic.encode()), ("fleetpulse.arrival_ts_ms", str(ts).encode())], timestamp=ts)
        producer.poll(0)

    def on_connect(client, userdata, flags, reason, props):
        client.subscribe(f"$share/{share_group}/vehicles/sensor/data/+", qos=qos)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if conn.username:
        client.username_pw_set(conn.username, conn.password.get_secret_value() if conn.password else None)
    if conn.tls:
        client.tls_set(ca_certs=conn.ca_file)
    client.on_message, client.on_connect = on_message, on_connect
    client.connect(host, port, keepalive=30)
    client.loop_forever()


def wait_connected(ports: list[int], timeout: float = 60.0) -> None:
    """Wait until every bridge reports its MQTT connection (messages published before are not for it)."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if any(line.startswith("fleetpulse_bridge_mqtt_connected{") and line.endswith(" 1.0") for line in text.splitlines()):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bridge with metrics port {port} did not connect within {timeout}s")
            time.sleep(0.1)


def start_bridges(kind: str, n: int, topic: str, qos: int, share_group: str, target: Target, extra_env: dict | None = None) -> list[subprocess.Popen]:
    """Start ``n`` bridge (or naive baseline) processes and return once they are subscribed."""
    procs, ports = [], []
    for i in range(n):
        client_id = f"bench-{share_group}-{i}"
        if kind == "naive":
            argv = [sys.executable, __file__, "--naive-worker", topic, share_group, client_id, str(qos)]
            env = {**os.environ, **target.bridge_env}
        else:
            argv = [FLEETPULSE, "bridge", "--progress-every", "3600"]
            env = {
                **os.environ,
                **target.bridge_env,
                "FLEETPULSE_BRIDGE_TOPIC": topic,
                "FLEETPULSE_BRIDGE_DLQ_TOPIC": f"{topic}-dlq",
                "FLEETPULSE_BRIDGE_QOS": str(qos),
                "FLEETPULSE_BRIDGE_SHARE_GROUP": share_group,
                "FLEETPULSE_BRIDGE_CLIENT_ID": client_id,
                "FLEETPULSE_BRIDGE_SESSION_EXPIRY_S": "0",
                "FLEETPULSE_BRIDGE_METRICS_PORT": str(port := free_port()),
                **(extra_env or {}),
            }
            ports.append(port)
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_connected(ports)
    if kind == "naive":
        time.sleep(2.0)  # paho connects and subscribes within this on the local broker; the warm-up checks it
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def publish(conn: MqttConnection, pkts: list[bytes], qos: int, clients: int, rate: float | None = None) -> list[loadgen.PublishReport]:
    """Publish ``pkts`` over ``clients`` connections in threads (QoS 1 throughput is bounded by each window)."""
    parts = [pkts[i::clients] for i in range(clients)]
    reports: list[loadgen.PublishReport] = [loadgen.PublishReport()] * clients

    def run(i: int) -> None:
        pub = loadgen.Publisher.to(conn, qos=qos)
        reports[i] = pub.publish(parts[i], rate=rate / clients if rate else None, chunk=50 if rate else 500)
        pub.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return reports


def cpu_s(procs: list[subprocess.Popen]) -> float:
    """User + system CPU seconds the processes have used so far (from /proc: they are still running)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in procs:
        fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def throughput(kind: str, processes: int, qos: int, n: int, target: Target, backlog: bool = False, receive_maximum: int | None = None) -> dict:
    """Live: publish flat out while the bridge runs. Backlog: publish while the bridge is stopped
    (SIGSTOP; Mosquitto holds the messages), then time only the drain after SIGCONT, which measures
    the bridge's own capacity without the publisher competing for the two cores."""
    u = uuid.uuid4().hex[:8]
    topic, group = f"bench-bridge-{u}", f"bench{u}"
    create_topics(target, topic)
    extra = {"FLEETPULSE_BRIDGE_RECEIVE_MAXIMUM": str(receive_maximum)} if receive_maximum else None
    procs = start_bridges(kind, processes, topic, qos, group, target, extra)
    try:
        bodies = loadgen.payloads(WARMUP + n)
        pkts = loadgen.packets(bodies, 1000, f"b{u}", qos)
        publish(target.mqtt, pkts[:WARMUP], qos, 1)
        got, _ = loadgen.wait_for_count(target.kafka, topic, WARMUP, 60)
        if got < WARMUP:
            raise RuntimeError(f"{kind}: warm-up did not arrive ({got}/{WARMUP})")
        if backlog:
            for p in procs:
                p.send_signal(signal.SIGSTOP)
            publish(target.mqtt, pkts[WARMUP:], qos, 1 if qos == 0 else 3)
            cpu0 = cpu_s(procs)
            t0 = t_pub = time.time()
            for p in procs:
                p.send_signal(signal.SIGCONT)
        else:
            cpu0 = cpu_s(procs)
            t0 = time.time()
            reports = publish(target.mqtt, pkts[WARMUP:], qos, 1 if qos == 0 else 3)
            t_pub = max(r.finished for r in reports)
        got, t_end = loadgen.wait_for_count(target.kafka, topic, WARMUP + n, 120, poll_s=0.05)
        cpu = cpu_s(procs) - cpu0
    finally:
        stop(procs)
    delivered = got - WARMUP
    unique = None
    if processes > 1:  # a shared subscription must split the stream, not copy it: count distinct messages
        seq = loadgen.sequence_numbers(loadgen.read_topic(target.kafka, topic, got, timeout_s=60, idle_s=0.5).values)
        unique = int(len(np.unique(seq[seq >= WARMUP])))
    row = {
        "kind": kind,
        "mode": "backlog" if backlog else "live",
        "processes": processes,
        "qos": qos,
        "receive_maximum": receive_maximum or BridgeSettings().receive_maximum if kind == "bridge" else None,
        "messages": n,
        "delivered": delivered,
        "distinct": unique,
        "seconds": round(t_end - t0, 3),
        "publish_seconds": round(t_pub - t0, 3),
        "events_per_s": round(delivered / (t_end - t0)),
        "cpu_us_per_event": round(cpu / delivered * 1e6, 2) if delivered else None,
        "secured": target.secured,
    }
    print(f"  {kind:6} x{processes} qos {qos} {row['mode']:7}: {row['events_per_s']:>8,} ev/s ({delivered:,}/{n:,} in {row['seconds']}s; publishing took {row['publish_seconds']}s)", flush=True)
    return row


def latency(rate: float, seconds: float, qos: int, target: Target) -> dict:
    u = uuid.uuid4().hex[:8]
    topic, group = f"bench-bridge-lat-{u}", f"bench{u}"
    create_topics(target, topic)
    procs = start_bridges("bridge", 1, topic, qos, group, target)
    n = int(rate * seconds)
    try:
        bodies = loadgen.payloads(WARMUP + n)
        pkts = loadgen.packets(bodies, 1000, f"l{u}", qos)
        publish(target.mqtt, pkts[:WARMUP], qos, 1)
        loadgen.wait_for_count(target.kafka, topic, WARMUP, 60)
        records: list[loadgen.Records] = []
        reader = threading.Thread(target=lambda: records.append(loadgen.read_topic(target.kafka, topic, WARMUP + n, timeout_s=seconds + 60, idle_s=2)))
        reader.start()
        time.sleep(2.0)  # the reader has joined and fetched the warm-up
        pub = loadgen.Publisher.to(target.mqtt, qos=qos)
        rep = pub.publish(pkts[WARMUP:], rate=rate, chunk=20)
        pub.close()
        reader.join()
    finally:
        stop(procs)
    recs = records[0]
    seq = loadgen.sequence_numbers(recs.values) - WARMUP
    starts = np.array([i for i, _ in rep.chunk_times])
    times = np.array([t for _, t in rep.chunk_times])
    keep = seq >= 0
    seq = seq[keep]
    sent_at = times[np.searchsorted(starts, seq, side="right") - 1]
    to_kafka = (np.array(recs.received_at)[keep] - sent_at) * 1000
    to_bridge = np.array(recs.timestamps)[keep] - sent_at * 1000
    row = {
        "offered_per_s": rate,
        "qos": qos,
        "messages": n,
        "received": int(len(np.unique(seq))),
        "publish_to_kafka_consumer_ms": {"p50": round(float(np.percentile(to_kafka, 50)), 1), "p99": round(float(np.percentile(to_kafka, 99)), 1), "max": round(float(to_kafka.max()), 1)},
        "publish_to_bridge_arrival_ms": {"p50": round(float(np.percentile(to_bridge, 50)), 1), "p99": round(float(np.percentile(to_bridge, 99)), 1)},
    }
    print(f"  latency at {rate:,.0f}/s qos {qos}: publish->kafka p50 {row['publish_to_kafka_consumer_ms']['p50']} ms p99 {row['publish_to_kafka_consumer_ms']['p99']} ms", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer messages (noisier figures)")
    ap.add_argument("--naive-worker", nargs=4, metavar=("TOPIC", "GROUP", "CLIENT_ID", "QOS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive_worker:
        topic, group, client_id, qos = args.naive_worker
        naive_worker(topic, group, client_id, int(qos))
        return
    target = stack_target()
    load0 = os.getloadavg()[0]
    n0, n1 = (100_000, 60_000) if args.quick else (300_000, 200_000)
    print(f"bridge bench ({'quick' if args.quick else 'full'}): mqtt {target.mqtt.brokers}, kafka {target.kafka.bootstrap_servers}"
          f"{' (secured)' if target.secured else ''}, load {load0:.2f}", flush=True)
    repeats = 1 if args.quick else 2  # best of: the figure least disturbed by the other work on the cores
    runs = []
    for backlog in (False, True):
        for qos, n in ((0, n0), (1, n1)):
            for kind, procs in (("naive", 1), ("bridge", 1), ("bridge", 2)):
                tries = [throughput(kind, procs, qos, n, target, backlog) for _ in range(repeats)]
                runs.append({**max(tries, key=lambda r: r["events_per_s"]), "tries_events_per_s": [r["events_per_s"] for r in tries]})
    # QoS 1 throughput against the MQTT 5 Receive Maximum (un-acked messages the broker may have out to the
    # bridge). Mosquitto uses the client's value, not its max_inflight_messages, for the first window; once
    # PUBACKs flow, 2.0.11 releases queued messages beyond it (measured, cf. eclipse-mosquitto/mosquitto#2301),
    # so the window barely matters here: the bridge's own max_in_flight is what bounds memory.
    windows = [throughput("bridge", 1, 1, n1, target, backlog, rm) for backlog in (False, True) for rm in (100, 1000)]
    lat = latency(10_000, 5 if args.quick else 15, 1, target)

    def rate(kind, procs, qos, mode):
        return next(r["events_per_s"] for r in runs if r["kind"] == kind and r["processes"] == procs and r["qos"] == qos and r["mode"] == mode)

    table = []
    for mode, what in (("live", "live publish->Kafka"), ("backlog", "draining a backlog")):
        for qos, target in ((0, 40_000), (1, 20_000)):
            value, base = rate("bridge", 1, qos, mode), rate("naive", 1, qos, mode)
            table.append({"metric": f"bridge QoS {qos}, 1 process, {what} (vs naive paho)", "value": value, "unit": "ev/s", "baseline": base, "ratio": round(value / base, 2), "target": f">= {target:,} and >= 2x"})
        for qos in (0, 1):
            two, one = rate("bridge", 2, qos, mode), rate("bridge", 1, qos, mode)
            table.append({"metric": f"bridge QoS {qos}, 2 processes, {what} (vs 1 process)", "value": two, "unit": "ev/s", "baseline": one, "ratio": round(two / one, 2), "target": ""})
    for w in windows:
        table.append({"metric": f"bridge QoS 1, receive maximum {w['receive_maximum']} (not enforced by Mosquitto 2.0.11 after the first window), {w['mode']} (vs 10,000)", "value": w["events_per_s"], "unit": "ev/s", "baseline": rate("bridge", 1, 1, w["mode"]), "ratio": round(w["events_per_s"] / rate("bridge", 1, 1, w["mode"]), 2), "target": ""})
    for p in ("p50", "p99"):
        table.append({"metric": f"bridge publish->Kafka latency {p} at 10k/s QoS 1", "value": lat["publish_to_kafka_consumer_ms"][p], "unit": "ms", "baseline": "", "ratio": "", "target": ""})
    path = write_result(
        "bridge",
        {
            "quick": args.quick,
            "conditions": {
                "loadavg_1m_at_start": round(load0, 2),
                "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                "brokers": "local stack Mosquitto 2.0.11 + Kafka 3.9.2 (single node) on the same 2 cores, shared with other work",
                "secured": target.secured,
                "publisher": "raw-socket pre-built PUBLISH packets; 1 connection at QoS 0, 3 at QoS 1 (window 900 each)",
                "bridge_settings": BridgeSettings().model_dump(mode="json", exclude={"mqtt_password", "kafka_password", "client_id"}),
            },
            "baseline": "paho-mqtt 2.x on_message -> produce() + poll(0) per message, same producer config (idempotent, acks=all, linger 5 ms, lz4)",
            "throughput": runs,
            "qos1_receive_maximum": windows,
            "latency": lat,
        },
        table,
    )
    for row in table:
        print(f"{row['metric']:58} {row['value']:>10} {row['unit']:5} baseline {row['baseline']!s:>8} ratio {row['ratio']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
