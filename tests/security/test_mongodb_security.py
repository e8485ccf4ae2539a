"""FerretDB, secured: SCRAM users over TLS (1.24 authenticates but has no roles, so only who needs it has a user)."""

from __future__ import annotations

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

UNAUTHORIZED, AUTHENTICATION_FAILED = 13, 18


def client(uri: str, timeout_ms: int = 5000) -> MongoClient:
    return MongoClient(uri, serverSelectionTimeoutMS=timeout_ms)


def test_an_unauthenticated_client_may_not_read_or_write(secure_stack):
    anonymous = client(secure_stack["mongodb"]["uri"])
    with pytest.raises(OperationFailure) as refused:
        anonymous.fleetpulse.twins.find_one()
    assert refused.value.code == UNAUTHORIZED
    with pytest.raises(OperationFailure) as refused:
        anonymous.fleetpulse.probe.insert_one({"x": 1})
    assert refused.value.code == UNAUTHORIZED


def test_a_wrong_password_is_refused(credentials):
    uri = credentials("transformer")["mongodb_uri"].replace(credentials("transformer")["password"], "not-it")
    with pytest.raises(OperationFailure) as refused:
        client(uri).fleetpulse.twins.find_one()
    assert refused.value.code == AUTHENTICATION_FAILED


def test_the_transformer_writes_twins_with_its_own_uri(credentials, unique):
    twins = client(credentials("transformer")["mongodb_uri"]).fleetpulse[f"twins_{unique}"]
    twins.replace_one({"_id": "car-1"}, {"_id": "car-1", "status": "healthy"}, upsert=True)
    assert twins.find_one({"_id": "car-1"})["status"] == "healthy"


def test_the_server_speaks_only_tls(secure_stack):
    plain = secure_stack["mongodb"]["uri"].split("?")[0]
    with pytest.raises(ServerSelectionTimeoutError):
        client(plain, timeout_ms=2000).admin.command("ping")


@pytest.mark.parametrize("name", ["simulator", "bridge", "training"])
def test_services_that_do_not_use_mongodb_get_no_user(credentials, name):
    assert "mongodb_uri" not in credentials(name)
