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
