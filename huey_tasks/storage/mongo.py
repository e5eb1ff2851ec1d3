"""Huey storage on MongoDB, with at-least-once delivery (see ``base``): the messages
(queued, leased and scheduled) and the dead letters. Results, counters and provider slots
are in ``mongo_data``, which ``MongoStorage`` mixes in.

Every operation is one atomic MongoDB command where one exists, and only standard
commands are used (find_one_and_update/delete, update with upsert, createIndexes), so the
same code runs on a standalone server, a replica set or Atlas. Times are the workers'
clocks in epoch seconds, so keep the hosts NTP-synchronised.

Scheduled messages live in the messages collection itself, flagged ``scheduled`` and leased
until their eta, so ``claim`` cannot take them early. Becoming runnable therefore never
copies a message from one collection to another, and nothing can deliver it twice.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
import uuid

import pymongo
from bson import ObjectId
from bson.errors import InvalidId
from huey.storage import BaseStorage
from pymongo import ASCENDING, DESCENDING, MongoClient, ReadPreference, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.write_concern import WriteConcern

from .base import (
    DeadLetter,
    Delivery,
    LeasingStorageMixin,
    epoch_seconds,
    is_token,
    new_token,
    utc_from_timestamp,
)
from .mongo_data import MongoDataMixin

logger = logging.getLogger(__name__)

# The claim's sort, and the index that serves it. The sort's keys come first, so there is
# no in-memory SORT stage, and then the lease expiry, which is the claim query's range
# (Equality-Sort-Range). Messages leased to running tasks are then skipped on the index's
# keys and never fetched.
CLAIM_SORT = [("priority", DESCENDING), ("seq", ASCENDING), ("_id", ASCENDING)]
CLAIM_KEYS = [*CLAIM_SORT, ("lease_until", ASCENDING)]
CLAIM_INDEX = "claim_order_lease"
# Superseded claim indexes: one without _id (the claim sorted in memory), then one without
# lease_until.
LEGACY_CLAIM_INDEXES = ("priority_-1_seq_1", "claim_order")
# The order of the schedule is the eta (a scheduled message is leased until it), then the
# insertion.
SCHEDULE_SORT = [("lease_until", ASCENDING), ("_id", ASCENDING)]
# This also matches the messages written before the flag existed.
NOT_SCHEDULED = {"scheduled": {"$ne": True}}
# Seconds that a new storage waits for MongoDB before it starts without it.
STARTUP_TIMEOUT = 5.0

_clients: dict[tuple[int, str], MongoClient] = {}
_clients_lock = threading.Lock()


def shared_client(url: str) -> MongoClient:
    """One MongoClient per process and URL. A forked child opens its own."""
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


class MongoStorage(MongoDataMixin, LeasingStorageMixin, BaseStorage):
    """Messages (queued, leased, scheduled) and dead letters; results, counters and slots
    come from ``MongoDataMixin``.

    A message document has ``data``, ``priority``, ``seq`` (the FIFO order),
    ``lease_until`` (epoch seconds, where 0 means deliverable now, and a scheduled
    message's eta), ``deliveries``, ``token`` (the current claim's fencing token, or None)
    and ``scheduled``.
    """

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

        def collection(suffix: str):
            # This holds whatever the URI says (readPreference=secondary, w=0 or 1). A claim
            # read from a lagging secondary could hand out a message already claimed, and a
            # lease, token or slot acknowledged by one node only is lost in a failover.
            return db[f"{prefix}.{suffix}"].with_options(
                read_preference=ReadPreference.PRIMARY, write_concern=WriteConcern("majority")
            )

        self.messages = collection("messages")
        # The collection where releases from before scheduled messages moved into
        # `messages` kept them.
        self.legacy_schedule = collection("schedule")
        self.kv = collection("kv")
        self.counters = collection("counters")
        self.dead = collection("dead_letters")
        self.slots = collection("slots")
        self._set_up = False
        self._set_up_lock = threading.Lock()
        try:
            # The wait is bounded, so that a process starting while MongoDB is unreachable (the
            # web process, a liveness probe's manage.py) starts anyway, instead of waiting 30 s
            # per call.
            self.health_check(STARTUP_TIMEOUT)
        except PyMongoError as exc:
            logger.warning(
                "MongoDB does not answer (%s): the queue's indexes are set up at the first claim.",
                exc.__class__.__name__,
            )
        else:
            self.set_up()

    def set_up(self) -> None:
        """Create the indexes and adopt the old schedule's entries, once, before the first
        claim."""
        if self._set_up:
            return
        with self._set_up_lock:
            if not self._set_up:
                self.create_indexes()
                self.adopt_legacy_schedule()
                self._set_up = True

    def create_indexes(self) -> None:
        """Create the indexes. This is idempotent, because createIndexes does nothing for
        indexes that exist."""
        self.messages.create_index(CLAIM_KEYS, name=CLAIM_INDEX)
        self.messages.create_index([("lease_until", ASCENDING)])
        self.messages.create_index([("scheduled", ASCENDING), *SCHEDULE_SORT])
        self._drop_legacy_claim_index()
        self.dead.create_index([("died_at", DESCENDING)])
        self.slots.create_index([("name", ASCENDING), ("expires_at", ASCENDING)])

    def _drop_legacy_claim_index(self) -> None:
        # These are superseded by CLAIM_INDEX, and a planner could still pick one and fetch
        # leased messages.
        existing = self.messages.index_information()
        for name in LEGACY_CLAIM_INDEXES:
            if name in existing:
                try:
                    self.messages.drop_index(name)
                except OperationFailure:
                    pass  # Another process dropped it first.

    def close(self):
        # The client is shared by the process, so there is nothing per storage to release.
        return False

    # Queue --------------------------------------------------------------------------
    def _message(self, data: bytes, priority: float | None) -> dict:
        # ObjectId order is FIFO within a process, and `seq` (the time) orders across
        # processes.
        return {
            "data": bytes(data),
            "priority": priority or 0,
            "seq": time.time(),
            "lease_until": 0.0,
            "deliveries": 0,
            "token": None,
            "scheduled": False,
        }

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        self.messages.insert_one(self._message(data, priority))

    def enqueue_many(
        self,
        messages: list[bytes],
        priority: float | None = None,
        priorities: list[float] | None = None,
    ) -> None:
        if messages:
            priorities = priorities or [priority] * len(messages)
            self.messages.insert_many(
                [self._message(data, p) for data, p in zip(messages, priorities, strict=True)],
                ordered=True,
            )

    def claim_query(self, now: float) -> dict:
        """The filter that claim uses, exposed so that a test can explain it."""
        return {"lease_until": {"$lte": now}}

    def claim(self, lease_seconds: float | None = None) -> Delivery | None:
        self.set_up()
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        while True:
            now = time.time()
            token = new_token()
            # A due scheduled message is claimable too, and the claim ends its scheduled state.
            doc = self.messages.find_one_and_update(
                self.claim_query(now),
                {
                    "$set": {"lease_until": now + lease, "token": token, "scheduled": False},
                    "$inc": {"deliveries": 1},
                },
                sort=CLAIM_SORT,
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                return None
            if doc["deliveries"] <= self.max_deliveries:
                return Delivery(str(doc["_id"]), bytes(doc["data"]), doc["deliveries"], token)
            self._dead_lettered(self._bury(doc, token, now))

    def _bury(self, doc: dict, token: str, now: float) -> DeadLetter:
        # The upsert comes first and the delete second, so that a crash in between leaves a
        # duplicate, never a loss.
        letter = DeadLetter(
            str(doc["_id"]),
            bytes(doc["data"]),
            doc["deliveries"] - 1,
            utc_from_timestamp(now),
            self._burial_reason(),
            doc.get("priority", 0),
        )
        self.dead.replace_one(
            {"_id": doc["_id"]},
            {
                "data": doc["data"],
                "deliveries": letter.deliveries,
                "died_at": now,
                "reason": letter.reason,
                "priority": letter.priority,
            },
            upsert=True,
        )
        self.messages.delete_one({"_id": doc["_id"], "token": token})
        return letter

    def ack(self, message_id: str, token: str) -> bool:
        oid = _object_id(message_id)
        if oid is None or not is_token(token):
            return False
        return self.messages.delete_one({"_id": oid, "token": token}).deleted_count == 1

    def release(self, message_id: str, token: str, delay: float = 0.0) -> bool:
        oid = _object_id(message_id)
        if oid is None or not is_token(token):
            return False
        # It is held back for ``delay`` as a scheduled message due then, which
        # schedule_size counts.
        waiting = (
            {"lease_until": time.time() + delay, "scheduled": True}
            if delay > 0
            else {"lease_until": 0.0}
        )
        result = self.messages.update_one(
            {"_id": oid, "token": token},
            {"$set": {**waiting, "token": None}, "$inc": {"deliveries": -1}},
        )
        return result.matched_count == 1

    def extend_leases(self, leases: dict[str, str], lease_seconds: float | None = None) -> set[str]:
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        wanted = {
            oid: (message_id, token)
            for message_id, token in leases.items()
            if is_token(token) and (oid := _object_id(message_id)) is not None
        }
        kept: set[str] = set()
        if wanted:
            # Tokens are unique per claim, so the $in pair matches only the claims still held.
            held = {
                "_id": {"$in": list(wanted)},
                "token": {"$in": [token for _, token in wanted.values()]},
            }
            self.messages.update_many(held, {"$set": {"lease_until": time.time() + lease}})
            # A claim that still carries its token now was extended by the update above.
            for doc in self.messages.find(held, {"token": 1}):
                message_id, token = wanted[doc["_id"]]
                if doc["token"] == token:
                    kept.add(message_id)
        return set(leases) - kept

    def leased_count(self) -> int:
        return self.messages.count_documents({"lease_until": {"$gt": time.time()}, **NOT_SCHEDULED})

    def health_check(self, timeout: float = 2.0) -> None:
        # pymongo's timeout bounds server selection too, where the client's own default
        # waits 30 s for an unreachable server.
        with pymongo.timeout(timeout):
            self.messages.database.command("ping")

    def queue_size(self) -> int:
        return self.messages.count_documents(
            {"lease_until": {"$lte": time.time()}, **NOT_SCHEDULED}
        )

    def enqueued_items(self, limit: int | None = None) -> list[bytes]:
        cursor = self.messages.find(
            {"lease_until": {"$lte": time.time()}, **NOT_SCHEDULED}, {"data": 1}, sort=CLAIM_SORT
        )
        if limit:
            cursor = cursor.limit(limit)
        return [bytes(doc["data"]) for doc in cursor]

    def all_messages(self) -> list[bytes]:
        # One collection holds the queued, leased and scheduled messages. A plain scan visits
        # each document that exists throughout it once, however its lease changes meanwhile.
        data = [bytes(doc["data"]) for doc in self.messages.find({}, {"data": 1})]
        data += [bytes(doc["data"]) for doc in self.legacy_schedule.find({}, {"data": 1})]
        return data

    def flush_queue(self) -> None:
        self.messages.delete_many(NOT_SCHEDULED)

    # Schedule -----------------------------------------------------------------------
    def add_to_schedule(
        self, data: bytes, ts: datetime.datetime, priority: float | None = None
    ) -> None:
        eta = epoch_seconds(ts)
        self.messages.insert_one(self._scheduled_message(data, eta, priority))

    def _scheduled_message(self, data: bytes, eta: float, priority: float | None) -> dict:
        message = self._message(data, priority)
        # It is leased until its eta, so claim cannot take it before then. Once due, it
        # queues in the order it became runnable.
        message.update(lease_until=eta, seq=max(eta, message["seq"]), scheduled=True)
        return message

    def _due(self, ts: datetime.datetime) -> dict:
        return {"scheduled": True, "lease_until": {"$lte": epoch_seconds(ts)}}

    def read_schedule(self, ts: datetime.datetime) -> list[bytes]:
        # Huey's plain API removes and returns what is due. Each removal is one atomic
        # command, so concurrent readers (and claims) never share a message.
        due = []
        while doc := self.messages.find_one_and_delete(self._due(ts), sort=SCHEDULE_SORT):
            due.append(bytes(doc["data"]))
        return due

    def promote_due(self, ts: datetime.datetime) -> list[bytes]:
        self.set_up()
        # Clearing the flag only moves the message from the schedule's counts to the
        # queue's, because claim takes a due message either way. The tag tells this caller
        # which ones it flipped, so that one scheduler announces each.
        tag = uuid.uuid4().hex
        flipped = self.messages.update_many(
            self._due(ts), {"$set": {"scheduled": False, "promoted_by": tag}}
        )
        if not flipped.modified_count:
            return []
        cursor = self.messages.find({"promoted_by": tag}, {"data": 1}, sort=SCHEDULE_SORT)
        return [bytes(doc["data"]) for doc in cursor]

    def schedule_size(self) -> int:
        return self.messages.count_documents({"scheduled": True})

    def scheduled_items(self, limit: int | None = None) -> list[bytes]:
        cursor = self.messages.find({"scheduled": True}, {"data": 1}, sort=SCHEDULE_SORT)
        if limit:
            cursor = cursor.limit(limit)
        return [bytes(doc["data"]) for doc in cursor]

    def flush_schedule(self) -> None:
        self.messages.delete_many({"scheduled": True})
        self.legacy_schedule.delete_many({})

    def adopt_legacy_schedule(self) -> int:
        """Move the entries of the old schedule collection into ``messages``, and return
        how many moved.

        One adopter first marks each entry (atomically), then inserts it under its own _id,
        then deletes it. A crash after the mark leaves the entry marked in the old
        collection and never inserted twice. It is logged for an operator, and at worst it
        is still there.
        """
        adopted = 0
        stranded = self.legacy_schedule.count_documents({"adopted_at": {"$exists": True}})
        if stranded:
            logger.warning(
                "%d entries of %s were half-moved by a crashed process; check them against"
                " %s and delete them by hand.",
                stranded,
                self.legacy_schedule.name,
                self.messages.name,
            )
        while doc := self.legacy_schedule.find_one_and_update(
            {"adopted_at": {"$exists": False}},
            {"$set": {"adopted_at": time.time()}},
            sort=[("ts", ASCENDING), ("_id", ASCENDING)],
        ):
            message = self._scheduled_message(doc["data"], doc["ts"], doc.get("priority"))
            try:
                self.messages.insert_one({**message, "_id": doc["_id"]})
            except DuplicateKeyError:
                pass  # A promoter of an old release already copied it.
            self.legacy_schedule.delete_one({"_id": doc["_id"]})
            adopted += 1
        return adopted

    # Dead letters -------------------------------------------------------------------
    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
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
                doc.get("priority", 0),
            )
            for doc in cursor
        ]

    def dead_letter_count(self) -> int:
        return self.dead.count_documents({})

    def requeue_dead_letter(self, message_id: str) -> bool:
        oid = _object_id(message_id)
        doc = None if oid is None else self.dead.find_one({"_id": oid})
        if doc is None:
            return False
        # The insert comes first and the delete second. A crash in between leaves the dead
        # letter too, and requeueing it again collides on _id instead of queueing a second
        # copy.
        message = self._message(doc["data"], doc.get("priority", 0))
        try:
            self.messages.insert_one({**message, "_id": oid})
        except DuplicateKeyError:
            # It was queued already by an earlier (or concurrent) requeue, or a burial
            # crashed before its delete and that copy needs the fresh count it would have
            # had.
            self.messages.update_one(
                {"_id": oid, "deliveries": {"$gt": self.max_deliveries}},
                {"$set": {"deliveries": 0}},
            )
        # The call that removes the dead letter is the one that requeued it.
        return self.dead.delete_one({"_id": oid}).deleted_count == 1

    def purge_dead_letters(self, message_ids: list[str] | None = None) -> int:
        if message_ids is None:
            return self.dead.delete_many({}).deleted_count
        ids = [oid for oid in map(_object_id, message_ids) if oid is not None]
        return self.dead.delete_many({"_id": {"$in": ids}}).deleted_count
