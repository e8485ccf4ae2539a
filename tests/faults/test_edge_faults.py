"""The edge rows of the fault matrix (#13) against real servers, at reduced duration: each row is the
function bench/faults.py runs at the issue's full loads (devtools/faults/edge.py). Every message is
numbered, so "lost" is an exact count."""

from __future__ import annotations

import json

import pytest

from devtools.faults import edge

pytestmark = pytest.mark.slow


def show(row: dict) -> dict:
    print("\n" + json.dumps(row))
    return row


def test_kill_9_of_the_bridge_mid_stream_loses_nothing():
    r = show(edge.bridge_kill9(rate=5_000, seconds=10))
    assert r["session_resumed"], "the restarted bridge did not resume its MQTT session"
    assert r["acknowledged"] == r["sent"] == r["in_kafka"] and r["lost"] == 0


def test_kafka_down_then_back_loses_nothing_and_the_bridge_waits():
    r = show(edge.kafka_down(rate=5_000, seconds=22, down_s=15))
    assert r["bridge_waited"] and r["in_flight_while_down"] > 0 and r["acks_while_down_le_forwarded"]
    assert r["acknowledged"] == r["sent"] == r["in_kafka"] and r["lost"] == 0


def test_mosquitto_restart_mid_stream_loses_nothing_for_qos1_persistent_sessions():
    r = show(edge.mosquitto_restart(rate=5_000, seconds=10))
    assert r["publisher_reconnects"] >= 1 and r["bridge_connects"] >= 2
    assert r["acknowledged"] == r["sent"] == r["in_kafka"] and r["lost"] == 0


@pytest.mark.parametrize("backlog_s", [0.0, 2.0])
def test_mosquitto_kill_9_loses_only_what_it_had_acknowledged_and_not_saved(backlog_s):
    # Mosquitto acknowledges before it writes to disk (every autosave_interval, 30 s here): what it
    # held only in memory is gone. With the bridge online that is what it had not yet handed over
    # (measured: none); with the bridge down, the queue it kept for the bridge's session.
    rate = 5_000
    r = show(edge.mosquitto_kill9(rate=rate, seconds=10, backlog_s=backlog_s))
    assert r["acknowledged"] == r["sent"] and r["in_kafka"] + r["lost"] == r["sent"]
    assert r["lost_all_unsaved"] and r["lost"] <= r["unsaved_acked"], "a message the broker had saved was lost"
    assert abs(r["lost"] - r["queued_unsaved"]) <= rate * 0.5, "the loss is not the queue the broker held only in memory"


def test_poison_pills_all_reach_the_dlq_with_their_kind_and_every_good_message_arrives():
    r = show(edge.poison(rate=10_000, seconds=5))
    assert r["acknowledged"] == r["sent"] == r["good"] + r["bad"]
    assert r["lost"] == 0 and r["in_kafka"] == r["sent"]
    assert r["dead_lettered_by_kind"] == r["bad_by_kind"]
