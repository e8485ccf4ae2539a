"""The digital twin in MongoDB (``fleetpulse.cars``, ``_id`` = car id): bulk load and bulk upsert.

Writes set absolute values computed by the transformer, never increments, so writing the same state
twice leaves the same document. Replays are made idempotent one step earlier: the transformer loads a
car's twin before applying its first event and skips events at or below the stored offset of that
partition, so a replayed event is never counted twice. (A filter guard on the stored offset inside
the upsert was measured on FerretDB 1.24/SQLite at ~9 upserts/s: it scans instead of using _id.)
"""

from __future__ import annotations

from typing import Iterable

from fleetpulse.errors import BrokerUnavailable


# FerretDB 1.24 (SQLite) keeps one pooled SQLite connection per statement of an update command
# until the command ends; its pool holds 100, so one bulk of more than ~100 upserts of existing
# documents deadlocks the server (reproduced: 99 pass, 101 hang). Real MongoDB has no such limit;
# chunks of 90 cost nothing there.
BULK_CHUNK = 90


class TwinStore:
    def __init__(self, client, database: str, collection: str):
        self.collection = client[database][collection]

    def load(self, car_ids: list[str]) -> dict[str, dict]:
        """Existing twins for these cars (missing cars are absent from the result)."""
        out: dict[str, dict] = {}
        for i in range(0, len(car_ids), 1000):
            chunk = car_ids[i : i + 1000]
            for doc in self.collection.find({"_id": {"$in": chunk}}, {"status": 1, "counters": 1, "hysteresis": 1, "offsets": 1}):
                out[doc["_id"]] = doc
        return out

    def write(self, updates: Iterable[tuple[str, dict]]) -> int:
        """Upsert ``$set`` documents in one unordered bulk; returns the number of cars written."""
        from pymongo import UpdateOne

        ops = [UpdateOne({"_id": car}, {"$set": fields}, upsert=True) for car, fields in updates]
        for i in range(0, len(ops), BULK_CHUNK):
            self.collection.bulk_write(ops[i : i + BULK_CHUNK], ordered=False)
        return len(ops)


def ping(client, uri: str) -> None:
    from pymongo.errors import PyMongoError

    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise BrokerUnavailable(f"MongoDB at {uri} is unreachable ({type(exc).__name__}); is the stack up? (fleetpulse stack up)") from None
