import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent
ALL_DATABASES = ["default", "users_db", "orders_db", "products_db", "reviews_db"]

all_databases = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


@pytest.fixture
def run_command():
    """Call a management command in-process; return its stdout."""

    def run(name, *args, **options):
        from io import StringIO

        out = StringIO()
        call_command(name, *args, stdout=out, stderr=out, **options)
        return out.getvalue()

    return run


def manage(*args, data_dir, env=None, check=False, timeout=300):
    """Run manage.py in a subprocess against SQLite files in data_dir, as a user would."""
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")} | {
        "MULTIDS_DATA_DIR": str(data_dir),
        "DJANGO_SETTINGS_MODULE": "multids.settings",
    }
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        capture_output=True,
        text=True,
        env=environment,
        check=check,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def restore_indexes():
    """Whatever a test drops is built again, so later tests see the migrated schema."""
    from crossdb.loading import indexes

    yield
    indexes.repair()


@pytest.fixture
def migrated_dir(tmp_path):
    """A data directory whose four SQLite files are migrated."""
    manage("migrate_all", data_dir=tmp_path, check=True)
    return tmp_path


def behind_the_guards_back(alias, sql, params=()):
    """Write with raw SQL, as another program would: nothing of multids sees it."""
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


CUSTOMERS = (
    (1, "Alice", "alice@example.com"),
    (2, "Bob", "bob@example.org"),
    (3, "Carol", "carol@example.com"),
)


def store_customers():
    """Alice, Bob and Carol (users 1-3), the admin and web tests' customers."""
    from core.models import User

    User.objects.bulk_create(User(id=i, name=n, email=e) for i, n, e in CUSTOMERS)


def store_products(*named):
    """Products 1, 2, ... from (name, price) pairs, prices as text ("30.00")."""
    from decimal import Decimal

    from core.models import Product

    Product.objects.bulk_create(
        Product(id=i, name=name, price=Decimal(price)) for i, (name, price) in enumerate(named, 1)
    )


def page_text(response):
    """The page with runs of whitespace squeezed, so sentences split by templates match."""
    return " ".join(response.content.decode().split())
