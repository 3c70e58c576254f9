"""Resuming a stopped load (``crossdb.resume``): the run after it leaves out the rows the
stopped one settled, and ends where an uninterrupted run ends.

In process, the record of a load stopped with a chosen prefix settled is made (a load of
that prefix alone, recorded as a run of the whole files), then resumed: the stored rows,
the counts and every rejection (with its line and reason) must be those of one
uninterrupted run, and the resumed run must not validate the rows of the prefix again.
The negative control resumes from a point past what was committed: the same comparison
must catch the rows it loses. A real ``insert_data`` is then killed with SIGKILL after its
orders began to commit, and run again: it must say it resumes and end with the clean
run's rows.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from crossdb import resume
from crossdb.loading import columns, load
from crossdb.loading.validate import RunValidator
from crossdb.models import LoadRun
from crossdb.sources import FileSource, reading
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.models import Order, Product, User
from tests.conftest import ALL_DATABASES, ROOT, manage
from tests.test_reliability import dump  # the rows the kill loop compares

databases = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)

OPTIONS = {"on_conflict": "reject", "encoding": None, "map": [], "map_file": None}
BATCH = 5


def write_files(directory):
    """60 users, 10 products, 200 orders, with bad rows before and after any stop."""
    users = ["id,name,email"]
    for i in range(1, 61):
        email = "not-an-email" if i in (3, 50) else f"u{i}@example.com"
        users.append(f"{i},User {i},{email}")
    users.append("7,Someone Else,other7@example.com")  # a conflict with user 7
    products = ["id,name,price"] + [f"{i},P{i},{i}.50" for i in range(1, 11)]
    products.append("11,Bad,-1")
    orders = ["id,user_id,product_id,quantity"]
    for i in range(1, 201):
        user = 3 if i in (4, 150) else 999 if i == 120 else i % 60 + 1  # user 3: rejected
        orders.append(f"{i},{user},{i % 10 + 1},{i % 5 + 1}")
    orders.append("12,1,1,0")  # quantity 0, and an id stored with other data
    for name, lines in (("users", users), ("products", products), ("orders", orders)):
        (directory / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return directory


def state():
    return (
        sorted(User.objects.values_list("id", "name", "email")),
        sorted(Product.objects.values_list("id", "name", "price")),
        sorted(Order.objects.values_list("id", "user_id", "product_id", "quantity")),
    )


def outcome(result):
    """Counts and rejections; stored and present together: a batch the stopped run
    committed but whose report it never read is found present by the run after it."""
    counts = {
        t: (r.read, r.stored + r.present, r.rejected, r.updated, r.skipped)
        for t, r in result.tables.items()
    }
    return counts, [(r.table, str(r.line), r.reason) for r in result.sorted_rejections()]


def clear():
    for model in (Order, Product, User):
        model.objects.all().delete()


def stopped_run(directory, kept):
    """The record a load of directory leaves when it stops with the first kept[table] rows
    of each table settled: a load of those rows alone, with checkpoints, recorded as a
    run of the whole files that did not finish (what is settled when a run stops depends
    on its timing; what the next run does with it must not)."""
    prefix = directory / "prefix"
    prefix.mkdir()
    for table in ("users", "products", "orders"):
        lines = (directory / f"{table}.csv").read_text().splitlines()[: 1 + kept.get(table, 0)]
        (prefix / f"{table}.csv").write_text("\n".join(lines) + "\n")
    source = FileSource(directory)
    wanted = resume.identity(source, OPTIONS)
    run = LoadRun.objects.create(
        started_at="2026-01-01T00:00Z", source=source.label, summary={}, status=LoadRun.RUNNING
    )
    checkpoints = resume.Checkpoints(run.pk, wanted, interval=0)
    load.load(FileSource(prefix), batch_size=BATCH, checkpoints=checkpoints)
    checkpoints.save()
    return source, wanted


def validated_rows(monkeypatch):
    seen = []
    validate = RunValidator.validate

    def counting(self, table, batch):
        seen.append((table, len(batch)))
        return validate(self, table, batch)

    monkeypatch.setattr(RunValidator, "validate", counting)
    return seen


@databases
@pytest.mark.parametrize(
    "kept",
    [
        {"users": 23, "products": 4},
        {"users": 61, "products": 11},
        {"users": 61, "products": 11, "orders": 137},
    ],
    ids=["users-part-way", "parents-done", "orders-part-way"],
)
def test_a_resumed_run_ends_as_one_uninterrupted_run(tmp_path, monkeypatch, kept):
    directory = write_files(tmp_path)
    clean = load.load(FileSource(directory), batch_size=BATCH)
    clean_state = state()
    clear()

    source, wanted = stopped_run(directory, kept)
    point = resume.point_for(source.label, wanted)
    assert {t: point.through(t) for t in kept} == {t: n + 1 for t, n in kept.items()}
    seen = validated_rows(monkeypatch)
    resumed = load.load(FileSource(directory), batch_size=BATCH, resume=point)

    assert state() == clean_state
    assert outcome(resumed) == outcome(clean)
    # the prefix was not validated again
    skipped = sum(p.read for p in point.tables.values())
    assert sum(n for _t, n in seen) == sum(t.read for t in clean.tables.values()) - skipped


@databases
def test_negative_control_a_resume_past_the_committed_rows_is_caught(tmp_path):
    directory = write_files(tmp_path)
    clean = load.load(FileSource(directory), batch_size=BATCH)
    clean_state = state()
    clear()

    source, wanted = stopped_run(directory, {"users": 61, "products": 11, "orders": 40})
    point = resume.point_for(source.label, wanted)
    point.tables["orders"].through += 3 * BATCH  # as if three more batches had committed
    resumed = load.load(FileSource(directory), batch_size=BATCH, resume=point)

    assert state() != clean_state
    assert outcome(resumed)[0]["orders"][1] < outcome(clean)[0]["orders"][1]


@databases
def test_a_changed_file_is_read_whole_and_a_finished_run_is_not_resumed(tmp_path):
    directory = write_files(tmp_path)
    source, wanted = stopped_run(directory, {"users": 61, "products": 11, "orders": 40})
    point = resume.point_for(source.label, wanted)
    assert set(point.tables) == {"users", "products", "orders"}

    orders = directory / "orders.csv"
    os.utime(orders, ns=(time.time_ns(), orders.stat().st_mtime_ns + 10**9))
    point = resume.point_for(source.label, resume.identity(source, OPTIONS))
    assert set(point.tables) == {"users", "products"}

    other = dict(OPTIONS, on_conflict="update")
    assert resume.point_for(source.label, resume.identity(source, other)) is None

    LoadRun.objects.update(status=LoadRun.DONE)
    assert resume.point_for(source.label, resume.identity(source, OPTIONS)) is None


def test_a_prefix_with_too_many_rejections_stops_advancing():
    class Written:
        stored = present = updated = skipped = 0
        rejections = ["x"] * (resume.KEPT_REJECTIONS + 1)

    checkpoints = resume.Checkpoints(0, {}, interval=10**9)
    checkpoints.validated("users", 10, 10, [], sent=True)
    checkpoints.reported("users", Written)
    Written.rejections = []
    checkpoints.validated("users", 20, 10, [], sent=True)
    checkpoints.reported("users", Written)
    assert checkpoints.points["users"].through == 0


# --- a real process, SIGKILLed ---------------------------------------------------------------


def orders_through(data_dir):
    """The orders line the running load's record says is settled (0 if none yet)."""
    try:
        with sqlite3.connect(data_dir / "default.db", timeout=5) as db:
            row = db.execute("SELECT resume FROM load_runs ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return 0
    if not row or not row[0]:
        return 0
    return json.loads(row[0]).get("tables", {}).get("orders", {}).get("through", 0)


def orders_indexes(data_dir):
    with sqlite3.connect(data_dir / "orders.db") as db:
        query = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'orders'"
        return dict(db.execute(query).fetchall())


@pytest.mark.parametrize(
    "signum, again_options",
    [(signal.SIGKILL, []), (signal.SIGINT, []), (signal.SIGKILL, ["--no-resume"])],
    ids=["kill-9", "ctrl-c", "kill-9-no-resume"],
)
def test_insert_data_stopped_mid_orders_resumes_and_ends_as_a_clean_run(
    tmp_path, signum, again_options
):
    """Resumed, or read again whole with --no-resume: the same rows as a clean run, and
    the orders indexes the stopped load dropped built by the run's writer after its rows
    (not by the repair before it, which would have the rows inserted into them)."""
    files = tmp_path / "files"
    files.mkdir()
    users = ["id,name,email"] + [f"{i},U{i},u{i}@example.com" for i in range(1, 2001)]
    products = ["id,name,price"] + [f"{i},P{i},1.00" for i in range(1, 101)]
    orders = ["id,user_id,product_id,quantity"]
    orders += [f"{i},{i % 2000 + 1},{i % 100 + 1},1" for i in range(1, 200_001)]
    for name, lines in (("users", users), ("products", products), ("orders", orders)):
        (files / f"{name}.csv").write_text("\n".join(lines) + "\n")
    command = ["insert_data", "--from", str(files), "--no-progress", "--batch-size", "500"]

    clean, stopped = tmp_path / "clean", tmp_path / "stopped"
    for data_dir in (clean, stopped):
        data_dir.mkdir()
        manage("migrate_all", data_dir=data_dir, check=True)
    manage(*command, data_dir=clean, check=True)

    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "launch.py"), *command],
        env={
            **{k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")},
            "MULTIDS_DATA_DIR": str(stopped),
            "DJANGO_SETTINGS_MODULE": "multids.settings",
            "MULTIDS_TEST_CHECKPOINT_SECONDS": "0",
        },
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not orders_through(stopped) and process.poll() is None:
        assert time.monotonic() < deadline, "no orders were settled in two minutes"
        time.sleep(0.002)
    assert process.poll() is None, "the load ended before it could be killed mid-orders"
    os.killpg(process.pid, signum)
    assert process.wait(timeout=60) == (-signal.SIGKILL if signum == signal.SIGKILL else 130)
    assert 0 < len(dump(stopped)["orders"]) < 200_000
    with sqlite3.connect(stopped / "default.db") as db:
        status = db.execute("SELECT status FROM load_runs ORDER BY id DESC").fetchone()[0]
    assert status == ("running" if signum == signal.SIGKILL else "failed")
    assert len(orders_indexes(stopped)) < len(orders_indexes(clean))  # dropped for the load

    report_file = str(tmp_path / "report.json")
    again = manage(*command, *again_options, "--report", report_file, data_dir=stopped)
    assert again.returncode == 0, again.stderr
    assert ("Resuming run #" in again.stdout) == (not again_options)
    assert "rebuilt index" not in again.stdout
    assert dump(stopped) == dump(clean)
    assert orders_indexes(stopped) == orders_indexes(clean)
    report = json.loads((tmp_path / "report.json").read_text())["totals"]
    assert report["stored"] + report["already_present"] == 202_100, report
    assert report["rejected"] == 0, report
    integrity = manage("check_integrity", data_dir=stopped)
    assert integrity.returncode == 0, integrity.stdout
    assert Path(stopped / "orders.db").exists()


# --- a CSV file read past its settled lines ----------------------------------------------

CELL = st.sampled_from(["1", "22", "x", "", '"a\nb"', '"q""uote"', "7"])
LINE_END = st.sampled_from(["\n", "\r\n"])


def _values(values):
    return tuple(values) if isinstance(values, list | tuple) else repr(values)  # a Malformed


def _rows(runs):
    out = []
    for run in runs:
        rows = run.rows() if isinstance(run, columns.Block) else run
        out.extend((getattr(line, "last", line), _values(values)) for line, values in rows)
    return out


def csv_after_line_property(tmp_path, records, ends, blank, data):
    lines = ["id,user_id,product_id,quantity"]
    lines += [",".join(r) for r in records]
    if blank:
        lines.insert(len(lines) // 2, "")
    text = "".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    path = tmp_path / "orders.csv"
    path.write_text(text, newline="")
    wanted = FileSource(tmp_path)._wanted("orders")
    read = partial(reading.csv_runs, path, wanted, whole_numbers=True)
    everything = _rows(read())
    after = data.draw(st.sampled_from([1, *(line for line, _values in everything)]))
    assert _rows(read(after_line=after)) == [r for r in everything if r[0] > after]


CSV_FILES = {
    "records": st.lists(st.lists(CELL, min_size=3, max_size=5), max_size=25),
    "ends": st.lists(LINE_END, min_size=30, max_size=30),
    "blank": st.booleans(),
    "data": st.data(),
}
ONE_FOLDER = [HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=ONE_FOLDER)
@given(**CSV_FILES)
def test_a_csv_file_read_after_a_line_gives_the_rows_after_it(tmp_path, records, ends, blank, data):
    csv_after_line_property(tmp_path, records, ends, blank, data)


def test_negative_control_reading_one_line_too_far_is_caught(tmp_path, monkeypatch):
    skip = reading._skip_lines

    def too_far(opened, log, line, after_line):
        return skip(opened, log, line, after_line + 1)

    monkeypatch.setattr(reading, "_skip_lines", too_far)

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=ONE_FOLDER,
    )
    @given(**CSV_FILES)
    def broken(records, ends, blank, data):
        csv_after_line_property(tmp_path, records, ends, blank, data)

    with pytest.raises(AssertionError):
        broken()
