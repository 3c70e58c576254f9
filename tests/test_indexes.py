"""crossdb.loading.indexes: secondary indexes dropped for a load into an empty table and built
after it.

In-process against the test databases, so tests/test_postgres.py reruns every test here on
PostgreSQL. The crash test kills a real process with SIGKILL between the drop and the
rebuild, and the next command's ``repair()`` must notice and rebuild.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from crossdb import registry
from crossdb.loading import indexes
from crossdb.loading.load import writer_for
from django.db import DatabaseError, connections, transaction
from django.test.utils import CaptureQueriesContext

from core.models import Order, Product, User
from tests.conftest import ROOT, all_databases

pytestmark = all_databases

ORDERS = "orders_db"


def _django_indexes(alias, table):
    """What Django's introspection calls the table's non-unique, non-primary indexes."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return {
        name
        for name, info in constraints.items()
        if info["index"] and not info["unique"] and not info["primary_key"]
    }


def _unique_names(alias, table):
    """The unique constraints and primary key of table, named by their columns."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return {
        ",".join(info["columns"])
        for info in constraints.values()
        if info["unique"] or info["primary_key"]
    }


def _index_sql(alias, table):
    """name -> the SQL the database keeps for each index (to compare before and after)."""
    connection = connections[alias]
    query = {
        "sqlite": "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name=%s",
        "postgresql": "SELECT indexname, indexdef FROM pg_indexes WHERE tablename=%s",
    }[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(query, [table])
        return dict(cursor.fetchall())


def _insert_orders(count, users=1000):
    connection = connections[ORDERS]
    rows = [(i, 1 + i % users, 1 + i % 97, 1) for i in range(1, count + 1)]
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO orders (id, user_id, product_id, quantity) VALUES (%s, %s, %s, %s)",
            rows,
        )


def test_deferrable_names_are_djangos_migration_names():
    """The migrated schema holds exactly the indexes deferrable() derives, by name."""
    for name, model in registry.models().items():
        alias = registry.alias(name)
        derived = {i.name for i in indexes.deferrable(model, alias)}
        assert derived == _django_indexes(alias, model._meta.db_table), name
    assert {i.name for i in indexes.deferrable(Order, ORDERS)} == {
        connections[ORDERS].schema_editor()._create_index_name("orders", [column], suffix="")
        for column in ("user_id", "product_id")
    }


def _unique_index_names(alias, table):
    """The names of table's unique constraints and primary key."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    return {name for name, info in constraints.items() if info["unique"] or info["primary_key"]}


def test_unique_indexes_and_primary_keys_are_never_deferrable(restore_indexes):
    # PostgreSQL gives a unique text column a plain ``_like`` companion index; that one may
    # be deferred, the unique index itself never.
    for model, alias in ((User, "users_db"), (Product, "products_db")):
        deferred = indexes.deferrable(model, alias)
        assert not {i.name for i in deferred} & _unique_index_names(alias, model._meta.db_table)
        assert not any("UNIQUE" in i.create_sql.upper() for i in deferred)
    before = _unique_names("users_db", "users")
    assert "email_key" in before  # the unique email key, which concurrent loaders rely on
    indexes.drop_for_load("users_db", User)
    assert _unique_names("users_db", "users") == before
    dropped = indexes.drop_for_load(ORDERS, Order)
    assert dropped and not set(dropped) & _unique_names(ORDERS, "orders")
    assert _unique_names(ORDERS, "orders")  # the primary key's index stays


def test_drop_then_rebuild_gives_back_the_same_indexes(restore_indexes):
    before = _index_sql(ORDERS, "orders")
    names = {i.name for i in indexes.deferrable(Order, ORDERS)}
    assert set(indexes.drop_for_load(ORDERS, Order)) == names
    assert {i.name for i in indexes.missing(ORDERS, Order)} == names
    assert names.isdisjoint(_index_sql(ORDERS, "orders"))
    _insert_orders(5000)
    assert set(indexes.rebuild(ORDERS, Order)) == names
    assert _index_sql(ORDERS, "orders") == before
    assert Order.objects.filter(user_id=7).count() == 5


def test_a_table_with_rows_keeps_its_indexes():
    _insert_orders(1)
    assert indexes.drop_for_load(ORDERS, Order) == []
    assert indexes.missing(ORDERS, Order) == []


def test_every_step_is_idempotent(restore_indexes):
    assert indexes.rebuild(ORDERS, Order) == []
    assert indexes.repair() == []
    assert indexes.drop_for_load(ORDERS, Order)
    assert indexes.drop_for_load(ORDERS, Order) == []
    assert indexes.rebuild(ORDERS, Order)
    assert indexes.rebuild(ORDERS, Order) == []
    assert indexes.repair() == []


def test_repair_costs_one_query_per_table_when_nothing_is_missing():
    contexts = {
        a: CaptureQueriesContext(connections[a]) for a in ("users_db", "products_db", ORDERS)
    }
    for context in contexts.values():
        context.__enter__()
    try:
        assert indexes.repair() == []
    finally:
        for context in contexts.values():
            context.__exit__(None, None, None)
    tables = {a: sum(1 for s in registry.specs().values() if s.alias == a) for a in contexts}
    assert {a: len(c.captured_queries) for a, c in contexts.items()} == tables


CRASHING_LOADER = """
import json, os, signal, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
from django.conf import settings
settings.DATABASES.update(json.loads(sys.argv[1]))
import django
django.setup()
from django.db import DatabaseError, connections, transaction
from crossdb.loading import indexes
from core.models import Order
dropped = indexes.drop_for_load("orders_db", Order)
with connections["orders_db"].cursor() as cursor:
    cursor.executemany(
        "INSERT INTO orders (id, user_id, product_id, quantity) VALUES (%s, %s, %s, %s)",
        [(i, i % 50 + 1, 1, 1) for i in range(1, 2001)],
    )
print(json.dumps(dropped), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_repair_rebuilds_what_a_killed_load_dropped(restore_indexes):
    databases = {a: dict(connections[a].settings_dict) for a in ("default", ORDERS)}
    for alias in databases:
        connections[alias].close()  # the child opens the same test databases
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_LOADER, json.dumps(databases, default=str)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")},
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    dropped = json.loads(result.stdout)
    assert len(dropped) == 2
    assert {i.name for i in indexes.missing(ORDERS, Order)} == set(dropped)
    assert Order.objects.count() == 2000  # the rows committed before the kill stay

    repaired = indexes.repair()
    assert sorted(repaired) == sorted((ORDERS, "orders", name) for name in dropped)
    assert indexes.missing(ORDERS, Order) == []
    assert indexes.repair() == []
    assert _django_indexes(ORDERS, "orders") == set(dropped)


def test_a_writer_builds_what_a_stopped_load_left_unbuilt_after_its_rows(restore_indexes):
    """A load stopped part-way leaves the indexes it dropped missing; the next writer of that
    table keeps them so while it writes (its rows go in without them) and builds them when
    it finishes, as the stopped load would have."""
    dropped = indexes.drop_for_load(ORDERS, Order)
    _insert_orders(2000)  # what the stopped load committed
    writer = writer_for("orders", ORDERS)
    assert sorted(writer.deferred_indexes) == sorted(dropped)
    assert {i.name for i in indexes.missing(ORDERS, Order)} == set(dropped)
    writer.finish()
    assert indexes.missing(ORDERS, Order) == []
    assert _django_indexes(ORDERS, "orders") == set(dropped)


def test_builds_at_once_share_the_servers_parallel_helpers():
    """Two builds at once take the helpers one build would have, each counting itself."""
    connection = connections[ORDERS]
    if connection.vendor != "postgresql":
        assert indexes._workers_each(ORDERS, 2) == 0  # SQLite has no helpers to share
        return
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_parallel_maintenance_workers")
        allowed = int(cursor.fetchone()[0])
    assert indexes._workers_each(ORDERS, 1) == allowed
    assert indexes._workers_each(ORDERS, 2) == max(0, (allowed + 1) // 2 - 1)
    assert indexes._workers_each(ORDERS, 2 * (allowed + 1)) == 0


@pytest.mark.postgres
def test_parallel_builds_close_their_connections(restore_indexes):
    connection = connections[ORDERS]
    if connection.vendor != "postgresql":
        pytest.skip("parallel builds are PostgreSQL's; SQLite builds one after another")

    def backends():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            )
            return cursor.fetchone()[0]

    before = backends()
    indexes.drop_for_load(ORDERS, Order)
    _insert_orders(20_000)
    assert len(indexes.rebuild(ORDERS, Order)) == 2
    deadline = time.monotonic() + 5
    while backends() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backends() == before


def test_dropping_for_a_load_never_deadlocks_a_transaction_that_reads_then_writes(
    restore_indexes,
):
    """A batch or a save that read orders and then writes must never meet a deadlock.

    The drop waits for the reader instead; the reader's row then keeps the indexes. Taking a
    weaker lock first and DROP INDEX's ACCESS EXCLUSIVE later was a lock upgrade, which
    PostgreSQL broke with "deadlock detected" in the checker's runs.
    """
    connection = connections[ORDERS]
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's BEGIN IMMEDIATE takes the one write lock first: no upgrade")
    outcome = {}

    def drop():
        try:
            outcome["dropped"] = indexes.drop_for_load(ORDERS, Order)
        except DatabaseError as exc:
            outcome["error"] = exc
        finally:
            connections[ORDERS].close()

    def waiting_for_a_lock():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = 'orders'::regclass AND NOT granted"
            )
            return cursor.fetchone()[0] > 0

    with transaction.atomic(using=ORDERS):
        assert not Order.objects.using(ORDERS).exists()  # holds ACCESS SHARE until commit
        thread = threading.Thread(target=drop)
        thread.start()
        deadline = time.monotonic() + 10
        while not waiting_for_a_lock() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert waiting_for_a_lock(), "the drop never waited for the reader"
        _insert_orders(1)  # ROW EXCLUSIVE: the write after the read
        time.sleep(1.5)  # past deadlock_timeout (1 s), when PostgreSQL would break a cycle
    thread.join(timeout=30)
    assert "error" not in outcome, outcome
    assert outcome == {"dropped": []}
    assert indexes.missing(ORDERS, Order) == []


def _plan(query):
    connection = connections[ORDERS]
    sql, params = query.query.sql_with_params()
    explain = {"sqlite": "EXPLAIN QUERY PLAN ", "postgresql": "EXPLAIN "}[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(explain + sql, params)
        return " ".join(str(part) for row in cursor.fetchall() for part in row)


def _lookup_seconds(user_id, repeat=20):
    started = time.perf_counter()
    for _ in range(repeat):
        list(Order.objects.filter(user_id=user_id).values_list("pk", flat=True))
    return (time.perf_counter() - started) / repeat


def test_lookup_of_orders_by_user_while_the_index_is_absent(restore_indexes):
    """What a safe delete's "orders of customer 7" costs during a load that dropped the index.

    The plan is asserted (index, then a full scan); the times are printed, not asserted.
    """
    dropped = indexes.drop_for_load(ORDERS, Order)
    _insert_orders(200_000, users=20_000)
    query = Order.objects.filter(user_id=7).values_list("pk", flat=True)
    without_plan, without = _plan(query), _lookup_seconds(7)
    indexes.rebuild(ORDERS, Order)
    with_plan, with_index = _plan(query), _lookup_seconds(7)
    user_index = next(name for name in dropped if "user_id" in name)
    assert user_index not in without_plan
    assert user_index in with_plan
    print(
        f"\n{connections[ORDERS].vendor}: orders of one user among 200,000: "
        f"{without * 1000:.1f} ms without the index, {with_index * 1000:.2f} ms with it"
    )
