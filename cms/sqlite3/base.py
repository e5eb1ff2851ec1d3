"""Django's SQLite backend, with the threads of a process taking turns to write.

SQLite lets one connection write at a time. One that finds the database busy sleeps in
SQLite's busy handler (1, 2, 5, 10 … 100 ms between tries) and usually wakes long after the
write lock came free: with 20 worker threads filing images, that sleeping, not the writing,
set the pace (two thirds of their time, profiled). Here the threads of one process queue
for the write lock on a Python lock, which passes it on at once; SQLite's busy handler only
arbitrates between processes. Reads never wait (WAL).

A write transaction (``BEGIN IMMEDIATE``, see ``SQLITE_OPTIONS``) holds the turn until it
commits, rolls back or its connection closes; a single write outside a transaction holds it
for that statement. Waiting longer than the connection's ``timeout`` raises "database is
locked", as SQLite would.
"""

from __future__ import annotations

import threading

from django.db import OperationalError
from django.db.backends.sqlite3 import base

WRITES = ("insert", "update", "delete", "replace")

_turns: dict[str, threading.Lock] = {}
_turns_guard = threading.Lock()


def write_turn(name: str) -> threading.Lock:
    """The process-wide write lock of one database file."""
    with _turns_guard:
        return _turns.setdefault(name, threading.Lock())


class WriterCursor(base.SQLiteCursorWrapper):
    wrapper: DatabaseWrapper

    def execute(self, query, params=None):
        if self.connection.in_transaction or not _is_write(query):
            return super().execute(query, params)
        if query.lstrip()[:5].upper() == "BEGIN":
            self.wrapper.take_turn()  # until commit or rollback
            try:
                return super().execute(query, params)
            except BaseException:
                self.wrapper.give_turn()
                raise
        self.wrapper.take_turn()
        try:
            return super().execute(query, params)
        finally:
            self.wrapper.give_turn()

    def executemany(self, query, param_list):
        if self.connection.in_transaction:
            return super().executemany(query, param_list)
        self.wrapper.take_turn()
        try:
            return super().executemany(query, param_list)
        finally:
            self.wrapper.give_turn()


def _is_write(query: str) -> bool:
    head = query.lstrip()[:7].lower()
    return head.startswith(WRITES) or head.startswith("begin")


class DatabaseWrapper(base.DatabaseWrapper):
    _turn: threading.Lock | None = None
    _has_turn = False

    def take_turn(self) -> None:
        # Looked up each time: the test runner renames the database after connecting.
        turn = write_turn(str(self.settings_dict["NAME"]))
        timeout = float(self.settings_dict.get("OPTIONS", {}).get("timeout", 5))
        if not turn.acquire(timeout=timeout):
            raise OperationalError("database is locked")
        self._turn, self._has_turn = turn, True

    def give_turn(self) -> None:
        if self._has_turn:
            self._has_turn = False
            self._turn.release()

    def create_cursor(self, name=None):
        cursor = self.connection.cursor(factory=WriterCursor)
        cursor.wrapper = self
        return cursor

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self.give_turn()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self.give_turn()

    def _close(self):
        try:
            return super()._close()
        finally:
            self.give_turn()
