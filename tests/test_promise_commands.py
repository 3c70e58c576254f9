"""The promise under the commands a user runs (issue 15), as real processes, on both backends.

Before: ``flush --database users_db`` orphaned every order, ``migrate core zero --database
users_db`` dropped the users under them, ``migrate_all`` quietly recreated an emptied (or
lost) users table, ``check_integrity`` said only "migration(s) not applied", ``loaddata``
printed a traceback, and a process killed inside ``atomic("users_db")`` left the order it
had written there an orphan.
"""

import json
import sqlite3
import textwrap

import pytest

from tests import test_races
from tests.concurrency import FILES, VARIABLES, Backend
from tests.test_postgres import postgres_server  # noqa: F401 (fixture)

BACKENDS = test_races.BACKENDS
backend_factory = test_races.backend_factory  # the fixture, under its own name

pytestmark = pytest.mark.parametrize("backend_factory", BACKENDS, indirect=True)


def seeded(backend_factory):
    """A migrated backend holding the demo data (orders naming users and products)."""
    backend = backend_factory()
    backend.manage("insert_data", "--no-progress", check=True)
    assert backend.count("orders") > 0
    return backend


def one_line_error(done):
    """The command failed with one line on stderr and no traceback; return that line."""
    assert done.returncode == 1, (done.returncode, done.stdout[-1000:], done.stderr[-1000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def clean(backend):
    status, report = backend.check_integrity()
    return status == 0 and report["orphan_count"] == 0


def raw(backend, alias, sql):
    """Run sql on alias beside Django, as another program would."""
    if backend.name == "sqlite":
        with sqlite3.connect(backend.data_dir / FILES[alias]) as db:
            db.execute(sql)
        return
    import psycopg

    with psycopg.connect(backend.urls[VARIABLES[alias]], autocommit=True) as db:
        db.execute(sql)


def test_flush_of_the_users_database_is_refused_while_orders_name_its_users(backend_factory):
    backend = seeded(backend_factory)
    orders, users = backend.count("orders"), backend.count("users")
    error = one_line_error(backend.manage("flush", "--database", "users_db", "--no-input"))
    assert error == (
        f"CommandError: {orders} orders in orders_db name rows of users_db; emptying it would "
        "leave them orphaned; flush their databases first, or add --with-children to delete "
        "them too (python manage.py flush --database users_db --with-children)"
    )
    assert (backend.count("orders"), backend.count("users")) == (orders, users)
    done = backend.manage("flush", "--database", "users_db", "--no-input", "--with-children")
    assert done.returncode == 0, done.stderr
    assert f"deleted {orders} orders that named rows of users_db" in done.stdout
    assert (backend.count("orders"), backend.count("users")) == (0, 0)
    assert clean(backend)


def test_flush_of_the_childrens_database_first_needs_no_flag(backend_factory):
    backend = seeded(backend_factory)
    for alias in ("orders_db", "users_db", "products_db"):
        done = backend.manage("flush", "--database", alias, "--no-input")
        assert done.returncode == 0, done.stderr
    assert [backend.count(t) for t in ("users", "products", "orders")] == [0, 0, 0]


def test_migrate_zero_of_the_users_table_is_refused_while_orders_name_users(backend_factory):
    backend = seeded(backend_factory)
    orders, users = backend.count("orders"), backend.count("users")
    error = one_line_error(backend.manage("migrate", "core", "zero", "--database", "users_db"))
    assert error == (
        f"CommandError: cannot unapply the migrations of users in users_db: {orders} orders in "
        "orders_db name rows of users_db; delete them first, or do the same to their "
        "databases first"
    )
    assert backend.count("users") == users
    backend.manage("flush", "--database", "orders_db", "--no-input", check=True)
    backend.manage("migrate", "core", "zero", "--database", "users_db", check=True)
    done = backend.manage("migrate_all")
    assert done.returncode == 0, done.stderr
    assert "users_db" in done.stdout and "created: users" in done.stdout


def lose_the_users_database(backend):
    """Users' database gone as a disk or an operator would lose it: a zero-length file on
    SQLite, a database created anew on PostgreSQL."""
    if backend.name == "sqlite":
        path = backend.data_dir / FILES["users_db"]
        for extra in ("-wal", "-shm"):
            path.with_name(path.name + extra).unlink(missing_ok=True)
        path.write_bytes(b"")
        return
    import psycopg
    from psycopg import sql

    url = backend.urls[VARIABLES["users_db"]]
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def test_a_lost_users_database_is_named_by_check_integrity_and_migrate_all(backend_factory):
    backend = seeded(backend_factory)
    orders = backend.count("orders")
    lose_the_users_database(backend)
    done = backend.manage("check_integrity")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "users_db: " in done.stderr and " migration(s) not applied" in done.stderr
    expected = (
        f"{orders} orders in orders_db name users, but users in users_db is empty or missing: "
        "restore users_db from a backup, or delete those orders"
    )
    assert expected in done.stderr
    done = backend.manage("migrate_all")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stdout
    assert "CommandError: migrated, but 1 reference(s) name an empty or missing table" in (
        done.stderr
    )


def test_migrate_all_over_an_emptied_users_table_says_so(backend_factory):
    backend = seeded(backend_factory)
    raw(backend, "users_db", "DELETE FROM users")
    done = backend.manage("migrate_all")
    assert done.returncode == 1, done.stderr
    assert "orders in orders_db name users, but users in users_db is empty" in done.stdout


def test_loaddata_of_an_order_before_its_user_is_one_line(backend_factory, tmp_path):
    backend = backend_factory()
    fixture = tmp_path / "orders.json"
    order = {"user_id": 9, "product_id": 9, "quantity": 1}
    fixture.write_text(json.dumps([{"model": "core.order", "pk": 4, "fields": order}]))
    error = one_line_error(backend.manage("loaddata", "--database", "orders_db", str(fixture)))
    assert error.startswith("CommandError: Problem installing fixture "), error
    assert (
        "Could not load core.Order(pk=4): order 4: customer 9 does not exist in users_db" in error
    )
    assert backend.count("orders") == 0


def test_loaddata_before_migrate_all_is_one_line(backend_factory, tmp_path):
    backend = backend_factory()
    fresh = Backend(backend.name, tmp_path / "fresh", backend.settings, backend.urls)
    fresh.data_dir.mkdir()
    if backend.name == "postgresql":
        for alias in fresh.aliases:  # the migrated databases, emptied of their tables
            raw(fresh, alias, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    fixture = tmp_path / "users.json"
    fixture.write_text(
        '[{"model": "core.user", "pk": 1, "fields": {"name": "A", "email": "a@b.c"}}]'
    )
    error = one_line_error(fresh.manage("loaddata", "--database", "users_db", str(fixture)))
    assert "Run: python manage.py migrate_all" in error or "run python manage.py migrate_all" in (
        error
    )


def test_a_process_killed_inside_a_transaction_on_users_leaves_no_orphan(backend_factory):
    """The natural "create both" inside atomic("users_db"), killed before it ends: the order
    is refused at once (its user is not committed), so the kill leaves nothing behind."""
    backend = seeded(backend_factory)
    script = textwrap.dedent(
        """
        import os, signal
        from django.db import transaction
        from crossdb.guard import MissingParent
        from core.models import Order, User
        with transaction.atomic(using="users_db"):
            User.objects.create(id=500, name="Eve", email="eve.500@example.com")
            try:
                Order.objects.create(id=500, user_id=500, product_id=1, quantity=1)
            except MissingParent as exc:
                print("refused:", exc, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = backend.manage("shell", "-c", script)
    assert done.returncode == -9, done.stderr
    assert "refused: order 500: customer 500 is not committed yet" in done.stdout
    assert 500 not in backend.ids("orders") and 500 not in backend.ids("users")
    assert clean(backend)
