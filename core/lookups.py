"""Read-only id queries against one table, chunked under the backend's parameter limit."""

from django.db import connections


def query_chunks(connection, items):
    """Split items so an IN (...) query stays under the backend's parameter limit."""
    size = min(connection.features.max_query_params or 5000, 5000)
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def existing_ids(table, ids):
    """Return the subset of ids stored in table, one query per chunk."""
    from core.tables import spec

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
