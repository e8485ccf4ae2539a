"""The transformer loop: Kafka `sensor-data` -> model server (gRPC V2) -> hysteresis -> alerts + twin.

A thin adapter over the Kafka consumer, the model server and the twin store. What it decides lives in
plain modules beside it: the no-loss ordering and when a twin is due in ``checkpoint`` (read its
docstring first), per-car state in ``car_table``, micro-batches applied in order in ``batching``.
Its I/O helpers: acknowledged produce in ``delivery``, twin loads and the writer thread in
``twin_store``, waiting on a dependency in ``retrying``, progress for the probes in ``health``.

Bad input never reaches a twin: an undecodable record, a reading that is NaN, infinite or outside
its physical range (fleetpulse.readings), and an event the model scored NaN or infinite go to the
dead-letter topic with the reason and change nothing else, so such a reading neither counts as clean
nor clears a failing car. (A ``sensor_fault`` status was the alternative; it would change the alert
and twin contract for something the bridge already filters, and a NaN in the twin is what FerretDB
refuses.)

Ending. A run that ends by itself (``--until-idle``, ``--max-events``) writes every twin and commits.
A stop (SIGTERM) does the same within ``stop_timeout_s``; a dependency still failing then makes it
give up and exit without that last commit: what it could not write is replayed by the next owner.
A run that fails drops the chunks in flight (never applied, so never committed) and commits what
was applied before, within the same bound, unless the failure tore a chunk half applied: then it
commits nothing more.
"""

from __future__ import annotations

import time
from typing import Callable

import grpc
import numpy as np
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fleetpulse.alerts import alert_record, encode_alert
from fleetpulse.codec import decode_batch
from fleetpulse.errors import BrokerUnavailable
from fleetpulse.hysteresis import STATUS_NAMES
from fleetpulse.readings import implausible, problem
from fleetpulse.topics import DLQ_UNDECODABLE
from inference.transformer import metrics
from inference.transformer.batching import Chunk, Events, InFlight, drop_redelivered, last_offsets, micro_batches, positions
from inference.transformer.car_table import CarTable
from inference.transformer.checkpoint import PauseFence, TwinLedger
from fleetpulse.topics import DLQ_NON_FINITE_SCORE
from inference.transformer.delivery import Delivery, now_ms
from inference.transformer.drift_watch import DriftWatch
from inference.transformer.health import Health
from inference.transformer.metrics import RunSummary
from inference.transformer.retrying import Retries, StopRequested
from inference.transformer.shadow import Shadow
from inference.transformer.twin_store import TwinLoader, TwinWriter
from inference.transformer.v2_client import V2Client


def model_window(client) -> int:
    """Readings per sample the served model takes: 1 for [N, 18], W for a windowed model's [N, W, 18]
    (from the model server's V2 metadata, so the transformer follows whatever model it is pointed at)."""
    shape = client.metadata()["inputs"][0]["shape"]
    return int(shape[1]) if len(shape) == 3 else 1


class Transformer:
    def __init__(self, settings, consumer, producer, client: V2Client, twins, progress: Callable[[str], None] = lambda _: None,
                 retry_deadline_s: float | None = None, health: Health | None = None, shadow: Shadow | None = None,
                 drift: DriftWatch | None = None):
        self.settings = settings
        self.consumer = consumer
        self.client = client
        self.progress = progress
        self.summary = RunSummary()
        self.health = health or Health(settings.stuck_after_s)
        self.retries = Retries(self.summary, progress, settings.retry_max_s, retry_deadline_s, self.health)
        self.delivery = Delivery(producer, self.retries, settings.dlq_topic, settings.produce_attempts, progress)
        self.twins = twins
        self.loader = TwinLoader(twins, settings.twin_preload_max, self.retries, progress)
        self.writer = TwinWriter(twins, self.retries, PauseFence(settings.twin_pause_s, settings.twin_pause_hold_s, time.monotonic()))
        self.window = model_window(client)  # readings per sample: > 1 for a windowed (LSTM) model
        self.table = CarTable(settings.rule, window=self.window)
        self.ledger = TwinLedger(settings.twin_interval_s, settings.twin_batch_max)
        self.in_flight = InFlight(settings.max_in_flight)
        self.submitted: dict[int, int] = {}  # partition -> last offset handed to the pipeline
        self.threshold = float("nan")
        self.model_version = ""
        self._last_checkpoint = time.monotonic()
        self._stop = False
        self._torn = False  # a chunk is half applied (set while its results change the car table)
        self.shadow = shadow
        self.drift = drift
        if shadow is not None:
            shadow.reset(self.table.ids)

    # ---- main loop -------------------------------------------------------------------------

    def run(self, until_idle_s: float | None = None, max_events: int | None = None) -> RunSummary:
        t0 = last_progress = last_record = time.monotonic()
        first_record: float | None = None
        end_watch = self.writer.watch_pauses()
        self.health.ready = True
        try:
            while not self._stop:
                self.health.work(bool(self.in_flight) or self.writer.busy or self.ledger.uncommitted())
                if self.shadow is not None:
                    self.shadow.probe()
                    self.shadow.harvest()
                # consume() waits until poll_batch records or the timeout: a short timeout bounds the latency
                # a half-full batch adds at moderate rates (0.5 s cost p50 434 ms at 10k ev/s).
                began = time.monotonic()
                msgs = self.consumer.consume(num_messages=self.settings.poll_batch, timeout=self.settings.poll_timeout_s)
                self.writer.polled(began)
                if msgs:
                    first_record = first_record or time.monotonic()
                    self._submit_poll(msgs)
                self._apply_ready(everything=not msgs)
                now = time.monotonic()
                if msgs:
                    # After the work, not before: a long retry (dependency down) is not idleness.
                    last_record = now
                    self.summary.active_seconds = now - first_record
                self._finish_write(wait=False)
                if now - self._last_checkpoint >= self.settings.checkpoint_interval_s and not self.writer.busy:
                    self._apply_ready(everything=True)
                    self.checkpoint(wait=False)
                if now - last_progress >= 5:
                    last_progress = now
                    self.summary.seconds = now - t0
                    self.progress(self.summary.progress_line(len(self.table)))
                if until_idle_s is not None and not msgs and not self.in_flight and now - last_record >= until_idle_s:
                    if self._caught_up():
                        break
                    last_record = time.monotonic()  # Kafka unreachable or records still to fetch: not idle
                if max_events is not None and self.summary.consumed >= max_events:
                    break
        except BaseException as exc:
            self.health.ready = False
            if not self._torn:
                self._final_checkpoint(bounded=True, failed=True)
            if not (self._stop and isinstance(exc, StopRequested)):
                raise
            # A stop whose deadline passed while the loop waited on a dependency: an ordinary end.
        else:
            self._final_checkpoint(bounded=self._stop)
        finally:
            end_watch()
            self.summary.seconds = time.monotonic() - t0
        return self.summary

    def _final_checkpoint(self, bounded: bool, failed: bool = False) -> None:
        """Apply what is in flight, write every twin, commit; within ``stop_timeout_s`` when ``bounded``."""
        if bounded:
            self.retries.stop_within(self.settings.stop_timeout_s)
        try:
            self._apply_ready(everything=True)
            self.checkpoint()
            if self.shadow is not None:
                self.shadow.finish()
        except Exception as exc:  # noqa: BLE001 - a failed run re-raises its own error; a stop reports why it gave up
            gave_up = bounded and isinstance(exc, (StopRequested, BrokerUnavailable))
            if not (gave_up or failed):
                raise
            self.summary.unwritten_at_stop = self.ledger.unwritten_count()
            self.progress(f"final checkpoint abandoned ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"{self.summary.unwritten_at_stop:,} cars' newest events are in no written twin: "
                          f"the next owner replays them from the last commit")

    def _caught_up(self) -> bool:
        """True when every assigned partition's position is at its high watermark (lag 0)."""
        try:
            assigned = self.consumer.assignment()
            for tp in self.consumer.position(assigned):
                _, high = self.consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
                if tp.offset < 0 and high > self.ledger.committed.get(tp.partition, -1) + 1:
                    return False
                if tp.offset >= 0 and tp.offset < high:
                    return False
        except KafkaException:
            return False
        return True

    def stop(self) -> None:
        """End the run within ``stop_timeout_s`` (see the module docstring); safe from a signal handler."""
        self._stop = True
        self.retries.stop_within(self.settings.stop_timeout_s)

    # ---- poll -> micro-batches ---------------------------------------------------------------

    def _submit_poll(self, msgs) -> None:
        good = drop_redelivered([m for m in msgs if m.error() is None], self.submitted)
        if not good:
            return
        self.summary.consumed += len(good)
        metrics.CONSUMED.inc(len(good))
        partitions, offsets, timestamps = positions(good)
        done = last_offsets(partitions, offsets)
        decoded = decode_batch([m.value() or b"" for m in good])
        if decoded.errors:
            self._dead_letter(good, decoded.errors, DLQ_UNDECODABLE)
        suspect = np.flatnonzero(decoded.valid & implausible(decoded.values))
        if len(suspect):
            self._dead_letter_implausible(good, decoded, suspect)
        ok = np.flatnonzero(decoded.valid)
        cars, new = self.table.lookup([good[i].key() for i in ok.tolist()])
        events = Events(cars, decoded.values[ok], partitions[ok], offsets[ok], timestamps[ok])
        if new:
            self._restore(new, events)
        self._submit(self._skip_replayed(events), done)

    def _restore(self, new: list[int], events: Events) -> None:
        """Load first-seen cars' twins, so counting continues and replayed offsets are recognised."""
        docs = self.loader.load([self.table.ids[c] for c in new])
        restored = self.table.restore(new, docs, events)
        self.ledger.restored(np.array(restored, np.int64), time.monotonic())

    def _skip_replayed(self, events: Events) -> Events:
        fresh = self.table.not_yet_applied(events)
        if fresh.all():
            return events
        skipped = int((~fresh).sum())
        self.summary.skipped_replayed += skipped
        metrics.SKIPPED.inc(skipped)
        return events[fresh]

    def _submit(self, events: Events, done: dict[int, int]) -> None:
        """Send the events to the model server in micro-batches; the last one carries the poll batch's offsets."""
        samples = self.table.samples(events)
        batches = micro_batches(len(events), self.settings.model_batch)
        for sl in batches:
            chunk = events[sl]
            request = future = shadow = None
            if len(chunk):
                request = self.client.request(samples[sl])
                future = self.client.infer_future(request)
                metrics.BATCH_ROWS.observe(len(chunk))
                if self.shadow is not None:
                    shadow = self.shadow.submit(chunk, samples[sl])
            self.in_flight.submit(Chunk(chunk, future, request, done if sl is batches[-1] else {}, shadow))

    def _dead_letter(self, msgs, errors: dict[int, str], kind: str) -> None:
        self.delivery.dead_letter(self.settings.dlq_topic, msgs, errors, kind)
        self.summary.dlq += len(errors)
        metrics.DLQ.labels(kind).inc(len(errors))

    def _dead_letter_implausible(self, msgs, decoded, suspect: np.ndarray) -> None:
        """Readings that are NaN, infinite or physically impossible: dead-lettered, never scored or put in a twin."""
        by_kind: dict[str, dict[int, str]] = {}
        for i in suspect.tolist():
            kind, reason = problem(decoded.values[i])
            by_kind.setdefault(kind, {})[i] = reason
        decoded.valid[suspect] = False
        for kind, errors in by_kind.items():
            self._dead_letter(msgs, errors, kind)

    # ---- results, in submission order --------------------------------------------------------

    def _apply_ready(self, everything: bool = False) -> None:
        """Apply finished chunks from the head; wait on the head while too many are in flight (or for all)."""
        self.in_flight.drain(self._apply, everything)

    def _apply(self, chunk: Chunk) -> None:
        if len(chunk.events):
            result = self._result(chunk)
            if result.model_version != self.model_version and self.model_version:
                self._follow_new_version()
            self._torn = True
            self.threshold, self.model_version = result.threshold, result.model_version
            events, score, over = chunk.events, result.score, result.anomaly
            finite = np.isfinite(score)
            if not finite.all():
                self._dead_letter_scores(events[~finite], result.model_version)
                events, score, over = events[finite], score[finite], over[finite]
            self._apply_scores(events, score, over)
            # After the stable alerts are produced: shadow pairing and drift are off the alert path.
            if self.shadow is not None:
                self.shadow.settle(chunk.shadow, chunk.events, result.score, result.anomaly, result.model_version, result.threshold)
            if self.drift is not None:
                self.drift.add(chunk.events.rows, result.model_version)
            self._torn = False
        self.ledger.batch_done(chunk.done)

    def _result(self, chunk: Chunk):
        """The chunk's scores; a request the server did not answer is sent again, after the backoff, until it
        is; one it rejected because the served model's input changed is built again for the new input."""
        def attempt():
            if chunk.future is None:
                chunk.future = self.client.infer_future(chunk.request)
            future, chunk.future = chunk.future, None
            self.client.wait(future, lambda: self.retries.check_stop("the model server"))
            try:
                return self.client.result(future)
            except grpc.RpcError as exc:  # INVALID_ARGUMENT: the request does not fit the model served now
                if self._follow_model(chunk):
                    raise BrokerUnavailable(f"model server: the model now takes {self.window} readings per sample; sent again") from exc
                raise BrokerUnavailable(f"model server rejected the request: {exc.details()}") from exc

        return self.retries.call("model-server", attempt, (BrokerUnavailable,), initial_s=0.1,
                                 message=lambda exc, delay: f"{exc}; retrying in {delay:.1f}s")

    def _follow_model(self, failed: Chunk | None = None) -> bool:
        """Read the served model's input shape again; if its window changed, build every chunk not yet
        applied (``failed`` first, then those in flight, in order) for it. True if it changed."""
        try:
            window = model_window(self.client)
        except grpc.RpcError as exc:
            raise BrokerUnavailable(f"model server metadata: {exc.code().name}") from exc
        if window == self.window:
            return False
        self.progress(f"model server: the served model takes {window} readings per sample (was {self.window}); following it")
        metrics.MODEL_INPUT_CHANGES.inc()
        self.window = window
        self.table.set_window(window)
        for chunk in ([failed] if failed is not None else []) + self.in_flight.chunks():
            if len(chunk.events):
                chunk.request = self.client.request(self.table.samples(chunk.events))
                chunk.future = self.client.infer_future(chunk.request)
        return True

    def _follow_new_version(self) -> None:
        """A new version answered: if its input differs, rebuild the chunks in flight now rather than on their rejection."""
        try:
            self._follow_model()
        except BrokerUnavailable as exc:  # the metadata call failed: a rejected request will ask again
            self.progress(f"{exc}; the model's input is read again if a request is rejected")

    def _dead_letter_scores(self, events: Events, model_version: str) -> None:
        """Events the model scored NaN or infinite: a broken score is not a clean reading, so they change nothing."""
        ids = [self.table.ids[c] for c in events.cars.tolist()]
        self.delivery.dead_letter_rows(self.settings.dlq_topic, self.settings.topic, ids, events.rows, events.partitions,
                                       events.offsets, f"model version {model_version} returned a non-finite score",
                                       DLQ_NON_FINITE_SCORE)
        self.summary.dlq += len(events)
        metrics.DLQ.labels(DLQ_NON_FINITE_SCORE).inc(len(events))

    def _apply_scores(self, events: Events, score: np.ndarray, over: np.ndarray) -> None:
        self.summary.scored += len(events)
        metrics.SCORED.inc(len(events))
        changes = self.table.apply(events, score, over)
        self.ledger.events_applied(events.cars, events.partitions, events.offsets)
        if changes:
            self.ledger.status_changed(events.cars[[i for i, _, _ in changes]])
            self._alert(events, score, changes)

    def _alert(self, events: Events, score: np.ndarray, changes) -> None:
        decided = now_ms()
        for i, old, new in changes:
            car = int(events.cars[i])
            record = alert_record(self.table.ids[car], old, new, score[i], self.threshold, self.model_version,
                                  events.timestamps[i], decided, events.partitions[i], events.offsets[i])
            self.table.alerts[car] += 1
            self.delivery.produce(self.settings.alerts_topic, record["car_id"].encode(), encode_alert(record),
                                  event_ts_ms=int(events.timestamps[i]))
            self.summary.alerts += 1
            self.summary.alerts_by_status[STATUS_NAMES[new]] += 1
            metrics.ALERTS.labels(STATUS_NAMES[new]).inc()

    # ---- checkpoint: alerts acked -> twin written -> offsets committed ------------------------

    def checkpoint(self, wait: bool = True) -> None:
        """Alerts acked -> twin snapshot written -> offsets committed, no further than durable twins cover.

        The snapshot holds the cars that are due (status changed, no twin yet, or not written for
        ``twin_interval_s``), at most ``twin_batch_max`` of them; it is written on the writer thread and
        its offsets are committed once that write has succeeded. With ``wait`` every car with applied
        events is in the snapshot, and the call returns only when all of it is written and committed.
        """
        started = self._last_checkpoint = time.monotonic()
        self.writer.blocking = wait
        try:
            self._checkpoint(started, wait)
        finally:
            self.writer.blocking = False

    def _checkpoint(self, started: float, wait: bool) -> None:
        self._finish_write(wait)
        if self.writer.busy:
            return  # the previous snapshot is still being written; the next checkpoint picks this up
        if not self.ledger.has_work():
            return
        self.delivery.flush()
        cars = self.ledger.due(time.monotonic(), everything=wait)
        snapshot = self.table.snapshot(cars, self.ledger.has_twin[cars], self.threshold, self.model_version)
        to_commit = self.ledger.take(cars, started)
        metrics.TWINS_PENDING.set(self.ledger.unwritten_count() + len(cars))
        if len(cars) or to_commit:
            self.writer.submit(snapshot, to_commit)
        if wait:
            self._finish_write(wait=True)

    def _finish_write(self, wait: bool) -> None:
        written = self.writer.finish(wait, timeout_s=0.5 if wait else None)
        while written is None and wait and self.writer.busy:  # in slices, so a stop's deadline is noticed
            self.retries.check_stop("the twin write")
            written = self.writer.finish(wait, timeout_s=0.5)
        if written is None:
            return
        saved = written.saved
        if saved.refused:
            # Dead-lettered before the commit passes their events: the DLQ is where they are durable.
            self.delivery.dead_letter_twins(self.settings.dlq_topic, saved.refused,
                                            f"mongodb:{self.twins.collection.full_name}")
            self.delivery.flush()
            self.progress(f"mongodb refused {len(saved.refused)} twins, dead-lettered; first: {saved.refused[0][1]}")
        self.summary.twin_writes += len(written.snapshot)
        self.summary.twin_inserts += written.snapshot.inserts
        self.summary.twins_fenced += len(saved.fenced)
        self.summary.twins_refused += len(saved.refused)
        metrics.TWINS_PENDING.set(self.ledger.unwritten_count())
        if saved.stale or written.epoch != self.writer.epoch:
            # Its positions belong to an assignment that ended: committed now, under a new one, they
            # could move the new owner's commit (the broker checks the generation, not who owns what).
            self.summary.twins_dropped += saved.dropped
            if saved.dropped:
                self.progress(f"twin write dropped: the partitions were revoked or lost before {saved.dropped:,} of its "
                              f"cars were sent; the next owner replays them")
        elif written.to_commit:
            offsets = [TopicPartition(self.settings.topic, p, o + 1) for p, o in written.to_commit.items()]
            if self.retries.call("kafka", lambda: self._commit(offsets)):
                self.ledger.committed_to(written.to_commit)
                self.health.progressed()
                self._update_lag(written.to_commit)
        self.summary.checkpoints += 1

    def _commit(self, offsets) -> bool:
        """Commit; False when the group no longer counts this member (its partitions may be another's).

        Retrying such a commit can never succeed (seen: the main thread blocked in a long final twin
        flush past max.poll.interval.ms). Dropping it is safe: the twins it covers are durable, so the
        member that replays those offsets skips them.
        """
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            return True
        except KafkaException as exc:
            if exc.args[0].code() not in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION):
                raise
            self.summary.count_retry("kafka-commit-dropped")
            self.progress(f"kafka: commit dropped ({exc.args[0].str()}); its twins are written, a replay skips them")
            return False

    def _update_lag(self, committed: dict[int, int]) -> None:
        for p, o in committed.items():
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(self.settings.topic, p), timeout=0.5, cached=False)
            except KafkaException:
                continue
            metrics.LAG.labels(str(p)).set(max(0, high - (o + 1)))

    # ---- rebalance ---------------------------------------------------------------------------

    def on_revoke(self, consumer, partitions) -> None:
        """Finish and commit what was applied, then forget car state: another member owns those cars now."""
        try:
            self._apply_ready(everything=True)
            self.checkpoint()
        except StopRequested as exc:  # closing after a stop that gave up: the new owner replays it
            self.progress(f"revoke: {exc}; left to the replay")
        self._forget()

    def on_lost(self, consumer, partitions) -> None:
        self.in_flight.clear()
        self._forget()

    def _forget(self) -> None:
        self.writer.drop()
        self.table = CarTable(self.settings.rule, window=self.window)
        self.ledger = TwinLedger(self.settings.twin_interval_s, self.settings.twin_batch_max)
        self.submitted.clear()
        self.loader.forget()
        if self.shadow is not None:
            self.shadow.reset(self.table.ids)
