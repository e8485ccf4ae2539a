"""The serving rows of the fault matrix against the real stack, at reduced loads (bench/faults.py runs the
issue's): every event in Kafka is in its car's twin exactly once or in the dead-letter topic, and the
alerts, deduplicated by (car, source partition, source offset), are exactly the expected status changes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from devtools.faults import serving
from devtools.faults.serving import Load, Servers
from devtools.stack.settings import StackSettings

pytestmark = pytest.mark.slow

LOAD = Load(cars=200, rate=1000, seconds=20)


@pytest.fixture
def servers(kafka, gcs_endpoint) -> Servers:
    return Servers(kafka, StackSettings(), gcs_endpoint)


def assert_nothing_lost(row: dict) -> None:
    assert set(serving.ROW_KEYS) <= set(row)
    assert row["acknowledged"] == row["sent"] == row["in_kafka"], row
    assert row["in_twins"] + row["dlq"] >= row["in_kafka"] and row["lost"] == 0 and row["duplicates"] == 0, row
    assert row["alerts_expected"] > 0 and row["alerts_missing"] == row["alerts_unexpected"] == 0, row
    assert row["recovery_s"] is not None, row


def test_kill_9_of_the_transformer_loses_nothing(servers, tmp_path):
    # A 6 s session (the broker's minimum) instead of 45: the dead member's partitions move sooner, the row is the same.
    row = serving.transformer_kill_row(servers, tmp_path, LOAD, consumer_session_timeout_ms="6000")
    assert_nothing_lost(row)
    assert row["in_twins"] == row["in_kafka"]


def test_kill_9_of_the_model_server_loses_nothing(servers, tmp_path):
    row = serving.model_server_kill_row(servers, tmp_path, LOAD)
    assert_nothing_lost(row)
    assert row["model_server_retries"] > 0


def test_ferretdb_down_is_visible_on_healthz_a_sigterm_then_is_bounded_and_nothing_is_lost(servers, private_service, tmp_path):
    mongo = private_service("mongodb")
    private = replace(servers, mongodb=mongo.settings)
    row = serving.mongodb_down_row(private, tmp_path, Load(cars=200, rate=1000, seconds=30), mongo, down_s=15)
    assert_nothing_lost(row)
    assert row["stuck_reason"] == "mongodb"
    assert row["stop_s"] <= 5 + 3  # stop_timeout_s plus a poll and the interpreter's exit


def test_gcs_down_at_server_start_and_after_a_new_version_is_published(servers, private_service, tmp_path):
    gcs = private_service("gcs")
    private = replace(servers, gcs_endpoint=gcs.endpoint["endpoint"])
    row = serving.gcs_down_row(private, tmp_path, LOAD, gcs)
    assert_nothing_lost(row)
    assert row["served_new_version"]


def test_invalid_versions_are_skipped_and_another_input_shape_is_followed(servers, tmp_path):
    row = serving.bad_versions_row(servers, tmp_path, Load(cars=200, rate=1000, seconds=25))
    assert_nothing_lost(row)
    assert row["invalid_skipped"] == 2 and row["served_other_shape"]


def test_group_scaled_1_3_1_with_a_member_sigstopped_past_its_session_timeout(servers, tmp_path):
    row = serving.group_scaling_row(servers, tmp_path, Load(cars=2000, rate=1000, seconds=30))
    assert_nothing_lost(row)


def test_nan_infinite_and_out_of_range_readings_end_in_the_dlq(servers, tmp_path):
    row = serving.bad_readings_row(servers, tmp_path, Load(cars=200, rate=2000, seconds=15, bad_share=0.01))
    assert_nothing_lost(row)
    assert row["dlq"] > 0 and row["in_twins"] + row["dlq"] == row["in_kafka"]
