"""`fleetpulse score` settings: the Kafka connection under the FLEETPULSE_SCORE_ prefix, and clients
that keep the no-loss settings whatever the tuning."""

from __future__ import annotations

import pytest

from fleetpulse.errors import SettingsError
from fleetpulse.settings import load_settings
from inference.transformer.settings import ScoreSettings


def test_the_kafka_connection_comes_from_the_score_env_prefix(monkeypatch, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("FLEETPULSE_SCORE_KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9093,kafka-1:9093")
    monkeypatch.setenv("FLEETPULSE_SCORE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FLEETPULSE_SCORE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FLEETPULSE_SCORE_KAFKA_USERNAME", "transformer")
    monkeypatch.setenv("FLEETPULSE_SCORE_KAFKA_PASSWORD_FILE", str(secret))
    settings = load_settings(ScoreSettings)
    for conf in (settings.consumer_config(), settings.producer_config()):
        assert conf["bootstrap.servers"] == "kafka-0:9093,kafka-1:9093" and conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.username"] == "transformer" and conf["sasl.password"] == "s3cret"
    assert load_settings(ScoreSettings, kafka_bootstrap_servers="other:9092").consumer_config()["bootstrap.servers"] == "other:9092"


def test_clients_keep_the_no_loss_settings_and_take_the_tuning(monkeypatch):
    monkeypatch.setenv("FLEETPULSE_SCORE_CONSUMER_MAX_POLL_INTERVAL_MS", "900000")
    monkeypatch.setenv("FLEETPULSE_SCORE_PRODUCER_LINGER_MS", "20")
    settings = load_settings(ScoreSettings)
    consumer, producer = settings.consumer_config(), settings.producer_config()
    assert consumer["enable.auto.commit"] is False and consumer["group.id"] == settings.group_id
    assert producer["enable.idempotence"] is True and producer["acks"] == "all" and producer["message.timeout.ms"] == 0
    assert consumer["max.poll.interval.ms"] == 900000 and producer["linger.ms"] == 20


def test_a_bad_tuning_value_names_its_variable(monkeypatch):
    monkeypatch.setenv("FLEETPULSE_SCORE_PRODUCER_COMPRESSION_TYPE", "brotli")
    with pytest.raises(SettingsError, match="FLEETPULSE_SCORE_PRODUCER_COMPRESSION_TYPE"):
        load_settings(ScoreSettings)
