"""Cross-database integrity you can check: every reference against its parent, every file.

``check_integrity()`` walks every table that holds references (``core.tables``), in id
order, ``batch_size`` rows at a time (keyset pagination: ``WHERE id > last ORDER BY id
LIMIT n``, so memory stays bounded and no batch gets slower as the table grows), looks up
the batch's parents with one anti-join query per parent table, and runs
``PRAGMA integrity_check`` on every SQLite file. Children are read before their parents:
writers commit parents first, so a child seen here always has its parents committed
already, and a concurrent load cannot produce a false orphan. A concurrent delete can
(child read, then child and parent deleted), so every orphan found is looked up again
before it is reported.

The guard (``core.guard``) keeps every write through Django from committing an orphan;
this check is how writes that bypass Django (raw SQL, another program writing the files)
are found.

The names ``delete_parent``, ``count_orders_for`` and ``HasOrders`` are the older spelling
of ``core.deletion``'s, kept for the admin and the command line.
"""

from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, connections

from core import deletion
from core.lookups import missing_ids, query_chunks
from core.tables import SPECS, spec

DEFAULT_BATCH_SIZE = 50_000
DEFAULT_KEEP = 100  # orphans kept in the result; the count covers all of them
OK = "ok"

HasOrders = deletion.HasChildren


@dataclass(frozen=True)
class Orphan:
    """A child row naming one or more parents that are not stored."""

    table: str
    id: int
    missing: tuple  # (field, parent noun, parent id) for each missing parent

    def __str__(self):
        parents = " and ".join(f"{noun} {pk}" for _field, noun, pk in self.missing)
        return f"{self.table.removesuffix('s')} {self.id}: {parents} not found"

    def names(self, noun):
        """The missing parent id of one kind (``orphan.names("user")``), or None."""
        return next((pk for _f, n, pk in self.missing if n == noun), None)

    def as_dict(self):
        return {
            "table": self.table,
            "id": self.id,
            "missing": [{"field": f, "parent": n, "id": pk} for f, n, pk in self.missing],
        }


@dataclass
class IntegrityResult:
    """Totals of one check: rows seen, orphans (count and the first few), file checks."""

    rows_checked: dict = field(default_factory=dict)  # child table -> rows checked
    orphan_count: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    databases: dict[str, str] = field(default_factory=dict)  # alias -> "ok" or the problem
    scan_error: str | None = None  # the children could not all be read (a damaged file)

    @property
    def orders_checked(self):
        """Every child row checked (the orders, and any other table with references)."""
        return sum(self.rows_checked.values())

    @property
    def corrupt(self):
        """Aliases whose integrity check did not say ok (skipped ones are not corrupt)."""
        return [a for a, s in self.databases.items() if s != OK and not s.startswith("skipped")]

    @property
    def ok(self):
        return self.orphan_count == 0 and not self.corrupt and self.scan_error is None

    def as_dict(self):
        return {
            "ok": self.ok,
            "rows_checked": dict(self.rows_checked),
            "orphan_count": self.orphan_count,
            "orphans": [o.as_dict() for o in self.orphans],
            "orphans_listed": len(self.orphans),
            "databases": dict(self.databases),
            "corrupt": self.corrupt,
            "scan_error": self.scan_error,
        }


def child_tables():
    return [s for s in SPECS.values() if s.references]


def check_integrity(*, batch_size=DEFAULT_BATCH_SIZE, keep=DEFAULT_KEEP, progress=None):
    """Check every reference and every SQLite file; return an IntegrityResult.

    progress, if given, is called with the number of rows checked after each batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    result = IntegrityResult()
    for alias in settings.DATABASES:
        result.databases[alias] = file_check(alias)
    for child in child_tables():
        result.rows_checked[child.name] = 0
        try:
            for batch in child_batches(child, batch_size):
                result.rows_checked[child.name] += len(batch)
                orphans = _confirmed(child, _orphans_in(child, batch))
                result.orphan_count += len(orphans)
                result.orphans.extend(orphans[: max(keep - len(result.orphans), 0)])
                if progress:
                    progress(result.orders_checked)
        except DatabaseError as exc:  # a damaged file: report how far the scan got
            result.scan_error = (
                f"{child.name}: stopped after {result.rows_checked[child.name]:,} rows: {exc}"
            )
    return result


def _reference_columns(child):
    return ("pk", *(r.field for r in child.references))


def child_batches(child, batch_size):
    """Yield lists of (id, *reference ids), in id order, batch_size at a time."""
    last = 0
    rows = child.model.objects.using(child.alias)
    while True:
        batch = list(
            rows.filter(pk__gt=last)
            .order_by("pk")
            .values_list(*_reference_columns(child))[:batch_size]
        )
        if not batch:
            return
        yield batch
        last = batch[-1][0]


def _orphans_in(child, batch):
    absent = [
        missing_ids(r.parent, {row[i] for row in batch})
        for i, r in enumerate(child.references, start=1)
    ]
    if not any(absent):
        return []
    orphans = []
    for row in batch:
        missing = tuple(
            (r.field, r.noun, row[i])
            for i, r in enumerate(child.references, start=1)
            if row[i] in absent[i - 1]
        )
        if missing:
            orphans.append(Orphan(child.name, row[0], missing))
    return orphans


def _confirmed(child, orphans):
    """Keep the orphans whose row is still stored and still misses a parent.

    A delete running beside the check removes the child before its parent; a child read
    before that delete and checked after it would otherwise be a false orphan.
    """
    if not orphans:
        return []
    connection = connections[child.alias]
    still = [
        row
        for chunk in query_chunks(connection, [o.id for o in orphans])
        for row in child.model.objects.using(child.alias)
        .filter(pk__in=chunk)
        .order_by("pk")
        .values_list(*_reference_columns(child))
    ]
    return _orphans_in(child, still)


def file_check(alias):
    """Return "ok" or what ``PRAGMA integrity_check`` (SQLite only) found wrong with alias."""
    connection = connections[alias]
    if connection.vendor != "sqlite":
        return f"skipped ({connection.vendor}: the server checks its own files)"
    try:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA integrity_check")
            lines = [row[0] for row in cursor.fetchall()]
    except DatabaseError as exc:
        return f"cannot check: {exc}"
    return OK if lines == [OK] else "; ".join(lines[:10])


def count_orders_for(table, ids):
    """Return {id: number of children} for the given parent ids (absent: none)."""
    counts = {}
    for (_child, pk), n in deletion.count_children(spec(table).name, list(ids)).items():
        counts[pk] = counts.get(pk, 0) + n
    return counts


def delete_parent(model_or_table, pk, with_orders=False):
    """Delete one parent row; return (children deleted, whether the row was deleted).

    Raises HasOrders (``core.deletion.HasChildren``) while a PROTECT reference still has
    children, unless with_orders: then the children are deleted first.
    """
    table_spec = spec(model_or_table)
    if not table_spec.children:
        raise ValueError(
            f"{table_spec.name} rows are not referenced by other tables; "
            f"only {', '.join(s.name for s in SPECS.values() if s.children)} can be deleted here"
        )
    result = deletion.delete(table_spec.name, [pk], with_children=with_orders)
    return sum(result.children.values()), result.parents > 0
