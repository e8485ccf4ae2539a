"""Versions and channels on GCS (the real fake-gcs-server): what a publish puts where, what two writers
racing get, and the `fleetpulse models` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fleetpulse import model_store
from fleetpulse.clients import gcs_client
from fleetpulse.model_store import CANDIDATE, REJECTED, RETIRED, STABLE, ChannelConflict, ChannelError, Channels

FP = str(Path(sys.executable).with_name("fleetpulse"))
METRICS = {"f1": 0.97, "precision": 0.96, "recall": 0.98, "false_alerts_per_1000_car_hours": 0.4, "threshold": 1.3,
           "hysteresis": {"f1": 0.98, "recall": 0.99, "false_alerts_per_1000_car_hours": 0.2},
           "per_mode": {"overheating": {"recall": 1.0}}}  # fmt: skip


@pytest.fixture
def store(gcs_endpoint, unique, tmp_path):
    client = gcs_client(gcs_endpoint)
    bucket = f"fp-channels-{unique}"
    client.create_bucket(bucket)
    saved = tmp_path / "saved"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"not a real graph: channels never open it")
    return Store(client, bucket, f"car-anomaly-{unique}", saved)


class Store:
    def __init__(self, client, bucket: str, model: str, saved: Path):
        self.client, self.bucket, self.model, self.saved = client, bucket, model, saved

    def publish(self, rejected: str | None = None) -> tuple[int, str]:
        """What the pipeline's publish does: claim, upload, then a channel (or rejected before complete)."""
        version = model_store.claim_next_version(self.client, self.bucket, self.model)
        model_store.publish(self.client, version, self.saved, {"metrics": METRICS}, rejected=rejected)
        return version.version, REJECTED if rejected else model_store.release(self.client, version)

    def channels(self) -> Channels:
        return model_store.read_channels(self.client, self.bucket, self.model)[0]


def test_first_version_is_stable_and_later_ones_candidates_that_leave_stable_untouched(store):
    assert store.publish() == (1, STABLE)
    assert store.publish() == (2, CANDIDATE)
    assert store.publish() == (3, CANDIDATE)
    ch = store.channels()
    assert (ch.stable, ch.candidate, ch.previous) == (1, 3, ())
    assert [(e.version, e.channel) for e in model_store.catalog(store.client, store.bucket, store.model)] == [
        (1, STABLE), (2, RETIRED), (3, CANDIDATE)]  # fmt: skip


def test_gate_failed_version_is_kept_with_its_metrics_marked_rejected_and_never_the_latest(store):
    store.publish()
    assert store.publish(rejected="F1 0.700 below the gate 0.95") == (2, REJECTED)
    [_, entry] = model_store.catalog(store.client, store.bucket, store.model)
    assert (entry.channel, entry.reason, entry.metadata["metrics"]["f1"]) == (REJECTED, "F1 0.700 below the gate 0.95", 0.97)
    assert entry.metadata["published_at"]
    # The model server loads the newest complete version that is not rejected.
    assert model_store.latest_version(store.client, store.bucket, store.model).version == 1
    assert store.channels().stable == 1


def test_two_first_publishes_racing_make_exactly_one_stable(store):
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.publish())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(channel for _, channel in results) == [CANDIDATE, STABLE]
    ch = store.channels()
    assert {ch.stable, ch.candidate} == {1, 2}


def test_two_promoters_racing_on_the_same_state_exactly_one_wins(store):
    for _ in range(3):
        store.publish()
    # Both read the channels at the same generation before either writes: the generation precondition
    # lets exactly one write land, and the other raises having written nothing.
    both_read = threading.Barrier(2)
    outcomes = {}

    def promoter(version: int) -> None:
        def change(ch: Channels) -> Channels:
            both_read.wait(timeout=10)
            return ch.promote(version)

        try:
            model_store.update_channels(store.client, store.bucket, store.model, change)
            outcomes[version] = "won"
        except ChannelConflict:
            outcomes[version] = "conflict"

    threads = [threading.Thread(target=promoter, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["conflict", "won"]
    [winner] = [v for v, outcome in outcomes.items() if outcome == "won"]
    ch = store.channels()
    assert ch.stable == winner and ch.previous == (1,)


def test_rollback_restores_the_previous_stable_and_rejects_the_one_it_leaves(store):
    store.publish()
    store.publish()
    model_store.promote(store.client, store.bucket, store.model, 2)
    assert (store.channels().stable, store.channels().candidate) == (2, None)
    before, after = model_store.rollback(store.client, store.bucket, store.model)
    assert (before.stable, after.stable, after.previous) == (2, 1, ())
    assert after.channel(2) == REJECTED and after.rejected[2] == model_store.ROLLED_BACK
    with pytest.raises(ChannelError, match="no earlier stable"):
        model_store.rollback(store.client, store.bucket, store.model)


def test_reject_marks_the_candidate_rejected_and_empties_its_channel(store):
    store.publish()
    store.publish()
    model_store.reject(store.client, store.bucket, store.model, 2, "worse than stable in shadow")
    ch = store.channels()
    assert (ch.stable, ch.candidate, ch.rejected) == (1, None, {2: "worse than stable in shadow"})
    with pytest.raises(ChannelError, match="version 2 is rejected"):
        model_store.promote(store.client, store.bucket, store.model, 2)
    with pytest.raises(ChannelError, match="no complete version 9"):
        model_store.reject(store.client, store.bucket, store.model, 9, "x")


def test_channel_rules_refuse_what_would_break_them():
    ch = Channels().release(1).release(2)
    with pytest.raises(ChannelError, match="is stable: roll back"):
        ch.reject(1, "x")
    with pytest.raises(ChannelError, match="already stable"):
        ch.promote(1)
    with pytest.raises(ChannelError, match="no earlier stable"):
        ch.rollback()
    # Rollback skips an earlier stable rejected since it left.
    ch = ch.promote(2).release(3).promote(3).reject(2, "bad after all")
    assert ch.rollback().stable == 1
    assert Channels.from_json(json.loads(json.dumps(ch.to_json()))) == ch


def _models(store, gcs_endpoint: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEETPULSE_TRAIN_GCS_ENDPOINT": gcs_endpoint}
    return subprocess.run([FP, "models", *args, "--model", "car-anomaly", "--bucket", store.bucket], capture_output=True,
                          text=True, env=env, timeout=60)  # fmt: skip


@pytest.fixture
def cli_store(store):
    """The CLI names models by type, so this store publishes the real model name in its own bucket."""
    return Store(store.client, store.bucket, "car-anomaly", store.saved)


def test_models_cli_lists_promotes_rolls_back_and_rejects_each_in_one_line(cli_store, gcs_endpoint):
    for _ in range(3):
        cli_store.publish()
    out = _models(cli_store, gcs_endpoint, "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [(v["version"], v["channel"]) for v in listed] == [(1, STABLE), (2, RETIRED), (3, CANDIDATE)]
    assert set(listed[0]) == {"version", "channel", "metrics", "published_at"}
    assert listed[0]["metrics"]["f1"] == 0.97 and listed[0]["metrics"]["recall_per_mode"] == {"overheating": 1.0}

    steps = [(("promote", "3"), "car-anomaly version 3 is stable (was version 1)"),
             (("rollback",), "car-anomaly rolled back to version 1 (version 3 rejected)"),
             (("reject", "2", "--reason", "stale"), "car-anomaly version 2 rejected (stale)")]  # fmt: skip
    for args, line in steps:
        out = _models(cli_store, gcs_endpoint, *args)
        assert (out.returncode, out.stdout) == (0, line + "\n"), out.stderr

    out = _models(cli_store, gcs_endpoint, "list")
    assert [line.split()[:2] for line in out.stdout.splitlines()] == [["1", STABLE], ["2", REJECTED], ["3", REJECTED]]
    out = _models(cli_store, gcs_endpoint, "promote", "3")
    assert out.returncode == 1 and out.stderr.strip() == "error: version 3 is rejected (rolled back)"
