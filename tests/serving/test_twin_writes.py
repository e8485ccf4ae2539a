"""When `fleetpulse score` writes each car's twin, and that a commit never runs ahead of durable twins."""

from __future__ import annotations

import json
import signal
import time
from contextlib import contextmanager

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from fleetpulse.clients import kafka_config
from tests.serving.harness import N_CARS, Run, cars, failing_rows, healthy_rows, stream_and_kill


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def all_twins(run: Run) -> dict | None:
    twins = run.twins()
    return twins if len(twins) == N_CARS else None


def first_twins(run: Run, rng: np.random.Generator) -> dict:
    """One healthy reading of every car, then wait until each has its first twin."""
    run.produce(healthy_rows(N_CARS, rng), cars())
    run.producer.flush()
    return wait_for(lambda: all_twins(run), 90, "every car's first twin")


@contextmanager
def scoring(run: Run, tmp_path, until_idle: float = 120):
    """`fleetpulse score` running for the block; killed if the block fails."""
    with open(tmp_path / "score.log", "w") as log:
        proc = run.start_score(until_idle=until_idle, log=log)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def events(twins: dict) -> dict[str, int]:
    return {car: doc["counters"]["events"] for car, doc in twins.items()}


def stop(proc, tmp_path) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, (tmp_path / "score.log").read_text()[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def committed(run: Run) -> dict[int, int]:
    c = Consumer({**kafka_config(run.kafka), "group.id": run.env["FLEETPULSE_SCORE_GROUP_ID"], "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(run.topic, p) for p in range(3)], timeout=10)}
    finally:
        c.close()


def sensor_log(run: Run) -> list[tuple[str, int, int]]:
    """(car, partition, offset) of every record in the run's sensor topic."""
    return [(m.key().decode(), m.partition(), m.offset()) for m in run.read(run.topic, expect_at_least=sum(run.sent.values()))]


def test_a_status_change_is_written_at_the_next_checkpoint_while_healthy_cars_wait_for_the_twin_interval(
        model_server, kafka, unique, tmp_path):
    run = Run(unique, kafka, model_server)
    run.env.update({"FLEETPULSE_SCORE_TWIN_INTERVAL_S": "600", "FLEETPULSE_SCORE_CHECKPOINT_INTERVAL_S": "0.5"})
    rng = np.random.default_rng(11)
    ids = cars()
    with scoring(run, tmp_path) as proc:
        for _ in range(5):
            run.produce(healthy_rows(N_CARS, rng), ids)
        run.producer.flush()
        # A car without a twin gets one at the next checkpoint (inserted), whatever the interval.
        first = wait_for(lambda: all_twins(run), 90, "every car's first twin")
        time.sleep(1.5)  # let checkpoints that were already under way land
        before = events(run.twins())

        for step in range(10):
            rows = healthy_rows(N_CARS, rng)
            rows[0] = failing_rows(1, rng)[0]
            run.produce(rows, ids)
        run.producer.flush()
        def changed():
            doc = run.twins()["car-000"]
            return doc if doc["status"] != "ok" else None

        failing = wait_for(changed, 30, "car-000's status change in its twin")
        assert failing["status"] in ("warning", "failing") and failing["counters"]["alerts"] >= 1
        healthy_now = events(run.twins())
        assert {c: healthy_now[c] for c in ids[1:]} == {c: before[c] for c in ids[1:]}, "healthy cars were rewritten before the interval"
        assert all(first[c]["status"] == "ok" for c in ids)

        summary = stop(proc, tmp_path)
    # Stopping writes every deferred twin before the last commit.
    twins = run.twins()
    assert events(twins) == run.sent and twins["car-000"]["status"] == "failing"
    assert summary["twin_inserts"] == N_CARS


def test_a_healthy_car_is_rewritten_at_least_every_twin_interval(model_server, kafka, unique, tmp_path):
    run = Run(unique, kafka, model_server)
    run.env.update({"FLEETPULSE_SCORE_TWIN_INTERVAL_S": "2", "FLEETPULSE_SCORE_CHECKPOINT_INTERVAL_S": "0.5"})
    rng = np.random.default_rng(12)
    ids = cars()
    seen: list[tuple[float, int]] = []  # (seconds since the stream started, car-005's stored event count)
    with scoring(run, tmp_path) as proc:
        first_twins(run, rng)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 12:
            run.produce(healthy_rows(N_CARS, rng), ids)
            run.producer.flush()
            seen.append((time.monotonic() - t0, run.twins()["car-005"]["counters"]["events"]))
            time.sleep(0.25)
        stop(proc, tmp_path)
    assert events(run.twins()) == run.sent
    # Its twin advanced several times while it streamed, never staying behind for long.
    changes = [t for (t, n), (_, prev) in zip(seen[1:], seen) if n != prev]
    assert len(changes) >= 3, seen
    gaps = np.diff([0.0, *changes, seen[-1][0]])
    assert gaps.max() < 2 + 3, (gaps, seen)  # the interval, plus a checkpoint, a write and this loop's sampling


def stream_checking_commits(run: Run, rng, seconds: float, failing_car: int = 7) -> int:
    """Produce while the transformer runs; after each round assert every committed event is in its car's twin."""
    ids = cars()
    checks = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for _ in range(3):
            rows = healthy_rows(N_CARS, rng)
            if time.monotonic() - t0 > seconds / 2:
                rows[failing_car] = failing_rows(1, rng)[0]
            run.produce(rows, ids)
        run.producer.flush()
        time.sleep(0.3)
        # Commit first, twins second: twins only move forward, so this order can only favour a violation.
        position = committed(run)
        twins = run.twins()
        for car, p, o in sensor_log(run):
            if o < position.get(p, -1):
                stored = twins[car].get("offsets", {}).get(str(p), -1)
                assert o <= stored, f"offset {p}/{o} of {car} committed ({position}) but its twin has only {stored}"
        checks += 1
    return checks


def test_no_committed_offset_runs_ahead_of_durable_twins(model_server, kafka, unique, tmp_path):
    run = Run(unique, kafka, model_server)
    run.env.update({"FLEETPULSE_SCORE_TWIN_INTERVAL_S": "4", "FLEETPULSE_SCORE_CHECKPOINT_INTERVAL_S": "0.3"})
    rng = np.random.default_rng(13)
    with scoring(run, tmp_path) as proc:
        first_twins(run, rng)
        assert stream_checking_commits(run, rng, 10) >= 3
        stop(proc, tmp_path)
    assert events(run.twins()) == run.sent


@pytest.mark.slow
def test_transformer_killed_with_deferred_twins_loses_nothing_on_restart(model_server, kafka, unique, tmp_path):
    run = Run(unique, kafka, model_server)
    run.env.update({"FLEETPULSE_SCORE_TWIN_INTERVAL_S": "30", "FLEETPULSE_SCORE_CHECKPOINT_INTERVAL_S": "0.3",
                    "FLEETPULSE_SCORE_CONSUMER_SESSION_TIMEOUT_MS": "6000"})
    rng = np.random.default_rng(14)
    with scoring(run, tmp_path) as proc:
        first_twins(run, rng)
        stream_checking_commits(run, rng, 8)
        time.sleep(1.0)  # the last round applied, its twins deferred
        proc.kill()  # SIGKILL: deferred twins die with the process; Kafka still has their events past the commit
        proc.wait()
    stored = events(run.twins())
    assert stored != run.sent, "nothing was deferred at the kill; the test proves nothing"
    # The same group resumes from its commits once the dead member's session (6 s here) has expired.
    with scoring(run, tmp_path) as proc:
        wait_for(lambda: events(run.twins()) == run.sent, 150, "every twin complete after the restart")
        summary = stop(proc, tmp_path)
    assert events(run.twins()) == run.sent
    assert 0 < summary["scored"] <= sum(run.sent.values()) - sum(stored.values()) + summary["skipped_replayed"]


@pytest.mark.slow
def test_mongodb_killed_while_twins_are_deferred_loses_nothing(model_server, kafka, private_service, unique, tmp_path):
    mongo = private_service("mongodb")
    run = Run(unique, kafka, model_server, mongodb=mongo.settings)
    run.env.update({"FLEETPULSE_SCORE_TWIN_INTERVAL_S": "3"})
    summary = stream_and_kill(run, mongo.kill, mongo.start, tmp_path=tmp_path)
    assert summary["retries"].get("mongodb", 0) > 0


def test_inserting_a_twin_that_already_exists_leaves_the_same_document_as_an_upsert(mongodb_uri, unique):
    """The writer inserts twins of cars its load did not find; a retried or raced insert must not fail or differ."""
    from pymongo import MongoClient

    from inference.transformer.twin_store import TwinStore

    client = MongoClient(mongodb_uri)
    store = TwinStore(client, "fleetpulse", f"cars_{unique}")
    store.insert([{"_id": "car-a", "status": "ok", "offsets": {"0": 1}}, {"_id": "car-b", "status": "ok", "offsets": {"0": 2}}])
    assert store.insert([{"_id": "car-a", "status": "warning", "offsets": {"0": 5}}, {"_id": "car-c", "status": "ok", "offsets": {"1": 3}}]) == 2
    docs = {d["_id"]: d for d in client["fleetpulse"][f"cars_{unique}"].find()}
    assert docs == {"car-a": {"_id": "car-a", "status": "warning", "offsets": {"0": 5}},
                    "car-b": {"_id": "car-b", "status": "ok", "offsets": {"0": 2}},
                    "car-c": {"_id": "car-c", "status": "ok", "offsets": {"1": 3}}}


def snapshot(cars: list[str], offsets: list[int], scores: list[float] | None = None, has_twin: bool = True):
    """A twin snapshot of these cars, each with one event at its offset on partition 0."""
    from fleetpulse.hysteresis import Rule
    from inference.transformer.batching import Events
    from inference.transformer.car_table import CarTable

    n = len(cars)
    table = CarTable(Rule())
    idx, _ = table.lookup([c.encode() for c in cars])
    rows = np.tile(healthy_rows(1, np.random.default_rng(0)), (n, 1))
    table.apply(Events(idx, rows, np.zeros(n, np.int32), np.array(offsets), np.zeros(n)),
                np.array(scores or [1.0] * n, np.float32), np.zeros(n, bool))
    return table.snapshot(idx, np.full(n, has_twin), 3.0, "1")


def test_a_stale_members_twin_write_is_fenced_out_on_ferretdb_and_a_newer_one_applies(mongodb_uri, unique):
    from pymongo import MongoClient

    from inference.transformer.checkpoint import fence_filter
    from inference.transformer.twin_store import TwinStore

    client = MongoClient(mongodb_uri)
    store = TwinStore(client, "fleetpulse", f"cars_{unique}")
    assert store.save(snapshot(["car-a", "car-b"], [10, 10], has_twin=False)).written == 2
    saved = store.save(snapshot(["car-a", "car-b"], [12, 7]))  # car-b's writer is behind the stored twin
    assert saved.written == 1 and saved.fenced == ["car-b"]
    docs = {d["_id"]: d for d in client["fleetpulse"][f"cars_{unique}"].find()}
    assert docs["car-a"]["offsets"] == {"0": 12} and docs["car-b"]["offsets"] == {"0": 10}
    assert store.save(snapshot(["car-a"], [5], has_twin=False)).fenced == ["car-a"]  # a raced insert is fenced too
    # The filter form (what MongoDB gets) means the same on FerretDB 1.24's operators.
    coll = client["fleetpulse"][f"cars_{unique}"]
    assert coll.update_one(fence_filter("car-a", 0, 11), {"$set": {"x": 1}}).matched_count == 0
    assert coll.update_one(fence_filter("car-a", 0, 12), {"$set": {"x": 1}}).matched_count == 1
    assert coll.update_one(fence_filter("car-a", 3, 0), {"$set": {"x": 1}}).matched_count == 1  # partition never stored


def test_a_member_paused_between_reading_the_stored_offsets_and_writing_is_fenced_out_by_the_newer_twin(mongodb_uri, unique):
    """A SIGSTOP that lands between the fence's read and its write: the new owner writes meanwhile."""
    from pymongo import MongoClient

    from inference.transformer.twin_store import TwinStore

    client = MongoClient(mongodb_uri)
    new_owner = TwinStore(client, "fleetpulse", f"cars_{unique}")
    assert new_owner.save(snapshot(["car-a", "car-b"], [10, 10], has_twin=False)).written == 2

    class PausedAfterItsRead(TwinStore):
        paused = False

        def _stored_offsets(self, car):
            stored = super()._stored_offsets(car)
            if car == "car-a" and not self.paused:
                self.paused = True
                new_owner.save(snapshot(["car-a"], [30]))  # the partition moved on while this member slept
                time.sleep(self.fence_lease_s + 0.1)
            return stored

    stale = PausedAfterItsRead(client, "fleetpulse", f"cars_{unique}", fence_lease_s=0.3)
    saved = stale.save(snapshot(["car-a", "car-b"], [20, 20]))
    assert saved.fenced == ["car-a"] and saved.written == 1
    docs = {d["_id"]: d["offsets"] for d in client["fleetpulse"][f"cars_{unique}"].find()}
    assert docs == {"car-a": {"0": 30}, "car-b": {"0": 20}}


def test_a_twin_ferretdb_refuses_is_handed_back_while_the_others_are_written(mongodb_uri, unique):
    """FerretDB refuses NaN by closing the connection; one such document once wedged every car's twin."""
    from pymongo import MongoClient

    from inference.transformer.twin_store import TwinStore

    client = MongoClient(mongodb_uri)
    store = TwinStore(client, "fleetpulse", f"cars_{unique}", timeout_s=20)
    saved = store.save(snapshot([f"car-{i}" for i in range(6)], list(range(6)), [1.0, 1.0, float("nan"), 1.0, 1.0, 1.0], False))
    assert saved.written == 5 and [doc["_id"] for doc, _ in saved.refused] == ["car-2"]
    assert sorted(d["_id"] for d in client["fleetpulse"][f"cars_{unique}"].find()) == ["car-0", "car-1", "car-3", "car-4", "car-5"]


def test_a_write_sends_nothing_more_once_its_member_lost_the_partitions(mongodb_uri, unique):
    """The writer asks before each command; the chunks after a "no" are never sent, and the write is stale."""
    from pymongo import MongoClient

    from inference.transformer.twin_store import BULK_CHUNK, TwinStore

    client = MongoClient(mongodb_uri)
    store = TwinStore(client, "fleetpulse", f"cars_{unique}")
    ids = [f"car-{i:02d}" for i in range(2 * BULK_CHUNK + 5)]
    assert store.save(snapshot(ids, [1] * len(ids), has_twin=False)).written == len(ids)
    answers = iter([True])
    saved = store.save(snapshot(ids, [9] * len(ids)), may_send=lambda: next(answers, False))
    assert saved.stale and saved.written == BULK_CHUNK and saved.dropped == len(ids) - BULK_CHUNK
    offsets = {d["_id"]: d["offsets"]["0"] for d in client["fleetpulse"][f"cars_{unique}"].find()}
    assert offsets == {car: 9 if i < BULK_CHUNK else 1 for i, car in enumerate(ids)}


def test_after_a_pause_twin_writes_wait_the_hold_and_a_loss_meanwhile_drops_them(mongodb_uri, unique):
    """A member woken from a SIGSTOP: its write waits until Kafka could have told it the partitions moved
    and the loop has asked Kafka since (a consume() begun after the hold); told so meanwhile, it sends
    nothing; not told, it writes then. A checkpoint that blocks the loop waits for the hold only."""
    from pymongo import MongoClient

    from inference.transformer.checkpoint import PauseFence
    from inference.transformer.metrics import RunSummary
    from inference.transformer.retrying import Retries
    from inference.transformer.twin_store import TwinStore, TwinWriter

    client = MongoClient(mongodb_uri)
    coll = client["fleetpulse"][f"cars_{unique}"]
    store = TwinStore(client, "fleetpulse", f"cars_{unique}")
    assert store.save(snapshot(["car-a", "car-b"], [1, 1], has_twin=False)).written == 2
    writer = TwinWriter(store, Retries(RunSummary(), lambda _: None, 1.0), PauseFence(pause_s=1.0, hold_s=2.0, now=time.monotonic()))
    end_watch = writer.watch_pauses()
    try:
        writer.pauses.seen -= 3  # as if no thread of the process had run for 3 s
        writer.submit(snapshot(["car-a", "car-b"], [5, 5]), {0: 5})
        time.sleep(1.0)
        assert writer.finish(wait=False) is None and {d["offsets"]["0"] for d in coll.find()} == {1}
        writer.drop()  # the loop's on_lost
        stale = writer.finish(wait=True, timeout_s=5)
        assert stale.saved.stale and stale.saved.dropped == 2 and stale.epoch != writer.epoch
        assert {d["offsets"]["0"] for d in coll.find()} == {1}

        writer.pauses.seen -= 3
        writer.submit(snapshot(["car-a", "car-b"], [7, 7]), {0: 7})
        time.sleep(2.5)  # the hold is over, but the loop has not consumed since: a loss could be queued, unserved
        assert writer.finish(wait=False) is None and {d["offsets"]["0"] for d in coll.find()} == {1}
        writer.polled(time.monotonic())  # the loop's consume(), begun after the hold, returned without a loss
        written = writer.finish(wait=True, timeout_s=10)
        assert written.saved.written == 2 and not written.saved.stale and written.epoch == writer.epoch
        assert {d["offsets"]["0"] for d in coll.find()} == {7}

        writer.pauses.seen -= 3
        writer.blocking = True  # a revoke's checkpoint: the loop is inside the callback, no consume() comes
        t0 = time.monotonic()
        writer.submit(snapshot(["car-a", "car-b"], [9, 9]), {0: 9})
        written = writer.finish(wait=True, timeout_s=10)
        assert time.monotonic() - t0 >= 2.0 - 0.2  # the hold, less the watchdog's tick
        assert written.saved.written == 2 and {d["offsets"]["0"] for d in coll.find()} == {9}
    finally:
        end_watch()
