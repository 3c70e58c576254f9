"""crossdb's system checks: each misconfiguration is one error with its id and the name of
the setting, from ``manage.py check``, never a traceback at import (crossdb/checks.py)."""

import subprocess
import sys

import pytest
from crossdb import checks
from crossdb.fields import PROTECT, CrossDatabaseReference
from crossdb.models import GuardedModel
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test.utils import isolate_apps

from tests.conftest import ROOT, manage


def check_says(settings, **changes):
    """Run manage.py check with settings changed; return its error text."""
    for name, value in changes.items():
        setattr(settings, name, value)
    with pytest.raises(SystemCheckError) as failed:
        call_command("check", tags=["crossdb"])
    return str(failed.value)


def routed(settings, **mapping):
    return {**settings.CROSSDB, "DATABASES_FOR_MODELS": mapping}


def test_the_project_passes():
    call_command("check", tags=["crossdb"])


def test_an_unknown_setting_is_named_with_the_closest_one(settings):
    text = check_says(settings, CROSSDB={**settings.CROSSDB, "GUARD_TIMOUT": 5})
    assert "(crossdb.E001) CROSSDB names 'GUARD_TIMOUT', which is not a setting" in text
    assert "Did you mean 'GUARD_TIMEOUT'?" in text


def test_a_model_that_is_not_installed(settings):
    mapping = {**settings.CROSSDB["DATABASES_FOR_MODELS"], "core.usr": "users_db"}
    text = check_says(settings, CROSSDB=routed(settings, **mapping))
    assert (
        "(crossdb.E002) CROSSDB[\"DATABASES_FOR_MODELS\"] names 'core.usr', which is not an "
        "installed model"
    ) in text


def test_a_model_mapped_to_an_alias_that_does_not_exist(settings):
    mapping = {**settings.CROSSDB["DATABASES_FOR_MODELS"], "core.user": "customers_db"}
    text = check_says(settings, CROSSDB=routed(settings, **mapping))
    assert (
        "(crossdb.E003) CROSSDB[\"DATABASES_FOR_MODELS\"] maps 'core.user' to 'customers_db', "
        "which is not in DATABASES"
    ) in text


def test_a_reference_to_a_model_that_is_not_routed(settings):
    mapping = dict(settings.CROSSDB["DATABASES_FOR_MODELS"])
    del mapping["core.product"]
    text = check_says(settings, CROSSDB=routed(settings, **mapping))
    assert (
        "(crossdb.E005) core.Order.product_id references core.Product, but 'core.product' is "
        'not in CROSSDB["DATABASES_FOR_MODELS"]'
    ) in text


def test_a_routed_model_that_is_not_guarded(settings):
    mapping = {**settings.CROSSDB["DATABASES_FOR_MODELS"], "auth.group": "users_db"}
    text = check_says(settings, CROSSDB=routed(settings, **mapping))
    assert "(crossdb.E007) auth.Group is routed by" in text


def test_the_router_missing(settings):
    text = check_says(settings, DATABASE_ROUTERS=[])
    assert "(crossdb.E008) DATABASE_ROUTERS lacks 'crossdb.routers.DatabaseRouter'" in text


def test_a_sqlite_database_without_immediate_transactions_is_a_warning(settings):
    databases = {alias: dict(config) for alias, config in settings.DATABASES.items()}
    if not databases["users_db"]["ENGINE"].endswith("sqlite3"):
        pytest.skip("SQLite's transaction mode")
    databases["users_db"]["OPTIONS"] = {}
    with pytest.warns(UserWarning, match="Overriding setting DATABASES"):
        settings.DATABASES = databases
    (warning,) = [m for m in checks.check_settings() if m.id == "crossdb.W001"]
    assert warning.msg.startswith("DATABASES['users_db'] is SQLite without")


@isolate_apps("tests.reviews")
def test_a_cycle_of_references_and_a_reference_to_no_model():
    class Author(GuardedModel):
        book = CrossDatabaseReference("reviews.Book", on_delete=PROTECT)

        class Meta:
            app_label = "reviews"

    class Book(GuardedModel):
        author = CrossDatabaseReference("reviews.Author", on_delete=PROTECT)
        shelf = CrossDatabaseReference("reviews.Shelf", on_delete=PROTECT)

        class Meta:
            app_label = "reviews"

    (cycle,) = checks._cycles([Author, Book])
    assert (cycle.id, cycle.msg) == (
        "crossdb.E006",
        "cross-database references form a cycle among: reviews.Author, reviews.Book",
    )
    missing = [e for e in checks._references([Book]) if e.id == "crossdb.E004"]
    assert [e.msg for e in missing] == [
        "reviews.Book.shelf references 'reviews.Shelf', which is not an installed model"
    ]


def test_a_misconfigured_project_says_so_in_one_line_each_not_a_traceback(tmp_path):
    (tmp_path / "broken_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        "CROSSDB = {**CROSSDB, 'DATABASES_FOR_MODELS': "
        "{**CROSSDB['DATABASES_FOR_MODELS'], 'core.user': 'nowhere'}}\n"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{tmp_path}:{ROOT}",
            "DJANGO_SETTINGS_MODULE": "broken_settings",
            "MULTIDS_TEST_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert "(crossdb.E003)" in done.stderr and "'nowhere'" in done.stderr


def test_replicas_of_an_alias_that_is_not_a_routed_postgresql_database(settings):
    text = check_says(settings, CROSSDB={**settings.CROSSDB, "REPLICAS": {"users_db": ["r1"]}})
    assert (
        "(crossdb.E009) CROSSDB[\"REPLICAS\"] lists replicas of 'users_db', which is not a "
        "PostgreSQL database of DATABASES_FOR_MODELS"
    ) in text
    assert (
        "(crossdb.E009) CROSSDB[\"REPLICAS\"] names 'r1' as a replica of 'users_db', "
        "which is not in DATABASES"
    ) in text


def test_replicas_that_are_not_a_mapping_of_lists(settings):
    text = check_says(settings, CROSSDB={**settings.CROSSDB, "REPLICAS": ["users_db"]})
    assert '(crossdb.E009) CROSSDB["REPLICAS"] must map a routed alias to a list' in text


def test_a_replica_setting_out_of_range(settings):
    changed = {**settings.CROSSDB, "CAUSAL_WAIT_SECONDS": -1, "CAUSAL_READS": "yes"}
    text = check_says(settings, CROSSDB=changed)
    assert (
        '(crossdb.E010) CROSSDB["CAUSAL_WAIT_SECONDS"] must be a number 0 or more (got -1)' in text
    )
    assert '(crossdb.E010) CROSSDB["CAUSAL_READS"] must be True or False' in text


def test_replicas_without_the_middleware_is_a_warning(settings):
    databases = {alias: dict(config) for alias, config in settings.DATABASES.items()}
    databases["users_db"] = {**databases["users_db"], "ENGINE": "django.db.backends.postgresql"}
    databases["users_db_replica_1"] = {
        **databases["users_db"],
        "ENGINE": "crossdb.backends.replica",
    }
    with pytest.warns(UserWarning, match="Overriding setting DATABASES"):
        settings.DATABASES = databases
    settings.CROSSDB = {**settings.CROSSDB, "REPLICAS": {"users_db": ["users_db_replica_1"]}}
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "crossdb" not in m]
    messages = [m for m in checks.check_settings() if m.id.startswith("crossdb.")]
    assert [m.id for m in messages] == ["crossdb.W002"], messages


@pytest.mark.parametrize(
    "env, said",
    [
        (
            {"USERS_DATABASE_REPLICA_URLS": "postgres://u@h/users"},
            "USERS_DATABASE_REPLICA_URLS lists replicas, but USERS_DATABASE_URL is not a "
            "PostgreSQL URL",
        ),
        (
            {
                "USERS_DATABASE_URL": "postgres://u@h/users",
                "USERS_DATABASE_REPLICA_URLS": "postgres://u@r/users,sqlite:////tmp/x.db",
            },
            "USERS_DATABASE_REPLICA_URLS: 'sqlite:////tmp/x.db' is not a PostgreSQL URL",
        ),
        ({"MULTIDS_CAUSAL_READS": "maybe"}, "MULTIDS_CAUSAL_READS must be 1/true/yes/on"),
        ({"MULTIDS_CAUSAL_WAIT_SECONDS": "-2"}, "MULTIDS_CAUSAL_WAIT_SECONDS must be a number"),
    ],
)
def test_a_bad_replica_variable_is_one_line(tmp_path, env, said):
    done = manage("check", data_dir=tmp_path, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"django.core.exceptions.ImproperlyConfigured: {done.stderr.split(': ', 1)[1].strip()}"
    ]
    assert said in done.stderr
