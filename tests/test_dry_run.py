"""``insert_data --dry-run``: the verdicts of the real run, and nothing written anywhere.

The property: for generated inputs (the verdict property's, ``tests/test_verdicts.py``:
valid and invalid rows, ids given twice, look-alike emails, orders naming accepted,
rejected, stored and missing parents, rows stored before the load, small batches), a dry
run on the databases as they are gives exactly the counts and the rejections (table, line,
id, reason) that the real run then gives on the same databases, and changes no row, with
each ``--on-conflict`` (reject, update, skip). It runs
in-process, on SQLite here and on PostgreSQL through ``tests/test_postgres.py``. Its
negative controls break the dry run in two ways a real bug could (forgetting the rows of
earlier batches; ignoring the parents a writer rejects) and show the property fails.

The commands: on SQLite every file is byte-for-byte the same after a dry run (checksums);
on PostgreSQL the row counts and the statistics counters (``pg_stat_user_tables``: rows
inserted, updated, deleted) are the same, while the real run moves them (the positive
control that the measure can see a write).
"""

import hashlib
import json

import psycopg
import pytest
from crossdb.loading import dryrun, load
from crossdb.sources import FileSource
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import all_databases, manage
from tests.test_postgres import pg_databases, postgres_server  # noqa: F401
from tests.test_verdicts import (
    NEGATIVE,
    PROPERTY,
    cases,
    dump,
    empty_tables,
    store,
    write_csv,
)


def verdicts(result, lines):
    """(counts per table, sorted rejections as (table, row index, id, reason))."""
    counts = {
        t: (r.read, r.stored, r.present, r.rejected, r.updated, r.skipped)
        for t, r in result.tables.items()
    }
    rejected = sorted(
        (r.table, lines.get((r.table, int(r.line))) if r.line is not None else None, str(r.id))
        + (r.reason,)
        for r in result.rejections
    )
    return counts, rejected


def check_dry_equals_real(case, directory, on_conflict):
    rows, stored, batch_size = case["rows"], case.get("stored") or {}, case["batch_size"]
    directory.mkdir(parents=True, exist_ok=True)
    lines = write_csv(directory, rows)
    empty_tables()
    store(stored)
    before = dump()
    options = {"batch_size": batch_size, "on_conflict": on_conflict}
    dry = load.load(FileSource(directory), dry_run=True, **options)
    assert dump() == before, "the dry run changed stored rows"
    assert dry.dry_run and dry.as_dict()["dry_run"] is True
    real = load.load(FileSource(directory), **options)
    want, got = verdicts(real, lines), verdicts(dry, lines)
    reasons = "\n".join(map(str, real.sorted_rejections()))
    assert got[0] == want[0], f"dry run counts differ from the real run's\n{reasons}"
    assert got[1] == want[1], f"dry run rejections differ from the real run's\n{reasons}"


@pytest.fixture
def case_dir(tmp_path_factory):
    return lambda: tmp_path_factory.mktemp("dry")


def dry_property(case_dir, **overrides):
    @settings(PROPERTY, **overrides)
    @given(case=cases(), on_conflict=st.sampled_from(["reject", "update", "skip"]))
    def run(case, on_conflict):
        check_dry_equals_real(case, case_dir(), on_conflict)

    return run


@all_databases
def test_a_dry_run_gives_the_verdicts_of_the_real_run_and_writes_nothing(case_dir):
    dry_property(case_dir)()


@all_databases
def test_a_dry_run_that_forgets_earlier_batches_fails_the_property(case_dir, monkeypatch):
    """Each batch settled as if the run had stored nothing before it: an id given again in
    a later batch with other data is a conflict in the real run, "would store" here."""
    settle = dryrun._DryTable.settle

    def forgetful(self, lines, rows, known):
        self.taken.clear()
        for claimed in self.claimed.values():
            claimed.clear()
        return settle(self, lines, rows, known)

    monkeypatch.setattr(dryrun._DryTable, "settle", forgetful)
    with pytest.raises(AssertionError, match="differ from the real run"):
        dry_property(case_dir, **NEGATIVE)()


# A stored user written over with a new email gives its old one up for the rows after it.
KEY_GIVEN_UP = {
    "rows": {"users": [("1", "Ann", "new@example.com"), ("2", "Bob", "ANN@example.com")]},
    "stored": {"users": [(1, "Ann", "ann@example.com")]},
    "batch_size": 1,
}


@all_databases
def test_a_key_an_update_gave_up_is_free_for_later_rows_in_a_dry_run_too(tmp_path):
    check_dry_equals_real(KEY_GIVEN_UP, tmp_path / "case", "update")


@all_databases
def test_a_dry_run_that_forgets_a_key_an_update_gave_up_fails_the_comparison(tmp_path, monkeypatch):
    """The example above, with a dry run that still counts the stored owner of a key an
    update gave up: it rejects user 2, which the real run stores."""
    settle = dryrun._DryTable.settle

    def keeping_owners(self, lines, rows, known):
        for claimed in self.claimed.values():
            for value in [v for v, owner in claimed.items() if owner is None]:
                del claimed[value]
        return settle(self, lines, rows, known)

    monkeypatch.setattr(dryrun._DryTable, "settle", keeping_owners)
    with pytest.raises(AssertionError, match="differ from the real run"):
        check_dry_equals_real(KEY_GIVEN_UP, tmp_path / "case", "update")


@all_databases
def test_a_dry_run_that_trusts_every_parent_of_the_run_fails_the_property(case_dir, monkeypatch):
    """Orders naming a user the validator accepted but the writer rejects (an email another
    user has, an id stored with other data) are rejected in the real run; trusting every
    parent the run named makes the dry run store them."""

    def trusting(self, lines, rows, recheck, known):
        return lines, rows, []

    monkeypatch.setattr(dryrun._DryTable, "without_missing_parents", trusting)
    with pytest.raises(AssertionError, match="differ from the real run"):
        dry_property(case_dir, **NEGATIVE)()


# --- The command: nothing written, on each backend ----------------------------------------

USERS = [("1", "Ann", "ann@example.com"), ("2", "Bob", "bob@example.com")]
MORE_USERS = USERS + [("3", "Cy", "ANN@example.com"), ("4", "Dee", "dee@example.com")]
PRODUCTS = [("1", "Pen", "1.50"), ("2", "Ink", "2")]
ORDERS = [("1", "1", "1", "2"), ("2", "3", "1", "1"), ("3", "4", "2", "5"), ("4", "9", "1", "1")]


def write_files(directory, users):
    import csv

    directory.mkdir(parents=True, exist_ok=True)
    tables = {
        "users": (("id", "name", "email"), users),
        "products": (("id", "name", "price"), PRODUCTS),
        "orders": (("id", "user_id", "product_id", "quantity"), ORDERS),
    }
    for table, (header, rows) in tables.items():
        with open(directory / f"{table}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


def checksums(data_dir):
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(data_dir.iterdir())
        if path.name.endswith((".db", ".db-wal", ".db-shm"))
    }


def summary(stdout):
    return [line for line in stdout.splitlines() if "already present" in line][-1]


def test_a_dry_run_leaves_every_sqlite_file_byte_for_byte_the_same(migrated_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_files(first, USERS)
    write_files(second, MORE_USERS)
    loaded = manage("insert_data", "--from", str(first), data_dir=migrated_dir)
    assert loaded.returncode == 0, loaded.stderr
    before = checksums(migrated_dir)
    report, rejects = tmp_path / "dry.json", tmp_path / "dry-rejects.csv"
    dry = manage(
        "insert_data",
        "--from",
        str(second),
        "--dry-run",
        "--report",
        str(report),
        "--rejects",
        str(rejects),
        data_dir=migrated_dir,
    )
    assert dry.returncode == 0, dry.stderr
    assert "Traceback" not in dry.stderr
    assert checksums(migrated_dir) == before, "a dry run changed a database file"
    assert "would store" in dry.stdout
    said = summary(dry.stdout)
    assert said.startswith("2 would be stored, 5 already present, 3 rejected"), said
    assert json.loads(report.read_text())["dry_run"] is True
    would_reject = rejects.read_text()
    real = manage(
        "insert_data", "--from", str(second), "--rejects", str(rejects), data_dir=migrated_dir
    )
    assert real.returncode == 0, real.stderr
    assert checksums(migrated_dir) != before  # the measure sees a write
    assert summary(real.stdout).startswith("2 stored, 5 already present, 3 rejected")
    assert rejects.read_text() == would_reject
    assert "email 'ANN@example.com' is already used by" in would_reject
    assert "customer 3 was rejected in this run" in would_reject
    assert "customer 9 does not exist" in would_reject


def pg_state(env):
    """Row counts and the rows inserted, updated and deleted per table, per database."""
    state = {}
    for variable, url in sorted(env.items()):
        with psycopg.connect(url) as db:
            db.execute("SELECT pg_stat_clear_snapshot()")
            state[variable] = db.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del "
                "FROM pg_stat_user_tables ORDER BY relname"
            ).fetchall()
            for (table,) in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall():
                count = db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                state[variable].append((table, count))
    return state


@pytest.mark.postgres
def test_a_dry_run_leaves_postgresql_rows_and_insert_counters_as_they_were(
    pg_databases,  # noqa: F811
    tmp_path,
):
    env = pg_databases()
    first, second = tmp_path / "first", tmp_path / "second"
    write_files(first, USERS)
    write_files(second, MORE_USERS)
    for args in (("migrate_all",), ("insert_data", "--from", str(first))):
        done = manage(*args, data_dir=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
    before = pg_state(env)
    dry = manage("insert_data", "--from", str(second), "--dry-run", data_dir=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    assert summary(dry.stdout).startswith("2 would be stored, 5 already present, 3 rejected")
    assert pg_state(env) == before, "a dry run wrote to PostgreSQL"
    real = manage("insert_data", "--from", str(second), data_dir=tmp_path, env=env)
    assert real.returncode == 0, real.stderr
    assert summary(real.stdout).startswith("2 stored, 5 already present, 3 rejected")
    assert pg_state(env) != before  # the measure sees a write


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        (KeyboardInterrupt(), "stopped by Ctrl-C (SIGINT): a dry run, nothing was written."),
        (load.LoadError("orders_db failed"), "orders_db failed. Nothing was written (a dry run)."),
    ],
    ids=["ctrl-c", "database-error"],
)
@all_databases
def test_a_dry_run_stopped_says_nothing_was_written(tmp_path, monkeypatch, raised, said):
    """Not "committed batches are kept; run the same command again": nothing was."""
    from django.core.management import CommandError, call_command

    write_files(tmp_path, USERS)

    def fail(*args, **kwargs):
        assert kwargs["dry_run"] is True
        raise raised

    monkeypatch.setattr(load, "load", fail)
    with pytest.raises(CommandError) as error:
        call_command("insert_data", "--from", str(tmp_path), "--dry-run", "--no-progress")
    assert str(error.value) == said


@all_databases
def test_a_dry_run_of_updates_says_what_would_be_updated(tmp_path, run_command):
    from core.models import User

    first, second = tmp_path / "first", tmp_path / "second"
    write_files(first, USERS)
    write_files(second, [("1", "Ann Lee", "ann@example.com"), USERS[1]])
    run_command("insert_data", "--from", str(first), "--no-progress")
    said = run_command(
        "insert_data",
        "--from",
        str(second),
        "--dry-run",
        "--on-conflict",
        "update",
        "--no-progress",
    )
    assert "would update" in said
    assert "0 would be stored, 1 would be updated, 4 already present, 3 rejected" in said
    assert User.objects.get(pk=1).name == "Ann"
