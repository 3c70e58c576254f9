"""Cross-database integrity you can check: every reference against its parent, every file.

``check_integrity()`` walks every table that holds references (``crossdb.registry``), in id
order, ``batch_size`` rows at a time (keyset pagination: ``WHERE id > last ORDER BY id
LIMIT n``, so memory stays bounded and no batch gets slower as the table grows), looks up
the batch's parents with one anti-join query per parent table, and runs
``PRAGMA integrity_check`` on every SQLite file. Children are read before their parents:
writers commit parents first, so a child seen here always has its parents committed
already, and a concurrent load cannot produce a false orphan. A concurrent delete can
(child read, then child and parent deleted), so every orphan found is looked up again
before it is reported.

It also checks every comparison key (``crossdb.fields.ComparisonKey``: the email's key)
against its source, and the rows whose true keys clash (``StaleKey``, ``SharedKey``).

The guard (``crossdb.guard``) keeps every write through Django from committing an orphan or a
stale key; this check is how writes that bypass Django (raw SQL, another program writing
the files) are found. It only reads: a missing index is reported by the command, and built
by ``migrate_all`` or ``check_integrity --repair``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, connections

from crossdb import causal, guard, registry
from crossdb.databases import sqlite_file_missing
from crossdb.lookups import missing_ids, query_chunks
from crossdb.registry import spec

if TYPE_CHECKING:
    from crossdb.registry import Key, Reference, TableSpec

DEFAULT_BATCH_SIZE = 50_000
DEFAULT_KEEP = 100  # orphans kept in the result; the count covers all of them
OK = "ok"
STALE_KEYS_COMPARED = 100_000  # stale rows whose true keys are looked for among the others


@dataclass(frozen=True)
class Orphan:
    """A child row naming one or more parents that are not stored."""

    table: str
    id: int
    missing: tuple[
        tuple[str, str, Any], ...
    ]  # (field, parent noun, parent id) for each missing parent

    def __str__(self) -> str:
        parents = " and ".join(f"{noun} {pk}" for _field, noun, pk in self.missing)
        return f"{registry.spec(self.table).noun} {self.id}: {parents} not found"

    def names(self, noun: str) -> Any:
        """The missing parent id of one kind (``orphan.names("user")``), or None."""
        return next((pk for _f, n, pk in self.missing if n == noun), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "id": self.id,
            "missing": [{"field": f, "parent": n, "id": pk} for f, n, pk in self.missing],
        }


@dataclass(frozen=True)
class StaleKey:
    """A row whose comparison key (``email_key``) is not the key of its source (``email``):
    written behind the ORM's back, so the uniqueness it stands for is not enforced."""

    table: str
    id: object
    column: str
    stored: str | None
    expected: str | None

    def __str__(self) -> str:
        return (
            f"{self.table} {self.id}: {self.column} is {self.stored!r}, "
            f"but its source gives {self.expected!r}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "id": self.id,
            "column": self.column,
            "stored": self.stored,
            "expected": self.expected,
        }


@dataclass(frozen=True)
class SharedKey:
    """Rows whose sources give the same comparison key: duplicates the key should refuse."""

    table: str
    column: str
    key: str
    ids: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.table} {', '.join(map(str, self.ids))} share {self.column} {self.key!r}"

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "column": self.column, "key": self.key, "ids": list(self.ids)}


@dataclass
class IntegrityResult:
    """Totals of one check: rows seen, orphans (count and the first few), file checks."""

    rows_checked: dict[str, int] = field(default_factory=dict)  # child table -> rows checked
    orphan_count: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    databases: dict[str, str] = field(default_factory=dict)  # alias -> "ok" or the problem
    scan_error: str | None = None  # the children could not all be read (a damaged file)
    stale_key_count: int = 0  # rows whose comparison key is not the key of its source
    stale_keys: list[StaleKey] = field(default_factory=list)
    shared_keys: list[SharedKey] = field(default_factory=list)  # rows sharing one key

    @property
    def children_checked(self) -> int:
        """Every child row checked (the orders, and any other table with references)."""
        return sum(self.rows_checked.values())

    @property
    def corrupt(self) -> list[str]:
        """Aliases whose integrity check did not say ok (skipped ones are not corrupt)."""
        return [a for a, s in self.databases.items() if s != OK and not s.startswith("skipped")]

    @property
    def ok(self) -> bool:
        return (
            self.orphan_count == 0
            and not self.corrupt
            and self.scan_error is None
            and self.stale_key_count == 0
            and not self.shared_keys
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows_checked": dict(self.rows_checked),
            "orphan_count": self.orphan_count,
            "orphans": [o.as_dict() for o in self.orphans],
            "orphans_listed": len(self.orphans),
            "databases": dict(self.databases),
            "corrupt": self.corrupt,
            "scan_error": self.scan_error,
            "stale_key_count": self.stale_key_count,
            "stale_keys": [k.as_dict() for k in self.stale_keys],
            "shared_keys": [k.as_dict() for k in self.shared_keys],
        }


def child_tables() -> list[TableSpec]:
    return [s for s in registry.specs().values() if s.references]


@dataclass(frozen=True)
class Unbacked:
    """A child table whose rows name a parent table that is missing or empty: what a
    dropped, emptied or lost parent database leaves (every such row is an orphan)."""

    reference: Reference
    rows: int

    def __str__(self) -> str:
        child, parent = spec(self.reference.child), spec(self.reference.parent)
        noun = child.noun if self.rows == 1 else child.plural
        return (
            f"{self.rows:,} {noun} in {child.alias} name {parent.name}, but {parent.name} in "
            f"{parent.alias} is empty or missing: restore {parent.alias} from a backup, or "
            f"delete those {child.name} (python manage.py check_integrity lists them)"
        )


def unbacked_references() -> list[Unbacked]:
    """Return an Unbacked for each reference whose parent table has no row (or no table,
    or no file) while its child table has rows naming it. Cheap: one ``EXISTS`` per parent
    table, and a count only for the children of an empty one."""

    def count(table_spec: TableSpec, **where: Any) -> int:
        """Rows of table_spec matching where; 0 without its file or its table."""
        if sqlite_file_missing(table_spec.alias):
            return 0
        try:
            return table_spec.model.objects.using(table_spec.alias).filter(**where)[:1].count()
        except DatabaseError:
            return 0

    found: list[Unbacked] = []
    for child in child_tables():
        for reference in child.references:
            if count(spec(reference.parent)):
                continue
            naming = {f"{reference.field}__isnull": False}
            if count(child, **naming):
                rows = child.model.objects.using(child.alias).filter(**naming).count()
                found.append(Unbacked(reference, rows))
    return found


def check_integrity(
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep: int = DEFAULT_KEEP,
    progress: Callable[[int], object] | None = None,
    replica: bool = False,
) -> IntegrityResult:
    """Check every reference and every SQLite file; return an IntegrityResult.

    progress, if given, is called with the number of rows checked after each batch.
    replica: read the children from replicas and their parents where they are causally
    visible (``crossdb.causal``: a replica that replayed what the children depend on, else
    the primary); an orphan found so is confirmed on the primaries before it counts, since
    deletes reach the children's replica after the parents' (CAUSAL_READS off: on the
    same aliases, as a plain replica reader would).
    """
    if replica:
        with causal.reading():
            token = _reader.set(Reader())
            try:
                return _check_integrity(batch_size, keep, progress)
            finally:
                _reader.reset(token)
    return _check_integrity(batch_size, keep, progress)


class Reader:
    """Where ``check_integrity --replica`` reads: children, then their parents."""

    def __init__(self) -> None:
        self.confirm_on_primaries = causal.enabled()

    def children(self, child: TableSpec) -> str:
        return causal.for_children(child.alias)

    def parents(self, table: str) -> str:
        return causal.for_parents(spec(table).alias)


# The Reader of a check_integrity(replica=True) under way (None: every read on the primaries).
_reader: contextvars.ContextVar[Reader | None] = contextvars.ContextVar(
    "crossdb_integrity_reader", default=None
)


def _check_integrity(
    batch_size: int, keep: int, progress: Callable[[int], object] | None
) -> IntegrityResult:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    # A load into an empty table holds it locked until its commit (crossdb.loading.segment), and a
    # stopped process may hold it for ever: every read waits at most the guard's bound.
    with contextlib.ExitStack() as bounded:
        for alias in sorted({s.alias for s in registry.specs().values()}):
            bounded.enter_context(guard.bounded(alias, "a lock a writer holds"))
        return _check(batch_size, keep, progress)


def _check(batch_size: int, keep: int, progress: Callable[[int], object] | None) -> IntegrityResult:
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
                    progress(result.children_checked)
        except DatabaseError as exc:  # a damaged file: report how far the scan got
            if guard.is_lock_wait(exc):
                raise  # not damage: bounded() says what held it
            result.scan_error = (
                f"{child.name}: stopped after {result.rows_checked[child.name]:,} rows: {exc}"
            )
    for table_spec in registry.specs().values():
        for key in table_spec.keys:
            try:
                _check_key(result, table_spec, key, batch_size, keep)
            except DatabaseError as exc:
                if guard.is_lock_wait(exc):
                    raise
                result.scan_error = result.scan_error or f"{table_spec.name}.{key.column}: {exc}"
    return result


def _check_key(
    result: IntegrityResult, table_spec: TableSpec, key: Key, batch_size: int, keep: int
) -> None:
    """Find the rows whose key is stale, and the rows their true keys would clash with.

    The key column is unique in the database, so two rows can share a true key only if one
    of them is stale: the scan keeps the stale rows (the first ``STALE_KEYS_COMPARED``; the
    count covers all), then looks their true keys up among the stored keys of rows that are
    not stale, and among themselves.
    """
    rows = table_spec.model.objects.using(table_spec.alias)
    stale: list[StaleKey] = []
    last = None
    while True:
        page = rows.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        batch = list(page.values_list("pk", key.source, key.column)[:batch_size])
        if not batch:
            break
        last = batch[-1][0]
        for pk, source, stored in batch:
            expected = None if source is None else key.normalize(source)
            if expected != stored:
                result.stale_key_count += 1
                if len(stale) < STALE_KEYS_COMPARED:
                    stale.append(StaleKey(table_spec.name, pk, key.column, stored, expected))
    result.stale_keys.extend(stale[: max(keep - len(result.stale_keys), 0)])
    owners: dict[str, set[Any]] = {}  # true key -> ids
    wanted = {k.expected for k in stale if k.expected is not None}
    stale_ids = {k.id for k in stale}  # their stored key is not theirs: they own nothing
    for chunk in query_chunks(connections[table_spec.alias], sorted(wanted)):
        for pk, stored in rows.filter(**{f"{key.column}__in": chunk}).values_list("pk", key.column):
            if pk not in stale_ids:
                owners.setdefault(stored, set()).add(pk)
    for k in stale:
        if k.expected is not None:
            owners.setdefault(k.expected, set()).add(k.id)
    result.shared_keys.extend(
        SharedKey(table_spec.name, key.column, value, tuple(sorted(ids)))
        for value, ids in sorted(owners.items())
        if len(ids) > 1
    )


def _reference_columns(child: TableSpec) -> tuple[str, ...]:
    return ("pk", *(r.field for r in child.references))


def child_batches(child: TableSpec, batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
    """Yield lists of (id, *reference ids), in id order, batch_size at a time."""
    last = 0
    reader = _reader.get()
    while True:
        alias = reader.children(child) if reader else child.alias
        batch = list(
            child.model.objects.using(alias)
            .filter(pk__gt=last)
            .order_by("pk")
            .values_list(*_reference_columns(child))[:batch_size]
        )
        if not batch:
            return
        yield batch
        last = batch[-1][0]


def _orphans_in(child: TableSpec, batch: Sequence[Sequence[Any]]) -> list[Orphan]:
    reader = _reader.get()
    absent = [  # a reference left empty (null=True) names nothing to miss
        _missing(reader, r.parent, {row[i] for row in batch if row[i] is not None})
        for i, r in enumerate(child.references, start=1)
    ]
    if not any(absent):
        return []
    orphans: list[Orphan] = []
    for row in batch:
        missing = tuple(
            (r.field, r.noun, row[i])
            for i, r in enumerate(child.references, start=1)
            if row[i] in absent[i - 1]
        )
        if missing:
            orphans.append(Orphan(child.name, row[0], missing))
    return orphans


def _missing(reader: Reader | None, table: str, ids: set[Any]) -> set[Any]:
    """The ids not stored in table, read where reader reads parents (default: its database)."""
    if reader is None:
        return missing_ids(table, ids)
    return missing_ids(table, ids, alias=reader.parents(table))


def _confirmed(child: TableSpec, orphans: Sequence[Orphan]) -> list[Orphan]:
    """Keep the orphans whose row is still stored and still misses a parent.

    A delete running beside the check removes the child before its parent; a child read
    before that delete and checked after it would otherwise be a false orphan. Read from
    replicas, they are confirmed on the primaries (reader.confirm_on_primaries), or again
    where they were found.
    """
    if not orphans:
        return []
    reader = _reader.get()
    if reader is not None and reader.confirm_on_primaries:
        token = _reader.set(None)  # children and parents read again on the primaries
        try:
            return _confirmed(child, orphans)
        finally:
            _reader.reset(token)
    alias = reader.children(child) if reader else child.alias
    connection = connections[alias]
    still = [
        row
        for chunk in query_chunks(connection, [o.id for o in orphans])
        for row in child.model.objects.using(alias)
        .filter(pk__in=chunk)
        .order_by("pk")
        .values_list(*_reference_columns(child))
    ]
    return _orphans_in(child, still)


def file_check(alias: str) -> str:
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
