"""Django's SQLite backend, with writers taking turns instead of sleeping.

SQLite lets one connection write at a time. One that finds the database busy sleeps in
SQLite's busy handler (1, 2, 5, 10 … 100 ms between tries) and usually wakes long after the
write lock came free. With 20 worker threads filing images, that sleeping, not the writing,
set the pace; profiling found it took two thirds of their time. Here a writer first takes
its process's turn, a Python lock that passes from thread to thread at once, then the
file's turn between processes, a ``flock`` on ``<database>-turn`` that it looks for every
0.2 ms. SQLite's busy handler is left for writers that do not take turns (another program,
or a file system without ``flock``). Reads never wait (WAL).

A write transaction (``BEGIN IMMEDIATE``, see ``SQLITE_OPTIONS``) holds the turn until it
commits, rolls back or its connection closes; a single write outside a transaction holds it
until SQLite has finished it (an ``INSERT … RETURNING`` once its rows are read). Waiting
longer than the connection's ``timeout`` raises "database is locked", as SQLite would.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

from django.db import OperationalError
from django.db.backends.sqlite3 import base

logger = logging.getLogger(__name__)

WRITES = ("insert", "update", "delete", "replace", "begin")
TURN_POLL = 0.0002  # seconds between looks for the file's turn held by another process

_guard = threading.Lock()
_process_turns: dict[str, threading.Lock] = {}
_turn_files: dict[str, int | None] = {}


def _forget_turns() -> None:
    # A forked child starts with no turn held and a file descriptor of its own.
    global _guard
    _guard = threading.Lock()
    _process_turns.clear()
    _turn_files.clear()


os.register_at_fork(after_in_child=_forget_turns)


def process_turn(name: str) -> threading.Lock:
    """This process's write turn for one database."""
    with _guard:
        return _process_turns.setdefault(name, threading.Lock())


def turn_file(name: str) -> int | None:
    """The descriptor whose ``flock`` is the database file's turn; None for an in-memory
    database or where the file cannot be used; SQLite's busy handler then arbitrates."""
    with _guard:
        if name not in _turn_files:
            _turn_files[name] = _open_turn_file(name)
        return _turn_files[name]


def _open_turn_file(name: str) -> int | None:
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    path = f"{os.path.abspath(name)}-turn"
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # does this file system support it?
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        return fd  # held by another process right now, so flock works
    except OSError as exc:
        logger.warning("SQLite write turns between processes are off: %s: %s", path, exc)
        return None
    return fd


def _take_file_turn(fd: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(TURN_POLL)


class WriterCursor(base.SQLiteCursorWrapper):
    wrapper: DatabaseWrapper
    _statement_turn = False  # this cursor's single write still holds the turn

    def execute(self, query, params=None):
        if self.connection.in_transaction or not _is_write(query):
            return super().execute(query, params)
        self.wrapper.take_turn()
        try:
            result = super().execute(query, params)
        except BaseException:
            self.wrapper.give_turn()
            raise
        if query.lstrip()[:5].lower() != "begin":  # a transaction keeps it to its end
            self._statement_turn = True
            self._statement_done()
        return result

    def executemany(self, query, param_list):
        if self.connection.in_transaction:
            return super().executemany(query, param_list)
        self.wrapper.take_turn()
        try:
            return super().executemany(query, param_list)
        finally:
            self.wrapper.give_turn()

    def _statement_done(self) -> None:
        """Give a single write's turn back once SQLite has finished the statement: at once,
        or for ``INSERT … RETURNING`` once its rows have been read."""
        if self._statement_turn and not self.connection.in_transaction:
            self._statement_turn = False
            self.wrapper.give_turn()

    def fetchone(self):
        try:
            return super().fetchone()
        finally:
            self._statement_done()

    def fetchmany(self, *args, **kwargs):
        try:
            return super().fetchmany(*args, **kwargs)
        finally:
            self._statement_done()

    def fetchall(self):
        try:
            return super().fetchall()
        finally:
            self._statement_done()

    def close(self):
        try:
            return super().close()
        finally:
            if self._statement_turn:
                self._statement_turn = False
                self.wrapper.give_turn()


def _is_write(query: str) -> bool:
    return query.lstrip()[:7].lower().startswith(WRITES)


class DatabaseWrapper(base.DatabaseWrapper):
    _turn: threading.Lock | None = None
    _turn_fd: int | None = None
    _has_turn = False

    def take_turn(self) -> None:
        if self._has_turn:
            return  # e.g. a write while an INSERT … RETURNING is still being read
        # Looked up each time, because the test runner renames the database after connecting.
        name = str(self.settings_dict["NAME"])
        timeout = float(self.settings_dict.get("OPTIONS", {}).get("timeout", 5))
        deadline = time.monotonic() + timeout
        turn, fd = process_turn(name), turn_file(name)
        if not turn.acquire(timeout=timeout):
            raise OperationalError("database is locked")
        try:
            if fd is not None and not _take_file_turn(fd, deadline):
                raise OperationalError("database is locked")
        except BaseException:
            turn.release()
            raise
        self._turn, self._turn_fd, self._has_turn = turn, fd, True

    def give_turn(self) -> None:
        if not self._has_turn:
            return
        self._has_turn = False
        try:
            if self._turn_fd is not None:
                fcntl.flock(self._turn_fd, fcntl.LOCK_UN)
        finally:
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
