"""``insert_data --on-conflict {reject,update,skip}``: what becomes of a row whose id is stored
with other data (issue 33).

* update writes the row's values over the stored row, in input order, after every check an
  insert passes (its fields, its email key, its parents inside the guard), and counts it as
  updated; skip keeps the stored row and counts it as skipped; reject (the default) stays a
  conflict, as ``tests/test_verdicts.py`` checks unchanged;
* a property: update and skip give the verdicts of a plain sequential reference (the one of
  ``tests/reference_rules.py``, with the option), whatever the batch size;
* a fresh load in update mode never reaches the careful path (the fast path, COPY on
  PostgreSQL, stays as it was);
* a race with real processes: a delete of a user racing an update that re-points an order
  onto it leaves no orphan, with negative controls (the guard off) that must leave one.

The in-process tests run on SQLite here and on PostgreSQL through
``tests/test_postgres.py::test_the_in_process_suite_passes_on_postgres``; the race runs on both.
"""

import csv
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from crossdb.loading import load, writers
from crossdb.loading.processes import Job
from crossdb.loading.writers import BulkWriter
from crossdb.models import LoadRun
from crossdb.sources import FileSource
from hypothesis import given, settings
from hypothesis import strategies as st

from core.models import Order, Product, User
from tests import reference_rules as rules
from tests.concurrency import Processes, migrated_backend, wait_until
from tests.conftest import all_databases
from tests.launch import HOLD
from tests.test_postgres import postgres_server  # noqa: F401 (fixture)
from tests.test_races import reset
from tests.test_verdicts import PROPERTY, cases, dump, empty_tables, store, write_csv

FIELDS = rules.FIELDS
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def write_files(directory, rows):
    """One CSV per table of rows ({table: [tuples of text]}); return the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    write_csv(directory, rows)
    return directory


def load_rows(directory, rows, on_conflict, batch_size=50):
    """Load rows written as CSV with on_conflict; return the LoadResult."""
    source = FileSource(write_files(directory, rows))
    source.check()
    return load.load(source, batch_size=batch_size, on_conflict=on_conflict)


def counts(result, table):
    t = result.tables[table]
    return {
        "stored": t.stored,
        "updated": t.updated,
        "present": t.present,
        "skipped": t.skipped,
        "rejected": t.rejected,
    }


def reasons(result):
    return [str(r) for r in result.sorted_rejections()]


def users():
    return list(User.objects.order_by("id").values_list("id", "name", "email", "email_key"))


def orders():
    return list(Order.objects.order_by("id").values_list("id", "user_id", "product_id", "quantity"))


def shop():
    """Users 1 and 2, product 1 and order 1 of user 1, stored before the load."""
    store(
        {
            "users": [("1", "Ann", "ann@example.com"), ("2", "Bob", "bob@example.com")],
            "products": [("1", "Pen", "1.50")],
            "orders": [("1", "1", "1", "2")],
        }
    )


# --- update, skip and the default ---------------------------------------------------------


@all_databases
def test_update_stores_the_inputs_values_and_counts_them_apart(run_command, tmp_path):
    shop()
    directory = write_files(
        tmp_path / "in",
        {
            "users": [
                ("1", "Ann Lee", "ANN.LEE@Example.com"),  # new name and email: a new key
                ("2", "Bob", "bob@example.com"),  # the same: already present
                ("3", "Cy", "cy@example.com"),  # new
            ],
            "orders": [("1", "3", "1", "5")],  # re-pointed onto user 3 of this run
        },
    )
    report = tmp_path / "report.json"
    out = run_command(
        "insert_data", "--from", str(directory), "--on-conflict", "update", "--report", str(report)
    )
    assert users() == [
        (1, "Ann Lee", "ANN.LEE@Example.com", "ann.lee@example.com"),
        (2, "Bob", "bob@example.com", "bob@example.com"),
        (3, "Cy", "cy@example.com", "cy@example.com"),
    ]
    assert orders() == [(1, 3, 1, 5)]
    assert "1 stored, 2 updated, 1 already present, 0 rejected in" in out
    header = next(line for line in out.splitlines() if "table" in line)
    assert [c.strip() for c in header.strip("┃").split("┃")] == [
        "table",
        "stored",
        "updated",
        "already present",
        "rejected",
        "seconds",
    ]
    data = json.loads(report.read_text())
    assert data["on_conflict"] == "update"
    assert {
        t: (v["stored"], v["updated"], v["already_present"]) for t, v in data["tables"].items()
    } == {
        "users": (1, 1, 1),
        "orders": (0, 1, 0),
    }
    assert data["totals"]["updated"] == 2 and "skipped" not in data["totals"]
    recorded = LoadRun.objects.latest("started_at").summary
    assert recorded["on_conflict"] == "update" and recorded["totals"]["updated"] == 2


@all_databases
def test_skip_keeps_the_stored_values_without_calling_them_conflicts(run_command, tmp_path):
    shop()
    directory = write_files(
        tmp_path / "in",
        {
            "users": [("1", "Ann Lee", "ann.lee@example.com"), ("3", "Cy", "cy@example.com")],
            "orders": [("1", "2", "1", "9")],
        },
    )
    rejects, report = tmp_path / "rejects.csv", tmp_path / "report.json"
    out = run_command(
        "insert_data",
        "--from",
        str(directory),
        "--on-conflict",
        "skip",
        "--rejects",
        str(rejects),
        "--report",
        str(report),
    )
    assert users()[0] == (1, "Ann", "ann@example.com", "ann@example.com")
    assert orders() == [(1, 1, 1, 2)]
    assert "1 stored, 0 already present, 2 skipped, 0 rejected in" in out
    assert "Rejected rows" not in out
    with open(rejects, newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == []  # a skipped row is no rejection
    data = json.loads(report.read_text())
    assert data["on_conflict"] == "skip"
    assert data["tables"]["users"]["skipped"] == 1 and data["tables"]["orders"]["skipped"] == 1
    assert data["totals"]["skipped"] == 2 and "updated" not in data["totals"]


@all_databases
def test_the_default_still_rejects_a_conflict_and_reports_as_before(run_command, tmp_path):
    shop()
    directory = write_files(tmp_path / "in", {"users": [("1", "Ann Lee", "ann@example.com")]})
    report = tmp_path / "report.json"
    out = run_command("insert_data", "--from", str(directory), "--report", str(report))
    assert (
        "users #1 (line 2): id 1 is already stored with different data "
        "(name 'Ann', email 'ann@example.com')" in out
    )
    assert "0 stored, 0 already present, 1 rejected in" in out
    assert users()[0][1] == "Ann"
    data = json.loads(report.read_text())
    assert data["on_conflict"] == "reject"
    assert list(data["tables"]["users"])[:4] == ["read", "stored", "already_present", "rejected"]
    assert "updated" not in data["tables"]["users"] and "skipped" not in data["totals"]


def test_an_unknown_choice_is_refused(tmp_path):
    with pytest.raises(ValueError, match="on_conflict must be one of reject, update, skip"):
        load.load(FileSource(tmp_path), on_conflict="replace")


# --- every rule still applies to an update ------------------------------------------------


@all_databases
@pytest.mark.parametrize("batch_size", [1, 50])
def test_an_update_to_an_email_another_user_has_is_rejected_naming_the_owner(tmp_path, batch_size):
    shop()
    rows = {
        "users": [
            ("2", "Bob", "ANN@example.com"),  # user 1's key
            ("3", "Cy", "bob@example.com"),  # still user 2's: its update was rejected
        ]
    }
    result = load_rows(tmp_path, rows, "update", batch_size)
    assert reasons(result) == [
        "users #2 (line 2): email 'ANN@example.com' is already used by customer 1",
        "users #3 (line 3): email 'bob@example.com' is already used by customer 2",
    ]
    assert counts(result, "users")["updated"] == 0
    assert [u[2] for u in users()] == ["ann@example.com", "bob@example.com"]


@all_databases
@pytest.mark.parametrize("batch_size", [1, 2, 50])
def test_a_key_an_update_gives_up_is_free_for_the_rows_after_it(tmp_path, batch_size):
    """Input order decides, whatever the batches: user 1 gives its email up, then user 3
    takes it; users 2 and 1 then each ask for the other's, and both are refused."""
    shop()
    rows = {
        "users": [
            ("1", "Ann", "ann.lee@example.com"),
            ("3", "Cy", "Ann@Example.com"),
            ("2", "Bob", "ann.lee@example.com"),
            ("1", "Ann", "bob@example.com"),
        ]
    }
    result = load_rows(tmp_path, rows, "update", batch_size)
    assert reasons(result) == [
        "users #2 (line 4): email 'ann.lee@example.com' is already used by customer 1",
        "users #1 (line 5): email 'bob@example.com' is already used by customer 2",
    ]
    assert counts(result, "users") == {
        "stored": 1,
        "updated": 1,
        "present": 0,
        "skipped": 0,
        "rejected": 2,
    }
    assert users() == [
        (1, "Ann", "ann.lee@example.com", "ann.lee@example.com"),
        (2, "Bob", "bob@example.com", "bob@example.com"),
        (3, "Cy", "Ann@Example.com", "ann@example.com"),
    ]


@all_databases
@pytest.mark.parametrize("batch_size", [1, 50])
def test_repointing_an_order_to_a_missing_user_is_rejected(tmp_path, batch_size):
    shop()
    rows = {
        "users": [("4", "", "dee@example.com")],  # rejected: no name
        "orders": [
            ("1", "99", "1", "2"),  # a user nobody has
            ("1", "4", "1", "2"),  # the user this run rejected
            ("1", "2", "1", "3"),  # a stored user: the update that goes in
        ],
    }
    result = load_rows(tmp_path, rows, "update", batch_size)
    assert reasons(result) == [
        "users #4 (line 2): name is required",
        "orders #1 (line 2): customer 99 does not exist",
        "orders #1 (line 3): customer 4 was rejected in this run",
    ]
    assert counts(result, "orders")["updated"] == 1
    assert orders() == [(1, 2, 1, 3)]


@all_databases
@pytest.mark.parametrize("batch_size", [1, 2, 50])
def test_an_id_given_twice_is_updated_in_input_order(tmp_path, batch_size):
    """Update: each row in turn, the later wins (and a row equal to the one before it is
    already present); skip and reject: the first wins, as it always did."""
    rows = {
        "products": [
            ("5", "Pen", "1.00"),
            ("5", "Pen", "2.00"),
            ("5", "Pen", "2.00"),
            ("5", "Pen", "3.00"),
        ]
    }
    result = load_rows(tmp_path / "update", rows, "update", batch_size)
    assert counts(result, "products") == {
        "stored": 1,
        "updated": 2,
        "present": 1,
        "skipped": 0,
        "rejected": 0,
    }
    assert [str(p.price) for p in Product.objects.all()] == ["3.00"]
    Product.objects.all().delete()
    result = load_rows(tmp_path / "skip", rows, "skip", batch_size)
    assert (counts(result, "products")["stored"], counts(result, "products")["skipped"]) == (1, 3)
    assert [str(p.price) for p in Product.objects.all()] == ["1.00"]


@all_databases
@pytest.mark.parametrize("on_conflict", ["update", "skip"])
def test_a_fresh_load_takes_the_fast_path(tmp_path, monkeypatch, on_conflict):
    """Nothing is stored, so nothing clashes: the option costs a fresh load nothing (on
    PostgreSQL the fast path is the COPY, or the segment of an empty table)."""

    def careful(self, job, attempts=3):
        raise RuntimeError("the careful path was taken")

    monkeypatch.setattr(BulkWriter, "write_carefully", careful)
    rows = {
        "users": [(str(i), f"U{i}", f"u{i}@example.com") for i in range(1, 40)],
        "products": [("1", "Pen", "1.50")],
        "orders": [(str(i), str(i), "1", "1") for i in range(1, 40)],
    }
    result = load_rows(tmp_path, rows, on_conflict, batch_size=10)
    assert {t: v.stored for t, v in result.tables.items()} == {
        "users": 39,
        "products": 1,
        "orders": 39,
    }


# --- what another process changes between the careful path's read and its update ----------


@all_databases
def test_an_update_of_a_row_deleted_since_it_was_read_is_read_again_and_inserted(monkeypatch):
    """Possible on PostgreSQL, where reads lock nothing: the update finds no row, the batch
    is rolled back and settled again from a fresh read."""
    shop()
    real, reads = writers.stored_rows, []

    def stale_once(spec, connection, alias, ids):
        found = real(spec, connection, alias, ids)
        if not reads:  # user 7 as it was before another process deleted it
            found[7] = (7, "Gil", "old@example.com", "old@example.com")
        reads.append(ids)
        return found

    monkeypatch.setattr(writers, "stored_rows", stale_once)
    writer = BulkWriter("users", "users_db", on_conflict="update")
    written = writer.write_carefully(
        Job(1, [2], [(7, "Gil", "gil@example.com", "gil@example.com")], {})
    )
    assert (written.stored, written.updated, written.rejections) == (1, 0, [])
    assert len(reads) == 2
    assert users()[-1] == (7, "Gil", "gil@example.com", "gil@example.com")


@all_databases
def test_an_update_to_an_email_committed_since_it_was_read_names_the_owner(monkeypatch):
    """The unique index refuses the update (an IntegrityError, never seen by the caller):
    the batch is settled again, and the rejection names the user who has the email."""
    shop()
    real, reads = BulkWriter._stored_key_owners, []

    def stale_once(self, rows):
        owners = real(self, rows)
        if not reads:  # read before another process committed ann@example.com
            owners["email_key"].pop("ann@example.com", None)
        reads.append(rows)
        return owners

    monkeypatch.setattr(BulkWriter, "_stored_key_owners", stale_once)
    writer = BulkWriter("users", "users_db", on_conflict="update")
    row = (2, "Bob", "ANN@example.com", "ann@example.com")
    written = writer.write_carefully(Job(1, [5], [row], {}))
    assert (written.stored, written.updated) == (0, 0)
    assert [str(r) for r in written.rejections] == [
        "users #2 (line 5): email 'ANN@example.com' is already used by customer 1"
    ]
    assert len(reads) == 2
    assert users()[1] == (2, "Bob", "bob@example.com", "bob@example.com")


@all_databases
@pytest.mark.parametrize("on_conflict", ["update", "skip", "reject"])
def test_an_id_committed_since_it_was_read_is_settled_one_row_at_a_time(monkeypatch, on_conflict):
    """The insert of a row whose id looked free comes up short (another process committed
    the id meanwhile): the last step, one row at a time, settles it by the option."""
    shop()
    real, reads = writers.stored_rows, []

    def stale_once(spec, connection, alias, ids):
        found = real(spec, connection, alias, ids)
        if not reads:  # read before another process committed user 2
            found.pop(2, None)
        reads.append(ids)
        return found

    monkeypatch.setattr(writers, "stored_rows", stale_once)
    writer = BulkWriter("users", "users_db", on_conflict=on_conflict)
    row = (2, "Robert", "bob@example.com", "bob@example.com")
    written = writer.write_carefully(Job(1, [3], [row], {}))
    assert (written.stored, written.updated, written.skipped) == {
        "update": (0, 1, 0),
        "skip": (0, 0, 1),
        "reject": (0, 0, 0),
    }[on_conflict]
    assert [str(r) for r in written.rejections] == (
        [
            "users #2 (line 3): id 2 is already stored with different data "
            "(name 'Bob', email 'bob@example.com')"
        ]
        if on_conflict == "reject"
        else []
    )
    assert users()[1][1] == ("Robert" if on_conflict == "update" else "Bob")


# --- the property: the verdicts of a sequential reference ---------------------------------


def reference_load(rows, stored, on_conflict):
    """``tests.reference_rules.reference_load`` with on_conflict: a row whose id is stored
    (before the run or by an earlier row of it) with other data is skipped, or, passing
    the rules an insert passes, written over it: "updated", its old email key given up."""
    result = {t: {r[0]: rules.with_key(t, r) for r in stored.get(t, ())} for t in FIELDS}
    owners = {row[3]: pk for pk, row in result["users"].items()}
    verdicts = {}
    for table in FIELDS:  # parents first
        verdicts[table] = [
            reference_verdict(table, values, result, owners, on_conflict)
            for values in rows.get(table, ())
        ]
    return result, verdicts


def reference_verdict(table, values, result, owners, on_conflict):
    row = rules.clean(table, values)
    rejected = ("rejected", rules.first_id(values))
    if row is None:
        return rejected
    for position, field in enumerate(FIELDS[table]):
        parent = rules.PARENTS.get(table, {}).get(field)
        if parent and row[position] not in result[parent]:
            return rejected
    earlier = result[table].get(row[0])
    if earlier is not None:
        if rules.comparable(table, earlier[: len(row)]) == rules.comparable(table, row):
            return "present"
        if on_conflict == "skip":
            return "skipped"
    if table == "users":
        key = rules.email_key(row[2])
        if owners.get(key, row[0]) != row[0]:
            return rejected
        if earlier is not None:
            del owners[earlier[3]]
        owners[key] = row[0]
    result[table][row[0]] = rules.with_key(table, row)
    return "stored" if earlier is None else "updated"


VERDICTS = ("stored", "updated", "present", "skipped")


def outcome(result, lines):
    rejected = Counter()
    for r in result.rejections:
        index = lines.get((r.table, int(r.line))) if r.line is not None else None
        rejected[r.table, index, r.id] += 1
    tallies = {
        t: (*(getattr(v, k) for k in ("stored", "updated", "present", "skipped")), v.rejected)
        for t, v in result.tables.items()
    }
    return tallies, rejected


def expected(rows, stored, on_conflict):
    final, verdicts = reference_load(rows, stored, on_conflict)
    rejected = Counter()
    tallies = {}
    for table, table_verdicts in verdicts.items():
        if not rows.get(table):
            continue
        for index, v in enumerate(table_verdicts):
            if v not in VERDICTS:
                rejected[table, index, v[1]] += 1
        tallies[table] = (
            *(table_verdicts.count(k) for k in VERDICTS),
            sum(1 for v in table_verdicts if v not in VERDICTS),
        )
    return final, tallies, rejected


@all_databases
def test_update_and_skip_give_the_verdicts_of_the_sequential_reference(tmp_path_factory):
    @settings(PROPERTY, max_examples=PROPERTY.max_examples // 2 or 1)
    @given(case=cases(), on_conflict=st.sampled_from(["update", "skip"]))
    def check(case, on_conflict):
        directory = tmp_path_factory.mktemp("case")
        rows, stored = case["rows"], case.get("stored") or {}
        lines = write_csv(directory, rows)
        empty_tables()
        store(stored)
        source = FileSource(directory)
        source.check()
        result = load.load(source, batch_size=case["batch_size"], on_conflict=on_conflict)
        got_tallies, got_rejected = outcome(result, lines)
        got_tallies = {t: c for t, c in got_tallies.items() if rows.get(t)}
        want_rows, want_tallies, want_rejected = expected(rows, stored, on_conflict)
        said = "\n".join(reasons(result))
        assert dump() == want_rows, f"stored rows differ from the reference\n{said}"
        assert got_rejected == want_rejected, f"rejected (table, index, id) differ\n{said}"
        assert got_tallies == want_tallies, "(stored, updated, present, skipped, rejected)"

    check()


# --- the race: a delete of the user an update re-points an order onto -----------------------


@pytest.fixture
def backend(request, tmp_path):
    """A migrated ``tests.concurrency.Backend`` of the test's parameter; dropped after."""
    with migrated_backend(request, tmp_path, "multids.settings") as made:
        yield made


def repoint_files(directory):
    """The seed (users 1 and 2, product 1, order 1 of user 1) and the load: the same users
    and product (already present, so the run vouches for them and no parent is looked up
    before the careful path), and order 1 re-pointed onto user 2."""
    seed = {
        "users": [("1", "Ann", "ann@example.com"), ("2", "Bob", "bob@example.com")],
        "products": [("1", "Pen", "1.50")],
        "orders": [("1", "1", "1", "1")],
    }
    write_files(directory / "seed", seed)
    write_files(directory / "load", {**seed, "orders": [("1", "2", "1", "1")]})
    return directory / "seed", directory / "load"


def race(backend, processes, schedule, guard):
    """Seed, then load the re-pointing update while ``delete_row users 2`` runs:

    * "held": the delete starts once the orders writer holds its transaction (guard taken,
      parents settled, the update not yet written: ``writers.HOLD``) and the writer goes on
      one second later (with the guard off: once the delete has ended);
    * "paused": the delete runs to its end while the load's main process waits before
      reading any order (``python -m tests.concurrency pausedload``), after the users it
      vouches for were validated.

    Returns the facts: the load's and the delete's exits and words, order 1's user, whether
    user 2 is still stored, and check_integrity's exit and orphans.
    """
    reset(backend)
    seed, files = repoint_files(backend.data_dir / f"race-{time.monotonic_ns()}")
    backend.manage("insert_data", "--no-progress", "--from", str(seed), check=True)
    rejects = files.parent / "rejects.csv"
    args = ["insert_data", "--no-progress", "--from", str(files), "--on-conflict", "update"]
    args += [f"--rejects={rejects}"]
    mark = str(files.parent / "mark")
    delete_args = ("delete_row", "users", "2")
    if schedule == "held":
        loading = processes.manage(backend, *args, guard=guard, env={HOLD: mark})
        held = Path(f"{mark}.held")
        assert wait_until(lambda: loading.poll() is not None or held.exists(), 120), "no hold"
        assert loading.poll() is None, "the load ended before it held"
        deleting = processes.manage(backend, *delete_args, guard=guard)
        if guard:
            time.sleep(1.0)
            assert deleting.poll() is None, "the delete ended while the update held the guard"
        else:
            deleting.wait(timeout=120)
        Path(f"{mark}.go").touch()
        delete_out, delete_err = deleting.communicate(timeout=120)
        delete_exit = deleting.returncode
    else:
        pause = ["pausedload", "--table=orders", "--after=0", f"--pause={mark}"]
        loading = processes.python(backend, *pause, *args, guard=guard)
        paused = Path(f"{mark}.paused")
        assert wait_until(lambda: loading.poll() is not None or paused.exists(), 120), "no pause"
        assert loading.poll() is None, "the load ended before its pause"
        deleted = backend.manage(*delete_args, guard=guard)
        delete_out, delete_err, delete_exit = deleted.stdout, deleted.stderr, deleted.returncode
        Path(f"{mark}.go").touch()
    out, err = loading.communicate(timeout=120)
    assert "Traceback" not in err + delete_err, err[-2000:] + delete_err[-2000:]
    status, report = backend.check_integrity()
    with open(rejects, newline="", encoding="utf-8") as handle:
        rejected = [(r["table"], r["id"], r["reason"]) for r in csv.DictReader(handle)]
    return {
        "load_exit": loading.returncode,
        "load_said": out.strip().splitlines()[-1:] + err.strip().splitlines()[-1:],
        "delete_exit": delete_exit,
        "delete_said": (delete_out + delete_err).strip().splitlines()[-1:],
        "order_1_user": dict(backend.query("orders", "id, user_id")).get(1),
        "user_2_stored": 2 in backend.ids("users"),
        "rejected": rejected,
        "integrity_exit": status,
        "orphans": report["orphan_count"],
    }


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_delete_racing_an_update_that_repoints_an_order_onto_its_user_leaves_no_orphan(backend):
    with Processes() as processes:
        held = race(backend, processes, "held", guard=True)
        paused = race(backend, processes, "paused", guard=True)
    print(f"\n{backend.name}: held {held}\npaused {paused}")
    for facts in (held, paused):
        assert facts["load_exit"] == 0, facts
        assert facts["integrity_exit"] == 0 and facts["orphans"] == 0, facts
    # Held: the delete waited for the update's commit, then saw order 1 and refused (PROTECT).
    assert held["order_1_user"] == 2 and held["user_2_stored"], held
    assert held["delete_exit"] == 1 and "customer 2 has 1 order" in held["delete_said"][0], held
    assert held["rejected"] == [], held
    # Paused: the delete committed first; the update found the user gone and was rejected.
    assert paused["delete_exit"] == 0 and not paused["user_2_stored"], paused
    assert paused["order_1_user"] == 1, paused
    assert paused["rejected"] == [("orders", "1", "customer 2 was deleted while this load ran")], (
        paused
    )


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_negative_control_the_same_race_without_the_guard_leaves_an_orphan(backend):
    """The paused schedule on both backends; the held one on PostgreSQL only (on SQLite the
    deleter's BEGIN IMMEDIATE on orders.db waits for the held transaction's write lock with
    the guard off too: the lock is the guard there)."""
    schedules = ["paused"] + (["held"] if backend.name == "postgresql" else [])
    with Processes() as processes:
        tries = {s: race(backend, processes, s, guard=False) for s in schedules}
    print(f"\n{backend.name}, guard off: {tries}")
    for schedule, facts in tries.items():
        assert facts["delete_exit"] == 0 and not facts["user_2_stored"], (schedule, facts)
        assert facts["order_1_user"] == 2, (schedule, facts)
        assert facts["orphans"] == 1 and facts["integrity_exit"] == 1, (schedule, facts)
