"""Secondary indexes built after the data, the way pg_restore and pgloader load a table.

Inserting a million random keys into a B-tree costs several times more than sorting them
once and building the tree (1M orders into SQLite: 11-13 s with the two indexes in place,
4-5 s building them afterwards). So a load into an empty table may drop the indexes that
enforce nothing, load, and build them again.

What may be deferred is derived from the Django model alone: ``db_index`` fields and
``Meta.indexes`` (never the primary key, never a unique constraint or unique field: those
enforce rules that concurrent loaders rely on). Names and SQL come from the connection's
schema editor, the same code ``migrate`` runs, so a rebuilt index is byte for byte the one
the migration created and Django's migration state stays truthful.

Crash safety needs no marker: the model says which indexes must exist, and introspection
says which do. A load killed between ``drop_for_load`` and ``rebuild`` leaves a table with
an index missing, and ``repair()``, which insert_data, migrate_all and check_integrity call
first, builds it again. insert_data leaves it missing on a table it writes: that table's
writer loads its rows first and builds it at the end, as the stopped load would have. When
nothing is missing, ``repair()`` costs one catalogue query per table.

While an index is absent everything keeps working (reads, deletes, the admin); lookups by
that column scan the table instead (measured in tests/test_indexes.py).
"""

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.db.migrations.executor import MigrationExecutor

from crossdb import conf, registry
from crossdb.routers import database_for

log = logging.getLogger(__name__)


# PostgreSQL sorts an index build in maintenance_work_mem; the default (64MB) spills the
# million-order sort to disk. Raised for the build's own transaction only (SET LOCAL).
def build_memory():
    """``maintenance_work_mem`` for a build (``CROSSDB["INDEX_BUILD_MEMORY"]``)."""
    return conf.get("INDEX_BUILD_MEMORY")


# One catalogue query per table: the names of its valid indexes. Per backend, as data.
INDEX_NAMES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = %s",
    "postgresql": (
        "SELECT c.relname FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE t.relname = %s AND t.relnamespace = current_schema()::regnamespace "
        "AND i.indisvalid"
    ),
}

# Taken before checking that a table is empty, so no writer can add a row between the
# check and the drop. SQLite: the project opens every transaction with BEGIN IMMEDIATE,
# which already holds the write lock. PostgreSQL: DROP INDEX needs ACCESS EXCLUSIVE, so that
# is taken first. A weaker lock first and DROP INDEX later is a lock upgrade, and deadlocks
# with any transaction that read the table and then writes to it (a loader's batch, a save).
LOCK_FOR_DROP_SQL = {
    "postgresql": "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE",
}

# Per backend: whether index builds may run at once on separate connections. SQLite has
# one writer per file, so parallel builds would only queue on its lock.
PARALLEL_BUILDS = {"postgresql": True}

# Session settings for one index build, run inside its transaction. SQLite sorts an index
# build within cache_size: the writer's 64 MB cache (good for inserts into a unique index)
# made building the orders indexes slower than the 2 MB default (about 2.0 s against 1.4 s
# for a million rows, measured alone), and a second sorter thread takes about 0.1 s more off.
SQLITE_BUILD_CACHE_KB = 2000
SQLITE_SORTER_THREADS = min(os.cpu_count() or 1, 4)
#
# PostgreSQL gives one build up to max_parallel_maintenance_workers helper processes; builds
# that run at once share them (``_workers_each``), or they fight for the same cores: the two
# orders indexes of 10M rows, built at once on this 2-core server, took 5.5 s with two
# helpers each and 4.7 s with none.
BUILD_SETTINGS_SQL = {
    "postgresql": [
        "SET LOCAL maintenance_work_mem = '{memory}'",
        "SET LOCAL max_parallel_maintenance_workers = {workers}",
    ],
    "sqlite": [
        f"PRAGMA cache_size = -{SQLITE_BUILD_CACHE_KB}",
        f"PRAGMA threads = {SQLITE_SORTER_THREADS}",
    ],
}


@dataclass(frozen=True)
class DeferrableIndex:
    """One index that may be built after the data: its Django name and its SQL."""

    table: str
    name: str
    create_sql: str
    drop_sql: str


def _editor(alias):
    """A schema editor used only to generate SQL (never entered, so nothing runs)."""
    connection = connections[alias]
    editor = connection.SchemaEditorClass(connection, collect_sql=True)
    editor.deferred_sql = []  # set by __enter__, which would open a transaction
    return editor


def _unquote(name):
    return str(name).strip('"`[]')


def _default_alias(model):

    return database_for(model) or "default"


def deferrable(model, alias=None):
    """Return the DeferrableIndex list for model: its non-unique secondary indexes.

    alias picks the backend whose SQL and names are generated (default: where the router
    stores model). Django's ``_model_indexes_sql`` is exactly what ``migrate`` adds after a
    CreateModel: index statements for ``db_index`` fields that are not unique (plus, on
    PostgreSQL, their ``_like`` companions for text columns) and ``Meta.indexes``. Unique
    constraints and the primary key are never part of it.
    """
    alias = alias or _default_alias(model)
    editor = _editor(alias)
    table = model._meta.db_table
    found = []
    for statement in editor._model_indexes_sql(model):
        name = _unquote(statement.parts["name"])
        drop = editor._delete_index_sql(model, name)
        found.append(DeferrableIndex(table, name, str(statement), str(drop)))
    return found


def existing_index_names(alias, table):
    """The names of table's valid indexes, in one catalogue query."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(INDEX_NAMES_SQL[connection.vendor], [table])
        return {row[0] for row in cursor.fetchall()}


def missing(alias, model):
    """The deferrable indexes of model that alias does not have."""
    present = existing_index_names(alias, model._meta.db_table)
    return [index for index in deferrable(model, alias) if index.name not in present]


def drop_for_load(alias, model):
    """Drop model's deferrable indexes if its table is empty; return the names dropped.

    One transaction: the lock first, then the emptiness check, then the drops, so a row
    another writer commits meanwhile either comes before the check (nothing dropped) or
    after the drop (it lands without index maintenance and is indexed by ``rebuild``). A
    table that already has rows keeps its indexes: building them again would cost more
    than the load saves. That is checked once without a lock, so a load into a table that
    has rows never waits for, or blocks, anyone here.
    """
    candidates = deferrable(model, alias)
    if not candidates:  # nothing to gain: take no lock (a users writer must not wait here)
        return []
    connection = connections[alias]
    qn = connection.ops.quote_name
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {qn(table)} LIMIT 1")
        if cursor.fetchone() is not None:
            return []
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        lock = LOCK_FOR_DROP_SQL.get(connection.vendor)
        if lock:
            cursor.execute(lock.format(table=qn(table)))
        cursor.execute(f"SELECT 1 FROM {qn(table)} LIMIT 1")
        if cursor.fetchone() is not None:
            return []
        present = existing_index_names(alias, table)
        dropped = []
        for index in candidates:
            if index.name in present:
                cursor.execute(index.drop_sql)
                dropped.append(index.name)
    if dropped:
        log.info("%s: dropped %s on %s for the load", alias, ", ".join(dropped), table)
    return dropped


# The helpers one PostgreSQL index build may use, as the server sets it for a session.
PARALLEL_WORKERS_SQL = {"postgresql": "SHOW max_parallel_maintenance_workers"}


def _workers_each(alias, builds):
    """The helper processes each of builds index builds at once may use: the server's
    allowance for one build shared among them, each build's own process counted (2 on a
    default server: one build alone takes 2; two at once, none each; eight at once with an
    allowance of 8, none each)."""
    query = PARALLEL_WORKERS_SQL.get(connections[alias].vendor)
    if query is None:
        return 0
    with connections[alias].cursor() as cursor:
        cursor.execute(query)
        allowed = int(cursor.fetchone()[0])
    return max(0, (allowed + 1) // builds - 1)


def _build(alias, index, workers=0):
    """Create one index in its own transaction, with workers helper processes at most;
    True if built here, False if another process built it meanwhile."""
    connection = connections[alias]
    try:
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            for statement in BUILD_SETTINGS_SQL.get(connection.vendor, []):
                cursor.execute(statement.format(memory=build_memory(), workers=workers))
            cursor.execute(index.create_sql)
        return True
    except DatabaseError:
        # Two commands repairing at once: the second CREATE INDEX fails on the name.
        if index.name in existing_index_names(alias, index.table):
            return False
        raise


def _build_in_thread(alias, index, workers, results, errors):
    try:
        results[index.name] = _build(alias, index, workers)
    except DatabaseError as exc:
        errors.append(exc)
    finally:
        connections[alias].close()  # this thread's own connection


def rebuild(alias, model):
    """Create every deferrable index of model that alias lacks; return the names built.

    On PostgreSQL each index is built on its own connection (one thread each, every thread
    with its own Django connection, closed afterwards), at once, with maintenance_work_mem
    raised for the build and the server's parallel helpers shared among the builds; the
    builds share the table's SHARE lock, so they do not wait on each other. On SQLite they
    are built one after another.
    """
    todo = missing(alias, model)
    if not todo:
        return []
    vendor = connections[alias].vendor
    at_once = len(todo) if PARALLEL_BUILDS.get(vendor) else 1
    workers = _workers_each(alias, at_once)
    if at_once > 1:
        results: dict[str, Any] = {}
        errors: list[BaseException] = []
        threads = [
            threading.Thread(
                target=_build_in_thread,
                args=(alias, index, workers, results, errors),
                name=f"multids-index-{index.name}",
            )
            for index in todo
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        built = [index.name for index in todo if results.get(index.name)]
    else:
        built = [index.name for index in todo if _build(alias, index, workers)]
    if built:
        log.info("%s: built %s on %s", alias, ", ".join(built), model._meta.db_table)
    return built


def _migrations_applied(alias):
    """Whether alias has every migration applied (else migrate creates the index itself)."""
    executor = MigrationExecutor(connections[alias])
    return not executor.migration_plan(executor.loader.graph.leaf_nodes())


def routed_models():

    return [(registry.alias(name), model) for name, model in registry.models().items()]


def repair(aliases_and_models=None):
    """Rebuild every deferrable index that is missing; return [(alias, table, index)].

    aliases_and_models: (alias, model) pairs, by default every routed domain model. One
    catalogue query per table when nothing is missing. A table whose database still has
    migrations to apply is left alone: its indexes are the migration's to create, and
    building them first would make the migration fail on an existing name.
    """
    pairs = routed_models() if aliases_and_models is None else list(aliases_and_models)
    repaired = []
    for alias, model in pairs:
        lacking = missing(alias, model)
        if not lacking:
            continue
        if not _migrations_applied(alias):
            log.warning(
                "%s: %s lacks %s; left to migrate_all",
                alias,
                model._meta.db_table,
                ", ".join(i.name for i in lacking),
            )
            continue
        log.warning(
            "%s: %s lacks %s (a load was interrupted?); building it now",
            alias,
            model._meta.db_table,
            ", ".join(i.name for i in lacking),
        )
        for name in rebuild(alias, model):
            repaired.append((alias, model._meta.db_table, name))
    return repaired


def repair_and_say(stdout, leave=()):
    """``repair()`` for a command: one line per index rebuilt, nothing when none was.
    leave: tables whose missing indexes the command's writers build when they end."""
    pairs = [
        (alias, model) for alias, model in routed_models() if model._meta.db_table not in leave
    ]
    for alias, table, name in repair(pairs):
        stdout.write(f"{alias}: rebuilt index {name} on {table} (a load was interrupted)")
