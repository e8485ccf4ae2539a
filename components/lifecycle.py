"""`fleetpulse models decide`: the promotion rule (fleetpulse.promotion) applied to the live stream.

It runs as its own process, the same command everywhere: beside `fleetpulse score` on the local
stack, and as the one-replica Deployment ``model-decider`` (manifests/base/model-decider.yaml) in a
cluster, where it logs in to Kafka as ``decider`` (read model-shadow, ground-truth and alerts).

Its state is the topics. It reads them from their beginning by assignment, committing no offset,
so a restarted decider decides what the one before it would have; then, every interval, what is new:
- a trial is the shadow batches of the stable and candidate versions channels.json names now; once
  it has the rule's car-hours, the candidate is promoted or rejected (the reason kept in
  channels.json with the rejected version);
- after a promotion (the stable has an earlier stable), the new stable's first car-hours of alerts
  are watched against the previous stable's last ones, and a jump rolls it back.
A version is a number in one bucket, and the topics outlive buckets: a bucket made again (a fresh
local stack, a staging reset, another demo run) numbers from 1 again, and alerts and shadow batches of
the old numbers are still on the topics (measured: a second `demo --lifecycle` rolled its v2 back on
the first run's v2 alerts, 1,090 per 1,000 car-hours). So a version's records are those written after
it was published (its metadata's ``published_at``); older ones with its number belong to another.
Each change goes through model_store's generation precondition, and only if the channels still say
what the decision was made on: of two deciders, exactly one change lands and the other writes
nothing. channels.json keeps no history of promotions beyond the earlier stables, so each decision
is one line on stdout (a JSON line with --json), the log a person or the demo reads.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from prometheus_client import Counter

from fleetpulse import model_store
from fleetpulse.alerts import decode_alert
from fleetpulse.errors import BrokerUnavailable, DecodeError
from fleetpulse.evaluation import DEFAULT_INTERVAL_S
from fleetpulse.ground_truth import TruthRecord
from fleetpulse.hysteresis import Rule
from fleetpulse.model_store import ChannelConflict, ChannelError, Channels, published_ms
from fleetpulse.promotion import (
    KEEP,
    PROMOTE,
    REJECT,
    ROLLBACK,
    WAIT,
    AlertLog,
    PromotionRule,
    alert_window,
    measure_trial,
    shadow_events,
)
from fleetpulse.settings import KafkaConnection
from fleetpulse.shadow import ShadowBatch, decode_shadow

IDLE = "idle"
DECISIONS = Counter("fleetpulse_decider_decisions", "Promotion decisions applied (or lost to another writer)",
                    ["action", "applied"])


class TopicReader:
    """Topics read from their beginning, every partition, by assignment: no group membership, no commits."""

    def __init__(self, connection: KafkaConnection, topics: list[str], group_id: str):
        from confluent_kafka import Consumer

        from fleetpulse.clients import kafka_config

        self.topics = topics
        self.consumer = Consumer(kafka_config(connection, **{"group.id": group_id, "enable.auto.commit": False,
                                                             "auto.offset.reset": "earliest", "log_level": 0}))  # fmt: skip
        self.assigned: list = []

    def read(self, timeout_s: float = 60.0) -> dict[str, list[bytes]]:
        """Every record written since the last read, up to the end offsets as they were when called."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self._assign_new()
            bounds = {(tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, timeout=10) for tp in self.assigned}
            out: dict[str, list[bytes]] = {t: [] for t in self.topics}
            deadline = time.monotonic() + timeout_s
            while True:
                # The position, not the last record's offset: it also passes offsets that hold no record.
                # Before the first fetch it is invalid (negative): the log starts at its low watermark.
                if _caught_up(self.consumer.position([TopicPartition(t, p) for t, p in bounds]), bounds):
                    return out
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"Kafka: could not read {', '.join(self.topics)} to their end in {timeout_s:.0f} s")
                for msg in self.consumer.consume(1000, 0.5):
                    if msg.error() is not None:
                        if msg.error().fatal():
                            raise BrokerUnavailable(f"Kafka: {msg.error().str()}")
                        continue
                    out[msg.topic()].append(msg.value())
        except KafkaException as exc:
            raise BrokerUnavailable(f"Kafka: {exc.args[0].str()}") from None

    def _assign_new(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        # All topics, not one by name: a metadata request for a missing topic may create it on an open broker.
        metadata = self.consumer.list_topics(timeout=10)
        have = {(tp.topic, tp.partition) for tp in self.assigned}
        present = [t for t in self.topics if t in metadata.topics and metadata.topics[t].error is None]
        new = [TopicPartition(t, p, OFFSET_BEGINNING)
               for t in present for p in sorted(metadata.topics[t].partitions) if (t, p) not in have]
        if new:
            self.consumer.incremental_assign(new)
            self.assigned += new

    def close(self) -> None:
        self.consumer.close()


def _caught_up(positions: list, bounds: dict) -> bool:
    for tp in positions:
        low, high = bounds[(tp.topic, tp.partition)]
        if high > max(tp.offset, low):
            return False
    return True


@dataclass
class Outcome:
    """One decision on one version, as printed and counted."""

    action: str  # PROMOTE, REJECT, WAIT (a trial), ROLLBACK, KEEP, WAIT (a watch), IDLE
    model: str
    version: int | None
    against: int | None  # the stable it was judged against (a trial), the previous stable (a watch)
    reason: str
    watch: bool = False
    applied: bool = True  # False: another writer changed the channels first, this one wrote nothing
    figures: dict = field(default_factory=dict)

    @property
    def decisive(self) -> bool:
        return self.action not in (WAIT, IDLE)

    def line(self) -> str:
        if self.action == IDLE:
            return f"{self.model}: {self.reason}"
        if not self.applied:
            return f"{self.model} version {self.version}: {self.action} not applied, {self.reason}"
        what = {PROMOTE: f"promoted over version {self.against}", REJECT: f"rejected against stable version {self.against}",
                ROLLBACK: f"rolled back to version {self.against}", KEEP: "kept as stable after its watch",
                WAIT: "watched after its promotion" if self.watch else "in shadow, waiting"}[self.action]  # fmt: skip
        return f"{self.model} version {self.version} {what}: {self.reason}"

    def as_dict(self) -> dict:
        return {"action": self.action, "model": self.model, "version": self.version, "against": self.against,
                "watch": self.watch, "applied": self.applied, "reason": self.reason, "figures": self.figures}  # fmt: skip


@dataclass
class _Alerts:
    """One version's alert records as read; to_log orders them by when they were raised."""

    ts: list[int] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    raised: list[bool] = field(default_factory=list)

    def to_log(self, since_ms: int = 0) -> AlertLog:
        """The alerts raised from ``since_ms`` on, in the order they were raised."""
        ts = np.asarray(self.ts, np.int64)
        order = np.lexsort((np.asarray(self.offsets), np.asarray(self.partitions), ts))
        order = order[ts[order] >= since_ms]
        return AlertLog(np.asarray(self.partitions, np.int64)[order], np.asarray(self.offsets, np.int64)[order],
                        np.asarray(self.raised, bool)[order])  # fmt: skip


def _compact(batch: ShadowBatch) -> ShadowBatch:
    """A batch as the rule reads it: without the scores (the rule judges flags).
    A trial of 1,000 car-hours is 360,000 events: 20 MB so (measured)."""
    return replace(batch, stable_score=[], candidate_score=[])


class Decider:
    """What the topics say so far, and the decisions they lead to on one model's channels."""

    def __init__(self, reader: TopicReader, gcs, bucket: str, model: str, shadow_topic: str, truth_topic: str, alerts_topic: str,
                 rule: PromotionRule = PromotionRule(), hysteresis: Rule = Rule(),
                 progress: Callable[[str], None] = lambda _: None):  # fmt: skip
        self.reader, self.gcs, self.bucket, self.model = reader, gcs, bucket, model
        self.shadow_topic, self.truth_topic, self.alerts_topic = shadow_topic, truth_topic, alerts_topic
        self.rule, self.hysteresis, self.progress = rule, hysteresis, progress
        self.trials: dict[tuple[str, str], list[ShadowBatch]] = {}
        self.truth: list[TruthRecord] = []
        self.alerts: dict[str, _Alerts] = {}
        self._alert_keys: set[tuple] = set()
        self.kept: set[tuple[int, int]] = set()  # (stable, previous) whose watch ended in a keep
        self._published: dict[int, int] = {}  # version -> published_at (ms)
        self._shadow_rates: dict[tuple[int, int], tuple[int, float]] = {}  # (stable, candidate) -> (batches, its shadow alert rate)
        self.undecodable = 0

    # ---- reading ----------------------------------------------------------------------------

    def ingest(self, decided: set[str] = frozenset()) -> None:
        """Read what is new; shadow batches of ``decided`` candidates (never on trial again) are dropped."""
        records = self.reader.read()
        undecodable = self.undecodable
        for raw in records[self.shadow_topic]:
            try:
                batch = decode_shadow(raw)
            except ValueError:
                self.undecodable += 1
                continue
            if len(batch) and batch.candidate_version not in decided:
                self.trials.setdefault((batch.stable_version, batch.candidate_version), []).append(_compact(batch))
        for raw in records[self.truth_topic]:
            try:
                self.truth.append(TruthRecord.from_json(raw))
            except (ValueError, TypeError):
                self.undecodable += 1
        for raw in records[self.alerts_topic]:
            try:
                self._add_alert(decode_alert(raw))
            except (DecodeError, ValueError, EOFError):
                self.undecodable += 1
        if self.undecodable > undecodable:
            self.progress(f"{self.undecodable - undecodable} records on {', '.join(self.reader.topics)} were not "
                          f"shadow batches, truth or alerts: skipped ({self.undecodable} so far)")

    def _add_alert(self, alert: dict) -> None:
        # A transformer that restarts re-raises the alerts of the events it scores again: count each once.
        key = (alert["model_version"], alert["car_id"], alert["source_partition"], alert["source_offset"], alert["status"])
        if key in self._alert_keys:
            return
        self._alert_keys.add(key)
        log = self.alerts.setdefault(alert["model_version"], _Alerts())
        log.ts.append(alert["alert_ts_ms"])
        log.partitions.append(alert["source_partition"])
        log.offsets.append(alert["source_offset"])
        log.raised.append(alert["previous_status"] == "ok" and alert["status"] != "ok")

    # ---- deciding ---------------------------------------------------------------------------

    def step(self) -> list[Outcome]:
        """Read what is new, then decide on the channels as they are now."""
        before, _ = model_store.read_channels(self.gcs, self.bucket, self.model)
        # The stable's own trial is kept while it is watched: its shadow alert rate is what it should alert at.
        self.ingest({str(v) for v in (*before.rejected, *before.previous) if v is not None})
        channels, _ = model_store.read_channels(self.gcs, self.bucket, self.model)
        # Read after the batches: a candidate in a batch was on the channels before this read (the server
        # serves only what they name), so a trial that is not the current one now never will be again.
        wanted = {(str(channels.stable), str(channels.candidate))}
        if channels.previous and (channels.stable, channels.previous[-1]) not in self.kept:
            wanted.add((str(channels.previous[-1]), str(channels.stable)))
        self.trials = {k: v for k, v in self.trials.items() if k in wanted}
        outcomes = []
        if channels.stable is not None and channels.candidate is not None:
            outcomes.append(self._trial(channels))
        if channels.stable is not None and channels.previous and (channels.stable, channels.previous[-1]) not in self.kept:
            outcomes.append(self._watch(channels))
        if not outcomes:
            stable = f"stable version {channels.stable}" if channels.stable is not None else "no stable version"
            outcomes.append(Outcome(IDLE, self.model, channels.stable, None,
                                    f"{stable}, no candidate in shadow and no promotion to watch"))
        for o in outcomes:
            if o.decisive:
                DECISIONS.labels(o.action, str(o.applied).lower()).inc()
        return outcomes

    def _trial(self, seen: Channels) -> Outcome:
        stable, candidate = seen.stable, seen.candidate
        since = max(self._published_ms(stable), self._published_ms(candidate))
        batches = [b for b in self.trials.get((str(stable), str(candidate)), []) if b.decided_ms >= since]
        if not batches:
            return Outcome(WAIT, self.model, candidate, stable, f"no shadow events yet on {self.shadow_topic!r}")
        decision = self.rule.decide(*measure_trial(shadow_events(batches), self.truth, self.hysteresis))
        outcome = Outcome(decision.verdict, self.model, candidate, stable, decision.reason, figures=decision.as_dict())
        if decision.verdict == PROMOTE:
            return self._apply(outcome, seen, lambda ch: ch.promote(candidate))
        if decision.verdict == REJECT:
            why = f"worse than version {stable} in shadow: {decision.reason}"
            return self._apply(outcome, seen, lambda ch: ch.reject(candidate, why))
        return outcome

    def _watch(self, seen: Channels) -> Outcome:
        stable, previous = seen.stable, seen.previous[-1]
        interval = self._interval_s()
        new = alert_window(self._log(stable), self.rule.watch_car_hours, interval)
        before = alert_window(self._log(previous), self.rule.watch_car_hours, interval, latest=True)
        watch = self.rule.watch(new, before, self._shadow_rate(previous, stable))
        outcome = Outcome(watch.verdict, self.model, stable, previous, watch.reason, watch=True, figures=watch.as_dict())
        if watch.verdict == KEEP:
            self.kept.add((stable, previous))
        elif watch.verdict == ROLLBACK:
            return self._apply(outcome, seen, lambda ch: ch.rollback())
        return outcome

    def _apply(self, outcome: Outcome, seen: Channels, change: Callable[[Channels], Channels]) -> Outcome:
        def if_unchanged(now: Channels) -> Channels:
            if (now.stable, now.candidate, now.previous) != (seen.stable, seen.candidate, seen.previous):
                raise ChannelConflict(f"the channels changed since this decision (now stable {now.stable}, "
                                      f"candidate {now.candidate})")
            return change(now)

        try:
            model_store.update_channels(self.gcs, self.bucket, self.model, if_unchanged)
        except ChannelError as exc:
            outcome.applied = False
            outcome.reason = f"another writer changed the channels first: {exc}"
        return outcome

    def _shadow_rate(self, stable: int, candidate: int) -> float | None:
        """The candidate's alert rate in its trial against ``stable`` (None when no batch of it is left).
        Measured once per trial size: the watch asks every interval, and the trial stops growing once
        the candidate is promoted."""
        since = max(self._published_ms(stable), self._published_ms(candidate))
        batches = [b for b in self.trials.get((str(stable), str(candidate)), []) if b.decided_ms >= since]
        if not batches:
            return None
        cached = self._shadow_rates.get((stable, candidate))
        if cached is None or cached[0] != len(batches):
            cached = self._shadow_rates[(stable, candidate)] = (len(batches), measure_trial(shadow_events(batches), self.truth, self.hysteresis)[1].alert_rate)
        return cached[1]

    def _log(self, version: int) -> AlertLog:
        return self.alerts.get(str(version), _Alerts()).to_log(since_ms=self._published_ms(version))

    def _published_ms(self, version: int) -> int:
        """When ``version`` was published (metadata ``published_at``, to the second; 0 if it does not say)."""
        if version not in self._published:
            meta = model_store.read_metadata(self.gcs, model_store.ModelVersion(self.bucket, self.model, version))
            self._published[version] = published_ms(meta)
        return self._published[version]

    def _interval_s(self) -> float:
        """Simulated seconds per event: the ground truth's, else evaluation's default."""
        intervals = [r.sample_interval_s for r in self.truth]
        return float(statistics.median(intervals)) if intervals else DEFAULT_INTERVAL_S


class Health:
    """What the probes read: the loop finished a step lately (live) and the last one reached Kafka and GCS (ready)."""

    def __init__(self, stuck_after_s: float):
        self.stuck_after_s = stuck_after_s
        self.last_step = time.monotonic()
        self.last_ok = False
        self.error = "not started"

    def stepped(self, error: str | None) -> None:
        self.last_step, self.last_ok, self.error = time.monotonic(), error is None, error or ""

    def live(self) -> tuple[bool, bytes, str]:
        age = time.monotonic() - self.last_step
        ok = age < self.stuck_after_s
        return ok, (b"ok\n" if ok else f"no decision step for {age:.0f} s\n".encode()), "text/plain; charset=utf-8"

    def ready(self) -> tuple[bool, bytes, str]:
        return self.last_ok, (b"ok\n" if self.last_ok else f"{self.error}\n".encode()), "text/plain; charset=utf-8"


def run(decider: Decider, interval_s: float, once: bool, emit: Callable[[Outcome], None], progress: Callable[[str], None],
        health: Health | None = None, stop: threading.Event | None = None) -> None:  # fmt: skip
    """Decide every ``interval_s`` until ``stop`` (``once``: one step, errors raised). Decisions go to
    ``emit``; in the loop, waiting and idle go to ``progress``, and an unreachable Kafka or GCS is
    reported there and tried again next interval."""
    stop = stop or threading.Event()
    while True:
        try:
            outcomes = decider.step()
            error = None
        except BrokerUnavailable as exc:
            if once:
                raise
            outcomes, error = [], str(exc)
            progress(f"{exc}; trying again in {interval_s:.0f} s")
        if health is not None:
            health.stepped(error)
        for o in outcomes:
            if once or o.decisive:
                emit(o)
            else:
                progress(o.line())
        if once or stop.wait(interval_s):
            return
