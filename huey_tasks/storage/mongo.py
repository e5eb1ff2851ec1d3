"""Huey storage on MongoDB, with at-least-once delivery (see ``base``).

Every operation is one atomic MongoDB command where one exists, and only standard
commands are used (find_one_and_update/delete, update with upsert, createIndexes), so the
same code runs on a standalone server, a replica set or Atlas. Times are the workers'
clocks (epoch seconds); keep hosts NTP-synchronised.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from bson import ObjectId
from bson.errors import InvalidId
from huey.constants import EmptyData
from huey.storage import BaseStorage
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from .base import DeadLetter, Delivery, LeasingStorageMixin, utc_from_timestamp

_clients: dict[tuple[int, str], MongoClient] = {}
_clients_lock = threading.Lock()


def shared_client(url: str) -> MongoClient:
    """One MongoClient per process and URL; a forked child opens its own."""
    key = (os.getpid(), url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = MongoClient(url, connect=False)
        return client


def _object_id(message_id: str) -> ObjectId | None:
    try:
        return ObjectId(message_id)
    except (InvalidId, TypeError):
        return None


def _live(now: float) -> dict:
    return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


class MongoStorage(LeasingStorageMixin, BaseStorage):
    """Queue, schedule, results, counters, dead letters and slots in six collections."""

    def __init__(
        self,
        name: str = "huey",
        url: str | None = None,
        client: MongoClient | None = None,
        database: str | None = None,
        lease_seconds: float | None = None,
        max_deliveries: int | None = None,
        collection_prefix: str = "huey",
        **options,
    ):
        super().__init__(name)
        self.configure_leases(lease_seconds, max_deliveries)
        if client is None:
            client = shared_client(url or "mongodb://127.0.0.1:27017")
        self.client = client
        # The database named in the URL, unless one is given explicitly.
        db = client[database] if database else client.get_default_database(default="huey")
        prefix = f"{collection_prefix}.{name}"
        self.messages = db[f"{prefix}.messages"]
        self.schedule = db[f"{prefix}.schedule"]
        self.kv = db[f"{prefix}.kv"]
        self.counters = db[f"{prefix}.counters"]
        self.dead = db[f"{prefix}.dead_letters"]
        self.slots = db[f"{prefix}.slots"]
        self.create_indexes()

    def create_indexes(self) -> None:
        """Idempotent: createIndexes is a no-op for indexes that exist."""
        self.messages.create_index([("priority", DESCENDING), ("seq", ASCENDING)])
        self.messages.create_index([("lease_until", ASCENDING)])
        self.schedule.create_index([("ts", ASCENDING)])
        self.schedule.create_index([("claim", ASCENDING)])
        self.dead.create_index([("died_at", DESCENDING)])
        self.slots.create_index([("name", ASCENDING), ("expires_at", ASCENDING)])

    def close(self):
        # The client is shared by the process; nothing per-storage to release.
        return False

    # Queue --------------------------------------------------------------------------
    def _message(self, data: bytes, priority: float | None) -> dict:
        # ObjectId order is FIFO within a process; `seq` (time) orders across processes.
        return {
            "data": bytes(data),
            "priority": priority or 0,
            "seq": time.time(),
            "lease_until": 0.0,
            "deliveries": 0,
        }

    def enqueue(self, data, priority=None):
        self.messages.insert_one(self._message(data, priority))

    def enqueue_many(self, messages, priority=None):
        if messages:
            self.messages.insert_many(
                [self._message(data, priority) for data in messages], ordered=True
            )

    def claim(self, lease_seconds=None):
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        while True:
            now = time.time()
            doc = self.messages.find_one_and_update(
                {"lease_until": {"$lte": now}},
                {"$set": {"lease_until": now + lease}, "$inc": {"deliveries": 1}},
                sort=[("priority", DESCENDING), ("seq", ASCENDING), ("_id", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                return None
            if doc["deliveries"] > self.max_deliveries:
                self._bury(doc, now)
                continue
            return Delivery(str(doc["_id"]), bytes(doc["data"]), doc["deliveries"])

    def _bury(self, doc: dict, now: float) -> None:
        # Upsert first, delete second: a crash in between leaves a duplicate, never a loss.
        self.dead.replace_one(
            {"_id": doc["_id"]},
            {
                "data": doc["data"],
                "deliveries": doc["deliveries"] - 1,
                "died_at": now,
                "reason": f"lease expired on all {self.max_deliveries} deliveries",
            },
            upsert=True,
        )
        self.messages.delete_one({"_id": doc["_id"]})

    def ack(self, message_id):
        oid = _object_id(message_id)
        return oid is not None and self.messages.delete_one({"_id": oid}).deleted_count == 1

    def release(self, message_id):
        oid = _object_id(message_id)
        if oid is None:
            return False
        result = self.messages.update_one(
            {"_id": oid}, {"$set": {"lease_until": 0.0}, "$inc": {"deliveries": -1}}
        )
        return result.matched_count == 1

    def extend_leases(self, message_ids, lease_seconds=None):
        ids = [oid for oid in map(_object_id, message_ids) if oid is not None]
        if not ids:
            return 0
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        result = self.messages.update_many(
            {"_id": {"$in": ids}}, {"$set": {"lease_until": time.time() + lease}}
        )
        return result.matched_count

    def leased_count(self):
        return self.messages.count_documents({"lease_until": {"$gt": time.time()}})

    def queue_size(self):
        return self.messages.count_documents({"lease_until": {"$lte": time.time()}})

    def enqueued_items(self, limit=None):
        cursor = self.messages.find(
            {"lease_until": {"$lte": time.time()}},
            {"data": 1},
            sort=[("priority", DESCENDING), ("seq", ASCENDING), ("_id", ASCENDING)],
        )
        if limit:
            cursor = cursor.limit(limit)
        return [bytes(doc["data"]) for doc in cursor]

    def flush_queue(self):
        self.messages.delete_many({})

    # Schedule -----------------------------------------------------------------------
    def add_to_schedule(self, data, ts):
        self.schedule.insert_one({"data": bytes(data), "ts": ts.timestamp(), "claim": None})

    def _claim_due(self, ts) -> tuple[str, list[dict]]:
        # Tag what is due with a token, then read it: each entry goes to exactly one of
        # several concurrent schedulers. A tag left by a crashed reader goes stale.
        token = uuid.uuid4().hex
        now = time.time()
        self.schedule.update_many(
            {
                "ts": {"$lte": ts.timestamp()},
                "$or": [{"claim": None}, {"claimed_at": {"$lt": now - 60}}],
            },
            {"$set": {"claim": token, "claimed_at": now}},
        )
        docs = list(self.schedule.find({"claim": token}, sort=[("ts", ASCENDING), ("_id", 1)]))
        return token, docs

    def read_schedule(self, ts):
        token, docs = self._claim_due(ts)
        if docs:
            self.schedule.delete_many({"claim": token})
        return [bytes(doc["data"]) for doc in docs]

    def promote_due(self, ts):
        token, docs = self._claim_due(ts)
        if not docs:
            return []
        # The schedule entry's _id becomes the message's: promoting again after a crash
        # between these two commands collides instead of duplicating.
        try:
            self.messages.insert_many(
                [{**self._message(doc["data"], 0), "_id": doc["_id"]} for doc in docs],
                ordered=False,
            )
        except BulkWriteError as exc:
            if any(error["code"] != 11000 for error in exc.details["writeErrors"]):
                raise
        self.schedule.delete_many({"claim": token})
        return [bytes(doc["data"]) for doc in docs]

    def schedule_size(self):
        return self.schedule.count_documents({})

    def scheduled_items(self, limit=None):
        cursor = self.schedule.find({}, {"data": 1}, sort=[("ts", ASCENDING), ("_id", 1)])
        if limit:
            cursor = cursor.limit(limit)
        return [bytes(doc["data"]) for doc in cursor]

    def flush_schedule(self):
        self.schedule.delete_many({})

    # Key/value store ----------------------------------------------------------------
    def put_data(self, key, value, is_result=False):
        self.kv.replace_one(
            {"_id": key},
            {"value": bytes(value), "expires_at": None, "created_at": time.time()},
            upsert=True,
        )

    def peek_data(self, key):
        doc = self.kv.find_one({"_id": key, **_live(time.time())})
        return EmptyData if doc is None else bytes(doc["value"])

    def peek_many(self, keys):
        docs = self.kv.find({"_id": {"$in": list(keys)}, **_live(time.time())})
        return {doc["_id"]: bytes(doc["value"]) for doc in docs}

    def pop_data(self, key):
        doc = self.kv.find_one_and_delete({"_id": key, **_live(time.time())})
        return EmptyData if doc is None else bytes(doc["value"])

    def has_data_for_key(self, key):
        return self.kv.count_documents({"_id": key, **_live(time.time())}, limit=1) > 0

    def put_if_empty(self, key, value, ttl=None):
        now = time.time()
        doc = {
            "value": bytes(value),
            "expires_at": None if ttl is None else now + ttl,
            "created_at": now,
        }
        try:
            self.kv.insert_one({"_id": key, **doc})
            return True
        except DuplicateKeyError:
            # Only an expired key may be taken over; the filter makes that race-free.
            replaced = self.kv.find_one_and_replace(
                {"_id": key, "expires_at": {"$ne": None, "$lte": now}}, doc
            )
            return replaced is not None

    def result_store_size(self):
        return self.kv.count_documents(_live(time.time()))

    def result_items(self):
        return {doc["_id"]: bytes(doc["value"]) for doc in self.kv.find(_live(time.time()))}

    def flush_results(self):
        self.kv.delete_many({})

    def purge_results(self, older_than: float) -> int:
        now = time.time()
        result = self.kv.delete_many(
            {
                "$or": [
                    {"created_at": {"$lt": now - older_than}},
                    {"expires_at": {"$ne": None, "$lte": now}},
                ]
            }
        )
        return result.deleted_count

    # Counters -----------------------------------------------------------------------
    def incr(self, key, amount=1):
        doc = self.counters.find_one_and_update(
            {"_id": key},
            {"$inc": {"value": amount}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return doc["value"]

    def delete_counter(self, key):
        self.counters.delete_one({"_id": key})

    def flush_counters(self):
        self.counters.delete_many({})

    # Dead letters -------------------------------------------------------------------
    def dead_letters(self, limit=None):
        cursor = self.dead.find({}, sort=[("died_at", DESCENDING), ("_id", DESCENDING)])
        if limit:
            cursor = cursor.limit(limit)
        return [
            DeadLetter(
                str(doc["_id"]),
                bytes(doc["data"]),
                doc["deliveries"],
                utc_from_timestamp(doc["died_at"]),
                doc["reason"],
            )
            for doc in cursor
        ]

    def dead_letter_count(self):
        return self.dead.count_documents({})

    def requeue_dead_letter(self, message_id):
        oid = _object_id(message_id)
        doc = None if oid is None else self.dead.find_one_and_delete({"_id": oid})
        if doc is None:
            return False
        self.messages.insert_one({**self._message(doc["data"], 0), "_id": oid})
        return True

    def purge_dead_letters(self, message_ids=None):
        if message_ids is None:
            return self.dead.delete_many({}).deleted_count
        ids = [oid for oid in map(_object_id, message_ids) if oid is not None]
        return self.dead.delete_many({"_id": {"$in": ids}}).deleted_count

    # Slots --------------------------------------------------------------------------
    def acquire_slot(self, name, limit, holder, ttl):
        now = time.time()
        for index in range(limit):
            try:
                # Matches a free (expired) slot, or inserts a missing one; a live slot
                # makes the upsert collide on _id, which means "taken".
                self.slots.update_one(
                    {"_id": f"{name}:{index}", "expires_at": {"$lte": now}},
                    {"$set": {"name": name, "holder": holder, "expires_at": now + ttl}},
                    upsert=True,
                )
                return index
            except DuplicateKeyError:
                continue
        return None

    def extend_slot(self, name, index, holder, ttl):
        result = self.slots.update_one(
            {"_id": f"{name}:{index}", "holder": holder},
            {"$set": {"expires_at": time.time() + ttl}},
        )
        return result.matched_count == 1

    def release_slot(self, name, index, holder):
        result = self.slots.update_one(
            {"_id": f"{name}:{index}", "holder": holder}, {"$set": {"expires_at": 0.0}}
        )
        return result.matched_count == 1

    def slots_in_use(self, name):
        return self.slots.count_documents({"name": name, "expires_at": {"$gt": time.time()}})

    def flush_slots(self):
        self.slots.delete_many({})

