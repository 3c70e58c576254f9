"""Read-only id queries against one table, chunked under the backend's parameter limit."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.models.expressions import RawSQL

from crossdb.registry import spec

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Field

    from crossdb.registry import TableSpec


def query_chunks(connection: BaseDatabaseWrapper, items: Iterable[Any]) -> Iterator[list[Any]]:
    """Split items so an IN (...) query stays under the backend's parameter limit."""
    size = min(connection.features.max_query_params or 5000, 5000)
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def existing_ids(table: str, ids: Iterable[Any]) -> set[Any]:
    """Return the subset of ids stored in table, one query per chunk."""

    table_spec = spec(table)
    alias = table_spec.alias
    found: set[Any] = set()
    for chunk in query_chunks(connections[alias], ids):
        found.update(
            table_spec.model.objects.using(alias).filter(pk__in=chunk).values_list("pk", flat=True)
        )
    return found


def all_ids(table: str) -> Iterator[list[Any]]:
    """Every id stored in table, in chunks of a query's rows (a resumed run's parents:
    ``crossdb.resume``); the ORM's values, so each is of the type the field gives."""
    table_spec = spec(table)
    rows = table_spec.model.objects.using(table_spec.alias).values_list("pk", flat=True)
    chunk: list[Any] = []
    for pk in rows.iterator(chunk_size=ALL_IDS_CHUNK):
        chunk.append(pk)
        if len(chunk) == ALL_IDS_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


ALL_IDS_CHUNK = 100_000


def stored_rows(
    table_spec: TableSpec, connection: BaseDatabaseWrapper, alias: str, ids: Iterable[Any]
) -> dict[Any, tuple[Any, ...]]:
    """Return {id: stored row in column order} for the ids stored in the table.

    The ids travel as one parameter (``ids_subquery``): a re-run reads back every row it
    loads, and ``IN`` lists of 5,000 placeholders each cost more to build, send and parse
    than the rows cost to read. The rows come through the ORM, so each value is of the type
    a field gives (a ``Decimal``, a ``UUID``), as the loader's rows are.
    """
    ids = list(ids)
    if not ids:
        return {}
    manager = table_spec.model.objects.using(alias)
    subquery = ids_subquery(table_spec.model._meta.pk, connection, ids)
    if subquery is None:  # another backend: chunks of IN lists
        return {
            r[0]: r
            for chunk in query_chunks(connection, ids)
            for r in manager.filter(pk__in=chunk).values_list(*table_spec.columns)
        }
    return {r[0]: r for r in manager.filter(pk__in=subquery).values_list(*table_spec.columns)}


def ids_subquery(
    key: Field[Any, Any], connection: BaseDatabaseWrapper, ids: list[Any]
) -> RawSQL | None:
    """``SELECT`` of ids as one parameter (a JSON array on SQLite, an array of the key's
    type on PostgreSQL), for ``pk__in``; None on other backends."""
    values = [key.get_db_prep_value(i, connection) for i in ids]
    if connection.vendor == "sqlite":
        return RawSQL("SELECT value FROM json_each(%s)", [json.dumps(values)])
    if connection.vendor == "postgresql":
        array = f"%s::{key.rel_db_type(connection)}[]"  # type: ignore[attr-defined]
        return RawSQL(f"SELECT unnest({array})", [values])
    return None


def missing_ids(table: str, ids: Iterable[Any], alias: str | None = None) -> set[Any]:
    """Return the subset of ids NOT stored in table, in one query where the backend allows.

    The ids travel as one parameter (a JSON array on SQLite, an array of the key's type on
    PostgreSQL) and the database does the anti-join, so checking 50,000 references costs one
    round trip instead of fifty ``IN`` queries of 999 parameters. Keys of any type travel
    as the database stores them (a UUID as its hex on SQLite) and come back as given.
    alias: where to read the table (default: its database; a replica for
    ``check_integrity --replica``).
    """

    ids = list(ids)
    if not ids:
        return set()
    table_spec = spec(table)
    alias = alias or table_spec.alias
    connection = connections[alias]
    key = table_spec.model._meta.pk
    qn = connection.ops.quote_name
    db_table = qn(table_spec.model._meta.db_table)
    pk = qn(key.column)
    stored = {key.get_db_prep_value(i, connection): i for i in ids}  # as stored -> as given
    if connection.vendor == "sqlite":
        sql = (
            f"SELECT j.value FROM json_each(%s) AS j "
            f"WHERE NOT EXISTS (SELECT 1 FROM {db_table} AS t WHERE t.{pk} = j.value)"
        )
        params: list[Any] = [json.dumps(list(stored))]
    elif connection.vendor == "postgresql":
        sql = (
            f"SELECT x FROM unnest(%s::{key.rel_db_type(connection)}[]) AS x "  # type: ignore[attr-defined]
            f"WHERE NOT EXISTS (SELECT 1 FROM {db_table} AS t WHERE t.{pk} = x)"
        )
        params = [list(stored)]
    else:
        return set(ids) - existing_ids(table, ids)  # other backends: on the primary
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {stored.get(row[0], row[0]) for row in cursor.fetchall()}
