"""Typed settings: one class per service, env prefix ``FLEETPULSE_<SERVICE>_``, local-stack defaults."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings

from fleetpulse import endpoints
from fleetpulse.errors import SettingsError

S = TypeVar("S", bound=BaseSettings)


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


class KafkaConnection(BaseModel):
    """How a client reaches Kafka: the one connection type every service's settings build."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = endpoints.KAFKA_BOOTSTRAP
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None

    @property
    def authenticated(self) -> bool:
        """The client logs in as a principal, which has only the rights its ACLs grant (no topic creation)."""
        return self.security_protocol.startswith("SASL")

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

    @model_validator(mode="after")
    def _kafka_consistent(self):
        env = self.model_config.get("env_prefix", "")
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_username):
            raise ValueError(f"{env}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs {env}KAFKA_SASL_MECHANISM "
                             f"and {env}KAFKA_USERNAME")
        if not sasl and self.kafka_username:
            raise ValueError(f"{env}KAFKA_USERNAME is set but {env}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} does not log in")
        return self

    @property
    def kafka(self) -> KafkaConnection:
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_username,
            password=secret_from(self.kafka_password, self.kafka_password_file, "kafka_password_file"),
            ca_file=self.kafka_ca_file,
        )


class MqttConnection(BaseModel):
    """How a client reaches the MQTT brokers: the one connection type the bridge and the simulator build."""

    model_config = ConfigDict(frozen=True)

    brokers: str = endpoints.MQTT_BROKERS
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: SecretStr | None = None

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return parse_hostports(self.brokers, 8883 if self.tls else 1883)

    def ssl_context(self) -> ssl.SSLContext | None:
        """None without TLS; else a client context that checks the broker's certificate and name
        against ``ca_file`` (the system's CAs when unset). Raises SettingsError for an unreadable CA file."""
        if not self.tls:
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"mqtt_ca_file {self.ca_file}: {getattr(exc, 'strerror', None) or exc}") from None


class MqttClientSettings(BaseSettings):
    """Mixin for a service's settings: its MQTT connection under its own env prefix
    (``FLEETPULSE_<SERVICE>_MQTT_BROKERS``, ``..._MQTT_TLS``, ``..._MQTT_PASSWORD_FILE``, ...).
    No CLI flag takes a password: it comes from the environment or a file (a mounted Secret)."""

    mqtt_brokers: BrokerList = endpoints.MQTT_BROKERS
    """Comma list of host:port (port 8883 when omitted with TLS, else 1883)."""
    mqtt_tls: bool = False
    mqtt_ca_file: str | None = None
    """The CA that signed the brokers' certificates (with mqtt_tls); the system's CAs when unset."""
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_password_file: Path | None = None
    """A file holding the password (a mounted Secret); read at start-up, never logged."""

    @model_validator(mode="after")
    def _mqtt_consistent(self):
        # Each of these would be silently ignored otherwise: the client would connect in clear or anonymously.
        env = self.model_config.get("env_prefix", "")
        if self.mqtt_ca_file and not self.mqtt_tls:
            raise ValueError(f"{env}MQTT_CA_FILE is set but {env}MQTT_TLS is off")
        if (self.mqtt_password is not None or self.mqtt_password_file is not None) and not self.mqtt_username:
            raise ValueError(f"an MQTT password is set but {env}MQTT_USERNAME is not")
        return self

    @property
    def mqtt(self) -> MqttConnection:
        return MqttConnection(
            brokers=self.mqtt_brokers,
            tls=self.mqtt_tls,
            ca_file=self.mqtt_ca_file,
            username=self.mqtt_username,
            password=secret_from(self.mqtt_password, self.mqtt_password_file, "mqtt_password_file"),
        )


def secret_from(value: SecretStr | None, file: Path | None, name: str) -> SecretStr | None:
    """``value``, else the stripped contents of ``file``; SettingsError naming ``name`` if it cannot be read."""
    if value is not None or file is None:
        return value
    try:
        return SecretStr(file.read_text().strip())
    except OSError as exc:
        raise SettingsError(f"{name} {file}: {exc.strerror or exc}") from None


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
        if not err.get("loc"):  # a check across fields: its message names the variables
            raise SettingsError(err["msg"].removeprefix("Value error, ")) from None
        name = str(err["loc"][0])
        source = f"--{name.replace('_', '-')}" if name in given else f"{prefix}{name.upper()}"
        raise SettingsError(f"{source}: {err['msg']} (got {err.get('input')!r})") from None
