"""The transformer's dependencies, faked: alerts are resent until Kafka acknowledges them, a record Kafka
refuses is dead-lettered after bounded attempts; an unanswered infer request is retried, a rejected one is
not; existing twins are loaded once while few, else per batch; a twin MongoDB refuses does not block the
others, an outage is retried whole; a stop bounds every retry."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException
from pymongo.errors import AutoReconnect

from fleetpulse.errors import BrokerUnavailable
from fleetpulse.topics import DLQ_KAFKA_REJECTED, DLQ_KIND_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER
from inference.transformer.delivery import Delivery
from inference.transformer.metrics import RunSummary
from inference.transformer.retrying import Retries, StopRequested
from inference.transformer.twin_store import TwinLoader
from inference.transformer.v2_client import V2Client


class FlakyProducer:
    """Fails the first ``failures`` deliveries (as librdkafka reports them at flush), then delivers."""

    def __init__(self, failures: int):
        self.failures = failures
        self.queued: list = []
        self.delivered: list[bytes] = []

    def produce(self, topic, value, key, headers, on_delivery):
        self.queued.append((value, on_delivery))

    def poll(self, timeout):
        pass

    def flush(self, timeout) -> int:
        queued, self.queued = self.queued, []
        for value, on_delivery in queued:
            if self.failures:
                self.failures -= 1
                on_delivery("broker down", None)
            else:
                self.delivered.append(value)
                on_delivery(None, None)
        return 0


def delivery(producer, summary: RunSummary, reported: list[str]) -> Delivery:
    return Delivery(producer, Retries(summary, reported.append, max_delay_s=0.001))


def test_flush_returns_only_once_kafka_has_every_record_resending_the_failed_ones():
    producer, summary, reported = FlakyProducer(failures=3), RunSummary(), []
    sender = delivery(producer, summary, reported)
    for value in (b"a", b"b"):
        sender.produce("alerts", b"car", value)
    sender.flush()
    assert sorted(producer.delivered) == [b"a", b"b"]
    # a and b fail, then a again: two rounds resent, each counted and reported
    assert summary.retries == {"kafka": 2} and reported == ["kafka: 0 records not acknowledged yet, 2 to resend",
                                                            "kafka: 0 records not acknowledged yet, 1 to resend"]


def test_a_dead_letter_carries_its_reason_and_source():
    class Msg:
        def key(self):
            return b"car-1"

        def value(self):
            return b"\x00garbage"

        def topic(self):
            return "sensor-data"

        def partition(self):
            return 2

        def offset(self):
            return 41

    producer = FlakyProducer(failures=0)
    sent = []
    producer.produce = lambda topic, value, key, headers, on_delivery: sent.append((topic, key, value, dict(headers)))
    delivery(producer, RunSummary(), []).dead_letter("sensor-data-dlq", [Msg()], {0: "bad magic byte"})
    [(topic, key, value, headers)] = sent
    assert (topic, key, value) == ("sensor-data-dlq", b"car-1", b"\x00garbage")
    assert headers[DLQ_REASON_HEADER] == b"bad magic byte" and headers[DLQ_SOURCE_HEADER] == b"sensor-data/2/41"


class Failed(grpc.RpcError, grpc.Future):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def result(self, timeout=None):
        raise self


def test_an_infer_request_the_server_did_not_answer_is_retried_and_one_it_rejected_is_not():
    client = V2Client("127.0.0.1:1", "car-anomaly")  # never connects: only the result handling is under test
    with pytest.raises(BrokerUnavailable, match="UNAVAILABLE"):
        client.result(Failed(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(grpc.RpcError):
        client.result(Failed(grpc.StatusCode.INVALID_ARGUMENT))


class Twins:
    def __init__(self, n: int):
        self.docs = {f"car-{i}": {"_id": f"car-{i}"} for i in range(n)}
        self.calls: list[str] = []

    def count(self) -> int:
        self.calls.append("count")
        return len(self.docs)

    def load_all(self) -> dict:
        self.calls.append("load_all")
        return dict(self.docs)

    def load(self, ids) -> dict:
        self.calls.append("load")
        return {i: self.docs[i] for i in ids if i in self.docs}


def loader(twins: Twins, preload_max: int) -> TwinLoader:
    return TwinLoader(twins, preload_max, Retries(RunSummary(), lambda _: None, 0.001))


def test_a_small_collection_is_loaded_once_and_each_twin_handed_out_once():
    twins = Twins(3)
    load = loader(twins, preload_max=3)
    assert set(load.load(["car-0", "car-9"])) == {"car-0"} and set(load.load(["car-0", "car-1"])) == {"car-1"}
    assert twins.calls == ["count", "load_all"]
    load.forget()  # partitions were revoked: another member may have written twins since
    assert set(load.load(["car-0"])) == {"car-0"} and twins.calls[-2:] == ["count", "load_all"]


def test_a_large_collection_is_queried_per_poll_batch():
    twins = Twins(5)
    load = loader(twins, preload_max=4)
    assert set(load.load(["car-0"])) == {"car-0"} and set(load.load(["car-0"])) == {"car-0"}
    assert twins.calls == ["count", "load", "load"]


class RefusingProducer(FlakyProducer):
    """Kafka refuses every record for the topics in ``refused`` (as a delivery report), delivers the others."""

    def __init__(self, refused: set[str]):
        super().__init__(failures=0)
        self.refused = refused
        self.sent: list[tuple[str, bytes, dict]] = []

    def produce(self, topic, value, key, headers, on_delivery):
        self.queued.append((topic, value, dict(headers or []), on_delivery))

    def flush(self, timeout) -> int:
        queued, self.queued = self.queued, []
        for topic, value, headers, on_delivery in queued:
            if topic in self.refused:
                on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                self.sent.append((topic, value, headers))
                on_delivery(None, None)
        return 0


def test_an_alert_kafka_refuses_every_time_goes_to_the_dlq_with_the_reason_after_bounded_attempts():
    producer, summary = RefusingProducer({"alerts"}), RunSummary()
    sender = Delivery(producer, Retries(summary, lambda _: None, max_delay_s=0.001), "dlq", attempts=3)
    sender.produce("alerts", b"car-7", b"alert")
    sender.produce("alerts-ok", b"car-8", b"fine")
    sender.flush()
    assert [(t, v) for t, v, _ in producer.sent] == [("alerts-ok", b"fine"), ("dlq", b"alert")]
    headers = producer.sent[1][2]
    assert headers[DLQ_KIND_HEADER] == DLQ_KAFKA_REJECTED.encode() and b"3 times" in headers[DLQ_REASON_HEADER]
    assert summary.retries == {"kafka": 3}  # two resends, then the dead letter waits for its acknowledgement


def test_a_dead_letter_kafka_refuses_is_kept_as_a_prefix_then_dropped_and_the_flush_returns():
    producer = RefusingProducer({"dlq"})
    dropped: list[str] = []
    sender = Delivery(producer, Retries(RunSummary(), lambda _: None, max_delay_s=0.001), "dlq", attempts=2, progress=dropped.append)
    sender.produce("dlq", b"car-1", b"x" * 100_000)
    sender.flush()  # returns: nothing is waited on forever
    assert producer.sent == [] and len(dropped) == 1 and "dropped a record for dlq" in dropped[0]


def test_a_record_refused_before_it_is_sent_is_dead_lettered_without_resending():
    class TooLarge(RefusingProducer):
        def produce(self, topic, value, key, headers, on_delivery):
            if topic == "alerts":
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            super().produce(topic, value, key, headers, on_delivery)

    producer = TooLarge(set())
    sender = Delivery(producer, Retries(RunSummary(), lambda _: None, max_delay_s=0.001), "dlq", attempts=5)
    sender.produce("alerts", b"car-1", b"big")
    sender.flush()
    assert [t for t, _, _ in producer.sent] == ["dlq"]


def test_a_stop_bounds_a_retry_that_never_succeeds():
    retries = Retries(RunSummary(), lambda _: None, max_delay_s=0.05)
    retries.stop_within(0.3)
    t0 = time.monotonic()
    with pytest.raises(StopRequested):
        retries.call("mongodb", lambda: (_ for _ in ()).throw(AutoReconnect("down")))
    assert time.monotonic() - t0 < 1.0


class Collection:
    """A twin collection that refuses (closing the connection, as FerretDB does for NaN) documents with a NaN."""

    full_name = "fleetpulse.cars"

    def __init__(self, down: bool = False):
        self.docs: dict[str, dict] = {}
        self.down = down

    def insert_many(self, docs, ordered):
        if self.down or any(d["last_score"] != d["last_score"] for d in docs):
            raise AutoReconnect("connection closed")
        self.docs.update({d["_id"]: d for d in docs})


class Client:
    def __init__(self, collection: Collection):
        self.collection = collection
        self.admin = self

    def __getitem__(self, _):
        return {"cars": self.collection}

    def command(self, name):
        if self.collection.down:
            raise AutoReconnect("connection refused")
        return {"ok": 1}


def snapshot_of(scores: list[float]):
    from fleetpulse.hysteresis import Rule
    from inference.transformer.batching import Events
    from inference.transformer.car_table import CarTable

    n = len(scores)
    table = CarTable(Rule())
    cars, _ = table.lookup([f"car-{i}".encode() for i in range(n)])
    table.apply(Events(cars, np.ones((n, 18), np.float32), np.zeros(n, np.int32), np.arange(n), np.zeros(n)),
                np.array(scores, np.float32), np.zeros(n, bool))
    return table.snapshot(cars, np.zeros(n, bool), 3.0, "1")


def test_a_twin_document_the_server_refuses_is_handed_back_and_the_others_are_written(monkeypatch):
    from inference.transformer import twin_store

    monkeypatch.setattr(twin_store.time, "sleep", lambda _: None)
    collection = Collection()
    store = twin_store.TwinStore(Client(collection), "fleetpulse", "cars")
    saved = store.save(snapshot_of([1.0, float("nan"), 2.0, 0.5, 1.5]))
    assert sorted(collection.docs) == ["car-0", "car-2", "car-3", "car-4"] and saved.written == 4
    [(doc, reason)] = saved.refused
    assert doc["_id"] == "car-1" and "refused the twin of car-1 3 times" in reason and "AutoReconnect" in reason


def test_a_twin_write_while_the_server_is_down_is_an_outage_never_a_refusal():
    from inference.transformer import twin_store

    store = twin_store.TwinStore(Client(Collection(down=True)), "fleetpulse", "cars")
    with pytest.raises(AutoReconnect):
        store.save(snapshot_of([1.0, 2.0]))
