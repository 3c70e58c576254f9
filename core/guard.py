"""The reference guard: no interleaving of writes and deletes can commit an orphan.

Invariant: no committed child row names a parent row that is not committed.

Three databases cannot share a transaction, so the guard lives in each *child* database,
where both sides meet:

* A child writer (a loader batch, ``save()``, ``create()``, ``bulk_create()``, ``update()``
  of a reference, ``loaddata``) takes the guard SHARED inside its transaction and holds it
  until it commits. It checks its rows' parents inside the guard when it must: always for a
  single save, and for a loader batch only when a parent delete has committed since the run
  began (the deletion counter moved) or the row's parent was not known at validation.
* A parent deleter (``core.deletion``) takes the guard EXCLUSIVE in every child database
  (sorted by alias, so two deleters never deadlock), bumps the deletion counter, refuses
  (PROTECT) or deletes (CASCADE) the children, deletes the parent in its own database,
  commits the children's databases, and only then commits the parent's. A crash between
  the two commits leaves a parent without children, never a child without a parent.

Why it closes the race: a writer either takes the guard before the deleter (the deleter
then waits, and sees the writer's children when it counts or deletes them), or after the
deleter's child transaction committed (the writer sees the counter moved and re-checks).
A re-check reads the parents in a way that waits for a deleter still committing the parent
(``FOR KEY SHARE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so it never sees a
parent whose deletion is about to commit.

On SQLite the guard is the child database's write lock: every transaction here opens with
``BEGIN IMMEDIATE``, which is exclusive among writers, so shared and exclusive collapse to
"hold the write lock across check and commit". On PostgreSQL it is a transaction-level
advisory lock per parent table (``pg_advisory_xact_lock_shared`` / ``pg_advisory_xact_lock``).

What cannot be guarded (raw SQL, another program writing the files) is found by
``check_integrity``.
"""

import logging
import os
import zlib

import numpy as np
from django.apps import apps
from django.db import IntegrityError, connections, transaction
from django.db import models as dj_models

log = logging.getLogger(__name__)

# Tests switch the guard off (MULTIDS_TEST_NO_GUARD=1, for the processes they start) to
# show that the race tests catch its absence. Never set it anywhere else.
ENABLED = os.environ.get("MULTIDS_TEST_NO_GUARD") != "1"


class MissingParent(IntegrityError):
    """A write would store a child whose parent is not committed."""


class ChangedParentKey(IntegrityError):
    """A write would change the id of a row that children name."""


def _reference_guard():
    """The counters' model, from the app registry: core.models imports this module."""
    return apps.get_model("core", "ReferenceGuard")


def _key(parent):
    return zlib.crc32(f"multids-reference-guard:{parent}".encode())


def _take_sqlite_write_lock(connection):
    # BEGIN IMMEDIATE already holds it; a no-op write makes sure in any transaction mode.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE multids_reference_guard SET deletions = deletions WHERE 0")


def share(alias, parents):
    """Take the guard shared for parents in alias's open transaction (held until commit)."""
    connection = connections[alias]
    if not ENABLED or not parents:
        return
    if not connection.in_atomic_block:
        raise transaction.TransactionManagementError(
            "the reference guard must be taken inside a transaction"
        )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for parent in sorted(parents):
                cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [_key(parent)])
    elif connection.vendor == "sqlite":
        _take_sqlite_write_lock(connection)


def exclusive(alias, parent):
    """Take the guard exclusive for parent in alias's open transaction and bump its counter."""
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise transaction.TransactionManagementError(
            "the reference guard must be taken inside a transaction"
        )
    if not ENABLED:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_key(parent)])
    guards = _reference_guard().objects.using(alias)
    if not guards.filter(parent=parent).update(deletions=dj_models.F("deletions") + 1):
        guards.create(parent=parent, deletions=1)


def counters(alias, parents):
    """Return {parent: deletions committed so far} as alias sees it now."""
    found = dict(
        _reference_guard()
        .objects.using(alias)
        .filter(parent__in=list(parents))
        .values_list("parent", "deletions")
    )
    return {p: found.get(p, 0) for p in parents}


def existing_parents(parent_table, ids):
    """Return the ids of parent_table that are committed, waiting out a deleter mid-commit."""
    from core.lookups import query_chunks
    from core.tables import spec

    parent = spec(parent_table)
    alias = parent.alias
    connection = connections[alias]
    found = set()
    ids = list(ids)
    if not ids:
        return found
    if connection.vendor == "postgresql":
        qn = connection.ops.quote_name
        sql = (
            f"SELECT {qn('id')} FROM {qn(parent.model._meta.db_table)} "
            f"WHERE {qn('id')} = ANY(%s) FOR KEY SHARE"
        )
        with connection.cursor() as cursor:
            for chunk in query_chunks(connection, ids):
                cursor.execute(sql, [chunk])
                found.update(row[0] for row in cursor.fetchall())
        return found
    with transaction.atomic(using=alias):  # SQLite: BEGIN IMMEDIATE waits for a deleter
        if connection.vendor == "sqlite" and ENABLED:
            _take_sqlite_write_lock(connection)
        for chunk in query_chunks(connection, ids):
            found.update(
                parent.model.objects.using(alias).filter(pk__in=chunk).values_list("pk", flat=True)
            )
    return found


def missing_parents(table_spec, rows, known=None):
    """Return [(row index, Reference, parent id)] for every reference not committed.

    rows: tuples, or a Block's integer array (checked a column at a time). known, if
    given, is {parent table: ids found committed earlier}: those are not looked up again,
    and the ids found now are added. The caller vouches that no deleter has committed
    since (the deletion counters have not moved).
    """
    missing = []
    for reference in table_spec.references:
        position = table_spec.position(reference.field)
        if isinstance(rows, np.ndarray):
            column = rows[:, position]
            wanted = set(np.unique(column).tolist())
        else:
            column = [row[position] for row in rows]
            wanted = {pk for pk in column if pk is not None}
        if known is None:
            present = existing_parents(reference.parent, wanted)
        else:
            seen = known.setdefault(reference.parent, set())
            present = existing_parents(reference.parent, wanted - seen)
            seen |= present
            present |= wanted & seen
        absent = wanted - present
        if not absent:
            continue
        if isinstance(column, np.ndarray):
            at = np.flatnonzero(np.isin(column, np.fromiter(absent, np.int64, len(absent))))
            missing.extend((index, reference, column[index].item()) for index in at.tolist())
        else:
            missing.extend(
                (index, reference, pk) for index, pk in enumerate(column) if pk in absent
            )
    return missing


def require_parents(table_spec, alias, objs):
    """Raise MissingParent unless every reference of objs names a committed parent."""
    if not ENABLED:
        return
    share(alias, table_spec.parents)
    rows = [tuple(getattr(obj, c) for c in table_spec.columns) for obj in objs]
    missing = missing_parents(table_spec, rows)
    if missing:
        index, reference, pk = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        what = f"{table_spec.noun} {rows[index][0]}" if rows[index][0] is not None else "a row"
        raise MissingParent(
            f"{what}: {reference.noun} {pk} does not exist in {connections_alias(reference)}"
            f"{more}; store the {reference.noun} first"
        )


def connections_alias(reference):
    from core.tables import spec

    return spec(reference.parent).alias
