"""What the transformer does when Kafka or the model server fails, without either: alerts are resent
until acknowledged; an unanswered infer request is retried, a rejected one is not."""

from __future__ import annotations

import grpc
import pytest

from fleetpulse.errors import BrokerUnavailable
from fleetpulse.retry import Backoff
from fleetpulse.topics import DLQ_REASON_HEADER, DLQ_SOURCE_HEADER
from inference.transformer.delivery import Delivery
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


def delivery(producer, retries: list) -> Delivery:
    return Delivery(producer, lambda: Backoff(0.001, 0.001), lambda exc, delay: retries.append(str(exc)))


def test_flush_returns_only_once_kafka_has_every_record_resending_the_failed_ones():
    producer, retries = FlakyProducer(failures=3), []
    sender = delivery(producer, retries)
    for value in (b"a", b"b"):
        sender.produce("alerts", b"car", value)
    sender.flush()
    assert sorted(producer.delivered) == [b"a", b"b"] and len(retries) == 2  # a, b fail; a again; then both land


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
    delivery(producer, []).dead_letter("sensor-data-dlq", [Msg()], {0: "bad magic byte"})
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
