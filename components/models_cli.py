"""`fleetpulse models`: a model's versions on GCS and the channels that say which one serves.

Reads the bucket `fleetpulse train` publishes to (FLEETPULSE_TRAIN_BUCKET, FLEETPULSE_TRAIN_GCS_ENDPOINT).
Every command prints one line (``list``: one per version). A change is a compare-and-swap on the
channels object: if another writer changed it since this command read it, nothing is written and the
command fails (a person's decision was made on a state that no longer holds).
"""

from __future__ import annotations

import json

import click

from components.models import MODEL_NAMES
from fleetpulse import model_store

_MODELS = sorted(MODEL_NAMES.values())


def _target(fn):
    fn = click.option("--bucket", default=None, help="Overrides FLEETPULSE_TRAIN_BUCKET.")(fn)
    return click.option("--model", "model_name", type=click.Choice(_MODELS), default=MODEL_NAMES["autoencoder"],
                        show_default=True, help="Which model's versions.")(fn)  # fmt: skip


def _gcs(bucket: str | None):
    from components.publish import gcs_bucket
    from components.settings import TrainSettings
    from fleetpulse.settings import load_settings

    settings = load_settings(TrainSettings, bucket=bucket)
    return settings.bucket, gcs_bucket(settings.bucket, settings.gcs_endpoint)


def headline(metrics: dict) -> dict:
    """The figures a promotion is argued on (the version's metadata.json keeps them all)."""
    keep = ("f1", "precision", "recall", "false_alerts_per_1000_car_hours", "threshold")
    out = {k: metrics[k] for k in keep if k in metrics}
    if "hysteresis" in metrics:
        out["alerts"] = {k: metrics["hysteresis"][k] for k in ("f1", "recall", "false_alerts_per_1000_car_hours")}
    if "per_mode" in metrics:
        out["recall_per_mode"] = {mode: m["recall"] for mode, m in metrics["per_mode"].items()}
    if "gate" in metrics:
        out["gate"] = metrics["gate"]
    return out


def _line(entry: model_store.CatalogEntry) -> str:
    m = entry.metadata.get("metrics", {})
    figures = (f"F1 {m['f1']:.3f}, {m['false_alerts_per_1000_car_hours']:.2f} false alerts/1000 car-h"
               if {"f1", "false_alerts_per_1000_car_hours"} <= m.keys() else "no metrics")  # fmt: skip
    why = f" ({entry.reason})" if entry.reason else ""
    return f"{entry.version:>4}  {entry.channel:<9}  {figures}, published {entry.metadata.get('published_at', '?')}{why}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def models() -> None:
    """A model's versions on GCS and their channels: stable serves, candidate is on trial."""


@models.command("list")
@_target
@click.option("--json", "as_json", is_flag=True, help='One JSON line: [{"version", "channel", "metrics", "published_at"}].')
def list_(model_name: str, bucket: str | None, as_json: bool) -> None:
    """Every complete version with its channel (stable, candidate, rejected, retired)."""
    name, gcs = _gcs(bucket)
    with gcs as client:
        entries = model_store.catalog(client, name, model_name)
    if as_json:
        click.echo(json.dumps([{"version": e.version, "channel": e.channel, "metrics": headline(e.metadata.get("metrics", {})),
                                "published_at": e.metadata.get("published_at")} for e in entries], separators=(",", ":")))  # fmt: skip
        return
    if not entries:
        click.echo(f"no versions of {model_name} in gs://{name}/")
    for entry in entries:
        click.echo(_line(entry))


@models.command()
@_target
@click.argument("version", type=click.IntRange(min=1))
def promote(model_name: str, bucket: str | None, version: int) -> None:
    """Make VERSION stable (the stable it replaces is where a rollback returns)."""
    name, gcs = _gcs(bucket)
    with gcs as client:
        before, _ = model_store.promote(client, name, model_name, version)
    was = f" (was version {before.stable})" if before.stable is not None else ""
    click.echo(f"{model_name} version {version} is stable{was}")


@models.command()
@_target
def rollback(model_name: str, bucket: str | None) -> None:
    """Return stable to the previous stable version; the one it leaves is marked rejected."""
    name, gcs = _gcs(bucket)
    with gcs as client:
        before, after = model_store.rollback(client, name, model_name)
    click.echo(f"{model_name} rolled back to version {after.stable} (version {before.stable} rejected)")


@models.command()
@_target
@click.argument("version", type=click.IntRange(min=1))
@click.option("--reason", default="rejected by hand", show_default=True, help="Recorded with the rejection.")
def reject(model_name: str, bucket: str | None, version: int, reason: str) -> None:
    """Mark VERSION rejected (it never serves); a candidate leaves its channel."""
    name, gcs = _gcs(bucket)
    with gcs as client:
        model_store.reject(client, name, model_name, version, reason)
    click.echo(f"{model_name} version {version} rejected ({reason})")
