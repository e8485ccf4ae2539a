"""Serving throughput and latency: Kafka -> `fleetpulse score` -> model server -> alerts + twin.

Everything runs on the local stack on this machine: `fleetpulse serve` (a fixture SavedModel with
the production signature) and `fleetpulse score` as their own processes.

- Model server alone: rows/s at batch 1, 100 and 1,000 over V2 REST (JSON) and gRPC (raw tensors).
- Throughput: a backlog of N events (C cars, some with recurring anomalous spells so alerts flow) is
  produced first; the transformer drains it (`--until-idle`); rate = consumed / active seconds.
  Baseline in the same run: one REST infer call per event (consume, decode, POST, produce an alert
  on an anomalous reading), the shape of KServe's Kafka sample; it writes no twin (favouring it).
- Latency: events offered at a fixed rate while the transformer runs; event Kafka timestamp ->
  alert produced (the alert record's Kafka CreateTime), p50/p99 over all alerts in the window.
- Shadow scoring (#17): the model has a stable and a candidate version on its channels, so the server
  serves both; throughput and latency are measured with the shadow off (SHADOW_SHARE=0, the
  baseline) and on for every car (SHADOW_SHARE=1: every event scored twice), in the same run,
  alternately (off, on, off, on, ...: ``--repeats`` pairs), so a load that comes and goes on a shared
  machine falls on both. Events/s is the best run of each, event -> alert the run with the median p99.
  Each throughput run also gives the transformer's and the model server's CPU seconds per event
  (the load on the machine changes wall time more than it changes CPU time; the transformer's
  includes its start-up, the same in both).
Kafka as the operator (admin), secured stack or not: the bench's topics and groups are its own.
Writes bench/results/score.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleetpulse import endpoints  # noqa: E402
from devtools.benchmarking import write_result  # noqa: E402
from devtools.stack import access  # noqa: E402
from devtools.stack.settings import StackSettings  # noqa: E402
from fleetpulse.clients import kafka_config  # noqa: E402
from fleetpulse.codec import encode_batch  # noqa: E402
from fleetpulse.alerts import decode_alert  # noqa: E402
from fleetpulse.model_store import candidate_model_name  # noqa: E402
from tests.serving.harness import FLEETPULSE, MEAN, STD, ModelServer, release_model  # noqa: E402

KAFKA = access.kafka()


def fleet_rows(step: int, n_cars: int, rng) -> np.ndarray:
    """One reading per car; car i is anomalous for 20 readings in every 200 (staggered), so alerts keep coming."""
    rows = MEAN + STD * 0.5 * rng.standard_normal((n_cars, len(MEAN)))
    hot = ((step + np.arange(n_cars) * 7) % 200) < 20
    rows[hot] += STD * 8
    return rows.astype(np.float32)


def create_topics(*names: str, partitions: int = 6) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_config(KAFKA))
    for f in admin.create_topics([NewTopic(t, partitions, 1) for t in names]).values():
        f.result()


def preload(topic: str, n_events: int, n_cars: int) -> None:
    from confluent_kafka import Producer

    producer = Producer(kafka_config(KAFKA, **{"linger.ms": 20, "batch.num.messages": 10000, "queue.buffering.max.messages": 1000000}))
    rng = np.random.default_rng(0)
    keys = [f"car-{i:05d}".encode() for i in range(n_cars)]
    step = 0
    while step * n_cars < n_events:
        for key, payload in zip(keys, encode_batch(fleet_rows(step, n_cars, rng))):
            while True:
                try:
                    producer.produce(topic, key=key, value=payload)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        step += 1
    producer.flush()


MONGODB: StackSettings | None = None  # the shared stack's FerretDB; a private one in main()


def private_ferretdb():
    """A FerretDB of our own: bulk twin writes at bench rates would stall the shared one for everyone.
    Unsecured, like the tests' private servers: on a secured stack the figures include Kafka's TLS and
    SASL, not MongoDB's TLS."""
    from devtools.stack.mongodb import FerretDBService
    from devtools.stack.process import free_port

    svc = FerretDBService(StackSettings(state_dir=Path(tempfile.mkdtemp(prefix="bench-ferretdb-")), mongodb_port=free_port(), secure=False))
    svc.start()
    svc.wait_ready(60)
    return svc


def score_env(unique: str, server: ModelServer, topic: str, alerts: str, **extra) -> dict:
    return {**os.environ, **access.connection_env("SCORE", KAFKA), **access.mongodb_env("SCORE", MONGODB),
            "FLEETPULSE_SCORE_TOPIC": topic, "FLEETPULSE_SCORE_ALERTS_TOPIC": alerts,
            "FLEETPULSE_SCORE_DLQ_TOPIC": f"bench-dlq-{unique}", "FLEETPULSE_SCORE_GROUP_ID": f"bench-{unique}",
            "FLEETPULSE_SCORE_MODEL_GRPC": server.grpc_target, "FLEETPULSE_SCORE_MODEL_NAME": server.model,
            "FLEETPULSE_SCORE_TWIN_DATABASE": "fleetpulse_bench", "FLEETPULSE_SCORE_TWIN_COLLECTION": f"cars_{unique}",
            "FLEETPULSE_SCORE_METRICS_PORT": "0", **{k: str(v) for k, v in extra.items()}}


def drop_twins(unique: str) -> None:
    from pymongo import MongoClient

    MongoClient(access.mongodb_uri(MONGODB))["fleetpulse_bench"][f"cars_{unique}"].drop()


# ---- model server alone -------------------------------------------------------------------------

def server_alone(server: ModelServer, seconds: float) -> dict:
    import httpx

    from inference.transformer.v2_client import V2Client

    out = {}
    rng = np.random.default_rng(1)
    client = V2Client(server.grpc_target, server.model)
    http = httpx.Client(timeout=30)
    for batch in (1, 100, 1000):
        x = fleet_rows(0, batch, rng)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [batch, len(MEAN)], "data": x.ravel().tolist()}]}
        for proto, call in (("grpc", lambda: client.infer(x)),
                            ("rest", lambda: http.post(f"{server.url}/v2/models/{server.model}/infer", json=body).raise_for_status())):
            call()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                call()
                n += 1
            out[f"{proto}_batch_{batch}_rows_per_s"] = round(n * batch / (time.perf_counter() - t0), 1)
    return out


# ---- throughput ---------------------------------------------------------------------------------

def transformer_throughput(server: ModelServer, n_events: int, n_cars: int, checkpoint_s: float, shadow: float = 0.0) -> dict:
    unique = uuid.uuid4().hex[:8]
    topic, alerts = f"bench-sensor-{unique}", f"bench-alerts-{unique}"
    create_topics(topic, alerts, f"bench-dlq-{unique}", f"bench-shadow-{unique}")
    t0 = time.perf_counter()
    preload(topic, n_events, n_cars)
    produce_s = time.perf_counter() - t0
    env = score_env(unique, server, topic, alerts, FLEETPULSE_SCORE_CHECKPOINT_INTERVAL_S=checkpoint_s,
                    FLEETPULSE_SCORE_SHADOW_SHARE=shadow, FLEETPULSE_SCORE_SHADOW_TOPIC=f"bench-shadow-{unique}")
    load, children, server_cpu = os.getloadavg()[0], children_cpu_s(), cpu_s(server.proc.pid)
    proc = subprocess.run([FLEETPULSE, "score", "--until-idle", "3", "--json"], env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"fleetpulse score failed: {proc.stderr[-2000:]}")
    transformer_cpu, server_cpu = children_cpu_s() - children, cpu_s(server.proc.pid) - server_cpu
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    drop_twins(unique)
    return {"events": n_events, "cars": n_cars, "preload_s": round(produce_s, 2), "checkpoint_interval_s": checkpoint_s,
            "shadow_share": shadow, "loadavg_1m_at_start": load, "transformer_cpu_s": round(transformer_cpu, 2),
            "server_cpu_s": round(server_cpu, 2), "transformer_cpu_us_per_event": round(transformer_cpu / n_events * 1e6, 2),
            "server_cpu_us_per_event": round(server_cpu / n_events * 1e6, 2), **summary}


def children_cpu_s() -> float:
    """CPU seconds of the children this process has waited for (the transformer runs, once each ends)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_s(pid: int) -> float:
    """CPU seconds a running process has used so far (Linux /proc: utime + stime, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def naive_baseline(server: ModelServer, seconds: float, n_cars: int) -> dict:
    """One REST infer call per event, as KServe's Kafka sample does."""
    import httpx
    from confluent_kafka import Consumer, Producer

    from fleetpulse.codec import decode_one
    from fleetpulse.contract import SENSOR_FIELDS

    unique = uuid.uuid4().hex[:8]
    topic, alerts = f"bench-naive-{unique}", f"bench-naive-alerts-{unique}"
    create_topics(topic, alerts)
    preload(topic, int(seconds * 3000) + 2000, n_cars)
    consumer = Consumer({**kafka_config(KAFKA), "group.id": f"naive-{unique}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    producer = Producer(kafka_config(KAFKA))
    http = httpx.Client(timeout=30)
    url = f"{server.url}/v2/models/{server.model}/infer"
    n, t0 = 0, None
    while True:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            if t0 is not None:
                break
            continue
        t0 = t0 or time.perf_counter()
        record = decode_one(msg.value())
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(SENSOR_FIELDS)], "data": [record[f] for f in SENSOR_FIELDS]}]}
        result = http.post(url, json=body).json()
        if result["outputs"][1]["data"][0]:
            producer.produce(alerts, key=msg.key(), value=msg.value())
        producer.poll(0)
        n += 1
        if time.perf_counter() - t0 >= seconds:
            break
    elapsed = time.perf_counter() - t0
    consumer.close()
    producer.flush()
    return {"events": n, "seconds": round(elapsed, 2), "events_per_s": round(n / elapsed, 1)}


# ---- latency at a fixed offered rate ------------------------------------------------------------

def latency_at_rate(server: ModelServer, rate: int, seconds: float, n_cars: int, checkpoint_s: float, shadow: float = 0.0) -> dict:
    from confluent_kafka import Consumer, Producer

    unique = uuid.uuid4().hex[:8]
    topic, alerts = f"bench-live-{unique}", f"bench-live-alerts-{unique}"
    create_topics(topic, alerts, f"bench-dlq-{unique}", f"bench-shadow-{unique}")
    env = score_env(unique, server, topic, alerts, FLEETPULSE_SCORE_CHECKPOINT_INTERVAL_S=checkpoint_s,
                    FLEETPULSE_SCORE_SHADOW_SHARE=shadow, FLEETPULSE_SCORE_SHADOW_TOPIC=f"bench-shadow-{unique}")
    load = os.getloadavg()[0]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([FLEETPULSE, "score", "--until-idle", "4", "--json"], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    time.sleep(4)  # consumer group join
    producer = Producer(kafka_config(KAFKA, **{"linger.ms": 2, "queue.buffering.max.messages": 1000000}))
    rng = np.random.default_rng(2)
    keys = [f"car-{i:05d}".encode() for i in range(n_cars)]
    tick = 0.05
    per_tick = max(1, int(rate * tick))
    sent, step, car_pos = 0, 0, 0
    t0 = time.perf_counter()
    rows = fleet_rows(0, n_cars, rng)
    payloads = encode_batch(rows)
    while time.perf_counter() - t0 < seconds:
        target = int((time.perf_counter() - t0) * rate)
        while sent < target:
            if car_pos == 0:
                payloads = encode_batch(fleet_rows(step, n_cars, rng))
                step += 1
            take = min(per_tick, n_cars - car_pos, target - sent)
            for k in range(car_pos, car_pos + take):
                producer.produce(topic, key=keys[k], value=payloads[k])
            car_pos = (car_pos + take) % n_cars
            sent += take
            producer.poll(0)
        time.sleep(tick / 5)
    offered_s = time.perf_counter() - t0
    producer.flush()
    out, _ = proc.communicate(timeout=600)
    summary = json.loads(out.strip().splitlines()[-1])
    consumer = Consumer({**kafka_config(KAFKA), "group.id": f"lat-{unique}", "auto.offset.reset": "earliest"})
    consumer.subscribe([alerts])
    lat, idle = [], 0
    while idle < 3:
        msgs = consumer.consume(10000, 1.0)
        idle = idle + 1 if not msgs else 0
        for m in msgs:
            if m.error() is None:
                lat.append(m.timestamp()[1] - decode_alert(m.value())["event_ts_ms"])
    consumer.close()
    drop_twins(unique)
    lat = np.array(lat or [np.nan], dtype=float)
    return {"offered_events_per_s": round(sent / offered_s, 1), "events": sent, "alerts": int(np.isfinite(lat).sum()),
            "p50_ms": round(float(np.nanpercentile(lat, 50)), 1), "p99_ms": round(float(np.nanpercentile(lat, 99)), 1), "max_ms": float(np.nanmax(lat)),
            "shadow_share": shadow, "loadavg_1m_at_start": load, "transformer": summary}


def median_run(runs: list[dict]) -> dict:
    """The run whose p99 is the median (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r["p99_ms"])[(len(runs) - 1) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Smaller runs (~2 minutes) for a noisy shared machine.")
    # FerretDB 1.24/SQLite updates scan the collection per statement (measured: 30 cars ~800 upserts/s,
    # 300 cars > 40 s per bulk), so the twin-inclusive figures use a fleet whose per-checkpoint bulk fits.
    ap.add_argument("--cars", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=None, help="Shadow off/on pairs of each of throughput and latency "
                    "[default: 3, 1 with --quick].")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    events = 150_000 if args.quick else 1_000_000
    live_s = 10 if args.quick else 30
    alone_s = 1.0 if args.quick else 3.0
    global MONGODB
    mongo = private_ferretdb()
    MONGODB = mongo.settings
    model = f"bench-anomaly-{uuid.uuid4().hex[:8]}"
    release_model(endpoints.GCS_ENDPOINT, model, Path(tempfile.mkdtemp()))  # stable
    release_model(endpoints.GCS_ENDPOINT, model, Path(tempfile.mkdtemp()))  # the candidate the shadow runs scores
    log = Path(tempfile.mkdtemp()) / "serve.log"
    server = ModelServer(model, endpoints.GCS_ENDPOINT, log).wait_ready().wait_serving(candidate_model_name(model), 2)
    try:
        print("model server alone ...", file=sys.stderr)
        alone = server_alone(server, alone_s)
        print(json.dumps(alone), file=sys.stderr)
        print("naive baseline ...", file=sys.stderr)
        naive = naive_baseline(server, 5.0 if args.quick else 15.0, args.cars)
        print(json.dumps(naive), file=sys.stderr)
        throughput_runs, latency_runs = [], []
        for i in range(repeats):
            for shadow in (0.0, 1.0):
                print(f"transformer throughput, shadow {'on' if shadow else 'off'} ({i + 1}/{repeats}) ...", file=sys.stderr)
                throughput_runs.append(transformer_throughput(server, events, args.cars, checkpoint_s=2.0, shadow=shadow))
                print(json.dumps(throughput_runs[-1]), file=sys.stderr)
        for i in range(repeats):
            for shadow in (0.0, 1.0):
                print(f"latency at 10,000 events/s, shadow {'on' if shadow else 'off'} ({i + 1}/{repeats}) ...", file=sys.stderr)
                latency_runs.append(latency_at_rate(server, 10_000, live_s, args.cars, checkpoint_s=1.0, shadow=shadow))
                print(json.dumps(latency_runs[-1]), file=sys.stderr)
    finally:
        server.stop()
        mongo.process.stop()
    thr, thr_shadow = (max((r for r in throughput_runs if r["shadow_share"] == shadow), key=lambda r: r["events_per_s"])
                       for shadow in (0.0, 1.0))
    lat, lat_shadow = (median_run([r for r in latency_runs if r["shadow_share"] == shadow]) for shadow in (0.0, 1.0))
    ratio = round(thr["events_per_s"] / naive["events_per_s"], 1) if naive["events_per_s"] else None
    table = [
        {"metric": "pipeline events/s (Kafka -> transformer -> model -> alerts + twin)", "value": thr["events_per_s"], "unit": "events/s",
         "baseline": naive["events_per_s"], "ratio": ratio, "target": ">= 50,000"},
        {"metric": "event -> alert p50 at 10k/s offered", "value": lat["p50_ms"], "unit": "ms", "target": None},
        {"metric": "event -> alert p99 at 10k/s offered", "value": lat["p99_ms"], "unit": "ms", "target": "< 250"},
        {"metric": "pipeline events/s, shadow on (every event also scored by the candidate)", "value": thr_shadow["events_per_s"],
         "unit": "events/s", "baseline": thr["events_per_s"],
         "ratio": round(thr_shadow["events_per_s"] / thr["events_per_s"], 2) if thr["events_per_s"] else None, "target": ">= 50,000"},
        {"metric": "event -> alert p99 at 10k/s offered, shadow on", "value": lat_shadow["p99_ms"], "unit": "ms",
         "baseline": lat["p99_ms"], "ratio": round(lat_shadow["p99_ms"] / lat["p99_ms"], 2) if lat["p99_ms"] else None, "target": "< 250"},
        {"metric": "transformer CPU per event incl. start-up, shadow on (vs off)", "value": thr_shadow["transformer_cpu_us_per_event"], "unit": "µs",
         "baseline": thr["transformer_cpu_us_per_event"],
         "ratio": round(thr_shadow["transformer_cpu_us_per_event"] / thr["transformer_cpu_us_per_event"], 2), "target": None},
        {"metric": "model server CPU per event, shadow on (vs off)", "value": thr_shadow["server_cpu_us_per_event"], "unit": "µs",
         "baseline": thr["server_cpu_us_per_event"],
         "ratio": round(thr_shadow["server_cpu_us_per_event"] / thr["server_cpu_us_per_event"], 2), "target": None},
    ] + [{"metric": k, "value": v, "unit": "rows/s"} for k, v in alone.items()]
    path = write_result("score", {"quick": args.quick, "repeats": repeats, "conditions": {"cars": args.cars, "model": "fixture z-score SavedModel",
                                                                      "twin_store": "private FerretDB 1.24 (SQLite)", "shared_machine": True,
                                                                      "kafka_security_protocol": KAFKA.security_protocol,
                                                                      "events_per_s_definition": "consumed / (first record -> last poll batch applied, checkpoints included)"},
                                  "server_alone": alone, "naive_baseline": naive, "throughput": thr, "latency": lat,
                                  "throughput_shadow": thr_shadow, "latency_shadow": lat_shadow,
                                  "throughput_runs": throughput_runs, "latency_runs": latency_runs}, table)
    for row in table:
        print(f"{row['metric']:70} {row['value']:>14,.1f} {row['unit']}" + (f"  (baseline {row['baseline']:,.1f}, x{row['ratio']})" if row.get("baseline") else ""))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
