"""insert_data as a user runs it: the demo data, re-runs, and the order of commits."""

import gc
import threading
import time
from decimal import Decimal

import pytest
from crossdb.loading import load
from crossdb.loading.gate import Gate
from crossdb.loading.processes import WriterPool, Written
from crossdb.loading.validate import RunValidator
from crossdb.loading.writers import BulkWriter
from crossdb.lookups import existing_ids
from crossdb.models import LoadRun
from crossdb.sources import FileSource

from core.models import Order, Product, User
from core.sources import SyntheticSource, demo_source
from tests.conftest import all_databases, behind_the_guards_back, manage, store_customers

DEMO_REJECTIONS = [
    "users #8 (line 9): email 'alice@example.com' is already used by customer 1",
    "users #10 (line 11): name is required",
    "products #10 (line 11): price must be greater than 0 (got -50.00)",
    "orders #8 (line 9): quantity must be at least 1 (got 0)",
    "orders #9 (line 10): quantity must be at least 1 (got -1)",
    "orders #10 (line 11): customer 10 was rejected in this run; product 11 does not exist",
]


@all_databases
def test_demo_stores_8_users_9_products_7_orders(run_command):
    out = run_command("insert_data", "--no-progress")
    assert sorted(User.objects.values_list("pk", flat=True)) == [1, 2, 3, 4, 5, 6, 7, 9]
    assert sorted(Product.objects.values_list("pk", flat=True)) == list(range(1, 10))
    assert sorted(Order.objects.values_list("pk", flat=True)) == list(range(1, 8))
    assert Product.objects.get(pk=7).price == Decimal("1000.00")
    for line in DEMO_REJECTIONS:
        assert line in out
    assert "24 stored, 0 already present, 6 rejected" in out


@all_databases
def test_running_the_demo_again_stores_nothing_twice(run_command):
    run_command("insert_data", "--no-progress")
    out = run_command("insert_data", "--no-progress")
    assert "0 stored, 24 already present, 6 rejected" in out
    assert (User.objects.count(), Product.objects.count(), Order.objects.count()) == (8, 9, 7)


@all_databases
def test_each_run_is_recorded_in_default():
    result = load.load(demo_source())
    from crossdb.runs import record

    record(result)
    run = LoadRun.objects.using("default").get()
    assert run.summary["tables"]["orders"]["stored"] == 7


@all_databases
def test_the_order_accessors_read_other_databases():
    load.load(demo_source())
    order = Order.objects.get(pk=3)
    assert order.user.email == "charlie@example.com"
    assert order.product.name == "Headphones"


@all_databases
def test_the_three_writers_overlap_in_time(monkeypatch):
    """Each database has its own writer process: orders start inserting while the parent
    writers are still busy (they only wait before committing), so all three overlap."""
    original = BulkWriter.write

    def slow_parents(self, job):
        if self.table != "orders":
            time.sleep(0.1)
        return original(self, job)

    monkeypatch.setattr(BulkWriter, "write", slow_parents)
    source = SyntheticSource(users=5000, products=5000, orders=5000)
    result = load.load(source, batch_size=1000)
    assert result.writers_overlapped, result.as_dict()
    assert result.overlaps() == ["users+products", "users+orders", "products+orders"]
    assert result.tables["orders"].stored == 5000


def _spy_on_orders(monkeypatch, log):
    """Slow the users writer down and, after each order commit, count orders without users."""
    original = BulkWriter.write

    def write(self, job):
        if self.table == "users":
            time.sleep(0.3)
        outcome = original(self, job)
        if self.table == "orders":  # the jobs committed: this one and those that joined it
            jobs = [job] if isinstance(outcome, Written) else [done for done, _ in outcome]
            named = {int(row[1]) for done in jobs for row in done.rows}
            with open(log, "a") as handle:
                orphans = len(named - existing_ids("users", named))
                handle.write(f"{orphans} {sum(len(done.rows) for done in jobs)} {len(jobs)}\n")
        return outcome

    monkeypatch.setattr(BulkWriter, "write", write)


@all_databases
def test_no_order_is_committed_before_its_user(monkeypatch, tmp_path):
    log = tmp_path / "orphans"
    _spy_on_orders(monkeypatch, log)
    result = load.load(SyntheticSource(users=400, products=10, orders=2000), batch_size=200)
    commits = [[int(n) for n in line.split()] for line in log.read_text().splitlines()]
    assert sum(rows for _orphans, rows, _jobs in commits) == 2000 == result.tables["orders"].stored
    assert sum(orphans for orphans, _rows, _jobs in commits) == 0
    # the slow users writer left the orders writer time to join batches in one transaction
    assert max(jobs for _orphans, _rows, jobs in commits) > 1


@all_databases
def test_the_ordering_check_catches_a_writer_that_does_not_wait(monkeypatch, tmp_path):
    """Negative control: without the wait for parents the spy above must see orphans."""
    log = tmp_path / "orphans"
    _spy_on_orders(monkeypatch, log)
    monkeypatch.setattr(Gate, "wait_for_parents", lambda self, join=None: None)
    load.load(SyntheticSource(users=400, products=10, orders=2000), batch_size=200)
    assert sum(int(line.split()[0]) for line in log.read_text().splitlines()) > 0


@all_databases
def test_joined_batches_that_must_be_redone_get_the_verdicts_of_batches_alone(
    monkeypatch, tmp_path
):
    """A clash in any batch of a joined transaction rolls all of them back; the first is
    written carefully on its own and the others go back to the queue, so the verdicts are
    those of batches that never joined.

    The clashing row is stored by another program once the orders writer has started: a row
    stored before would be settled with the batch's other stored rows, set-wise, without a
    clash (``BulkWriter._settle_stored``)."""
    source = SyntheticSource(users=400, products=10, orders=2000)
    clashing = list(source.rows("orders"))[450][1]  # in the third orders batch
    original_write, original_give_back = BulkWriter.write, Gate.give_back
    log = tmp_path / "given-back"

    def write(self, job):
        if self.table == "users":
            time.sleep(0.3)
        if self.table == "orders" and job.seq == 1:  # in the writer process, before its first
            behind_the_guards_back(
                "orders_db",
                "INSERT INTO orders (id, user_id, product_id, quantity) VALUES (%s, %s, %s, %s)",
                (*clashing[:3], clashing[3] + 1),
            )
        return original_write(self, job)

    def give_back(self, current, jobs):  # in the writer process
        with open(log, "a") as handle:
            handle.write(" ".join(str(job.seq) for job in jobs) + "\n")
        return original_give_back(self, current, jobs)

    monkeypatch.setattr(BulkWriter, "write", write)
    monkeypatch.setattr(Gate, "give_back", give_back)
    result = load.load(source, batch_size=200)
    orders = result.tables["orders"]
    assert (orders.stored, orders.present, orders.rejected) == (1999, 0, 1)
    assert [r.reason for r in result.sorted_rejections()] == [
        f"id {clashing[0]} is already stored with different data "
        f"(user_id {clashing[1]}, product_id {clashing[2]}, quantity {clashing[3] + 1})"
    ]
    given_back = [line.split() for line in log.read_text().splitlines()]
    assert any("3" in jobs for jobs in given_back), given_back  # batch 3 had joined others
    assert Order.objects.count() == 2000


def test_insert_data_before_migrate_all_says_what_to_run_and_writes_nothing(tmp_path):
    result = manage("insert_data", data_dir=tmp_path)
    assert result.returncode == 1
    assert "Run: python manage.py migrate_all" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def _dump(data_dir):
    import sqlite3

    rows = {}
    for name in ("users", "products", "orders"):
        with sqlite3.connect(data_dir / f"{name}.db") as db:
            rows[name] = db.execute(f"SELECT * FROM {name} ORDER BY id").fetchall()
    return rows


def test_five_runs_in_fresh_directories_store_identical_rows(tmp_path):
    dumps = []
    for run in range(5):
        data_dir = tmp_path / f"run{run}"
        data_dir.mkdir()
        manage("migrate_all", data_dir=data_dir, check=True)
        out = manage("insert_data", data_dir=data_dir, check=True).stdout
        assert "24 stored" in out
        dumps.append(_dump(data_dir))
    assert all(d == dumps[0] for d in dumps)
    assert len(dumps[0]["orders"]) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
        (["--users", "-5"], "--users must be 0 or more (got -5)"),
        (["--from", "/no/such/dir"], "--from /no/such/dir: no such directory"),
        (["--from", ".", "--users", "3"], "use either --from or --users"),
    ],
)
def test_bad_options_get_one_line_errors(migrated_dir, args, message):
    result = manage("insert_data", *args, data_dir=migrated_dir)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@all_databases
def test_a_huge_order_quantity_in_a_csv_is_rejected_by_the_fast_path(tmp_path, run_command):
    (tmp_path / "users.csv").write_text("id,name,email\n1,Ann,ann@example.com\n")
    (tmp_path / "products.csv").write_text("id,name,price\n1,Pen,1.50\n")
    (tmp_path / "orders.csv").write_text(
        "id,user_id,product_id,quantity\n1,1,1,99999999999999999999\n2,1,1,3\n"
    )
    out = run_command("insert_data", "--from", str(tmp_path), "--no-progress")
    assert "orders #1 (line 2): quantity must be at most 2147483647" in out
    assert list(Order.objects.values_list("pk", flat=True)) == [2]


@all_databases
def test_a_clash_only_the_database_sees_becomes_a_rejection_not_a_crash(monkeypatch, tmp_path):
    """If the email rules in Python and in the database's unique index ever disagree, the
    index wins and the row is rejected with a reason; the rest of the batch is stored."""
    User.objects.create(id=1, name="Ann", email="ann@example.com")
    monkeypatch.setattr(
        BulkWriter, "_stored_key_owners", lambda self, rows: {k.column: {} for k in self.spec.keys}
    )
    (tmp_path / "users.csv").write_text(
        "id,name,email\n2,Other Ann,ANN@example.com\n3,Bo,bo@example.com\n"
    )
    result = load.load(FileSource(tmp_path))
    users = result.tables["users"]
    assert (users.stored, users.present, users.rejected) == (1, 0, 1)
    assert [str(r) for r in result.rejections] == [
        "users #2 (line 2): email 'ANN@example.com' is already used by another stored row"
    ]
    assert sorted(User.objects.values_list("pk", flat=True)) == [1, 3]


@all_databases
def test_a_writer_that_exits_after_reporting_is_not_taken_for_a_crash():
    """A writer's last messages can arrive after its process has exited: read them before
    deciding that it died."""
    pool = WriterPool(["users"], load._make_writer)
    pool.start()
    try:
        pool.inboxes["users"].put(None)  # finish at once; leave its "done" message unread
        pool.processes["users"].join(timeout=30)
        assert not pool.processes["users"].is_alive()
        pool._check_alive(lambda report: None)
        assert pool.done == {"users"}
    finally:
        pool.close()


@all_databases
def test_a_writer_whose_last_message_is_still_on_its_way_is_not_taken_for_a_crash():
    """The "done" of a writer that exited normally may come a moment after its exit: the
    pool waits for it (briefly) before calling the writer lost."""
    pool = WriterPool(["users"], load._make_writer)
    pool.start()
    try:
        pool.inboxes["users"].put(None)
        pool.processes["users"].join(timeout=30)
        done = pool.outbox.get(timeout=30)  # take the message away, and send it late
        assert done.kind == "done"
        late = threading.Timer(0.1, pool.outbox.put, [done])
        late.start()
        pool._check_alive(lambda report: None)
        late.join()
        assert pool.done == {"users"}
    finally:
        pool.close()


@all_databases
def test_each_writer_is_told_its_tables_end_once_its_last_batch_is_sent(tmp_path, monkeypatch):
    """The parents' writers finish (building their deferred indexes) while the children
    load, rather than all at the end: each is told its end right after its last batch, the
    parents' before the first order is sent, and once."""
    events = []
    send, end = WriterPool.send, WriterPool.end

    def sending(self, table, *args, **kwargs):
        events.append(("send", table))
        return send(self, table, *args, **kwargs)

    def ending(self, table, on_report):
        if table not in self.ended:  # finish() asks again for every table: a no-op then
            events.append(("end", table))
        return end(self, table, on_report)

    monkeypatch.setattr(WriterPool, "send", sending)
    monkeypatch.setattr(WriterPool, "end", ending)
    users = ["id,name,email"] + [f"{i},U{i},u{i}@example.com" for i in range(1, 31)]
    products = ["id,name,price"] + [f"{i},P{i},1.00" for i in range(1, 6)]
    orders = ["id,user_id,product_id,quantity"] + [f"{i},{i},{i % 5 + 1},1" for i in range(1, 31)]
    for name, lines in (("users", users), ("products", products), ("orders", orders)):
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
    result = load.load(FileSource(tmp_path), batch_size=10)
    assert sum(t.stored for t in result.tables.values()) == 65
    first_order = events.index(("send", "orders"))
    for table in ("users", "products", "orders"):
        assert events.count(("end", table)) == 1, events
        assert ("send", table) not in events[events.index(("end", table)) :], events
    assert events.index(("end", "users")) < first_order
    assert events.index(("end", "products")) < first_order
    assert events[-1] == ("end", "orders")


class _ExitsWhileChecked:
    """A writer process seen alive by the first is_alive() and exited from the second on:
    a writer that ends while the pool is checking on it."""

    def __init__(self, process):
        self.process = process
        self.asked = 0

    def is_alive(self):
        self.asked += 1
        return self.asked == 1 or self.process.is_alive()

    def __getattr__(self, name):
        return getattr(self.process, name)


@all_databases
def test_a_writer_that_exits_while_the_pool_checks_is_judged_after_the_next_drain():
    """Its "done" may reach the pipe after the check drained it: the check must not call
    the writer lost on a second look; the next check reads the message."""
    pool = WriterPool(["users"], load._make_writer)
    pool.start()
    try:
        pool.inboxes["users"].put(None)
        pool.processes["users"].join(timeout=30)  # exited; its "done" waits in the pipe
        pool.processes["users"] = _ExitsWhileChecked(pool.processes["users"])
        pool._check_alive(lambda report: None)  # saw it alive: nothing to judge yet
        assert pool.done == set()
        pool._check_alive(lambda report: None)
        assert pool.done == {"users"}
    finally:
        pool.close()


@all_databases
def test_a_load_collects_garbage_rarely_and_then_restores_the_collector(monkeypatch, tmp_path):
    """Rows hold no reference cycles, and the default collector pace cost a third of a large
    load's client CPU; the writers, forked during the load, inherit the rare pace."""
    seen = tmp_path / "threshold"
    original = BulkWriter.write

    def write(self, job):
        seen.write_text(repr(gc.get_threshold()))  # runs in the writer process
        return original(self, job)

    monkeypatch.setattr(BulkWriter, "write", write)
    before = gc.get_threshold()
    load.load(SyntheticSource(users=10, products=10, orders=10))
    assert seen.read_text() == repr(load.GC_THRESHOLD)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    with pytest.raises(KeyboardInterrupt), load.rare_collections():
        raise KeyboardInterrupt
    assert gc.get_threshold() == before


@all_databases
def test_a_row_that_clashes_only_at_insert_names_the_stored_owner_of_its_email():
    """The careful path's last step (one row at a time) is reached when another process
    committed a clashing email after the batch was read: the rejection still names the
    user who has the email, not "another stored row"."""
    store_customers()  # user 1 is alice@example.com
    writer = BulkWriter("users", "users_db")
    row = (7, "Alice again", "ALICE@example.com", "alice@example.com")
    written = writer._insert_one_by_one([row], {7: 12})
    assert (written.stored, written.present) == (0, 0)
    assert [(r.line, r.id, r.reason) for r in written.rejections] == [
        (12, 7, "email 'ALICE@example.com' is already used by customer 1")
    ]


@all_databases
def test_ctrl_c_counts_every_batch_committed_even_if_its_report_was_not_read(tmp_path, monkeypatch):
    """Ctrl-C arrives while the main process validates users batch 2 and batch 1's report
    is still in the queue (the main process reads reports only when it sends): the stop
    message counts batch 1's rows, which are kept (it said no batch was committed)."""
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    (tmp_path / "users.csv").write_text(
        "id,name,email\n" + "".join(f"{i},U{i},u{i}@example.com\n" for i in range(1, 31))
    )
    validate = RunValidator.validate
    calls = []

    def ctrl_c_at_the_second_batch(self, table, batch):
        calls.append(table)
        if len(calls) == 2:
            deadline = time.monotonic() + 60
            while User.objects.count() < 10 and time.monotonic() < deadline:
                time.sleep(0.01)  # until batch 1 is committed, however slow the machine
            raise KeyboardInterrupt
        return validate(self, table, batch)

    monkeypatch.setattr(RunValidator, "validate", ctrl_c_at_the_second_batch)
    with pytest.raises(CommandError) as error:
        call_command(
            "insert_data",
            "--from",
            str(tmp_path),
            "--batch-size=10",
            "--no-progress",
            stdout=StringIO(),
        )
    assert User.objects.count() == 10
    assert error.value.returncode == 130
    assert str(error.value) == (
        "stopped by Ctrl-C (SIGINT): committed batches are kept (so far users 10 rows "
        "handled); run the same command again to finish."
    )
