"""The embedded queue: Huey's SqliteStorage with leases and dead letters, and the schema.

This module holds the messages (queued, leased and scheduled) and the dead letters, and
creates every table. TTL keys, results, counters and provider slots are in
``sqlite_data``, which ``LeasingSqliteStorage`` mixes in.
"""

from __future__ import annotations

import datetime
import sqlite3
import time
from pathlib import Path

from huey.storage import SqliteStorage

from .base import (
    DeadLetter,
    Delivery,
    LeasingStorageMixin,
    epoch_seconds,
    is_token,
    new_token,
    utc_from_timestamp,
)
from .sqlite_data import SqliteDataMixin, placeholders

# The tables have their own names, so that a file once used by Huey's stock SqliteStorage
# cannot clash.
DDL = [
    "create table if not exists karasu_message ("
    " id integer primary key autoincrement, queue text not null, data blob not null,"
    " priority real not null default 0, lease_until real not null default 0,"
    " deliveries integer not null default 0, enqueued_at real not null, token text)",
    "create index if not exists karasu_message_next on karasu_message (queue, priority desc, id)",
    "create table if not exists karasu_schedule ("
    " id integer primary key, queue text not null, data blob not null,"
    " timestamp real not null, priority real not null default 0)",
    "create index if not exists karasu_schedule_due on karasu_schedule (queue, timestamp)",
    "create table if not exists karasu_kv ("
    " queue text not null, key text not null, value blob not null,"
    " expires_at real, created_at real not null, primary key (queue, key))",
    "create table if not exists karasu_counter ("
    " queue text not null, key text not null, value integer not null default 0,"
    " primary key (queue, key))",
    "create table if not exists karasu_dead_letter ("
    " id integer primary key, queue text not null, data blob not null,"
    " deliveries integer not null, died_at real not null, reason text not null,"
    " priority real not null default 0)",
    "create table if not exists karasu_slot ("
    " queue text not null, name text not null, idx integer not null,"
    " holder text not null, expires_at real not null, primary key (queue, name, idx))",
]

# Columns added after the first release, as (table, column, declaration). A queue file
# created by the older DDL gets them in place when it is opened.
UPGRADES = [
    ("karasu_message", "token", "text"),
    ("karasu_schedule", "priority", "real not null default 0"),
    ("karasu_dead_letter", "priority", "real not null default 0"),
]

# Heartbeat extensions per statement. Each takes two bound parameters, which keeps a
# statement well under SQLite's limit.
EXTEND_CHUNK = 400


def _int_id(message_id: str) -> int | None:
    # An id that this storage never issued matches nothing, because None never equals
    # anything in SQL.
    try:
        return int(message_id)
    except (TypeError, ValueError):
        return None


class LeasingSqliteStorage(SqliteDataMixin, LeasingStorageMixin, SqliteStorage):
    """SQLite queue storage with at-least-once delivery (see ``base``)."""

    ddl = DDL
    begin_sql = "begin immediate"

    def __init__(
        self,
        name: str = "huey",
        filename: str = "huey.db",
        lease_seconds: float | None = None,
        max_deliveries: int | None = None,
        **kwargs,
    ):
        self.configure_leases(lease_seconds, max_deliveries)
        kwargs.setdefault("timeout", 30)
        super().__init__(name, filename, **kwargs)

    def _create_connection(self):
        conn = super()._create_connection()
        # This is WAL's recommended durability. A commit survives the process being killed
        # (the case that leases exist for), and only an OS crash may lose the last few
        # commits.
        conn.execute("pragma synchronous=NORMAL")
        return conn

    def initialize_schema(self):
        # One write transaction, so that two processes opening an old file at once cannot
        # both add the same column.
        with self.db(commit=True, close=True) as curs:
            for sql in self.ddl:
                curs.execute(sql)
            self._upgrade_columns(curs)

    def _upgrade_columns(self, curs) -> None:
        for table, column, declaration in UPGRADES:
            curs.execute(f"pragma table_info({table})")
            if column not in {row[1] for row in curs.fetchall()}:
                curs.execute(f"alter table {table} add column {column} {declaration}")

    # Queue --------------------------------------------------------------------------
    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        self.sql(
            "insert into karasu_message (queue, data, priority, enqueued_at) values (?, ?, ?, ?)",
            (self.name, self.to_blob(data), priority or 0, time.time()),
            commit=True,
        )

    def enqueue_many(
        self,
        messages: list[bytes],
        priority: float | None = None,
        priorities: list[float] | None = None,
    ) -> None:
        now = time.time()
        priorities = priorities or [priority or 0] * len(messages)
        with self.db(commit=True) as curs:
            curs.executemany(
                "insert into karasu_message (queue, data, priority, enqueued_at)"
                " values (?, ?, ?, ?)",
                [
                    (self.name, self.to_blob(data), p or 0, now)
                    for data, p in zip(messages, priorities, strict=True)
                ],
            )

    def claim(self, lease_seconds: float | None = None) -> Delivery | None:
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        while True:
            now = time.time()
            # A quick check without the write lock comes first, as in Huey's own dequeue.
            if not self.sql(
                "select 1 from karasu_message where queue = ? and lease_until <= ? limit 1",
                (self.name, now),
                results=True,
            ):
                return None
            token = new_token()
            # One statement picks and leases the next message, so it is atomic without
            # BEGIN.
            rows = self.sql(
                "update karasu_message set lease_until = ?, deliveries = deliveries + 1,"
                " token = ? where id = (select id from karasu_message where queue = ?"
                " and lease_until <= ? order by priority desc, id limit 1)"
                " returning id, data, deliveries",
                (now + lease, token, self.name, now),
                results=True,
            )
            if not rows:
                continue  # Another worker took it between the check and the update.
            message_id, data, deliveries = rows[0]
            if deliveries <= self.max_deliveries:
                return Delivery(str(message_id), bytes(data), deliveries, token)
            letter = self._bury(message_id, token, now)
            if letter is not None:
                self._dead_lettered(letter)

    def _bury(self, message_id: int, token: str, now: float) -> DeadLetter | None:
        """Move the message just claimed with ``token`` to the dead letters, in one step."""
        with self.db(commit=True) as curs:
            curs.execute(
                "delete from karasu_message where id = ? and token = ?"
                " returning queue, data, deliveries - 1, priority",
                (message_id, token),
            )
            row = curs.fetchone()
            if row is None:
                return None
            queue, data, deliveries, priority = row
            reason = self._burial_reason()
            curs.execute(
                "insert into karasu_dead_letter"
                " (id, queue, data, deliveries, died_at, reason, priority)"
                " values (?, ?, ?, ?, ?, ?, ?)",
                (message_id, queue, data, deliveries, now, reason, priority),
            )
        return DeadLetter(
            str(message_id), bytes(data), deliveries, utc_from_timestamp(now), reason, priority
        )

    def ack(self, message_id: str, token: str) -> bool:
        if not is_token(token):
            return False
        with self.db(commit=True) as curs:
            curs.execute(
                "delete from karasu_message where id = ? and token = ?",
                (_int_id(message_id), token),
            )
            return curs.rowcount == 1

    def release(self, message_id: str, token: str, delay: float = 0.0) -> bool:
        if not is_token(token):
            return False
        # Without a token, a lease_until in the future only holds the message back.
        until = time.time() + delay if delay > 0 else 0
        with self.db(commit=True) as curs:
            curs.execute(
                "update karasu_message set lease_until = ?, token = null,"
                " deliveries = max(deliveries - 1, 0) where id = ? and token = ?",
                (until, _int_id(message_id), token),
            )
            return curs.rowcount == 1

    def extend_leases(self, leases: dict[str, str], lease_seconds: float | None = None) -> set[str]:
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        pairs = [
            (_int_id(message_id), token) for message_id, token in leases.items() if is_token(token)
        ]
        kept: set[tuple[int, str]] = set()
        with self.db(commit=True) as curs:
            deadline = time.time() + lease
            for start in range(0, len(pairs), EXTEND_CHUNK):
                chunk = pairs[start : start + EXTEND_CHUNK]
                values = ",".join("(?, ?)" for _ in chunk)
                curs.execute(
                    "update karasu_message set lease_until = ? where queue = ?"
                    f" and (id, token) in (values {values}) returning id, token",
                    [deadline, self.name, *(v for pair in chunk for v in pair)],
                )
                kept.update(curs.fetchall())
        return {
            message_id
            for message_id, token in leases.items()
            if (_int_id(message_id), token) not in kept
        }

    def leased_count(self) -> int:
        return self.sql(
            "select count(*) from karasu_message where queue = ? and lease_until > ?"
            " and token is not null",
            (self.name, time.time()),
            results=True,
        )[0][0]

    def health_check(self, timeout: float = 2.0) -> None:
        # The probe has a connection of its own, because the storage's connections wait up
        # to 30 s for a lock. It is read-only, so that a missing queue file is an error here
        # instead of being created empty.
        uri = f"{Path(self.filename).resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout)
        try:
            conn.execute("select count(*) from karasu_message where 0").fetchone()
        finally:
            conn.close()

    def queue_size(self) -> int:
        return self.sql(
            "select count(*) from karasu_message where queue = ? and lease_until <= ?",
            (self.name, time.time()),
            results=True,
        )[0][0]

    def enqueued_items(self, limit: int | None = None) -> list[bytes]:
        sql = (
            "select data from karasu_message where queue = ? and lease_until <= ?"
            " order by priority desc, id"
        )
        params: tuple = (self.name, time.time())
        if limit is not None:
            sql += " limit ?"
            params += (limit,)
        return [bytes(data) for (data,) in self.sql(sql, params, results=True)]

    def all_messages(self) -> list[bytes]:
        # One statement reads both tables in one snapshot, so that a message promoted
        # meanwhile is seen exactly once.
        rows = self.sql(
            "select data from karasu_message where queue = ?"
            " union all select data from karasu_schedule where queue = ?",
            (self.name, self.name),
            results=True,
        )
        return [bytes(data) for (data,) in rows]

    def flush_queue(self) -> None:
        self.sql("delete from karasu_message where queue = ?", (self.name,), commit=True)

    # Schedule -----------------------------------------------------------------------
    def add_to_schedule(
        self, data: bytes, ts: datetime.datetime, priority: float | None = None
    ) -> None:
        self.sql(
            "insert into karasu_schedule (queue, data, timestamp, priority) values (?, ?, ?, ?)",
            (self.name, self.to_blob(data), epoch_seconds(ts), priority or 0),
            commit=True,
        )

    def _take_due(self, curs, ts: datetime.datetime) -> list[tuple]:
        curs.execute(
            "delete from karasu_schedule where queue = ? and timestamp <= ?"
            " returning timestamp, id, data, priority",
            (self.name, epoch_seconds(ts)),
        )
        return sorted(curs.fetchall())

    def read_schedule(self, ts: datetime.datetime) -> list[bytes]:
        with self.db(commit=True) as curs:
            return [bytes(data) for _, _, data, _ in self._take_due(curs, ts)]

    def promote_due(self, ts: datetime.datetime) -> list[bytes]:
        # Delete from the schedule and insert into the queue in one transaction.
        with self.db(commit=True) as curs:
            due = self._take_due(curs, ts)
            now = time.time()
            curs.executemany(
                "insert into karasu_message (queue, data, priority, enqueued_at)"
                " values (?, ?, ?, ?)",
                [(self.name, data, priority, now) for _, _, data, priority in due],
            )
            return [bytes(data) for _, _, data, _ in due]

    def schedule_size(self) -> int:
        # Messages handed back with a delay wait in the queue table, without a token.
        return self.sql(
            "select (select count(*) from karasu_schedule where queue = ?)"
            " + (select count(*) from karasu_message where queue = ? and token is null"
            " and lease_until > ?)",
            (self.name, self.name, time.time()),
            results=True,
        )[0][0]

    def scheduled_items(self, limit: int | None = None) -> list[bytes]:
        sql = "select data from karasu_schedule where queue = ? order by timestamp, id"
        params: tuple = (self.name,)
        if limit is not None:
            sql += " limit ?"
            params += (limit,)
        return [bytes(data) for (data,) in self.sql(sql, params, results=True)]

    def flush_schedule(self) -> None:
        self.sql("delete from karasu_schedule where queue = ?", (self.name,), commit=True)

    # Dead letters -------------------------------------------------------------------
    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        sql = (
            "select id, data, deliveries, died_at, reason, priority from karasu_dead_letter"
            " where queue = ? order by died_at desc, id desc"
        )
        params: tuple = (self.name,)
        if limit is not None:
            sql += " limit ?"
            params += (limit,)
        return [
            DeadLetter(
                str(i), bytes(data), deliveries, utc_from_timestamp(died_at), reason, priority
            )
            for i, data, deliveries, died_at, reason, priority in self.sql(
                sql, params, results=True
            )
        ]

    def dead_letter_count(self) -> int:
        return self.sql(
            "select count(*) from karasu_dead_letter where queue = ?", (self.name,), results=True
        )[0][0]

    def requeue_dead_letter(self, message_id: str) -> bool:
        with self.db(commit=True) as curs:
            curs.execute(
                "delete from karasu_dead_letter where queue = ? and id = ?"
                " returning data, priority",
                (self.name, _int_id(message_id)),
            )
            row = curs.fetchone()
            if row is None:
                return False
            curs.execute(
                "insert into karasu_message (queue, data, priority, enqueued_at)"
                " values (?, ?, ?, ?)",
                (self.name, row[0], row[1], time.time()),
            )
            return True

    def purge_dead_letters(self, message_ids: list[str] | None = None) -> int:
        with self.db(commit=True) as curs:
            if message_ids is None:
                curs.execute("delete from karasu_dead_letter where queue = ?", (self.name,))
            else:
                ids = [_int_id(i) for i in message_ids]
                curs.execute(
                    "delete from karasu_dead_letter where queue = ?"
                    f" and id in ({placeholders(ids)})",
                    (self.name, *ids),
                )
            return curs.rowcount
