"""LeasingSqliteStorage's keyed records beside its messages: results and keys, counters and
slots.

The rows live in the karasu_kv, karasu_counter and karasu_slot tables, which ``sqlite``
creates with the rest of the schema; every row carries its queue's name. Each method is one
statement or one write transaction, as in ``sqlite``, where ``LeasingSqliteStorage`` mixes
this in.
"""

from __future__ import annotations

import time

from huey.constants import EmptyData

LIVE_KEY = "(expires_at is null or expires_at > ?)"


def placeholders(values) -> str:
    return ",".join("?" * len(values))


class SqliteDataMixin:
    """Huey's key/value store (results, locks, revocations) and counters, and the provider
    slots, in the queue's SQLite file.

    The class that mixes this in is a Huey ``SqliteStorage``: it provides ``name``, ``sql``,
    ``db`` and ``to_blob``.
    """

    # Key/value store (results, locks, revocations) -----------------------------------
    def put_data(self, key, value, is_result=False):
        self.sql(
            "insert or replace into karasu_kv (queue, key, value, expires_at, created_at)"
            " values (?, ?, ?, null, ?)",
            (self.name, key, self.to_blob(value), time.time()),
            commit=True,
        )

    def peek_data(self, key):
        rows = self.sql(
            f"select value from karasu_kv where queue = ? and key = ? and {LIVE_KEY}",
            (self.name, key, time.time()),
            results=True,
        )
        return bytes(rows[0][0]) if rows else EmptyData

    def peek_many(self, keys):
        if not keys:
            return {}
        rows = self.sql(
            f"select key, value from karasu_kv where queue = ?"
            f" and key in ({placeholders(keys)}) and {LIVE_KEY}",
            (self.name, *keys, time.time()),
            results=True,
        )
        return {key: bytes(value) for key, value in rows}

    def pop_data(self, key):
        with self.db(commit=True) as curs:
            curs.execute(
                f"delete from karasu_kv where queue = ? and key = ? and {LIVE_KEY} returning value",
                (self.name, key, time.time()),
            )
            row = curs.fetchone()
            return bytes(row[0]) if row else EmptyData

    def has_data_for_key(self, key):
        return bool(
            self.sql(
                f"select 1 from karasu_kv where queue = ? and key = ? and {LIVE_KEY}",
                (self.name, key, time.time()),
                results=True,
            )
        )

    def put_if_empty(self, key, value, ttl=None):
        now = time.time()
        expires_at = None if ttl is None else now + ttl
        with self.db(commit=True) as curs:
            # Only an expired key may be overwritten, and a live one wins.
            curs.execute(
                "insert into karasu_kv (queue, key, value, expires_at, created_at)"
                " values (?, ?, ?, ?, ?) on conflict (queue, key) do update set"
                " value = excluded.value, expires_at = excluded.expires_at,"
                " created_at = excluded.created_at"
                " where karasu_kv.expires_at is not null and karasu_kv.expires_at <= ?",
                (self.name, key, self.to_blob(value), expires_at, now, now),
            )
            return curs.rowcount == 1

    def result_store_size(self):
        return self.sql(
            f"select count(*) from karasu_kv where queue = ? and {LIVE_KEY}",
            (self.name, time.time()),
            results=True,
        )[0][0]

    def result_items(self):
        rows = self.sql(
            f"select key, value from karasu_kv where queue = ? and {LIVE_KEY}",
            (self.name, time.time()),
            results=True,
        )
        return {key: bytes(value) for key, value in rows}

    def flush_results(self):
        self.sql("delete from karasu_kv where queue = ?", (self.name,), commit=True)

    def purge_results(self, older_than: float) -> int:
        """Delete results and expired keys written more than ``older_than`` seconds ago."""
        now = time.time()
        with self.db(commit=True) as curs:
            curs.execute(
                "delete from karasu_kv where queue = ? and (created_at < ?"
                " or (expires_at is not null and expires_at <= ?))",
                (self.name, now - older_than, now),
            )
            return curs.rowcount

    # Counters -----------------------------------------------------------------------
    def incr(self, key, amount=1):
        with self.db(commit=True) as curs:
            curs.execute(
                "insert into karasu_counter (queue, key, value) values (?, ?, ?)"
                " on conflict (queue, key) do update set value = value + excluded.value"
                " returning value",
                (self.name, key, amount),
            )
            return curs.fetchone()[0]

    def delete_counter(self, key):
        self.sql("delete from karasu_counter where queue = ? and key = ?", (self.name, key), True)

    def flush_counters(self):
        self.sql("delete from karasu_counter where queue = ?", (self.name,), commit=True)

    # Slots --------------------------------------------------------------------------
    def acquire_slot(self, name, limit, holder, ttl):
        now = time.time()
        with self.db(commit=True) as curs:
            curs.execute(
                "select idx from karasu_slot where queue = ? and name = ? and expires_at > ?",
                (self.name, name, now),
            )
            taken = {idx for (idx,) in curs.fetchall()}
            free = next((i for i in range(limit) if i not in taken), None)
            if free is None:
                return None
            curs.execute(
                "insert or replace into karasu_slot (queue, name, idx, holder, expires_at)"
                " values (?, ?, ?, ?, ?)",
                (self.name, name, free, holder, now + ttl),
            )
            return free

    def extend_slot(self, name, index, holder, ttl):
        with self.db(commit=True) as curs:
            curs.execute(
                "update karasu_slot set expires_at = ?"
                " where queue = ? and name = ? and idx = ? and holder = ?",
                (time.time() + ttl, self.name, name, index, holder),
            )
            return curs.rowcount == 1

    def release_slot(self, name, index, holder):
        with self.db(commit=True) as curs:
            curs.execute(
                "delete from karasu_slot where queue = ? and name = ? and idx = ? and holder = ?",
                (self.name, name, index, holder),
            )
            return curs.rowcount == 1

    def slots_in_use(self, name):
        return self.sql(
            "select count(*) from karasu_slot where queue = ? and name = ? and expires_at > ?",
            (self.name, name, time.time()),
            results=True,
        )[0][0]

    def flush_slots(self):
        self.sql("delete from karasu_slot where queue = ?", (self.name,), commit=True)
