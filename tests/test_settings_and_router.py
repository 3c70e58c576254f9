"""Each table lives in its own database, and every SQLite connection is tuned for writers."""

import pytest
from crossdb.models import LoadRun
from crossdb.routers import DatabaseRouter
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from core.models import Order, Product, User
from multids.settings import database_config
from tests.conftest import ALL_DATABASES, all_databases, manage

EXPECTED_TABLES = {
    "users_db": {"users"},
    "orders_db": {"orders"},
    "products_db": {"products", "shelves"},  # the test settings' shelves (tests/kinds)
}


@pytest.mark.sqlite_files
@all_databases
@pytest.mark.parametrize("alias", ALL_DATABASES)
def test_every_sqlite_connection_reads_back_its_pragmas(alias):
    """A misplaced OPTIONS key silently does nothing, so read the values from the live link."""
    with connections[alias].cursor() as cursor:
        assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cursor.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        busy = cursor.execute("PRAGMA busy_timeout").fetchone()[0]
    assert busy == settings.SQLITE_BUSY_TIMEOUT_SECONDS * 1000
    assert connections[alias].transaction_mode == "IMMEDIATE"


@all_databases
@pytest.mark.parametrize("alias", sorted(EXPECTED_TABLES))
def test_each_domain_database_holds_only_its_table(alias):
    tables = set(connections[alias].introspection.table_names()) - {"django_migrations"}
    crossdb_tables = {"multids_reference_guard", "crossdb_causal_positions"}
    assert tables == EXPECTED_TABLES[alias] | crossdb_tables


@all_databases
def test_default_holds_djangos_tables_and_none_of_the_domain_tables():
    tables = set(connections["default"].introspection.table_names())
    assert {"auth_user", "django_session", "django_content_type", "load_runs"} <= tables
    assert not tables & {"users", "orders", "products"}


def test_router_sends_each_model_to_its_database():
    router = DatabaseRouter()
    assert router.db_for_write(User) == "users_db"
    assert router.db_for_read(Order) == "orders_db"
    assert router.db_for_read(Product) == "products_db"
    assert router.db_for_read(LoadRun) is None  # no opinion: Django uses default


def test_router_refuses_relations_across_databases():
    user, order = User(pk=1), Order(pk=1)
    user._state.db, order._state.db = "users_db", "orders_db"
    assert DatabaseRouter().allow_relation(user, order) is False
    other = User(pk=2)
    other._state.db = "users_db"
    assert DatabaseRouter().allow_relation(user, other) is None


def test_router_keeps_djangos_apps_out_of_domain_databases():
    router = DatabaseRouter()
    assert router.allow_migrate("users_db", "auth", "user") is False
    assert router.allow_migrate("default", "auth", "user") is None
    assert router.allow_migrate("default", "core", "user") is False
    assert router.allow_migrate("orders_db", "core", "order") is True


def test_a_url_replaces_the_sqlite_file():
    config = database_config("orders_db", {"ORDERS_DATABASE_URL": "postgres://u@db.example:5433/o"})
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.example", 5433, "o")


def test_a_sqlite_url_gets_the_same_tuning():
    config = database_config("users_db", {"USERS_DATABASE_URL": "sqlite:////tmp/u.db"})
    assert config["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in config["OPTIONS"]["init_command"]


def test_a_bad_url_names_its_variable():
    with pytest.raises(ImproperlyConfigured, match="USERS_DATABASE_URL"):
        database_config("users_db", {"USERS_DATABASE_URL": "nosuchscheme://x"})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MULTIDS_LOAD_SEGMENT_MB", "lots"),
        ("MULTIDS_WRITER_CACHE_MB", "-1"),
        ("USERS_DATABASE_URL", "nosuchscheme://x"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_1(tmp_path, variable, value):
    done = manage("insert_data", "--no-progress", data_dir=tmp_path, env={variable: value})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], done.stderr
