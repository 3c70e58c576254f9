"""The reference guard: no interleaving of writes and deletes can commit an orphan.

Invariant: no committed child row names a parent row that is not committed.

Three databases cannot share a transaction, so the guard lives in each *child* database,
where both sides meet:

* A child writer (a loader batch, ``save()``, ``create()``, ``bulk_create()``,
  ``bulk_update()``, ``update()`` of a reference, ``loaddata``) takes the guard SHARED inside
  its transaction and holds it until it commits. It checks its rows' parents inside the guard
  when it must: always for the ORM, and for a loader batch only when a parent delete has
  committed since the run began (the deletion counter moved) or the row's parent was not
  known at validation.
* A parent deleter (``crossdb.deletion``: deletes, ``flush``, unapplied migrations) takes the
  guard EXCLUSIVE in every child database (sorted by alias, so two deleters never deadlock),
  bumps the deletion counter, refuses (PROTECT) or deletes (CASCADE) the children, deletes
  the parent in its own database, commits the children's databases, and only then commits
  the parent's. A crash between the two commits leaves a parent without children, never a
  child without a parent.

Why it closes the race: a writer either takes the guard before the deleter (the deleter
then waits, and sees the writer's children when it counts or deletes them), or after the
deleter's child transaction committed (the writer sees the counter moved and re-checks).
A re-check reads the parents in a way that waits for a deleter still committing the parent
(``FOR KEY SHARE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so it never sees a
parent whose deletion is about to commit.

The caller's own open transactions (the rule for ``transaction.atomic`` across databases):

* **A parent counts once it is committed.** A child write looks its parents up outside
  every transaction the calling thread holds: when the thread has an open transaction on a
  parent's database, the lookup runs on a connection of its own, and the parent must also
  still be there in the thread's own view. So a parent created in an open transaction is
  "not committed yet" and the child is refused (``MissingParent``), and a parent deleted in
  one is "deleted in this thread's open transaction". Why it must be so: the child's
  database commits on its own; had it trusted the thread's uncommitted parent, a rollback
  or a crash of the parent's transaction would leave the committed child an orphan. To
  create both, commit the parent first, or create the child in
  ``transaction.on_commit(..., using=<parent's alias>)``: a crash in between then leaves a
  parent without its child, never the reverse.
* **A delete commits children before parents, so it cannot run inside an open transaction
  on a children's database** (other than the parent's own): that transaction would commit
  the children's side after the parent's delete, and its rollback would bring back children
  of a deleted parent. It is refused (``CommitOrderError``) before anything is written. A
  delete inside a transaction on the parent's own database is fine: the children commit
  first, the parent's delete commits with the caller, and every other writer's look-up
  waits for it.
* Waiting is bounded. Every wait for the guard or for a lock a deleter holds gives up
  after ``CROSSDB["GUARD_TIMEOUT"]`` seconds (default 30) with ``GuardTimeout``,
  which names the database and, on PostgreSQL, the sessions holding it.

On SQLite the guard is the child database's write lock: every transaction here opens with
``BEGIN IMMEDIATE``, which is exclusive among writers, so shared and exclusive collapse to
"hold the write lock across check and commit" (and a thread holding an open transaction
holds that file's write lock, so no deleter elsewhere can be half-way through it). On
PostgreSQL it is a transaction-level advisory lock per parent table
(``pg_advisory_xact_lock_shared`` / ``pg_advisory_xact_lock``).

What cannot be guarded (raw SQL, another program writing the files) is found by
``check_integrity``.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from django.apps import apps
from django.db import IntegrityError, OperationalError, connections, transaction
from django.db import models as dj_models

from crossdb import causal, conf
from crossdb.databases import location
from crossdb.lookups import query_chunks
from crossdb.registry import spec

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from crossdb.models import ReferenceGuard
    from crossdb.registry import Reference, TableSpec

    # (row index, reference, parent id) of a reference whose parent is not committed
    Missing = tuple[int, Reference, Any]

log = logging.getLogger(__name__)

# A hook for tests: False switches the guard off (tests/launch.py --no-guard for the
# processes they start), to show that the race tests catch its absence. Never set otherwise.
ENABLED = True


class MissingParent(IntegrityError):
    """A write would store a child whose parent is not committed."""


class ChangedParentKey(IntegrityError):
    """A write would change the id of a row that children name."""


class CommitOrderError(transaction.TransactionManagementError):
    """The caller's open transactions would commit a guarded change in the wrong order."""


class GuardTimeout(OperationalError):
    """A wait for the guard, or for a lock a writer or deleter holds, passed its bound."""


def timeout() -> float:
    """The bound on every wait for the guard, in seconds (read on each use)."""
    return float(conf.get("GUARD_TIMEOUT"))


def _reference_guard() -> type[ReferenceGuard]:
    """The counters' model, from the app registry: core.models imports this module."""
    return apps.get_model("crossdb", "ReferenceGuard")


def _key(parent: str) -> int:
    return zlib.crc32(f"multids-reference-guard:{parent}".encode())


def _take_sqlite_write_lock(connection: BaseDatabaseWrapper) -> None:
    # BEGIN IMMEDIATE already holds it; a no-op write makes sure in any transaction mode.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE multids_reference_guard SET deletions = deletions WHERE 0")


# --- Bounded waits ------------------------------------------------------------------------


def is_lock_wait(exc: BaseException) -> bool:
    """Whether exc is a lock wait that gave up (PostgreSQL's lock_timeout, SQLite's busy)."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) == "55P03":  # lock_not_available
        return True
    return "database is locked" in str(exc)


def _holders(alias: str) -> str:
    """Describe the other sessions holding locks in alias's database (PostgreSQL), or ''."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return ""
    sql = (
        "SELECT DISTINCT l.pid, a.application_name FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND l.pid <> pg_backend_pid() AND a.datname = current_database() "
        "AND (l.locktype = 'advisory' OR l.mode IN "
        "('AccessExclusiveLock', 'ExclusiveLock', 'RowExclusiveLock')) ORDER BY 1 LIMIT 5"
    )
    try:
        with _apart(alias) as apart, apart.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetchall()
    except OperationalError:
        return ""
    named = [f"pid {pid}" + (f" ({name})" if name else "") for pid, name in rows]
    return f", held by {', '.join(named)}" if named else ""


def _timeout_message(alias: str, what: str) -> str:

    seconds = timeout()
    where = f"{alias} ({location(alias)})"
    if connections[alias].vendor == "sqlite":
        holder = ": another connection is writing to it (a load, a delete?)"
    else:
        holder = _holders(alias)
    return (
        f"waited {seconds:g} s for {what} in {where}{holder}; try again when it is done, "
        "or raise the bound (CROSSDB['GUARD_TIMEOUT'])"
    )


@contextlib.contextmanager
def translated(alias: str, what: str = "the reference guard") -> Iterator[None]:
    """Turn a lock wait on alias that gave up into ``GuardTimeout`` naming alias, without
    setting a bound (the connection's own applies)."""
    try:
        yield
    except GuardTimeout:
        raise
    except OperationalError as exc:
        if not is_lock_wait(exc):
            raise
        raise GuardTimeout(_timeout_message(alias, what)) from exc


@contextlib.contextmanager
def bounded(alias: str, what: str = "the reference guard") -> Iterator[None]:
    """Bound every lock wait on alias's connection inside the block by ``timeout()``; turn a
    wait that gives up into ``GuardTimeout`` naming alias (never a bare "database is locked").

    PostgreSQL: ``lock_timeout`` (``SET LOCAL`` inside a transaction, else for the block).
    SQLite: the connection's busy timeout, which also bounds ``BEGIN IMMEDIATE``.
    """
    connection = connections[alias]
    restore = _set_lock_timeout(connection, timeout())
    try:
        with translated(alias, what):
            yield
    finally:
        if restore is not None:
            restore()


def _set_lock_timeout(connection: BaseDatabaseWrapper, seconds: float) -> Callable[[], None] | None:
    """Set the connection's lock wait bound; return a function that puts the old one back
    (None when the transaction's end does that)."""
    millis = max(int(seconds * 1000), 1)
    if connection.vendor == "sqlite":
        # sqlite3.connect's timeout (Django's OPTIONS "timeout", 5 s unless set) is the busy
        # timeout every new connection starts with: when it is the bound, nothing to do.
        configured = connection.settings_dict.get("OPTIONS", {}).get("timeout", 5.0)
        if int(float(configured) * 1000) == millis:
            return None
    connection.ensure_connection()
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA busy_timeout")
            before = cursor.fetchone()[0]
            cursor.execute(f"PRAGMA busy_timeout = {millis}")

            def restore() -> None:
                with connection.cursor() as again:
                    again.execute(f"PRAGMA busy_timeout = {int(before)}")

            return restore
        if connection.vendor != "postgresql":
            return None
        if connection.in_atomic_block:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{millis}ms"])
            return None
        cursor.execute(
            "SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, false)",
            [f"{millis}ms"],
        )
        before = cursor.fetchone()[0]

    def reset() -> None:
        # Nested blocks put back what they found; a broken connection has nothing to reset.
        if connection.connection is None or connection.in_atomic_block:
            return
        with connection.cursor() as again:
            again.execute("SELECT set_config('lock_timeout', %s, false)", [before])

    return reset


@contextlib.contextmanager
def _apart(alias: str) -> Iterator[BaseDatabaseWrapper]:
    """A connection to alias's database of its own, outside every transaction of the
    calling thread (closed at the end of the block)."""
    base = connections[alias]
    apart = type(base)(dict(base.settings_dict), alias)
    try:
        yield apart
    finally:
        apart.close()


# --- The guard --------------------------------------------------------------------------


def share(alias: str, parents: Collection[str]) -> None:
    """Take the guard shared for parents in alias's open transaction (held until commit)."""
    connection = connections[alias]
    if not ENABLED or not parents:
        return
    if not connection.in_atomic_block:
        raise transaction.TransactionManagementError(
            "the reference guard must be taken inside a transaction"
        )
    with bounded(alias):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                for parent in sorted(parents):
                    cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [_key(parent)])
        elif connection.vendor == "sqlite":
            _take_sqlite_write_lock(connection)


def exclusive(alias: str, parent: str) -> None:
    """Take the guard exclusive for parent in alias's open transaction and bump its counter."""
    connection = connections[alias]
    if not connection.in_atomic_block:
        raise transaction.TransactionManagementError(
            "the reference guard must be taken inside a transaction"
        )
    if not ENABLED:
        return
    with bounded(alias):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_key(parent)])
        guards = _reference_guard().objects.using(alias)
        if not guards.filter(parent=parent).update(deletions=dj_models.F("deletions") + 1):
            guards.create(parent=parent, deletions=1)


def counters(alias: str, parents: Iterable[str]) -> dict[str, int]:
    """Return {parent: deletions committed so far} as alias sees it now."""
    found = dict(
        _reference_guard()
        .objects.using(alias)
        .filter(parent__in=list(parents))
        .values_list("parent", "deletions")
    )
    return {p: found.get(p, 0) for p in parents}


def holds_transaction(alias: str) -> bool:
    """Whether the calling thread holds an open transaction on alias.

    The transactions a Django ``TestCase`` wraps each test in do not count (as they do not
    for ``atomic(durable=True)``): inside them the test's rows are the committed state, and
    a test sees the same rules as a program outside any transaction.
    """
    blocks = connections[alias].atomic_blocks
    # Django's Atomic sets _from_testcase; django-stubs does not declare it.
    return any(not block._from_testcase for block in blocks)  # type: ignore[attr-defined]


def refuse_open_transactions(aliases: Iterable[str], doing: str) -> None:
    """Raise CommitOrderError if the calling thread holds an open transaction on one of
    aliases (children's databases a change must commit before its parent's)."""
    held = sorted(a for a in set(aliases) if holds_transaction(a))
    if held:
        names = " and ".join(held)
        raise CommitOrderError(
            f"cannot {doing} inside an open transaction on {names}: the children there must "
            "commit before the parent's change, and that transaction would commit after it. "
            f"Do it outside the transaction, or once it has committed "
            f"(transaction.on_commit(..., using={held[0]!r}))"
        )


# --- Looking parents up -----------------------------------------------------------------


def _as_stored(
    connection: BaseDatabaseWrapper, parent: TableSpec, ids: Iterable[Any]
) -> dict[Any, Any]:
    """{id as the database stores it: id as given}: a UUID is its hex on SQLite."""
    key = parent.model._meta.pk
    return {key.get_db_prep_value(i, connection): i for i in ids}


def _select_ids(
    connection: BaseDatabaseWrapper, parent: TableSpec, ids: Iterable[Any], *, lock: bool = False
) -> set[Any]:
    """The ids of parent's table among ids, as connection sees them; lock=True waits out a
    deleter still committing (PostgreSQL ``FOR KEY SHARE``)."""
    qn = connection.ops.quote_name
    pk = qn(parent.model._meta.pk.column)
    table = qn(parent.model._meta.db_table)
    stored = _as_stored(connection, parent, ids)
    found: set[Any] = set()
    with connection.cursor() as cursor:
        for chunk in query_chunks(connection, list(stored)):
            marks = ", ".join(["%s"] * len(chunk))
            sql = f"SELECT {pk} FROM {table} WHERE {pk} IN ({marks})"
            if lock and connection.vendor == "postgresql":
                sql += " FOR KEY SHARE"
            cursor.execute(sql, chunk)
            found.update(stored.get(row[0], row[0]) for row in cursor.fetchall())
    return found


def _committed_ids(parent: TableSpec, ids: Sequence[Any]) -> set[Any]:
    """The ids committed in parent's table, looked up on the thread's own connection, which
    holds no transaction there; waits out a deleter mid-commit."""
    alias = parent.alias
    connection = connections[alias]
    if connection.vendor == "postgresql":
        if not ids:
            return set()
        with bounded(alias, f"a lock on {parent.name}"):
            return _pg_key_share(connection, parent, ids)
    with bounded(alias), transaction.atomic(using=alias):  # SQLite: BEGIN IMMEDIATE waits
        if connection.vendor == "sqlite" and ENABLED:
            _take_sqlite_write_lock(connection)
        return _select_ids(connection, parent, ids)


def _pg_key_share(
    connection: BaseDatabaseWrapper, parent: TableSpec, ids: Iterable[Any]
) -> set[Any]:
    """``FOR KEY SHARE`` on the id list in one statement (waits for a deleter to finish)."""
    qn = connection.ops.quote_name
    key = parent.model._meta.pk
    pk = qn(key.column)
    sql = (
        f"SELECT {pk} FROM {qn(parent.model._meta.db_table)} "
        f"WHERE {pk} = ANY(%s::{key.rel_db_type(connection)}[]) FOR KEY SHARE"  # type: ignore[attr-defined]
    )
    stored = _as_stored(connection, parent, ids)
    found: set[Any] = set()
    with connection.cursor() as cursor:
        for chunk in query_chunks(connection, list(stored)):
            cursor.execute(sql, [chunk])
            found.update(stored.get(row[0], row[0]) for row in cursor.fetchall())
    return found


def _committed_apart(parent: TableSpec, ids: Sequence[Any], *, lock: bool = True) -> set[Any]:
    """The ids committed in parent's table, for a thread holding an open transaction on its
    database: read on a connection of its own, so only committed rows count.

    A deleter elsewhere may be half-way through deleting one of them. SQLite needs nothing
    for that: the thread's transaction holds the file's write lock, so nobody else can be.
    PostgreSQL: the thread first takes ``FOR KEY SHARE NOWAIT`` on the rows in its own
    transaction (``_kept_from_deleters``). Its own locks never stop it, and once taken no
    deleter can delete those rows before that transaction ends; so the committed read is
    final for them. A row another session holds is waited for on the connection apart,
    ``FOR KEY SHARE``, bounded. (Waiting there for a row the thread itself locked, say by
    changing its email, would wait for the thread's own commit: for ever.) lock=False
    reads without taking anything (to explain a refusal, never to accept a row).
    """
    alias = parent.alias
    contested: list[Any] = []
    if lock and connections[alias].vendor == "postgresql":
        contested = _kept_from_deleters(parent, ids)
    with _apart(alias) as apart:
        if not contested:
            return _select_ids(apart, parent, ids)
        apart.ensure_connection()
        apart.set_autocommit(False)
        try:
            with apart.cursor() as cursor:
                millis = max(int(timeout() * 1000), 1)
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{millis}ms"])
            waited = _pg_key_share(apart, parent, contested)
            rest = [pk for pk in ids if pk not in set(contested)]
            return waited | (_select_ids(apart, parent, rest) if rest else set())
        except OperationalError as exc:
            if is_lock_wait(exc):
                raise GuardTimeout(_timeout_message(alias, f"a lock on {parent.name}")) from exc
            raise
        finally:
            apart.rollback()


def _kept_from_deleters(parent: TableSpec, ids: Sequence[Any]) -> list[Any]:
    """Take ``FOR KEY SHARE NOWAIT`` on ids in the thread's own transaction on parent's
    database (PostgreSQL): all at once, and row by row only if some other session holds one;
    return the ids another session holds a conflicting lock on (a deleter at work), for the
    caller to wait for apart. Each attempt is a savepoint, so a refusal leaves the thread's
    transaction as it was."""
    alias = parent.alias
    connection = connections[alias]
    qn = connection.ops.quote_name
    pk = qn(parent.model._meta.pk.column)
    sql = (
        f"SELECT 1 FROM {qn(parent.model._meta.db_table)} WHERE {pk} = ANY(%s) FOR KEY SHARE NOWAIT"
    )

    def taken(values: Iterable[Any]) -> bool:
        stored = list(_as_stored(connection, parent, values))
        try:
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                cursor.execute(sql, [stored])
        except OperationalError as exc:
            if not is_lock_wait(exc):
                raise
            return False
        return True

    if taken(ids):
        return []
    return [value for value in ids if not taken([value])]


def existing_parents(parent_table: str, ids: Iterable[Any]) -> set[Any]:
    """Return the ids of parent_table that are committed (and, for a thread holding an open
    transaction on its database, not deleted in it), waiting out a deleter mid-commit."""

    parent = spec(parent_table)
    ids = list(ids)
    if not ids:
        return set()
    connection = connections[parent.alias]
    if not holds_transaction(parent.alias):
        return _committed_ids(parent, ids)
    own = _select_ids(connection, parent, ids)
    return _committed_apart(parent, sorted(own)) if own else set()


def missing_parents(
    table_spec: TableSpec,
    rows: Sequence[Sequence[Any]] | np.ndarray,
    known: dict[str, set[Any]] | None = None,
    references: Iterable[Reference] | None = None,
) -> list[Missing]:
    """Return [(row index, Reference, parent id)] for every reference not committed.

    rows: tuples, or a Block's integer array (checked a column at a time). known, if
    given, is {parent table: ids found committed earlier}: those are not looked up again,
    and the ids found now are added. The caller vouches that no deleter has committed
    since (the deletion counters have not moved). references: the ones to check (default:
    all of the table's).
    """
    missing: list[Missing] = []
    column: np.ndarray | list[Any]
    for reference in table_spec.references if references is None else references:
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


def why_missing(reference: Reference, pk: Any) -> str:
    """Say why parent pk of reference does not count, for a refused ORM write."""

    alias = spec(reference.parent).alias
    noun = reference.noun
    if holds_transaction(alias):
        parent = spec(reference.parent)
        own = _select_ids(connections[alias], parent, [pk])
        if own:
            return (
                f"{noun} {pk} is not committed yet (it is in this thread's open transaction "
                f"on {alias}); a parent counts once it is committed: write the "
                f"{spec(reference.child).noun} after that transaction commits, for instance "
                f"in transaction.on_commit(..., using={alias!r})"
            )
        if _committed_apart(parent, [pk], lock=False):
            return f"{noun} {pk} is deleted in this thread's open transaction on {alias}"
    return f"{noun} {pk} does not exist in {alias}; store the {noun} first"


def reference_values(
    table_spec: TableSpec, objs: Iterable[dj_models.Model], references: Iterable[Reference]
) -> list[tuple[Any, ...]]:
    """Rows (tuples in column order) of objs with each reference's value converted as
    Django converts it for the database ("1" -> 1), so the check sees what is stored."""
    model = table_spec.model
    converters = {
        r.field: cast(dj_models.Field, model._meta.get_field(r.field)).get_prep_value
        for r in references
    }
    rows = []
    for obj in objs:
        row = []
        for column in table_spec.columns:
            value = getattr(obj, column)
            convert = converters.get(column)
            if convert is not None and value is not None:
                if hasattr(value, "resolve_expression"):
                    raise MissingParent(
                        f"{table_spec.name}.{column} is set to an expression ({value}); the "
                        "reference guard needs the id itself: set a value, then save"
                    )
                value = convert(value)
            row.append(value)
        rows.append(tuple(row))
    return rows


def require_parents(
    table_spec: TableSpec,
    alias: str,
    objs: Iterable[dj_models.Model],
    references: Iterable[Reference] | None = None,
) -> None:
    """Raise MissingParent unless every reference of objs names a committed parent.

    references: the ones being written (default: all); the guard is taken for their parents.
    """
    if not ENABLED:
        return
    references = table_spec.references if references is None else tuple(references)
    if not references:
        return
    share(alias, tuple(dict.fromkeys(r.parent for r in references)))
    rows = reference_values(table_spec, objs, references)
    missing = missing_parents(table_spec, rows, references=references)
    if missing:
        index, reference, pk = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        pk_at = table_spec.position(table_spec.model._meta.pk.attname)
        what = (
            f"{table_spec.noun} {rows[index][pk_at]}"
            if rows[index][pk_at] is not None
            else (f"a new {table_spec.noun}")
        )
        raise MissingParent(f"{what}: {why_missing(reference, pk)}{more}")
    # Replicas: the child's database records the parents' positions it now depends on.
    causal.record(alias, (spec(r.parent).alias for r in references))
