"""Load segments (crossdb.loading.segment) on PostgreSQL: an empty orders table filled in one
transaction, its primary key dropped in that transaction and built again before the commit.

The promise: no other transaction ever sees the table without its key, and a crash leaves
the key in place. Each test holds a real load inside its segment (``crossdb.loading.writers.HOLD``,
once its first batch has looked its parents up: the orders of this load name users and
products an earlier load stored), does something to it from outside, and judges the
databases. Each has a negative control run with ``MULTIDS_TEST_SEGMENT_UNPROTECTED=1``,
which drops the key in a transaction of its own and takes no lock: the same test must then
find the damage.

In-process tests (same file) cover which batches may join a segment and the fallback when
the key cannot be built; they run on SQLite as well, where no segment is ever opened.
"""

import csv
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from crossdb.loading import load, segment

from core.models import Order
from core.sources import SyntheticSource
from tests.concurrency import PostgresDatabases, Processes, make_backend, wait_until
from tests.conftest import all_databases
from tests.launch import HOLD
from tests.test_postgres import postgres_server  # noqa: F401 (fixture)

USERS, PRODUCTS, ORDERS, BATCH = 2000, 100, 20_000, 2000
UNPROTECTED = {"MULTIDS_TEST_SEGMENT_UNPROTECTED": "1"}


@pytest.fixture
def backend(request, tmp_path):
    """Migrated PostgreSQL databases holding USERS users and PRODUCTS products, no orders."""
    postgres = PostgresDatabases(request.getfixturevalue("postgres_server"))
    try:
        made = make_backend("postgresql", tmp_path, "multids.settings", postgres)
        made.manage(
            "insert_data", "--no-progress", f"--users={USERS}", f"--products={PRODUCTS}", check=True
        )
        directory = made.data_dir / "orders"
        directory.mkdir()
        with open(directory / "orders.csv", "w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["id", "user_id", "product_id", "quantity"])
            out.writerows(
                row for _line, row in SyntheticSource(USERS, PRODUCTS, ORDERS).rows("orders")
            )
        made.orders_dir = directory
        yield made
    finally:
        postgres.drop_all()


def load_orders(backend, processes, *, hold=None, env=None, guard=True):
    """Start insert_data --from the orders file; with hold, it stops inside its segment."""
    extra = ({HOLD: hold} if hold else {}) | (env or {})
    return processes.manage(
        backend,
        "insert_data",
        "--no-progress",
        "--from",
        str(backend.orders_dir),
        f"--batch-size={BATCH}",
        guard=guard,
        env=extra,
    )


def held(load, hold):
    """Wait until load holds at hold; fail if it ended first."""
    assert wait_until(lambda: load.poll() is not None or Path(f"{hold}.held").exists(), 60)
    assert load.poll() is None, load.communicate()[1][-2000:]


def orders_db(backend):
    return psycopg.connect(backend.urls["ORDERS_DATABASE_URL"], autocommit=True)


def primary_key(backend):
    """The orders table's primary key as PostgreSQL states it, or None."""
    with orders_db(backend) as db:
        return db.execute(segment.PRIMARY_KEY_SQL, ["orders"]).fetchone()


def exclusive_lock_held(backend):
    with orders_db(backend) as db:
        return (
            db.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = 'orders'::regclass "
                "AND mode = 'AccessExclusiveLock' AND granted"
            ).fetchone()[0]
            > 0
        )


def waiting_for_orders(backend):
    """Whether some session waits for a lock in the orders database: on the table (the
    segment's) or on the reference guard (an advisory lock)."""
    with orders_db(backend) as db:
        return (
            db.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()[0]
            > 0
        )


def ended_or_waiting(backend, process):
    """Wait until process has ended or waits for a lock in the orders database, and say
    whether it ended. Each test holds the load until then, never for a set time: a save or
    delete that nothing stops (the negative controls) always runs inside the hold, however
    long its start-up takes on a busy machine, and one that waits is seen waiting."""
    assert wait_until(lambda: process.poll() is not None or waiting_for_orders(backend), 120)
    return process.poll() is not None


def duplicate_ids(backend):
    with orders_db(backend) as db:
        return db.execute("SELECT count(*) - count(DISTINCT id) FROM orders").fetchone()[0]


KEY = ("orders_pkey", "PRIMARY KEY (id)")


def orders_line(stdout):
    """The orders row of insert_data's summary table, split into its cells."""
    line = next(line for line in stdout.splitlines() if line.startswith("│ orders"))
    return [cell.strip() for cell in line.split("│")[1:-1]]


# --- a kill inside the segment ---------------------------------------------------------------


def kill_inside_the_segment(backend, env=None):
    with Processes() as processes:
        hold = str(backend.data_dir / f"hold-{time.monotonic_ns()}")
        load = load_orders(backend, processes, hold=hold, env=env)
        held(load, hold)
        locked = exclusive_lock_held(backend)
        processes.kill(load)
    assert wait_until(lambda: not exclusive_lock_held(backend), 10), "the lock outlived the kill"
    return locked


@pytest.mark.postgres
def test_a_load_killed_inside_its_segment_leaves_the_key_and_no_order(backend):
    assert kill_inside_the_segment(backend), "the load did not hold the table's lock"
    assert primary_key(backend) == KEY
    assert backend.count("orders") == 0
    status, report = backend.check_integrity()  # also rebuilds the deferred indexes
    assert status == 0 and report["ok"], report
    again = backend.manage("insert_data", "--no-progress", "--from", str(backend.orders_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    assert orders_line(again.stdout)[1] == f"{ORDERS:,}"  # stored
    assert backend.count("orders") == ORDERS and duplicate_ids(backend) == 0
    assert primary_key(backend) == KEY


@pytest.mark.postgres
def test_negative_control_a_key_dropped_apart_is_gone_after_the_kill(backend):
    kill_inside_the_segment(backend, env=UNPROTECTED)
    assert primary_key(backend) is None


# --- a save while the segment is open -------------------------------------------------------

SAVE = """
from django.db import IntegrityError
from core.models import Order
try:
    Order.objects.create(id={id}, user_id={user}, product_id={product}, quantity=9)
    print("stored")
except IntegrityError as exc:
    print("refused:", str(exc).splitlines()[0])
"""


def first_order(backend):
    with open(backend.orders_dir / "orders.csv", newline="") as handle:
        return {k: int(v) for k, v in next(csv.DictReader(handle)).items()}


def save_during_the_segment(backend, env=None):
    """Load A holds inside its segment; a save through the ORM (the admin's path) creates
    A's first order with another quantity; A goes on once the save has ended or waits for
    a lock. Return (what the save said, whether it was done before A went on, A's exit)."""
    order = first_order(backend)
    code = SAVE.format(id=order["id"], user=order["user_id"], product=order["product_id"])
    with Processes() as processes:
        hold = str(backend.data_dir / f"hold-{time.monotonic_ns()}")
        load = load_orders(backend, processes, hold=hold, env=env)
        held(load, hold)
        save = processes.manage(backend, "shell", "-c", code)
        done_early = ended_or_waiting(backend, save)
        Path(f"{hold}.go").touch()
        said, err = save.communicate(timeout=300)
        assert "Traceback" not in err, err[-2000:]
        _out, load_err = load.communicate(timeout=300)
    last = said.strip().splitlines()[-1] if said.strip() else ""  # after the shell's own notes
    return last, done_early, load.returncode, load_err


@pytest.mark.postgres
def test_a_save_waits_for_the_segment_and_then_meets_the_key(backend):
    said, done_early, code, err = save_during_the_segment(backend)
    assert code == 0, err[-2000:]
    assert not done_early, "the save did not wait for the segment"
    assert said.startswith("refused:") and "orders_pkey" in said, said
    assert backend.count("orders") == ORDERS and duplicate_ids(backend) == 0
    assert primary_key(backend) == KEY


@pytest.mark.postgres
def test_negative_control_a_save_beside_a_key_dropped_apart_goes_in_unchecked(backend):
    said, done_early, _code, _err = save_during_the_segment(backend, env=UNPROTECTED)
    assert said == "stored" and done_early
    assert primary_key(backend) is None or duplicate_ids(backend) > 0


# --- a delete while the segment is open ------------------------------------------------------


def delete_during_the_segment(backend, *, guard=True, env=None):
    """Hold the load in its segment, run delete_row users U (a user of its first batch),
    go on once the delete has ended or waits for a lock; return (delete's exit, whether it
    ended inside the hold, check_integrity's exit and report)."""
    with open(backend.orders_dir / "orders.csv", newline="") as handle:
        user = int(list(csv.DictReader(handle))[0]["user_id"])
    with Processes() as processes:
        hold = str(backend.data_dir / f"hold-{time.monotonic_ns()}")
        load = load_orders(backend, processes, hold=hold, env=env, guard=guard)
        held(load, hold)
        delete = processes.manage(backend, "delete_row", "users", str(user), guard=guard)
        finished = ended_or_waiting(backend, delete)
        Path(f"{hold}.go").touch()
        delete.communicate(timeout=300)
        _out, err = load.communicate(timeout=300)
        assert load.returncode == 0, err[-2000:]
    status, report = backend.check_integrity()
    return delete.returncode, finished, status, report


@pytest.mark.postgres
def test_a_delete_waits_for_the_segment_then_sees_its_orders(backend):
    code, finished, status, report = delete_during_the_segment(backend)
    assert not finished, "the delete did not wait for the segment"
    assert code == 1  # PROTECT: the user has orders once the segment committed
    assert status == 0 and report["ok"], report


@pytest.mark.postgres
def test_with_the_guard_off_the_segments_lock_still_makes_the_delete_wait(backend):
    code, finished, status, report = delete_during_the_segment(backend, guard=False)
    assert not finished and code == 1
    assert status == 0 and report["ok"], report


@pytest.mark.postgres
def test_negative_control_without_the_guard_and_the_lock_the_delete_leaves_orphans(backend):
    code, finished, status, report = delete_during_the_segment(
        backend, guard=False, env=UNPROTECTED
    )
    assert finished and code == 0  # the user had no committed order when it was deleted
    assert status == 1 and report["orphan_count"] > 0, report


# --- which batches join, in-process (both backends) -----------------------------------------


def load_in_batches_of_100(directory, *, users, products, orders):
    """Write users 1..users, products 1..products and the orders rows as CSV files into
    directory, load them in batches of 100 and return the LoadResult."""
    from crossdb.sources import FileSource

    (directory / "users.csv").write_text(
        "id,name,email\n" + "".join(f"{u},U{u},u{u}@example.com\n" for u in range(1, users + 1))
    )
    (directory / "products.csv").write_text(
        "id,name,price\n" + "".join(f"{p},P{p},1.00\n" for p in range(1, products + 1))
    )
    with open(directory / "orders.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("id", "user_id", "product_id", "quantity"), *orders])
    return load.load(FileSource(directory), batch_size=100)


def spy_on_segments(monkeypatch, log):
    """Note in log, one line per Segment.open, the batches the segment took (0: none was
    opened). The writers are forked, so they inherit the spy and write to the file."""
    original_open = segment.Segment.open.__func__
    original_take = segment.Segment._take

    def open_(cls, writer, cursor, job):
        made = original_open(cls, writer, cursor, job)
        if made is None:
            with open(log, "a") as handle:
                handle.write("0\n")
        return made

    def take(self, job, payload):
        with open(log, "a") as handle:
            handle.write("+\n")
        return original_take(self, job, payload)

    monkeypatch.setattr(segment.Segment, "open", classmethod(open_))
    monkeypatch.setattr(segment.Segment, "_take", take)


@all_databases
def test_orders_out_of_id_order_are_stored_as_in_order(monkeypatch, tmp_path):
    """A batch whose ids do not follow the segment's ends it: it and the rest go the usual
    way, with the same verdicts. On SQLite no segment is ever opened."""
    from django.db import connections

    log = tmp_path / "segments"
    spy_on_segments(monkeypatch, log)
    rows = [(i, 1 + i % 7, 1 + i % 3, 1) for i in range(1, 601)]
    rows[400:] = reversed(rows[400:])  # the last 200 in descending order
    rows.append((5, 2, 2, 1))  # an id seen before, with other data: a conflict
    rows.append((6, 1 + 6 % 7, 1 + 6 % 3, 1))  # the same order again: already present
    result = load_in_batches_of_100(tmp_path, users=7, products=3, orders=rows)
    orders = result.tables["orders"]
    assert (orders.stored, orders.present, len(result.rejections)) == (600, 1, 1)
    assert "id 5 is already stored with different data" in result.rejections[0].reason
    assert sorted(Order.objects.values_list("id", flat=True)) == list(range(1, 601))
    noted = log.read_text().split() if log.exists() else []
    if connections["orders_db"].vendor == "postgresql":
        assert noted.count("+") == 4  # ids 1-400; the batch of 600 down to 501 ended it
    else:
        assert noted == []  # never opened


def test_increasing_means_strictly_and_above_the_last_id():
    assert segment.increasing(np.array([1, 2, 5]))
    assert segment.increasing(np.array([], dtype=np.int64), after=9)
    assert not segment.increasing(np.array([1, 1, 2]))
    assert not segment.increasing(np.array([3, 2]))
    assert not segment.increasing(np.array([5, 6]), after=5)
    assert segment.increasing(np.array([6, 7]), after=5)


@all_databases
def test_a_key_that_cannot_be_built_rolls_the_segment_back_and_loads_the_usual_way(
    monkeypatch, tmp_path
):
    """With the id check fooled, a repeated id reaches the segment: building the key fails,
    the segment is rolled back (the key with it) and its batches are written again, with
    the verdicts a load without segments gives. Without the fallback the run would fail."""
    monkeypatch.setattr(segment, "increasing", lambda ids, after=None: True)
    rows = [(i, 1, 1, 1) for i in range(1, 301)] + [(7, 1, 1, 1), (8, 1, 1, 2)]
    result = load_in_batches_of_100(tmp_path, users=1, products=1, orders=rows)
    orders = result.tables["orders"]
    assert (orders.stored, orders.present, len(result.rejections)) == (300, 1, 1)
    assert "id 8 is already stored with different data" in result.rejections[0].reason
    assert sorted(Order.objects.values_list("id", flat=True)) == list(range(1, 301))
