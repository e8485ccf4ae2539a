"""The secured stack's identities: a random password per service and per car, in 0600 files under the state dir.

    identities/services.json   {"admin": ..., "kafka-broker": ..., "bridge": ..., ...}
    identities/cars.tsv        car_id TAB password                 read by cars (the simulator): fleetpulse.identity
    identities/cars-mqtt.tsv   car_id TAB salt TAB PBKDF2-SHA512    Mosquitto's records of the same passwords, kept
                                                                   so a broker start does not hash 100,000 again

Passwords are 128 random bits in URL-safe base64, so they go into Kafka's SCRAM set-up, JAAS lines and
MongoDB URIs without quoting. Writers hold an exclusive flock: parallel `stack credentials <car>` calls
(pytest workers) never lose or double a car.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from fleetpulse.errors import StackError
from devtools.stack.rights import ADMIN, KAFKA_BROKER, SERVICES
from devtools.stack.service import ensure_private_dir, write_private

IDENTITIES = (ADMIN, KAFKA_BROKER, *SERVICES)
CAR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A car id is an MQTT username, client id and topic level: no '/', '+', '#', spaces or quotes."""

MQTT_HASH_ITERATIONS = 101
"""Mosquitto's own default (mosquitto_passwd, dynamic-security). Stretching protects guessable
passwords; these are 128 random bits, and 101 rounds keep hashing 100,000 cars at ~4 s."""


class IdentityStore:
    def __init__(self, directory: Path):
        self.dir = directory

    @property
    def services_file(self) -> Path:
        return self.dir / "services.json"

    @property
    def cars_file(self) -> Path:
        return self.dir / "cars.tsv"

    @property
    def mqtt_cars_file(self) -> Path:
        return self.dir / "cars-mqtt.tsv"

    def password(self, name: str) -> str:
        """The password of a service, ``admin`` or ``kafka-broker`` (all created together on first use)."""
        if name not in IDENTITIES:
            raise StackError(f"unknown identity {name!r}; one of {', '.join(IDENTITIES)} or a car id")
        return self.services()[name]

    def services(self) -> dict[str, str]:
        """Every service's password; identities added since the store was created (a new service) get one now."""
        found = json.loads(self.services_file.read_text()) if self.services_file.exists() else {}
        if set(IDENTITIES) - set(found):
            with self._locked():
                found = json.loads(self.services_file.read_text()) if self.services_file.exists() else {}
                if set(IDENTITIES) - set(found):
                    found.update({n: _new_password() for n in IDENTITIES if n not in found})
                    write_private(self.services_file, json.dumps(found, indent=1))
        return found

    def cars(self) -> dict[str, str]:
        return dict(_rows(self.cars_file, 2))

    def mqtt_cars(self) -> list[tuple[str, str, str]]:
        """(car id, salt, hash) of every car, base64 as Mosquitto's dynamic-security stores them."""
        return list(_rows(self.mqtt_cars_file, 3))

    def ensure_cars(self, car_ids: Iterable[str], on_created: Callable[[list[str]], None] | None = None) -> list[str]:
        """Give every car in ``car_ids`` an identity; return the ids that had none (in order).

        ``on_created(new ids)`` runs before the lock is released, so a concurrent caller that finds
        the car already there also finds it wherever ``on_created`` put it (the running brokers).
        """
        wanted = list(dict.fromkeys(car_ids))
        for car in wanted:
            check_car_id(car)
        with self._locked():
            known = {car for car, _ in _rows(self.cars_file, 2)}
            new = [car for car in wanted if car not in known]
            if not new:
                return []
            passwords = [_new_password() for _ in new]
            _append(self.mqtt_cars_file, (f"{car}\t{salt}\t{digest}\n" for car, (salt, digest) in zip(new, map(mqtt_hash, passwords))))
            # cars.tsv last: a car clients can see always has its broker record.
            _append(self.cars_file, (f"{car}\t{pw}\n" for car, pw in zip(new, passwords)))
            if on_created is not None:
                on_created(new)
        return new

    @contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.dir)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def check_car_id(car_id: str) -> str:
    if car_id in IDENTITIES:
        raise StackError(f"{car_id!r} names a service, not a car")
    if not CAR_ID.fullmatch(car_id):
        raise StackError(f"bad car id {car_id!r}: 1-64 of letters, digits, '.', '_', '-', starting with a letter or digit")
    return car_id


def mqtt_hash(password: str, iterations: int = MQTT_HASH_ITERATIONS) -> tuple[str, str]:
    """(salt, hash), base64: the PBKDF2-SHA512 record Mosquitto's dynamic-security plugin checks."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return base64.b64encode(salt).decode(), base64.b64encode(digest).decode()


def _new_password() -> str:
    return secrets.token_urlsafe(16)


def _rows(path: Path, width: int) -> Iterator[tuple[str, ...]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        fields = tuple(line.split("\t"))
        # A reader racing an append may see a torn last line; it is complete on the next read.
        if len(fields) == width:
            yield fields


def _append(path: Path, lines: Iterable[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(lines)
