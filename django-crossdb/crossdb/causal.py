"""Causal reads from replicas: a reader never sees a child row without its parent, nor
loses its own writes.

Invariant: a reader that sees a child row (an order) from any alias, a replica or the
primary, sees every parent it names (its user, its product) on whatever alias it reads
the parents from; and a reader that wrote to a database sees that write in its later
reads of it.

Every database replicates on its own, so a child database's replica can be ahead of a
parent database's replica: the order is there, its user not yet. The guard
(``crossdb.guard``) already orders the primaries: a child commits only after its parents
are committed. The protocol carries that order to the replicas.

* **Write side: each child write records what it depends on.** Inside the transaction of
  every guarded child write (``save()``, ``create()``, ``bulk_create()``, ``update()`` of a
  reference, a loader batch), after its parents are known committed, crossdb reads each
  parent database's primary position (``pg_current_wal_lsn()``) and raises the child
  database's watermark for that parent database to it (``crossdb_causal_positions``: a
  row per parent database and slot, ``GREATEST`` of old and new; slots spread the writers
  so they do not queue on one row). It commits with the rows, so it replicates with them.
* **Read side: parents only from where the watermark is replayed.** A reader notes every
  alias it read child rows from. Before it reads a parent database, it reads that
  database's watermark from each of those aliases (after the children: the watermark only
  grows, so it covers every child read before it), and reads the parents from a replica
  only if the replica has replayed that position, waiting up to ``CAUSAL_WAIT_SECONDS``;
  else from the primary.

Why it is correct: let child c be visible to the reader on alias R (replayed up to some
point). c's transaction wrote watermark ≥ L, where L is the parent primary's position
taken after c's parents were found committed, so L ≥ every such parent's commit. The
watermark is read on R after c, so W ≥ L. Parents are read on a replica that replayed
W ≥ L, or on the primary: either has every parent of c. Replicas replay in commit order,
so a replica that replayed position W shows every transaction committed before W.

* **Read-your-writes.** A write on a primary marks it written in the reader's state (an
  execute wrapper sees the statement). Once the write has committed, the next read takes
  the primary's position (``pg_current_wal_lsn()``: after a commit returns it covers that
  commit, with ``synchronous_commit`` on) and reads that database from a replica only once
  the replica has replayed it, else from the primary (no wait). Inside a transaction on
  the primary every read goes there. ``crossdb.middleware.CausalReadsMiddleware`` keeps a
  request's positions in a signed cookie, until every replica has replayed them.
* **One replica per database per reader.** A reader keeps to the replica it first used
  for a database (while it stays usable and far enough), so its reads never go back in
  time by switching to a replica that replayed less.

A reader is a request (the middleware), a command or a thread outside one (one state per
process), or a block (``reading()``, e.g. ``check_integrity --replica``). Its state is a
context variable, so async views and ``sync_to_async`` share it.

Deletes are ordered the other way (children first, then the parent); a reader whose child
replica lags while the parent replica has replayed a delete can see a child of a deleted
parent until the child replica catches up. ``check_integrity --replica`` confirms every
orphan on the primaries before it reports it; the deleter's own session reads the
primaries until the replicas have replayed its delete (read-your-writes). docs/replicas.md
says what closing it fully would take.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from crossdb import conf, registry, replicas

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models import Model

SLOTS = 16  # rows per parent database in the watermark table: writers spread over them
TABLE = "crossdb_causal_positions"
READ_ONLY_STATEMENTS = ("select", "show", "set ", "savepoint", "release", "rollback", "begin")


@dataclass
class ReaderState:
    """What one reader wrote and read, so its later reads can be placed."""

    positions: dict[str, int] = field(default_factory=dict)  # primary -> position to see
    written: set[str] = field(default_factory=set)  # primaries written since their position
    chosen: dict[str, str] = field(default_factory=dict)  # primary -> the replica kept to
    child_reads: dict[str, set[str]] = field(default_factory=dict)  # child primary -> aliases
    generation: int = 0  # child reads so far (a watermark read before one is stale)
    watermarks: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_process_state = ReaderState()
_state: contextvars.ContextVar[ReaderState | None] = contextvars.ContextVar(
    "crossdb_reader", default=None
)


def state() -> ReaderState:
    """The current reader's state (the process's own outside any request or block)."""
    return _state.get() or _process_state


@contextlib.contextmanager
def reading(positions: dict[str, int] | None = None) -> Iterator[ReaderState]:
    """Run the block as a reader of its own (a request, a check), starting from positions."""
    reader = ReaderState(positions=dict(positions or {}))
    token = _state.set(reader)
    try:
        yield reader
    finally:
        _state.reset(token)


def enabled() -> bool:
    return bool(conf.get("CAUSAL_READS"))


# --- What a reader wrote -------------------------------------------------------------------


def _is_write(sql: str) -> bool:
    return not sql.lstrip().lower().startswith(READ_ONLY_STATEMENTS)


def _note_writes(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """An execute wrapper on a primary with replicas: mark the reader as having written."""
    if isinstance(sql, str) and _is_write(sql):
        reader = state()
        with reader.lock:
            reader.written.add(context["connection"].alias)
    return execute(sql, params, many, context)


@receiver(connection_created)
def _watch_writes(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Watch the statements of every primary that has replicas (once per connection)."""
    if not replicas.of(connection.alias) or getattr(connection, "_crossdb_watched", False):
        return
    connection.execute_wrappers.append(_note_writes)
    connection._crossdb_watched = True  # type: ignore[attr-defined]  # crossdb's own mark


def take_positions(reader: ReaderState | None = None) -> None:
    """Turn the reader's committed writes into positions its reads must see."""
    reader = reader or state()
    for primary in sorted(reader.written):
        if connections[primary].in_atomic_block:
            continue  # not committed yet: its reads stay on the primary meanwhile
        position = replicas.primary_position(primary)
        with reader.lock:
            reader.written.discard(primary)
            reader.positions[primary] = max(reader.positions.get(primary, 0), position)


def settled(reader: ReaderState) -> dict[str, int]:
    """The reader's positions some replica of its database has not replayed yet (what a
    cookie must still carry)."""
    keep = {}
    for primary, position in reader.positions.items():
        for alias in replicas.of(primary):
            status = replicas.current(alias)
            if status.replay is None or status.replay < position:
                keep[primary] = position
                break
    return keep


# --- Where to read ---------------------------------------------------------------------------


def _parent_aliases(primary: str) -> set[str]:
    """The aliases holding tables that tables of primary reference."""
    specs = registry.specs()
    return {
        specs[r.parent].alias
        for s in specs.values()
        if s.alias == primary
        for r in s.references
        if r.parent in specs
    }


def _child_aliases(primary: str) -> set[str]:
    """The aliases holding tables whose rows reference rows of primary."""
    specs = registry.specs()
    return {
        s.alias
        for s in specs.values()
        for r in s.references
        if r.parent in specs and specs[r.parent].alias == primary
    }


def watermark(read_alias: str, parent: str) -> int:
    """The highest position of parent's primary that child rows readable on read_alias
    depend on (0: none recorded)."""
    with connections[read_alias].cursor() as cursor:
        cursor.execute(f"SELECT max(position) FROM {TABLE} WHERE parent_alias = %s", [parent])
        value = cursor.fetchone()[0]
    return int(value or 0)


def _causal_need(parent: str, reader: ReaderState) -> int:
    """The position of parent's primary the reader's child reads so far depend on."""
    need = 0
    for child in _child_aliases(parent):
        for alias in sorted(reader.child_reads.get(child, ())):
            key = (alias, parent)
            with reader.lock:
                cached = reader.watermarks.get(key)
            if cached is None or cached[0] != reader.generation:
                cached = (reader.generation, watermark(alias, parent))
                with reader.lock:
                    reader.watermarks[key] = cached
            need = max(need, cached[1])
    return need


def _choose(primary: str, need: int, wait: float, reader: ReaderState) -> str:
    """A replica of primary that is usable and has replayed need, else the primary."""
    candidates = replicas.of(primary)
    kept = reader.chosen.get(primary)
    if kept in candidates:
        candidates = [kept]  # never switch to a replica that may have replayed less
    for alias in candidates:
        if not replicas.current(alias).usable:
            continue
        if need and not (replicas.replayed(alias, need) or replicas.wait_for(alias, need, wait)):
            continue
        reader.chosen[primary] = alias
        return alias
    return primary


def read_alias(
    primary: str, *, child: bool, parent: bool, reader: ReaderState | None = None
) -> str:
    """Where the reader reads rows of primary now: a replica or primary itself.

    child: the rows read name parents elsewhere (noted, for the parents' reads); parent:
    rows elsewhere name these (their readers' watermarks apply)."""
    reader = reader or state()
    alias = primary
    if replicas.of(primary) and not connections[primary].in_atomic_block:
        if primary in reader.written:
            take_positions(reader)
        if primary not in reader.written:
            need = reader.positions.get(primary, 0)
            wait = 0.0
            if parent and enabled():
                causal = _causal_need(primary, reader)
                if causal > need:
                    need, wait = causal, float(conf.get("CAUSAL_WAIT_SECONDS"))
            alias = _choose(primary, need, wait, reader)
    if child:
        with reader.lock:
            reader.child_reads.setdefault(primary, set()).add(alias)
            reader.generation += 1
    replicas.SERVED[alias] += 1
    return alias


def for_model(model: type[Model]) -> str | None:
    """Where the router reads model (None: a model crossdb does not route)."""
    table = registry.specs().get(model._meta.db_table)
    if table is None:
        return None
    return read_alias(table.alias, child=bool(table.references), parent=bool(table.children))


def for_children(primary: str) -> str:
    """Where a reader reads child rows of primary (noted for their parents' reads)."""
    return read_alias(primary, child=True, parent=bool(_child_aliases(primary)))


def for_parents(primary: str) -> str:
    """Where a reader reads parent rows of primary, after the children that name them."""
    return read_alias(primary, child=bool(_parent_aliases(primary)), parent=True)


# --- The write side ----------------------------------------------------------------------------


def record(child_alias: str, parent_aliases: Iterable[str]) -> None:
    """In the child's open transaction, raise its watermark for each parent database that
    has replicas to that primary's current position. Call it after the parents are known
    committed (the guard's check, or a loader batch whose parents committed before it)."""
    parents = sorted({p for p in parent_aliases if replicas.of(p)})
    if not parents:
        return
    connection = connections[child_alias]
    slot = connection.connection.info.backend_pid if connection.vendor == "postgresql" else 0
    greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    with connection.cursor() as cursor:
        for parent in parents:
            position = replicas.primary_position(parent)
            cursor.execute(
                f"INSERT INTO {TABLE} (parent_alias, slot, position) VALUES (%s, %s, %s) "
                "ON CONFLICT (parent_alias, slot) DO UPDATE SET position = "
                f"{greatest}({TABLE}.position, EXCLUDED.position)",
                [parent, slot % SLOTS, position],
            )


def record_for(table_name: str, child_alias: str) -> None:
    """``record`` for a child table's parent databases (the loader's hook)."""
    table = registry.specs().get(table_name)
    if table is not None and table.references:
        record(child_alias, (registry.specs()[r.parent].alias for r in table.references))
