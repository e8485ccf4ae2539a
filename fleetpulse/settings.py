"""Typed settings: one class per service, env prefix ``FLEETPULSE_<SERVICE>_``, local-stack defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetpulse import endpoints
from fleetpulse.errors import SettingsError

S = TypeVar("S", bound=BaseSettings)


class KafkaConnection(BaseModel):
    """How a client reaches Kafka: the one connection type every service's settings build."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = endpoints.KAFKA_BOOTSTRAP
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None

    def librdkafka(self) -> dict[str, str]:
        """The librdkafka properties for this connection (secrets included: never log the result)."""
        conf = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.username is not None:
            conf["sasl.username"] = self.username
        if self.password is not None:
            conf["sasl.password"] = self.password.get_secret_value()
        if self.ca_file:
            conf["ssl.ca.location"] = self.ca_file
        return conf


class KafkaClientSettings(BaseSettings):
    """Mixin for a service's settings: its Kafka connection under its own env prefix
    (``FLEETPULSE_<SERVICE>_KAFKA_BOOTSTRAP_SERVERS``, ``..._KAFKA_PASSWORD_FILE``, ...)."""

    kafka_bootstrap_servers: str = endpoints.KAFKA_BOOTSTRAP
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] | None = None
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_password_file: Path | None = None
    """A file holding the password (a mounted Secret); read at start-up, never logged."""
    kafka_ca_file: str | None = None

    @property
    def kafka(self) -> KafkaConnection:
        password = self.kafka_password
        if password is None and self.kafka_password_file is not None:
            try:
                password = SecretStr(self.kafka_password_file.read_text().strip())
            except OSError as exc:
                raise SettingsError(f"kafka_password_file {self.kafka_password_file}: {exc.strerror or exc}") from None
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_username,
            password=password,
            ca_file=self.kafka_ca_file,
        )


def load_settings(cls: type[S], **overrides) -> S:
    """Build settings from the environment plus explicit overrides (CLI flags that were given).

    Raises SettingsError with one line naming the variable and what is wrong with it.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "?"
        source = f"--{name.replace('_', '-')}" if name in given else f"{prefix}{name.upper()}"
        raise SettingsError(f"{source}: {err['msg']} (got {err.get('input')!r})") from None


def parse_hostports(value: str, default_port: int) -> list[tuple[str, int]]:
    """Parse ``host:port[,host:port...]`` (a list of broker endpoints)."""
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host:
            host, port = item, str(default_port)
        try:
            out.append((host, int(port)))
        except ValueError:
            raise SettingsError(f"bad endpoint {item!r}: expected host:port") from None
    if not out:
        raise SettingsError(f"no endpoints in {value!r}")
    return out


def _valid_broker_list(value: str) -> str:
    try:
        parse_hostports(value, 1883)
    except SettingsError as exc:
        raise ValueError(str(exc)) from None  # pydantic error, so load_settings names the variable or flag
    return value


BrokerList = Annotated[str, AfterValidator(_valid_broker_list)]
"""A settings field holding ``host:port[,host:port...]`` MQTT brokers, checked at start-up."""
