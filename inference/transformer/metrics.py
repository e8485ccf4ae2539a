"""The transformer's Prometheus metrics and the summary of one run (what `fleetpulse score --json` prints)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from fleetpulse.hysteresis import STATUS_NAMES

CONSUMED = Counter("fleetpulse_transformer_consumed", "Records consumed from sensor-data")
SCORED = Counter("fleetpulse_transformer_scored", "Events scored by the model server")
SKIPPED = Counter("fleetpulse_transformer_replay_skipped", "Replayed events already applied to the twin")
DLQ = Counter("fleetpulse_transformer_dlq", "Records sent to the dead-letter topic (undecodable, implausible, scored non-finite)", ["kind"])
KAFKA_REJECTED = Counter("fleetpulse_transformer_kafka_rejected", "Records Kafka refused after every attempt", ["topic"])
DROPPED = Counter("fleetpulse_transformer_dropped", "Dead letters Kafka refused even as a prefix: dropped (logged)", ["topic"])
ALERTS = Counter("fleetpulse_transformer_alerts", "Alerts (status changes) produced", ["status"])
RETRIES = Counter("fleetpulse_transformer_retries", "Retries after a dependency failed", ["dependency"])
BATCH_ROWS = Histogram("fleetpulse_transformer_infer_batch_rows", "Rows per infer request",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000))
E2E_LATENCY = Histogram("fleetpulse_transformer_event_to_alert_seconds", "Kafka timestamp of the event -> alert acknowledged",
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
MODEL_INPUT_CHANGES = Counter("fleetpulse_transformer_model_input_changes", "Times the served model's input shape changed and was followed")
LAG = Gauge("fleetpulse_transformer_consumer_lag", "High watermark minus committed position", ["partition"])
TWIN_WRITES = Counter("fleetpulse_transformer_twin_writes", "Twin documents written (insert: car had none; update: upsert; "
                      "fenced: a newer twin was stored, left as it was; refused: MongoDB refused it, dead-lettered; "
                      "dropped: not sent, the partitions were revoked or lost first)", ["kind"])
PAUSES = Counter("fleetpulse_transformer_pauses", "Times the process did not run for longer than twin_pause_s (SIGSTOP, a stall); "
                 "twin writes wait twin_pause_hold_s after each")
TWIN_FENCE_REREADS = Counter("fleetpulse_transformer_twin_fence_rereads", "Twin chunks whose stored offsets were read again "
                             "before the write because the first read aged past the fence lease (a paused writer)")
TWIN_WRITE_RATE = Gauge("fleetpulse_transformer_twin_write_rate", "Twin documents per second of the last bulk write")
TWINS_PENDING = Gauge("fleetpulse_transformer_twins_pending", "Cars whose applied events are in no durable twin yet (incl. the bulk in flight)")
TWIN_WRITE_SECONDS = Histogram("fleetpulse_transformer_twin_write_seconds", "Seconds per twin bulk write (retries included)",
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))


@dataclass
class RunSummary:
    """Counts of one transformer run."""

    consumed: int = 0
    scored: int = 0
    skipped_replayed: int = 0
    dlq: int = 0
    alerts: int = 0
    alerts_by_status: dict = field(default_factory=lambda: {s: 0 for s in STATUS_NAMES})
    twin_writes: int = 0
    twin_inserts: int = 0  # of twin_writes, cars that had no twin yet
    twins_fenced: int = 0  # of twin_writes, cars whose stored twin was newer (another member wrote it)
    twins_refused: int = 0  # twin documents MongoDB refused, dead-lettered
    twins_dropped: int = 0  # cars of writes not sent because the partitions were revoked or lost first
    unwritten_at_stop: int = 0  # cars a stop left without a written twin (replayed by the next owner)
    checkpoints: int = 0
    retries: dict = field(default_factory=dict)
    seconds: float = 0.0
    active_seconds: float = 0.0  # first record received -> last poll batch applied

    def count_retry(self, dependency: str) -> None:
        RETRIES.labels(dependency).inc()
        self.retries[dependency] = self.retries.get(dependency, 0) + 1

    def as_dict(self, cars: int) -> dict:
        d = dict(self.__dict__)
        d["cars"] = cars
        d["events_per_s"] = round(self.consumed / self.active_seconds, 1) if self.active_seconds else 0.0
        return d

    def progress_line(self, cars: int) -> str:
        return (f"consumed {self.consumed:,} scored {self.scored:,} alerts {self.alerts:,} dlq {self.dlq:,} cars {cars:,} "
                f"({self.consumed / max(self.seconds, 1e-9):,.0f} ev/s)")

# Shadow scoring (inference/transformer/shadow.py): the candidate's verdicts, never alerts or twins.
SHADOW_ACTIVE = Gauge("fleetpulse_transformer_shadow_active", "1 while the model server serves a candidate that the transformer shadows")
SHADOW_EVENTS = Counter("fleetpulse_transformer_shadow_events", "Events scored by both the stable model and the candidate")
SHADOW_AGREE = Counter("fleetpulse_transformer_shadow_agree", "Shadowed events both models flagged alike (agreement = agree / events)")
SHADOW_FLAGGED = Counter("fleetpulse_transformer_shadow_flagged", "Shadowed events a model flagged anomalous", ["model"])
SHADOW_SCORE = Gauge("fleetpulse_transformer_shadow_score", "Score quantiles of the last shadow batch, per model", ["model", "quantile"])
SHADOW_DROPPED = Counter("fleetpulse_transformer_shadow_dropped", "Shadow batches dropped (best effort), by reason",
                         ["reason"])

# Drift (inference/transformer/drift_watch.py): live readings against the served version's training window.
FEATURE_DRIFT = Gauge("fleetpulse_transformer_feature_drift_psi", "Population stability index of the last drift window, per feature",
                      ["feature"])
RETRAIN_REQUESTS = Counter("fleetpulse_transformer_retrain_requests", "Retrain requests sent to model-requests because of drift")
