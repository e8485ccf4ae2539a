"""The transformer's dependencies, faked: alerts are resent until Kafka acknowledges them; an unanswered
infer request is retried, a rejected one is not; existing twins are loaded once while few, else per batch."""

from __future__ import annotations

import grpc
import pytest

from fleetpulse.errors import BrokerUnavailable
from fleetpulse.topics import DLQ_REASON_HEADER, DLQ_SOURCE_HEADER
from inference.transformer.delivery import Delivery
from inference.transformer.metrics import RunSummary
from inference.transformer.retrying import Retries
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
