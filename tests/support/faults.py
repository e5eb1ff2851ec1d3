"""Fault injection: a queue storage and a database connection that fail chosen calls.

Both draw from a seeded random generator. Threads draw in the order they run, so a seed
gives the same rate and mix of faults each run, not the same calls failing. A
storage failure strikes before the call (nothing happened) or after it (it happened, but
the caller never heard back), the two ways a network or lock error looks to a client.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator

from django.db import OperationalError
from django.db.backends.signals import connection_created
from pymongo.errors import AutoReconnect

STORAGE_CALLS = (
    "enqueue",
    "enqueue_many",
    "claim",
    "ack",
    "release",
    "extend_leases",
    "add_to_schedule",
    "promote_due",
    "put_data",
    "peek_many",
    "acquire_slot",
    "extend_slot",
    "release_slot",
)


class FaultyStorage:
    """Wraps a queue storage; each call in ``calls`` fails with probability ``rate``."""

    def __init__(self, inner, seed: int, rate: float, calls=STORAGE_CALLS):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "rng", random.Random(seed))
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "calls", set(calls))
        object.__setattr__(self, "active", True)
        object.__setattr__(self, "lock", threading.Lock())
        object.__setattr__(self, "injected", Counter())

    def _error(self, name: str) -> Exception:
        if hasattr(self.inner, "client"):
            return AutoReconnect(f"injected: connection lost during {name}")
        return sqlite3.OperationalError(f"injected: database is locked during {name}")

    def _roll(self) -> tuple[bool, bool]:
        with self.lock:
            return self.rng.random() < self.rate, self.rng.random() < 0.5

    def __getattr__(self, name):
        value = getattr(self.inner, name)
        if name not in self.calls or not callable(value):
            return value

        def call(*args, **kwargs):
            if not self.active:
                return value(*args, **kwargs)
            fail, after = self._roll()
            if not fail:
                return value(*args, **kwargs)
            self.injected[name] += 1
            if after:
                value(*args, **kwargs)
            raise self._error(name)

        return call

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)


class FaultyDatabase:
    """Fails writes to the pipeline's tables with probability ``rate`` on every connection
    opened while it is installed (Django's execute_wrapper hook)."""

    TABLES = ("generation_generationjob", "generation_generationrequest", "cms_karasuimage")

    def __init__(self, seed: int, rate: float):
        self.rng = random.Random(seed)
        self.rate = rate
        self.active = True
        self.lock = threading.Lock()
        self.injected = 0

    def __call__(self, execute, sql, params, many, context):
        statement = sql.lstrip().upper()
        is_write = statement.startswith(("UPDATE", "INSERT"))
        if self.active and is_write and any(t.upper() in statement for t in self.TABLES):
            with self.lock:
                fail = self.rng.random() < self.rate
                if fail:
                    self.injected += 1
            if fail:
                raise OperationalError("injected: database is locked")
        return execute(sql, params, many, context)

    def _install(self, sender, connection, **kwargs) -> None:
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)

    @contextlib.contextmanager
    def installed(self) -> Iterator[FaultyDatabase]:
        from django.db import connections

        connection_created.connect(self._install)
        for connection in connections.all(initialized_only=True):
            self._install(None, connection)
        try:
            yield self
        finally:
            self.active = False
            connection_created.disconnect(self._install)
