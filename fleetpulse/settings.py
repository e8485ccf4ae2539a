"""Typed settings: one class per service, env prefix ``FLEETPULSE_<SERVICE>_``, local-stack defaults."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import AfterValidator, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetpulse import endpoints
from fleetpulse.errors import SettingsError

S = TypeVar("S", bound=BaseSettings)


class KafkaSettings(BaseSettings):
    """Endpoints most services share; subclasses set their own env prefix."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_", extra="ignore")

    kafka_bootstrap_servers: str = endpoints.KAFKA_BOOTSTRAP


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
