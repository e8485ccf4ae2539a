"""`fleetpulse models retrain`: the training loop that acts on model-requests.

The transformer's drift watch writes one JSON record per drifted stable version to model-requests
(reason, model, model_version, the drifted features with their PSI, requested_at_ms). For each request
that is new, this trains on the last ``window_minutes`` of sensor data, where the fleet already looks
the way that drifted: in this process (the steps of `fleetpulse train --runner direct`) on the local
stack, or, with a KFP host, as a run of the compiled pipeline (kubeflow/pipeline.yaml), which is what
the ``retrain-trigger`` Deployment does in a cluster. Either way the pipeline publishes the version
that passes its gate as the candidate, which the model server shadows and `fleetpulse models decide`
judges; nothing here touches the channels.

A request is acted on once per model version: one that a version newer than the drifted one already
answers (trained after an earlier request, whatever its channel now) or that this process has handled
is skipped, and so is one older than ``max_age_s``, whose stream has left the window. What was
handled is the group's committed offset (``fleetpulse-train-requests``, under the training
principal's group prefix): a restart goes on after it. An offset is committed once its request was
acted on, so a crash mid-training asks again on restart (the newer-version check keeps a published
retrain from being repeated).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client import Counter

from components.models import MODEL_NAMES
from components.settings import RetrainSettings
from fleetpulse import model_store
from fleetpulse.errors import BrokerUnavailable, DecodeError, FleetPulseError, SettingsError
from fleetpulse.settings import KafkaConnection

MODEL_TYPES_BY_NAME = {name: model_type for model_type, name in MODEL_NAMES.items()}
RETRAINED, SKIPPED, FAILED = "retrained", "skipped", "failed"
OUTCOMES = Counter("fleetpulse_retrain_requests", "Retrain requests handled, by outcome", ["outcome"])


@dataclass(frozen=True)
class Request:
    """One record of model-requests."""

    model: str
    model_version: int
    requested_at_ms: int
    reason: str = "drift"
    features: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes) -> "Request":
        try:
            body = json.loads(raw)
            return cls(str(body["model"]), int(body["model_version"]), int(body["requested_at_ms"]),
                       str(body.get("reason", "drift")), {str(k): float(v) for k, v in body.get("features", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DecodeError(f"not a retrain request ({type(exc).__name__}: {exc}): {raw[:120]!r}") from None

    def describe(self) -> str:
        drifted = ", ".join(f"{name} PSI {psi:.2f}" for name, psi in sorted(self.features.items(), key=lambda kv: -kv[1]))
        return f"{self.reason} on {self.model} version {self.model_version}" + (f" ({drifted})" if drifted else "")


def why_skip(request: Request, now_ms: int, max_age_s: float, handled: set[tuple[str, int]], newest: int | None,
             published: int | None = 0) -> str | None:
    """Why ``request`` needs no retrain, or None when it does. ``newest``: the model's newest version on GCS;
    ``published``: when the drifted version was published there (ms), None if it is not there.

    A request older than its version's publication, or about a version the bucket does not have, is
    about another model that had that number: model-requests outlives buckets, and a bucket made
    again numbers from 1 (measured: a second `demo --lifecycle` retrained three times for the first
    run's requests)."""
    if request.model not in MODEL_TYPES_BY_NAME:
        return f"unknown model {request.model!r}"
    age_s = (now_ms - request.requested_at_ms) / 1000
    if age_s > max_age_s:
        return f"requested {age_s:.0f} s ago, older than {max_age_s:g} s"
    if (request.model, request.model_version) in handled:
        return f"version {request.model_version} was retrained for already"
    if newest is not None and newest > request.model_version:
        return f"version {newest} is newer than the drifted version {request.model_version}"
    if published is None:
        return f"version {request.model_version} is not in this bucket: a request about another model's version"
    if request.requested_at_ms < published:
        return f"requested before version {request.model_version} was published here: about another model's version"
    return None


@dataclass(frozen=True)
class Outcome:
    outcome: str  # retrained | skipped | failed
    request: Request | None
    detail: str
    result: dict = field(default_factory=dict)

    def line(self) -> str:
        what = self.request.describe() if self.request is not None else "an undecodable request"
        return f"{self.outcome} {what}: {self.detail}"

    def as_dict(self) -> dict:
        r = self.request
        return {"outcome": self.outcome, "model": r.model if r else None, "model_version": r.model_version if r else None,
                "detail": self.detail, **self.result}  # fmt: skip


Window = tuple[int, int | None]
"""(from_ts, to_ts) in Kafka timestamp ms; to_ts None: up to the newest record."""
Action = Callable[[str, Window], dict]
"""Trains one model type on a window; returns what it started or published (a dict for --json)."""


def train_in_process(settings: RetrainSettings, progress: Callable[[str], None]) -> Action:
    """The pipeline's steps here (components/pipeline_local.py): returns {version, channel, model_uri, ...}."""

    def act(model_type: str, window: Window) -> dict:
        from components import pipeline_local, steps
        from components.settings import TrainSettings

        train = TrainSettings(kafka_bootstrap_servers=settings.kafka_bootstrap_servers, bucket=settings.bucket,
                              gcs_endpoint=settings.gcs_endpoint)  # fmt: skip
        params = steps.TrainParams(settings.kafka_bootstrap_servers, settings.topic, model_type, settings.epochs,
                                   window[0], window[1])  # fmt: skip
        result = pipeline_local.run(train, params, settings.truth_topic, min_f1=settings.min_f1, progress=progress)
        return {k: result[k] for k in ("version", "channel", "model_uri", "records")}

    return act


def declared_parameters(package_text: str) -> set[str]:
    """The root input parameters of a compiled KFP v2 pipeline."""
    import yaml

    spec = next(d for d in yaml.safe_load_all(package_text) if d)
    return set(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))


def run_arguments(settings: RetrainSettings, base: dict, declared: set[str], model_type: str, window: Window) -> dict:
    """The KFP run's arguments: ``base`` (the cluster's endpoints), this request's window, only what the pipeline declares."""
    wanted = {**base, "topic": settings.topic, "truth_topic": settings.truth_topic, "model_type": model_type,
              "epochs": settings.epochs, "min_f1": settings.min_f1, "from_ts": window[0],
              "to_ts": -1 if window[1] is None else window[1]}  # fmt: skip
    return {k: v for k, v in wanted.items() if k in declared}


def submit_to_kfp(settings: RetrainSettings, progress: Callable[[str], None]) -> Action:
    """A run of the compiled pipeline on KFP (caching off: the window is new each time); returns {run_id, run_name}."""
    package = Path(settings.pipeline_package)
    try:
        declared = declared_parameters(package.read_text())
        base = json.loads(settings.pipeline_arguments)
    except (OSError, ValueError, StopIteration, AttributeError) as exc:
        raise SettingsError(f"FLEETPULSE_RETRAIN_PIPELINE_PACKAGE {package} or _PIPELINE_ARGUMENTS unusable: {exc}") from None
    if not isinstance(base, dict):
        raise SettingsError(f"FLEETPULSE_RETRAIN_PIPELINE_ARGUMENTS must be a JSON object, got {settings.pipeline_arguments!r}")

    def act(model_type: str, window: Window) -> dict:
        import kfp
        from kfp_server_api.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        run_name = f"retrain-{MODEL_NAMES[model_type]}-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        try:
            client = kfp.Client(host=settings.kfp_host)
            run = client.create_run_from_pipeline_package(
                str(package), arguments=run_arguments(settings, base, declared, model_type, window), run_name=run_name,
                experiment_name=settings.kfp_experiment, enable_caching=False,
                service_account=settings.pipeline_service_account or None,
            )  # fmt: skip
        except (ApiException, HTTPError, OSError) as exc:
            # Not submitted: the request stays uncommitted and is tried again next interval.
            raise BrokerUnavailable(f"KFP at {settings.kfp_host} did not take the run: {exc}") from None
        progress(f"submitted {run_name} to {settings.kfp_host}: run id {run.run_id}")
        return {"run_id": run.run_id, "run_name": run_name}

    return act


class RequestReader:
    """model-requests from the group's committed offsets, by assignment (no rebalance to wait for)."""

    def __init__(self, connection: KafkaConnection, topic: str, group_id: str):
        from confluent_kafka import Consumer

        from fleetpulse.clients import kafka_config

        self.topic = topic
        self.consumer = Consumer(kafka_config(connection, **{"group.id": group_id, "enable.auto.commit": False,
                                                             "auto.offset.reset": "earliest", "log_level": 0}))  # fmt: skip
        self.partitions: list = []
        self.next: dict[int, int] = {}

    def read(self, timeout_s: float = 30.0) -> list:
        """Every record after what was read before, up to the end offsets as they were when called."""
        from confluent_kafka import KafkaException

        try:
            self._assign()
            ends = {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.partitions}
            out, deadline = [], time.monotonic() + timeout_s
            while any(self.next[p] < end for p, end in ends.items()):
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"{self.topic}: end offsets {ends} not reached in {timeout_s:g} s")
                msg = self.consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    raise BrokerUnavailable(f"{self.topic}: {msg.error()}")
                out.append(msg)
                self.next[msg.partition()] = msg.offset() + 1
            return out
        except KafkaException as exc:
            raise BrokerUnavailable(f"{self.topic}: {exc}") from None

    def rewind(self) -> None:
        """Read again from the committed offsets (what was read but not handled is read once more)."""
        self.partitions = []

    def _assign(self) -> None:
        if self.partitions:
            return
        from confluent_kafka import TopicPartition

        meta = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerUnavailable(f"topic {self.topic!r} is not there: {meta.error if meta else 'no metadata'}")
        partitions = [TopicPartition(self.topic, p) for p in sorted(meta.partitions)]
        committed = self.consumer.committed(partitions, timeout=10)
        # No commit yet, or one that retention has passed: the oldest record kept (auto.offset.reset agrees).
        start = [TopicPartition(self.topic, tp.partition, max(tp.offset, self.consumer.get_watermark_offsets(tp, timeout=10)[0]))
                 for tp in committed]
        self.consumer.assign(start)
        self.next = {tp.partition: tp.offset for tp in start}
        self.partitions = partitions

    def commit(self, messages: list) -> None:
        from confluent_kafka import TopicPartition

        last: dict[int, int] = {}
        for msg in messages:
            last[msg.partition()] = max(last.get(msg.partition(), -1), msg.offset())
        if last:
            self.consumer.commit(offsets=[TopicPartition(self.topic, p, o + 1) for p, o in last.items()], asynchronous=False)

    def close(self) -> None:
        self.consumer.close()


class Retrainer:
    """Turns the records read into outcomes: skip, or ``action`` on the window that ends now."""

    def __init__(self, reader: RequestReader, gcs_client, settings: RetrainSettings, action: Action,
                 clock: Callable[[], float] = time.time):  # fmt: skip
        self.reader, self.gcs, self.settings, self.action, self.clock = reader, gcs_client, settings, action, clock
        self.handled: set[tuple[str, int]] = set()

    def step(self, timeout_s: float = 30.0) -> list[Outcome]:
        """Read what is new, act on each request that needs it, then commit: at least once per request."""
        messages = self.reader.read(timeout_s)
        try:
            outcomes = [self._handle(msg.value()) for msg in messages]
        except BrokerUnavailable:
            self.reader.rewind()
            raise
        self.reader.commit(messages)
        for o in outcomes:
            OUTCOMES.labels(o.outcome).inc()
        return outcomes

    def _handle(self, raw: bytes) -> Outcome:
        try:
            request = Request.parse(raw)
        except DecodeError as exc:
            return Outcome(SKIPPED, None, str(exc))
        now_ms = int(self.clock() * 1000)
        newest, published = None, None
        if request.model in MODEL_TYPES_BY_NAME:
            versions = model_store.list_versions(self.gcs, self.settings.bucket, request.model)
            newest = max(versions, default=None)
            if request.model_version in versions:
                drifted = model_store.ModelVersion(self.settings.bucket, request.model, request.model_version)
                published = model_store.published_ms(model_store.read_metadata(self.gcs, drifted))
        skip = why_skip(request, now_ms, self.settings.max_age_s, self.handled, newest, published)
        if skip is not None:
            return Outcome(SKIPPED, request, skip)
        window = (now_ms - int(self.settings.window_minutes * 60_000), None)
        self.handled.add((request.model, request.model_version))
        try:
            result = self.action(MODEL_TYPES_BY_NAME[request.model], window)
        except BrokerUnavailable:
            self.handled.discard((request.model, request.model_version))
            raise
        except FleetPulseError as exc:  # a window too small, a gate not passed (kept as rejected): said, not retried
            return Outcome(FAILED, request, str(exc))
        return Outcome(RETRAINED, request, _what(result, self.settings.window_minutes), result)


def _what(result: dict, minutes: float) -> str:
    if "run_id" in result:
        return f"KFP run {result['run_name']} ({result['run_id']}) on the last {minutes:g} min"
    return f"published version {result['version']} ({result['channel']}) from {result['records']} records of the last {minutes:g} min"
