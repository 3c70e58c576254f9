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

from django.db import IntegrityError, connections, router, transaction
from django.db import models as dj_models
from django.db.models.signals import pre_save
from django.dispatch import receiver

log = logging.getLogger(__name__)

# Tests switch the guard off (MULTIDS_TEST_NO_GUARD=1, for the processes they start) to
# show that the race tests catch its absence. Never set it anywhere else.
ENABLED = os.environ.get("MULTIDS_TEST_NO_GUARD") != "1"


class MissingParent(IntegrityError):
    """A write would store a child whose parent is not committed."""


class ChangedParentKey(IntegrityError):
    """A write would change the id of a row that children name."""


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
    from core.models import ReferenceGuard

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
    guards = ReferenceGuard.objects.using(alias)
    if not guards.filter(parent=parent).update(deletions=dj_models.F("deletions") + 1):
        guards.create(parent=parent, deletions=1)


def counters(alias, parents):
    """Return {parent: deletions committed so far} as alias sees it now."""
    from core.models import ReferenceGuard

    found = dict(
        ReferenceGuard.objects.using(alias)
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


def missing_parents(table_spec, rows):
    """Return [(row index, Reference, parent id)] for every reference not committed."""
    missing = []
    for reference in table_spec.references:
        position = table_spec.position(reference.field)
        wanted = {row[position] for row in rows if row[position] is not None}
        present = existing_parents(reference.parent, wanted)
        for index, row in enumerate(rows):
            if row[position] is not None and row[position] not in present:
                missing.append((index, reference, row[position]))
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


# --- The ORM's write paths ---------------------------------------------------------------


class GuardedQuerySet(dj_models.QuerySet):
    """QuerySet whose bulk writes and deletes keep cross-database references true."""

    def _table_spec(self):
        from core.tables import spec

        return spec(self.model)

    def bulk_create(self, objs, *args, **kwargs):
        table_spec = self._table_spec()
        if not table_spec.references:
            return super().bulk_create(objs, *args, **kwargs)
        objs = list(objs)
        with transaction.atomic(using=self.db):
            require_parents(table_spec, self.db, objs)
            return super().bulk_create(objs, *args, **kwargs)

    def update(self, **kwargs):
        table_spec = self._table_spec()
        pk_names = {"pk", self.model._meta.pk.name, self.model._meta.pk.attname}
        if table_spec.children and pk_names & set(kwargs):
            children = ", ".join(dict.fromkeys(r.child for r in table_spec.children))
            raise ChangedParentKey(
                f"the id of a {table_spec.noun} cannot be changed while {children} refer to it; "
                "create the new row, move its children to it, then delete the old one"
            )
        for key in table_spec.keys:  # keep a comparison key in step with its source
            if key.source in kwargs and isinstance(kwargs[key.source], str):
                kwargs[key.column] = key.normalize(kwargs[key.source])
        touched = [r for r in table_spec.references if r.field in kwargs]
        if not touched:
            return super().update(**kwargs)
        with transaction.atomic(using=self.db):
            share(self.db, tuple(r.parent for r in touched))
            for reference in touched:
                pk = kwargs[reference.field]
                if not isinstance(pk, int) or pk not in existing_parents(reference.parent, [pk]):
                    raise MissingParent(
                        f"{reference.noun} {pk} does not exist; {table_spec.name}.{reference.field}"
                        " can only be set to a stored one"
                    )
            return super().update(**kwargs)

    update.alters_data = True

    def delete(self):
        from core import deletion

        table_spec = self._table_spec()
        if not table_spec.children:
            return super().delete()
        pks = list(self.values_list("pk", flat=True))
        result = deletion.delete(table_spec.name, pks)
        return result.total, result.by_model()

    delete.alters_data = True
    delete.queryset_only = True


class GuardedModel(dj_models.Model):
    """A model whose saves and deletes go through the reference guard."""

    objects = GuardedQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, using=None, **kwargs):
        """Save inside a transaction, so the guard taken by pre_save is held until commit."""
        using = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            return super().save(*args, using=using, **kwargs)

    save.alters_data = True

    def delete(self, using=None, keep_parents=False):
        from core import deletion
        from core.tables import spec

        table_spec = spec(self)
        if not table_spec.children:
            return super().delete(using=using, keep_parents=keep_parents)
        result = deletion.delete(table_spec.name, [self.pk])
        return result.total, result.by_model()

    delete.alters_data = True

    def clean(self):
        """Apply the loader's rules and check the references, with the loader's words."""
        from core import validation
        from core.models import raise_for
        from core.tables import spec

        table_spec = spec(self)
        values = tuple(getattr(self, f) for f in table_spec.fields)
        row, problems = table_spec.clean(values)
        if not problems and table_spec.references:
            problems = [
                validation.parent_problem(reference.field, reference.noun, pk)
                for _index, reference, pk in missing_parents(table_spec, [row])
            ]
        raise_for(problems)


@receiver(pre_save)
def _guard_child_save(sender, instance, raw, using, **kwargs):
    """Every save of a child (``loaddata``'s raw saves too) checks its parents in the guard."""
    if not isinstance(instance, GuardedModel):
        return
    from core.tables import SPECS, spec

    if sender._meta.db_table not in SPECS:
        return
    table_spec = spec(sender)
    if table_spec.references:
        require_parents(table_spec, using, [instance])
