"""MongoStorage's keyed records beside its messages: results and keys, counters and slots.

The key/value collection holds Huey's results and the pipeline's locks and revocations,
some with a TTL; the counters collection holds Huey's counters; the slots collection holds
each provider's concurrency slots, one lease-based document per slot. Each method is one
atomic MongoDB command, as in ``mongo``, where ``MongoStorage`` mixes this in.
"""

from __future__ import annotations

import time

from huey.constants import EmptyData
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError


def _live(now: float) -> dict:
    return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


class MongoDataMixin:
    """Huey's key/value store and counters, and the provider slots, on MongoDB.

    The class that mixes this in provides the ``kv``, ``counters`` and ``slots``
    collections (``MongoStorage`` opens them with majority writes and primary reads).
    """

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
            # Only an expired key may be taken over, and the filter makes that race-free.
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

    # Slots --------------------------------------------------------------------------
    def acquire_slot(self, name, limit, holder, ttl):
        now = time.time()
        for index in range(limit):
            try:
                # This matches a free (expired) slot or inserts a missing one. A live slot
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
        # This works only while this holder's document exists. It is never an upsert, so a
        # released (deleted) slot or one that another holder took cannot come back.
        result = self.slots.update_one(
            {"_id": f"{name}:{index}", "holder": holder},
            {"$set": {"expires_at": time.time() + ttl}},
        )
        return result.matched_count == 1

    def release_slot(self, name, index, holder):
        # The slot is deleted, not merely expired, so that a heartbeat that read it as held
        # before this release finds no document of this holder to extend (see
        # extend_slot).
        result = self.slots.delete_one({"_id": f"{name}:{index}", "holder": holder})
        return result.deleted_count == 1

    def slots_in_use(self, name):
        return self.slots.count_documents({"name": name, "expires_at": {"$gt": time.time()}})

    def flush_slots(self):
        self.slots.delete_many({})
