"""Read-only id queries against one table, chunked under the backend's parameter limit."""

from django.db import connections

from crossdb.registry import spec


def query_chunks(connection, items):
    """Split items so an IN (...) query stays under the backend's parameter limit."""
    size = min(connection.features.max_query_params or 5000, 5000)
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def existing_ids(table, ids):
    """Return the subset of ids stored in table, one query per chunk."""

    table_spec = spec(table)
    alias = table_spec.alias
    found = set()
    for chunk in query_chunks(connections[alias], ids):
        found.update(
            table_spec.model.objects.using(alias).filter(pk__in=chunk).values_list("pk", flat=True)
        )
    return found


def stored_rows(table_spec, connection, alias, ids):
    """Return {id: stored row in column order} for the ids stored in the table."""
    return {
        r[0]: r
        for chunk in query_chunks(connection, ids)
        for r in table_spec.model.objects.using(alias)
        .filter(pk__in=chunk)
        .values_list(*table_spec.columns)
    }


def missing_ids(table, ids, alias=None):
    """Return the subset of ids NOT stored in table, in one query where the backend allows.

    The ids travel as one parameter (a JSON array on SQLite, an array on PostgreSQL) and
    the database does the anti-join, so checking 50,000 references costs one round trip
    instead of fifty ``IN`` queries of 999 parameters. alias: where to read the table
    (default: its database; a replica for ``check_integrity --replica``).
    """

    ids = list(ids)
    if not ids:
        return set()
    table_spec = spec(table)
    alias = alias or table_spec.alias
    connection = connections[alias]
    qn = connection.ops.quote_name
    db_table = qn(table_spec.model._meta.db_table)
    pk = qn(table_spec.model._meta.pk.column)
    if connection.vendor == "sqlite":
        import json

        sql = (
            f"SELECT j.value FROM json_each(%s) AS j "
            f"WHERE NOT EXISTS (SELECT 1 FROM {db_table} AS t WHERE t.{pk} = j.value)"
        )
        params = [json.dumps(ids)]
    elif connection.vendor == "postgresql":
        sql = (
            f"SELECT x FROM unnest(%s::bigint[]) AS x "
            f"WHERE NOT EXISTS (SELECT 1 FROM {db_table} AS t WHERE t.{pk} = x)"
        )
        params = [ids]
    else:
        return set(ids) - existing_ids(table, ids)  # other backends: on the primary
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}
