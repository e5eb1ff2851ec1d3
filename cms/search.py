"""The site's search backend: Wagtail's database backend, with PostgreSQL's index writes
taken in turn and Chinese, Japanese and Korean words found inside their sentences.

Each index write on PostgreSQL ends by renormalising every entry still at the default
title norm. Two workers filing images at once update overlapping rows in different orders
and deadlock. A 500-image request hit that more than a thousand times, and every loser's
index entry had to be written again. One transaction-scoped advisory lock orders those
writes; each is short, so waiting in turn costs less than the retries did.

Chinese and Japanese put no spaces between words, and Korean attaches particles to them,
so both backends' tokenizers (SQLite FTS5's unicode61, PostgreSQL's default parser) index a
whole run of such letters as one word: a search for 烏 or 京都 does not find "京都の烏". A
model that indexes ``cms.cjk.cjk_index_text`` of its text (cms.models.KarasuImage, as
CJK_FIELD) also holds every one- and two-character piece of those runs, and its searches
go through ``cms.cjk.cjk_query``, which asks for the two-character pieces of each run in
the query. That is the bigram indexing of Lucene's CJK analyzer, done in Python, so it runs
the same on both databases; text in other scripts is left alone.
"""

from __future__ import annotations

import functools

from django.db import connection, transaction
from django.db.models import QuerySet
from modelsearch.backends.database import SearchBackend as database_backend
from modelsearch.backends.database.postgres.postgres import PostgresIndex, PostgresSearchBackend
from modelsearch.index import class_is_indexed
from modelsearch.query import PlainText

from cms.cjk import CJK_FIELD, cjk_query

# Any fixed bigint, distinct from the budget check's (generation/costs.py).
INDEX_WRITE_LOCK_KEY = 4_281_705_119


class OrderedWritesPostgresIndex(PostgresIndex):
    def add_items(self, model, objs) -> None:
        with transaction.atomic(using=self.write_connection.alias):
            with self.write_connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [INDEX_WRITE_LOCK_KEY])
            super().add_items(model, objs)


class OrderedWritesPostgresBackend(PostgresSearchBackend):
    index_class = OrderedWritesPostgresIndex


@functools.cache
def _atomic_writes_sqlite_backend() -> type:
    """modelsearch's SQLite index reads which entries exist, then inserts the rest: two
    threads indexing one image both insert, and one fails on the unique constraint. In one
    transaction, which SQLite begins IMMEDIATE (cms/settings), the second waits for the
    first's write lock and then finds the first's entry. Imported here, as modelsearch
    does, because the module is for SQLite only."""
    from modelsearch.backends.database.sqlite.sqlite import SQLiteIndex, SQLiteSearchBackend

    class AtomicWritesSQLiteIndex(SQLiteIndex):
        def add_items(self, model, objs) -> None:
            with transaction.atomic(using=self.write_connection.alias):
                super().add_items(model, objs)

    return type(
        "SQLiteSearchBackend",
        (SQLiteSearchBackend,),
        {"index_class": AtomicWritesSQLiteIndex, "drops_double_quotes": True},
    )


def _indexes_cjk(model, fields) -> bool:
    if fields is not None:
        return CJK_FIELD in fields
    # A model that is not indexed has no get_search_fields(); Wagtail's own _search then
    # answers with no results, as it does without this mixin.
    if not class_is_indexed(model):
        return False
    return any(field.field_name == CJK_FIELD for field in model.get_search_fields())


class CJKQueriesMixin:
    """Searches of a model that indexes CJK_FIELD look for the pieces it indexes. Other
    models' searches are left as Wagtail makes them, because their index holds no
    pieces."""

    def _search(self, query_compiler_class, query, model_or_queryset, **kwargs):
        # SQLite FTS5 only (the backend sets it): modelsearch puts each term between double
        # quotes without doubling one inside it, so `crow"` was a syntax error, a 500.
        if getattr(self, "drops_double_quotes", False):
            # Stripped, so that a search of quotes alone is "" and finds nothing.
            if isinstance(query, str):
                query = query.replace('"', " ").strip()
            elif isinstance(query, PlainText):
                text = query.query_string.replace('"', " ").strip()
                query = PlainText(text, query.operator, query.boost) if text else ""
        model = (
            model_or_queryset.model
            if isinstance(model_or_queryset, QuerySet)
            else model_or_queryset
        )
        if isinstance(query, str) and _indexes_cjk(model, kwargs.get("fields")):
            operator = kwargs.get("operator") or query_compiler_class.DEFAULT_OPERATOR
            query = cjk_query(query, operator)
        return super()._search(query_compiler_class, query, model_or_queryset, **kwargs)


@functools.cache
def _with_cjk_queries(backend_class: type) -> type:
    return type(backend_class.__name__, (CJKQueriesMixin, backend_class), {})


def SearchBackend(params: dict):  # noqa: N802 (the name Wagtail imports from a backend module)
    """Wagtail's database backend for the default database, with ordered writes on
    PostgreSQL, atomic ones on SQLite and CJK queries on every database."""
    if connection.vendor == "postgresql":
        return _with_cjk_queries(OrderedWritesPostgresBackend)(params)
    backend_class = type(database_backend(params))
    if connection.vendor == "sqlite" and backend_class.__name__ == "SQLiteSearchBackend":
        # FTS5 is available (else modelsearch falls back to its plain database backend).
        backend_class = _atomic_writes_sqlite_backend()
    return _with_cjk_queries(backend_class)(params)
