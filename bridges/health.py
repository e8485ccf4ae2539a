"""Liveness and readiness of the bridge: stuck is visible, and bounded.

The loop reports each turn (how much input is pending, how many brokers are connected) and each bit
of progress (Kafka confirmed a read's records, or a refused record left the stream). The probes,
answered from another thread, judge from those times alone, so a loop that stops turning is seen too:

- ``loop``: the loop has not turned for a while (blocked).
- ``no_progress``: records are pending (read from MQTT, not yet confirmed by Kafka) and nothing was
  confirmed for a while: Kafka is away, or refuses everything.
- ``mqtt_down``: no broker connection for a while.

Readiness fails on any of them after ``ready_after_s``; liveness only on ``loop`` and ``no_progress``
after the longer ``live_after_s``: a restart does not bring Kafka back, and while it is away the
bridge is right to wait (it loses nothing); a restart helps only a process that is wedged for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STALLS = ("loop", "no_progress", "mqtt_down")


class Health:
    def __init__(self, ready_after_s: float, live_after_s: float, clock: Callable[[], float] = time.monotonic):
        self.ready_after_s, self.live_after_s = ready_after_s, live_after_s
        self._clock = clock
        now = clock()
        self.turned = self.progressed = self.connected_at = now
        self._pending_since: float | None = None

    def turn(self, now: float, pending: int, connected: int) -> None:
        """The loop turned with ``pending`` records unconfirmed and ``connected`` broker connections."""
        self.turned = now
        if pending and self._pending_since is None:
            self._pending_since = now
        elif not pending:
            self._pending_since = None
        if connected:
            self.connected_at = now

    def progress(self, now: float) -> None:
        self.progressed = now

    def stalled_for(self, now: float | None = None) -> dict[str, float]:
        """Seconds each kind of stall has lasted (0 when it is not happening)."""
        now = self._clock() if now is None else now
        since = self._pending_since
        return {
            "loop": now - self.turned,
            "no_progress": now - max(self.progressed, since) if since is not None else 0.0,
            "mqtt_down": now - self.connected_at,
        }

    def unready(self, now: float | None = None) -> list[str]:
        """Why the bridge is not ready (empty when it is)."""
        return [k for k, s in self.stalled_for(now).items() if s >= self.ready_after_s]

    def dead(self, now: float | None = None) -> list[str]:
        """Why the bridge should be restarted (empty when it should not)."""
        stalled = self.stalled_for(now)
        return [k for k in ("loop", "no_progress") if stalled[k] >= self.live_after_s]
