"""Read a window of ``sensor-data`` from Kafka with TensorFlow I/O and decode it inside tf.data.

TF-IO 0.37.1's ``IODataset.from_kafka`` has two traps, measured here against Kafka 3.9.2:
it ignores ``start`` (its chunk range always begins at offset 0), and its reader sets
``enable.partition.eof`` so a chunk that reaches the partition end before the broker's fetch
returns kills the consumer and drops the rest of the partition silently (192,848 of 200,000
records in one run). So the dataset is built here on TF-IO's own Kafka kernels
(``io_kafka_readable_init/read``) with explicit per-partition offset ranges resolved through
confluent-kafka, ``enable.partition.eof=false`` and a short ``fetch.wait.max.ms`` (a 500 ms
default stall per chunk otherwise). Records are counted against the offsets afterwards: a short
read is an error, never a smaller training set.

On a secured Kafka every reader logs in as the training principal (SASL_SSL, SCRAM) in a group under
its ACL's prefix. TF-IO's bundled librdkafka (1.5.0) retries a refused login forever and yields
nothing, and does not check the brokers' host names: confluent-kafka's metadata check (which does)
runs first with the same credentials and fails with one line. A function given a bare bootstrap
string (what the KFP components pass: a secret is never a pipeline parameter, which the UI shows)
takes the rest of the connection from FLEETPULSE_TRAIN_KAFKA_* (a mounted Secret's file).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np

from components.settings import TrainSettings
from fleetpulse import clients
from fleetpulse.errors import BrokerUnavailable, FleetPulseError, SettingsError
from fleetpulse.settings import KafkaConnection, load_settings, parse_hostports

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF-IO logs every chunk at INFO

CHUNK = 16384  # records per TF-IO read call; 16k measured fastest (1k: 115k rec/s, 16k: 400k rec/s)
TFIO_CONFIG = ("enable.partition.eof=false", "fetch.wait.max.ms=5", "fetch.message.max.bytes=10485760")
EVAL_BUCKETS = 10  # cars are split into train/eval by a hash of the key into this many buckets


class WindowError(FleetPulseError):
    """The requested Kafka window is empty, too small, or could not be read completely."""


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int  # first offset
    stop: int  # one past the last offset

    @property
    def count(self) -> int:
        return max(0, self.stop - self.start)


@dataclass(frozen=True)
class Window:
    topic: str
    ranges: tuple[PartitionRange, ...]

    @property
    def records(self) -> int:
        return sum(r.count for r in self.ranges)

    def describe(self) -> str:
        parts = ", ".join(f"p{r.partition}:{r.start}-{r.stop}" for r in self.ranges)
        return f"topic {self.topic!r} offsets [{parts or 'no partitions'}]"

    def to_json(self) -> dict:
        return {"topic": self.topic, "partitions": {str(r.partition): [r.start, r.stop] for r in self.ranges}}

    @classmethod
    def from_json(cls, data: dict) -> "Window":
        ranges = tuple(PartitionRange(int(p), int(a), int(b)) for p, (a, b) in sorted(data["partitions"].items(), key=lambda kv: int(kv[0])))
        return cls(data["topic"], ranges)


Kafka = KafkaConnection | str
"""A training reader's Kafka: a connection, or a bare bootstrap completed from FLEETPULSE_TRAIN_KAFKA_*."""


def kafka_connection(kafka: Kafka) -> KafkaConnection:
    if isinstance(kafka, KafkaConnection):
        return kafka
    return load_settings(TrainSettings, kafka_bootstrap_servers=kafka).kafka


def group_id(name: str) -> str:
    """The consumer group of one reader, under the training principal's prefix (FLEETPULSE_TRAIN_KAFKA_GROUP_ID)."""
    return f"{load_settings(TrainSettings).kafka_group_id}-{name}"


def consumer_config(kafka: Kafka, name: str, **extra) -> dict:
    return clients.kafka_config(kafka_connection(kafka), **{"group.id": group_id(name), "enable.auto.commit": False, **extra})


def require_kafka(kafka: Kafka, topics: tuple[str, ...] = ()) -> None:
    """BrokerUnavailable unless Kafka answers; AccessDenied (one line naming the principal) when it
    refuses the login, or, as a principal, the rights on ``topics`` or the readers' groups. A TCP
    probe first: librdkafka would log a line every 50 ms for ten seconds before
    fleetpulse.clients.require_kafka's metadata request gives up."""
    connection = kafka_connection(kafka)
    bootstrap = connection.bootstrap_servers
    endpoints = parse_hostports(bootstrap, 9092)
    errors = []
    for host, port in endpoints:
        try:
            clients.require_tcp("Kafka", host, port)
            break
        except BrokerUnavailable as exc:
            errors.append(str(exc))
    else:
        raise BrokerUnavailable(errors[0] if len(errors) == 1 else f"no Kafka broker of {bootstrap} is reachable: {'; '.join(errors)}")
    if connection.authenticated:
        clients.require_kafka(connection, topics=topics, groups=[group_id("tfio")])
    else:
        clients.require_kafka(connection)


def _offsets_at(consumer, topic: str, partitions: list[int], ts_ms: int, fallback: dict[int, int]) -> dict[int, int]:
    from confluent_kafka import TopicPartition

    found = consumer.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in partitions], timeout=10)
    # -1 means no record at or after ts_ms: the window ends at the high watermark.
    return {tp.partition: (tp.offset if tp.offset >= 0 else fallback[tp.partition]) for tp in found}


def resolve_window(kafka: Kafka, topic: str, from_ts: int | None = None, to_ts: int | None = None) -> Window:
    """Per-partition offset ranges of ``topic`` holding records with from_ts <= timestamp < to_ts (ms)."""
    from confluent_kafka import Consumer, TopicPartition

    require_kafka(kafka, (topic,))
    consumer = Consumer(consumer_config(kafka, "resolve"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise WindowError(f"topic {topic!r} does not exist on {kafka_connection(kafka).bootstrap_servers}")
        partitions = sorted(meta.partitions)
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        low = {p: lo for p, (lo, hi) in marks.items()}
        high = {p: hi for p, (lo, hi) in marks.items()}
        start = _offsets_at(consumer, topic, partitions, from_ts, high) if from_ts is not None else low
        stop = _offsets_at(consumer, topic, partitions, to_ts, high) if to_ts is not None else high
    finally:
        consumer.close()
    return Window(topic, tuple(PartitionRange(p, max(start[p], low[p]), min(stop[p], high[p])) for p in partitions))


def split_window(window: Window, fraction: float) -> tuple[Window, Window]:
    """Split each partition's range at ``fraction`` of its records: (earlier, later)."""
    head, tail = [], []
    for r in window.ranges:
        cut = r.start + int(r.count * fraction)
        head.append(PartitionRange(r.partition, r.start, cut))
        tail.append(PartitionRange(r.partition, cut, r.stop))
    return Window(window.topic, tuple(head)), Window(window.topic, tuple(tail))


def is_eval_car(keys: np.ndarray, eval_share: float) -> np.ndarray:
    """Stable per-car train/eval split (the same car is always on the same side)."""
    import zlib

    cut = int(round(eval_share * EVAL_BUCKETS))
    return np.fromiter(((zlib.crc32(k) % EVAL_BUCKETS) < cut for k in keys), dtype=bool, count=len(keys))


def _decode(messages):
    from fleetpulse.codec import decode_batch
    from fleetpulse.readings import implausible

    batch = decode_batch(messages.numpy())
    # A NaN row makes every robust statistic (np.median) and so the whole model NaN: such rows are
    # dropped and counted, like the bridge and the transformer dead-letter them.
    return batch.values, batch.valid, batch.valid & ~implausible(batch.values)


def tfio_config(kafka: Kafka) -> list[str]:
    """TF-IO's ``key=value`` reader configuration (secrets included: never log it)."""
    conf = clients.kafka_config(kafka_connection(kafka), **{"group.id": group_id("tfio")})
    # TF-IO 0.37.1 refuses an entry with a second "=" ("invalid topic configuration"); the stack's
    # passwords (URL-safe base64 without padding) have none.
    if "=" in conf.get("sasl.password", ""):
        raise SettingsError("the Kafka password of FLEETPULSE_TRAIN_KAFKA_USERNAME contains '=', which TF-IO's Kafka "
                            "configuration cannot carry; give the training principal a password without '='")
    return [*TFIO_CONFIG, *(f"{k}={v}" for k, v in conf.items())]


def raw_dataset(kafka: Kafka, window: Window, chunk: int = CHUNK):
    """tf.data of (messages, keys) string batches of up to ``chunk`` records.

    Partitions are read in parallel (one TF-IO consumer each, interleaved deterministically); each
    partition's chunks stay in offset order, so a car's events (one key, one partition) stay in order.
    """
    import tensorflow as tf
    from tensorflow_io.python.ops import core_ops

    config = tfio_config(kafka)
    ranges = [r for r in window.ranges if r.count > 0]
    if not ranges:
        raise WindowError(f"no records in {window.describe()}")
    # A unique shared_name per partition: with the default '' every init in this process reuses
    # one resource, so all partitions would silently read the last one's records.
    resources = [core_ops.io_kafka_readable_init(window.topic, r.partition, offset=0, metadata=config,
                                                 shared_name=f"fleetpulse-{uuid.uuid4().hex}") for r in ranges]
    bounds = tf.constant([[r.start, r.stop] for r in ranges], dtype=tf.int64)

    def partition_chunks(i):
        start, stop = bounds[i][0], bounds[i][1]

        def read(offset):
            end = tf.minimum(offset + chunk, stop)
            branches = [lambda res=res: tuple(core_ops.io_kafka_readable_read(res, start=offset, stop=end)) for res in resources]
            return tf.switch_case(tf.cast(i, tf.int32), branches)

        return tf.data.Dataset.range(start, stop, chunk).map(read)

    return tf.data.Dataset.range(len(ranges)).interleave(
        partition_chunks, cycle_length=len(ranges), block_length=1, num_parallel_calls=len(ranges), deterministic=True)


def decoded_dataset(kafka: Kafka, window: Window, chunk: int = CHUNK):
    """tf.data of (values float32 [B,18], decodable bool [B], plausible bool [B], keys string [B]): header
    stripped and Avro decoded per batch with the vectorised codec (measured faster than TF-IO's
    decode_avro; bench/train.py); plausible = decodable with every reading inside fleetpulse.readings' ranges."""
    import tensorflow as tf

    def decode(messages, keys):
        values, valid, plausible = tf.py_function(_decode, [messages], [tf.float32, tf.bool, tf.bool])
        values.set_shape([None, 18])
        valid.set_shape([None])
        plausible.set_shape([None])
        return values, valid, plausible, keys

    return raw_dataset(kafka, window, chunk).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@dataclass
class Records:
    """A decoded window in partition/offset order (per car: time order)."""

    values: np.ndarray  # float32 [N, 18], valid rows only
    keys: np.ndarray  # object [N] of bytes (car ids)
    undecodable: int
    window: Window
    implausible: int = 0  # decodable, but a reading NaN, infinite or outside its physical range: dropped

    def __len__(self) -> int:
        return len(self.values)


def read_records(kafka: Kafka, window: Window, min_records: int = 1, progress=None) -> Records:
    """Run the TF-IO pipeline over the whole window and collect it; fail loudly on empty/short reads."""
    require_kafka(kafka, (window.topic,))
    if window.records < min_records:
        raise WindowError(f"{window.describe()} holds {window.records} records, fewer than the {min_records} needed")
    values, keys, read, bad, dropped = [], [], 0, 0, 0
    for v, valid, ok, k in decoded_dataset(kafka, window).as_numpy_iterator():
        read += len(ok)
        bad += int((~valid).sum())
        dropped += int((valid & ~ok).sum())
        values.append(v[ok])
        keys.append(k[ok])
        if progress:
            progress(read, window.records)
    if read != window.records:
        raise WindowError(f"read {read} of {window.records} records from {window.describe()}; the broker returned a short read")
    return Records(np.concatenate(values), np.concatenate(keys), bad, window, dropped)


@dataclass
class TimedRecords(Records):
    ts_ms: np.ndarray = None  # int64 [N] Kafka timestamps (join ground truth)


def read_timed_records(kafka: Kafka, window: Window, min_records: int = 1) -> TimedRecords:
    """Read a window with Kafka timestamps (evaluation joins labels on them; TF-IO does not expose them)."""
    from confluent_kafka import Consumer, TopicPartition

    from fleetpulse.codec import decode_batch
    from fleetpulse.readings import implausible

    require_kafka(kafka, (window.topic,))
    if window.records < min_records:
        raise WindowError(f"{window.describe()} holds {window.records} records, fewer than the {min_records} needed")
    consumer = Consumer(consumer_config(kafka, "eval", **{"fetch.wait.max.ms": 10}))
    payloads, keys, ts = [], [], []
    try:
        for r in window.ranges:
            if r.count == 0:
                continue
            consumer.assign([TopicPartition(window.topic, r.partition, r.start)])
            got = 0
            while got < r.count:
                batch = consumer.consume(min(10000, r.count - got), timeout=10)
                if not batch:
                    raise WindowError(f"read {got} of {r.count} records of partition {r.partition} in {window.describe()}")
                for m in batch:
                    if m.error() is not None or m.offset() >= r.stop:
                        continue
                    payloads.append(m.value())
                    keys.append(m.key() or b"")
                    ts.append(m.timestamp()[1])
                    got += 1
    finally:
        consumer.close()
    decoded = decode_batch(payloads)
    ok = decoded.valid & ~implausible(decoded.values)
    key_arr = np.array(keys, dtype=object)
    return TimedRecords(decoded.values[ok], key_arr[ok], int((~decoded.valid).sum()), window, int((decoded.valid & ~ok).sum()),
                        ts_ms=np.asarray(ts, dtype=np.int64)[ok])


def read_truth(kafka: Kafka, topic: str):
    """All TruthRecords on the ground-truth topic (small: one per car per state change)."""
    from confluent_kafka import Consumer, TopicPartition

    from fleetpulse.ground_truth import TruthRecord

    require_kafka(kafka, (topic,))
    consumer = Consumer(consumer_config(kafka, "truth"))
    out = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise WindowError(f"ground-truth topic {topic!r} does not exist on {kafka_connection(kafka).bootstrap_servers}; "
                              "evaluation needs the simulator's labels")
        for p in sorted(meta.partitions):
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi <= lo:
                continue
            consumer.assign([TopicPartition(topic, p, lo)])
            got = 0
            while got < hi - lo:
                batch = consumer.consume(min(10000, hi - lo - got), timeout=10)
                if not batch:
                    raise WindowError(f"read {got} of {hi - lo} ground-truth records of {topic!r} partition {p}")
                for m in batch:
                    if m.error() is None:
                        out.append(TruthRecord.from_json(m.value()))
                        got += 1
    finally:
        consumer.close()
    return out
