"""`fleetpulse serve`: the KServe ModelServer (V2 REST + gRPC) over the stable and candidate model versions."""

from __future__ import annotations

import logging
import sys

import click

from fleetpulse.model_store import CANDIDATE, STABLE
from fleetpulse.settings import load_settings


@click.command("serve")
@click.option("--http-port", type=click.IntRange(1, 65535), default=None, help="REST port (V2 + /metrics). [default: 8080]")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=None, help="gRPC V2 port. [default: 8081]")
@click.option("--model", "model", default=None, help="Model name under the bucket; overrides the last segment of FLEETPULSE_SERVE_MODEL_URI. [default: car-anomaly]")
@click.option("--model-uri", default=None, help="gs://<bucket>/<model> to serve (FLEETPULSE_SERVE_MODEL_URI).")
@click.option("--poll-interval", "poll_interval_s", type=click.FloatRange(min=0.1), default=None, help="Seconds between reads of the channels (and, without them, checks for a newer version). [default: 10]")
@click.option("--first-version-timeout", type=click.FloatRange(min=0), default=None, help="Give up if no version exists after this many seconds (default: wait forever).")
def serve(http_port, grpc_port, model, model_uri, poll_interval_s, first_version_timeout) -> None:
    """Serve the car-anomaly SavedModel over the Open Inference Protocol (V2), REST and gRPC.

    Serves the version channels.json calls stable under gs://<bucket>/<model>/ as <model>, and the
    candidate, while there is one, as <model>-candidate; follows the channels as they change (each new
    version is loaded and warmed up first, so requests in flight never fail). A bucket without
    channels.json serves its newest complete version, as before channels existed.
    """
    from fleetpulse.clients import gcs_client
    from inference.server.settings import ServeSettings

    settings = load_settings(ServeSettings, http_port=http_port, grpc_port=grpc_port, model_uri=model_uri,
                             poll_interval_s=poll_interval_s)
    name = model or settings.model_name
    progress = lambda msg: click.echo(msg, err=True)  # noqa: E731
    progress(f"loading {name} from gs://{settings.bucket}/{name}/ (gcs {settings.gcs_endpoint or 'real GCS'}) ...")

    from inference.server.model_watcher import ModelWatcher

    watcher = ModelWatcher(gcs_client(settings.gcs_endpoint or None), settings.bucket, name, settings.cache_dir or None,
                           settings.poll_interval_s)
    server, adapters = _build_server(settings, watcher)
    watcher.on_change = lambda slot: _expose(server.registered_models, adapters[slot.channel], slot)
    first = watcher.wait_for_first(progress, first_version_timeout)
    watcher.start()
    progress(f"serving {name} version {first.version} (input {first.input_shape}, threshold {first.threshold:.4g}): "
             f"REST http://0.0.0.0:{settings.http_port}/v2/models/{name}/infer, gRPC :{settings.grpc_port}")
    if (candidate := watcher.candidate.current) is not None:
        progress(f"serving candidate version {candidate.version} as {watcher.candidate.name}")
    try:
        server.start([adapters[STABLE]])
    finally:
        watcher.stop()


def _build_server(settings, watcher):
    # kserve parses sys.argv when kserve.model_server is imported; keep our flags away from its parser.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        from kserve.model_server import app

        from inference.server.json_body import JsonWithoutContentType
        from inference.server.kserve_model import CarAnomalyModel
    finally:
        sys.argv = argv
    app.add_middleware(JsonWithoutContentType)
    server = kserve.ModelServer(http_port=settings.http_port, grpc_port=settings.grpc_port, workers=settings.workers,
                                max_threads=settings.grpc_threads, enable_latency_logging=False)
    # Per-request INFO lines (grpc method, latency) cost more than scoring a small batch.
    for logger in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(logger).setLevel(settings.log_level.upper())
    logging.getLogger("fleetpulse.serve").setLevel(logging.INFO)
    return server, {STABLE: CarAnomalyModel(watcher.stable), CANDIDATE: CarAnomalyModel(watcher.candidate)}


def _expose(registry, adapter, slot) -> None:
    """A name is in kserve's model registry exactly while its slot holds a version (a withdrawn
    candidate answers 404 model not found). Called from the watcher's thread: each registry change is
    one dict operation, atomic under the GIL, against the event loop's lookups."""
    if slot.current is not None:
        adapter.load()
        registry.update(adapter)
    elif registry.get_model(adapter.name) is not None:
        registry.unload(adapter.name)
