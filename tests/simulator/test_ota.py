"""An over-the-air firmware rollout in the car model (no broker): who is updated when, what changes for
an updated car (its firmware only), and that outdated-firmware failures and ground truth stay as they were."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from simulator import car_model as cm
from simulator import failures as fm
from simulator.cli import simulate
from simulator.failures import plan_failures
from simulator.ota import NOT_UPDATED, Rollout, plan_ota

DT = 10.0
NEW = 2100


def steps(blocks, n: int) -> tuple[np.ndarray, list[list[tuple[int, np.ndarray, np.ndarray]]]]:
    """Values [n, cars, 18] and, per step, each block's (first car, onsets, severity)."""
    values = np.empty((n, sum(b.n for b in blocks), 18))
    truth = []
    for k in range(n):
        at, row = 0, []
        for b in blocks:
            s = b.step()
            values[k, at : at + b.n] = s.values
            row.append((b.first, s.onsets, s.severity))
            at += b.n
        truth.append(row)
    return values, truth


def fleet(n_cars: int, n_events: int, failures: float, seed: int, rollout: Rollout | None):
    plan = plan_failures(n_cars, n_events, failures, seed)
    ota = plan_ota(n_cars, rollout, seed) if rollout is not None else None
    return plan, cm.make_blocks(n_cars, seed, plan, DT, ota=ota)


def test_updated_share_is_zero_before_the_start_then_grows_linearly_to_the_share_and_stays():
    rollout = Rollout(NEW, start_seq=20, ramp_events=40, share=0.5)
    _, blocks = fleet(1000, 100, 0.0, 7, rollout)
    fw = steps(blocks, 100)[0][..., cm.FIRMWARE]
    updated = (fw == NEW).sum(axis=1)

    assert (updated[:21] == 0).all()
    np.testing.assert_array_equal(updated[20:61], (np.arange(41) * 500) // 40)
    assert (updated[60:] == 500).all()
    assert set(np.unique(fw)) == {fm.CURRENT_FIRMWARE, NEW}
    # Once updated, a car stays updated.
    assert (np.diff((fw == NEW).astype(int), axis=0) >= 0).all()


def test_an_updated_car_changes_its_firmware_and_nothing_else():
    _, plain = fleet(600, 80, 0.05, 5, None)
    _, rolled = fleet(600, 80, 0.05, 5, Rollout(NEW, start_seq=10, ramp_events=30, share=1.0))
    before, truth_before = steps(plain, 80)
    after, truth_after = steps(rolled, 80)

    others = [c for c in range(18) if c != cm.FIRMWARE]
    np.testing.assert_array_equal(after[..., others], before[..., others])
    changed = after[..., cm.FIRMWARE] != before[..., cm.FIRMWARE]
    assert changed.any() and (after[..., cm.FIRMWARE][changed] == NEW).all()
    # Ground truth is written from the failure onsets and severities: identical with and without the rollout.
    for row_before, row_after in zip(truth_before, truth_after):
        for (first_b, onsets_b, sev_b), (first_a, onsets_a, sev_a) in zip(row_before, row_after):
            assert first_b == first_a
            np.testing.assert_array_equal(onsets_a, onsets_b)
            np.testing.assert_array_equal(sev_a, sev_b)


def test_outdated_firmware_failures_still_report_1000_when_the_whole_fleet_is_updated():
    n_cars, n_events = 800, 60
    plan, blocks = fleet(n_cars, n_events, 0.3, 9, Rollout(NEW, start_seq=0, ramp_events=0, share=1.0))
    fw = steps(blocks, n_events)[0][..., cm.FIRMWARE]
    outdated = np.flatnonzero(plan.mode == fm.MODE_INDEX["outdated_firmware"])
    assert len(outdated) > 10

    seq = np.arange(n_events)[:, None]
    active = seq >= plan.onset_seq[None, :]
    firmware_failing = active & (plan.mode == fm.MODE_INDEX["outdated_firmware"])[None, :]
    assert (fw[firmware_failing] == fm.OUTDATED_FIRMWARE).all()
    assert (fw[~firmware_failing] == NEW).all()


def test_the_rollout_order_comes_from_the_seed_alone():
    rollout = Rollout(NEW, start_seq=5, ramp_events=50, share=0.8)
    a, b = plan_ota(2000, rollout, 3), plan_ota(2000, rollout, 3)
    np.testing.assert_array_equal(a.update_seq, b.update_seq)
    assert not np.array_equal(a.update_seq, plan_ota(2000, rollout, 4).update_seq)
    assert (a.update_seq == NOT_UPDATED).sum() == 400
    # Not by car index: the first updated cars are spread over the fleet and its blocks.
    first = np.flatnonzero(a.update_seq <= 5 + 5)
    assert len(first) == 160 and first.min() < 100 and first.max() > 1900

    # A worker that builds only some blocks steps its cars exactly as the whole fleet does.
    plan = plan_failures(2000, 60, 0.05, 3)
    whole = cm.make_blocks(2000, 3, plan, DT, ota=a)
    share = cm.make_blocks(2000, 3, plan, DT, only={2}, ota=a)
    for _ in range(30):
        want = [blk.step().values for blk in whole][2]
        np.testing.assert_array_equal(share[0].step().values, want)


def test_cli_rollout_times_are_seconds_of_the_run_at_its_rate():
    from simulator.cli import _rollout

    assert _rollout(NEW, 60.0, 120.0, 0.5, 0.5, "model") == Rollout(NEW, start_seq=30, ramp_events=60, share=0.5)
    assert _rollout(None, 60.0, 120.0, 1.0, 0.5, "model") is None


@pytest.mark.parametrize(("args", "message"), [
    (["--ota-firmware", "2000"], "must differ from the current"),
    (["--ota-firmware", "1000"], "must differ from the current"),
    (["--ota-firmware", "2100", "--source", "csv"], "CSV replay has its own firmware"),
])  # fmt: skip
def test_cli_refuses_a_rollout_that_cannot_be_told_apart_or_applied(args, message):
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 2
    assert message in result.output


def test_the_rollout_drifts_the_firmware_feature_past_the_threshold_and_an_unchanged_fleet_does_not():
    from fleetpulse.contract import SENSOR_FIELDS
    from fleetpulse.drift import DRIFT_THRESHOLD, DriftCounts, reference

    names = list(SENSOR_FIELDS)
    n_cars, train, live = 1000, 60, 30
    rollout = Rollout(NEW, start_seq=train, ramp_events=10, share=0.5)

    def live_psi(r: Rollout | None) -> np.ndarray:
        _, blocks = fleet(n_cars, train + live, 0.05, 21, r)
        v = steps(blocks, train + live)[0]
        counts = DriftCounts(reference(v[:train].reshape(-1, 18), names))
        counts.add(v[train + 10 :].reshape(-1, 18))  # after the ramp: half the fleet updated
        return counts.psi()

    firmware = names.index("control_unit_firmware")
    plain, rolled = live_psi(None), live_psi(rollout)
    assert rolled[firmware] > DRIFT_THRESHOLD > plain[firmware]
    others = [j for j in range(18) if j != firmware]
    np.testing.assert_allclose(rolled[others], plain[others])
