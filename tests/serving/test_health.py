"""The transformer's probes without a loop: stuck is pending work with no commit for stuck_after_s, idle is
not stuck, the reason is the dependency being retried; and the endpoints that serve them."""

from __future__ import annotations

import httpx

from devtools.stack.process import free_port
from inference.transformer.health import Health, serve


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def health(stuck_after_s: float = 10.0) -> tuple[Health, Clock]:
    clock = Clock()
    return Health(stuck_after_s, clock), clock


def test_pending_work_without_a_commit_for_stuck_after_s_is_stuck_and_a_commit_clears_it():
    h, clock = health()
    h.work(True)
    clock.now = 9.9
    assert h.stuck() is None
    clock.now = 10.0
    assert h.stuck()[0] == "loop"
    h.progressed()
    assert h.stuck() is None
    clock.now = 19.9
    assert h.stuck() is None and h.live()[0]


def test_an_idle_transformer_with_everything_committed_is_never_stuck():
    h, clock = health()
    h.work(True)
    clock.now = 5.0
    h.work(False)
    clock.now = 1000.0
    assert h.stuck() is None and h.seconds_without_progress() == 0.0


def test_the_reason_is_the_dependency_retried_longest_and_it_goes_once_it_answers():
    h, clock = health()
    h.work(True)
    h.retrying("kafka", "kafka: 3 records not acknowledged yet")
    clock.now = 1.0
    h.retrying("mongodb", "mongodb: AutoReconnect")
    clock.now = 11.0
    assert h.stuck() == ("kafka", "kafka: 3 records not acknowledged yet")
    h.recovered("kafka")
    assert h.stuck() == ("mongodb", "mongodb: AutoReconnect")


def test_a_transformer_is_not_ready_until_its_loop_runs_but_is_live():
    h, _ = health()
    assert h.live()[0] and not h.readiness()[0] and h.readiness()[1]["reason"] == "starting"
    h.ready = True
    assert h.readiness()[0]


def test_healthz_and_readyz_answer_503_with_the_reason_while_stuck_and_metrics_say_why():
    h, clock = health()
    port = free_port()
    server = serve(h, port)
    try:
        base = f"http://127.0.0.1:{port}"
        h.ready = True
        assert httpx.get(f"{base}/healthz").status_code == 200 and httpx.get(f"{base}/readyz").status_code == 200
        h.work(True)
        h.retrying("mongodb", "mongodb: AutoReconnect: connection closed")
        clock.now = 60.0
        live = httpx.get(f"{base}/healthz")
        assert live.status_code == 503 and live.json()["reason"] == "mongodb" and live.json()["seconds_without_progress"] == 60.0
        assert httpx.get(f"{base}/readyz").status_code == 503
        metrics = httpx.get(f"{base}/metrics").text
        assert 'fleetpulse_transformer_stuck{reason="mongodb"} 1.0' in metrics
        assert 'fleetpulse_transformer_stuck{reason="kafka"} 0.0' in metrics
    finally:
        server.shutdown()


def test_without_a_retry_the_reason_is_the_dependency_a_call_has_waited_on_longest():
    h, clock = health()
    h.work(True)
    h.calling("mongodb")  # a write that hangs until its timeout before any retry
    clock.now = 12.0
    assert h.stuck() == ("mongodb", "waiting on mongodb for 12s")
    h.returned("mongodb")
    assert h.stuck()[0] == "loop"
