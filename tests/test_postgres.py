"""The main behaviours against a real PostgreSQL server on 127.0.0.1:5432.

Each test creates its own databases (``multids_test_<random>_<alias>``, one per alias, as if
each lived on its own server) and drops them afterwards, then runs ``manage.py`` in a
subprocess with ``DATABASE_URL``/``USERS_DATABASE_URL``/... pointing at them, exactly as a
user would. ``.ci/setup-postgres.sh`` starts the server and creates the role ``multids``
(override with ``MULTIDS_POSTGRES_ADMIN_URL``).

When the server cannot be reached these tests skip and say why, except in CI (``CI`` set):
there they fail, so a broken PostgreSQL setup can never pass silently.
"""

import csv
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from tests.conftest import ROOT, manage
from tests.test_insert_data import DEMO_REJECTIONS

pytestmark = pytest.mark.postgres

ADMIN_URL = os.environ.get("MULTIDS_POSTGRES_ADMIN_URL") or (
    "postgresql://multids@127.0.0.1:5432/postgres"
)
VARIABLES = {
    "default": "DATABASE_URL",
    "users_db": "USERS_DATABASE_URL",
    "orders_db": "ORDERS_DATABASE_URL",
    "products_db": "PRODUCTS_DATABASE_URL",
}
TABLE_ALIASES = {"users": "users_db", "products": "products_db", "orders": "orders_db"}


def _in_ci():
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


@pytest.fixture(scope="session")
def postgres_server():
    """The admin URL, once the server has answered; skip (fail in CI) when it does not."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5) as db:
            db.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = (
            f"PostgreSQL is not reachable at {ADMIN_URL} ({first_line}); "
            "run: bash .ci/setup-postgres.sh"
        )
        if _in_ci():
            pytest.fail(f"CI is set, so PostgreSQL tests must run: {reason}", pytrace=False)
        pytest.skip(reason)
    return ADMIN_URL


def url_for(name):
    return urlsplit(ADMIN_URL)._replace(path=f"/{name}").geturl()


@pytest.fixture
def pg_databases(postgres_server):
    """Factory: create fresh databases for some aliases; return the environment naming them."""
    created = []

    def make(aliases=tuple(VARIABLES)):
        tag = uuid.uuid4().hex[:8]
        env = {}
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            for alias in aliases:
                name = f"multids_test_{tag}_{alias}"
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                created.append(name)
                env[VARIABLES[alias]] = url_for(name)
        return env

    yield make
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        for name in created:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def pg_rows(env, table, columns="*"):
    """Every row of table in the PostgreSQL database env names for it, by id."""
    with psycopg.connect(env[VARIABLES[TABLE_ALIASES[table]]]) as db:
        return db.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()


def sqlite_rows(data_dir, table):
    with sqlite3.connect(data_dir / f"{table}.db") as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def comparable(table, rows):
    """Rows with prices as 2-place Decimals: SQLite hands them back as floats."""
    if table != "products":
        return rows
    return [(i, name, Decimal(str(price)).quantize(Decimal("0.01"))) for i, name, price in rows]


def run(*args, data_dir, env, check=True):
    result = manage(*args, data_dir=data_dir, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result


def summary_line(stdout):
    """The "N stored, N already present, N rejected" part of insert_data's output."""
    match = re.search(r"^([\d,]+ stored, [\d,]+ already present, [\d,]+ rejected)", stdout, re.M)
    assert match, stdout
    return match.group(1)


def rejection_lines(stdout):
    return [line.strip() for line in stdout.split("Rejected rows:", 1)[-1].splitlines()[1:]]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_the_demo_gives_8_9_7_with_the_same_rejections_and_a_rerun_stores_nothing(
    pg_databases, tmp_path
):
    env = pg_databases()
    run("migrate_all", data_dir=tmp_path, env=env)
    out = run("insert_data", "--no-progress", data_dir=tmp_path, env=env).stdout
    for line in DEMO_REJECTIONS:
        assert line in out
    assert summary_line(out) == "24 stored, 0 already present, 6 rejected"
    assert [r[0] for r in pg_rows(env, "users")] == [1, 2, 3, 4, 5, 6, 7, 9]
    assert [r[0] for r in pg_rows(env, "products")] == list(range(1, 10))
    assert [r[0] for r in pg_rows(env, "orders")] == list(range(1, 8))
    assert pg_rows(env, "products", "price")[6] == (Decimal("1000.00"),)
    assert list(tmp_path.glob("*.db")) == [], "nothing may fall back to SQLite files"

    again = run("insert_data", "--no-progress", data_dir=tmp_path, env=env).stdout
    assert summary_line(again) == "0 stored, 24 already present, 6 rejected"
    assert rejection_lines(again) == rejection_lines(out)
    assert [len(pg_rows(env, t)) for t in ("users", "products", "orders")] == [8, 9, 7]
    integrity = run("check_integrity", data_dir=tmp_path, env=env)
    assert integrity.returncode == 0


def messy_files(directory, first):
    """Input that takes every path: bad values, clashes inside a run and with stored rows."""
    directory.mkdir()
    if first:
        users = [
            (1, "Ann", "ann@example.com"),
            (2, "Bob", "bob@example.com"),
            (2, "Bob", "bob@example.com"),  # the same row twice: already present
            (3, "Cid", "ANN@example.com"),  # email used by user 1 (case-insensitive)
            (4, "", "dan@example.com"),
            (5, "Eve", "not-an-email"),
            (6, "Fay", "fay@example.com"),
            (6, "Fay", "fay2@example.com"),  # same id, different data
            (7, "Gus", "gus@example.com"),
        ]
        products = [
            (1, "Pen", "1.50"),
            (2, "Ink", "-3"),
            (3, "Cap", "1.234"),
            (4, "Box", "inf"),
            (5, "Bag", "99999999999.00"),
            (6, "Mug", "7"),
        ]
        orders = [
            (1, 1, 1, 2),
            (2, 3, 1, 1),  # user 3 was rejected
            (3, 1, 2, 1),  # product 2 was rejected
            (4, 2, 6, 0),
            (5, 99, 1, 1),  # no such user
            (6, 7, 6, 3),
            (6, 7, 6, 4),  # same id, different data
            (7, "x", 1, 1),
        ]
    else:
        users = [
            (1, "Ann", "ann@example.com"),  # already present
            (2, "Robert", "bob@example.com"),  # stored with different data
            (8, "Hal", "GUS@EXAMPLE.COM"),  # email stored for user 7
            (9, "Ida", "ida@example.com"),
            (3, "Cid", "cid@example.com"),  # rejected before, fixed now
        ]
        products = [(1, "Pen", "1.5"), (6, "Mug", "8.00"), (7, "Tray", "12.34")]
        orders = [
            (1, 1, 1, 2),
            (6, 7, 6, 3),
            (8, 9, 7, 1),
            (9, 8, 7, 1),  # user 8 was rejected in this run
            (10, 3, 7, 5),
            (1, 1, 1, 5),  # stored with different data
        ]
    write_csv(directory / "users.csv", ["id", "name", "email"], users)
    write_csv(directory / "products.csv", ["id", "name", "price"], products)
    write_csv(directory / "orders.csv", ["id", "user_id", "product_id", "quantity"], orders)
    return directory


def test_file_loads_store_and_reject_exactly_as_on_sqlite(pg_databases, tmp_path):
    first = messy_files(tmp_path / "first", first=True)
    second = messy_files(tmp_path / "second", first=False)
    sqlite_dir = tmp_path / "sqlite"
    sqlite_dir.mkdir()
    pg_dir = tmp_path / "pg"
    pg_dir.mkdir()
    env = pg_databases()
    outputs = {}
    for label, data_dir, environment in (("sqlite", sqlite_dir, {}), ("pg", pg_dir, env)):
        run("migrate_all", data_dir=data_dir, env=environment)
        for name, files in (("first", first), ("second", second)):
            # Small batches: clashes land in several batches and the careful path runs often.
            rejects = data_dir / f"{name}-rejects.csv"
            out = run(
                "insert_data",
                "--from",
                str(files),
                "--batch-size",
                "3",
                "--no-progress",
                "--rejects",
                str(rejects),
                data_dir=data_dir,
                env=environment,
            ).stdout
            outputs[label, name] = (summary_line(out), rejection_lines(out), rejects.read_text())

    for name in ("first", "second"):
        assert outputs["pg", name] == outputs["sqlite", name]
    assert outputs["pg", "first"][0] == "8 stored, 1 already present, 14 rejected"
    assert outputs["pg", "second"][0] == "5 stored, 4 already present, 5 rejected"
    assert (
        "users #8 (line 4): email 'GUS@EXAMPLE.COM' is already used by customer 7"
        in (outputs["pg", "second"][1])
    )
    for table in ("users", "products", "orders"):
        stored_on_pg = comparable(table, pg_rows(env, table))
        assert stored_on_pg == comparable(table, sqlite_rows(sqlite_dir, table)), table
        assert stored_on_pg, table


def test_mixed_setup_users_on_postgres_the_rest_on_sqlite(pg_databases, tmp_path):
    env = pg_databases(["users_db"])
    out = run("migrate_all", data_dir=tmp_path, env=env).stdout
    assert re.search(r"^users_db .*127\.0\.0\.1:5432/multids_test_", out, re.M), out
    assert re.search(r"^orders_db .*orders\.db", out, re.M), out
    loaded = run("insert_data", "--no-progress", data_dir=tmp_path, env=env).stdout
    assert summary_line(loaded) == "24 stored, 0 already present, 6 rejected"
    for line in DEMO_REJECTIONS:
        assert line in loaded
    assert len(pg_rows(env, "users")) == 8
    assert not (tmp_path / "users.db").exists()
    assert len(sqlite_rows(tmp_path, "orders")) == 7
    assert len(sqlite_rows(tmp_path, "products")) == 9
    writers = run(
        "shell",
        "-c",
        "from crossdb.loading.load import writer_for\n"
        "for t, a in (('users', 'users_db'), ('orders', 'orders_db')):\n"
        "    print(t, type(writer_for(t, a)).__name__)",
        data_dir=tmp_path,
        env=env,
    ).stdout.splitlines()
    assert "users PostgresBulkWriter" in writers, writers
    assert "orders BulkWriter" in writers, writers


CONCURRENT_LOAD = """
import sys, time
from pathlib import Path
from django.core.management import call_command
from crossdb.loading.postgres import PostgresBulkWriter

go, source, rejects = sys.argv[1:4]
insert = PostgresBulkWriter.insert_ignoring_conflicts

def insert_and_hold(self, cursor, rows):
    # Keep the inserted rows uncommitted for a moment, so the other processes' inserts run
    # into them: the case a check-then-insert gets wrong.
    inserted = insert(self, cursor, rows)
    time.sleep(0.05)
    return inserted

PostgresBulkWriter.insert_ignoring_conflicts = insert_and_hold
while not Path(go).exists():  # start every process at the same moment
    time.sleep(0.002)
started = time.time()
call_command("insert_data", "--from", source, "--batch-size", "40", "--no-progress",
             "--rejects", rejects, "--show", "0")
print("SPAN", started, time.time())
"""


def test_concurrent_processes_with_clashing_emails_get_clear_rejections(pg_databases, tmp_path):
    """Three processes load different users sharing emails (one in reverse order, so their
    inserts cross): every email is stored once, every other copy is a clear rejection."""
    env = pg_databases()
    run("migrate_all", data_dir=tmp_path, env=env)
    count = 400
    styles = [str.lower, str.upper, str.title]
    processes = []
    go = tmp_path / "go"
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    environment |= env | {"MULTIDS_DATA_DIR": str(tmp_path)}
    environment["DJANGO_SETTINGS_MODULE"] = "multids.settings"
    for p, style in enumerate(styles):
        users = [
            (p * 10_000 + i + 1, f"P{p} {i}", style(f"person{i}@example.com")) for i in range(count)
        ]
        if p == 1:
            users.reverse()
        source = tmp_path / f"load{p}"
        source.mkdir()
        write_csv(source / "users.csv", ["id", "name", "email"], users)
        script = tmp_path / "load.py"
        script.write_text(CONCURRENT_LOAD)
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import django, runpy, sys; django.setup(); "
                    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
                    str(script),
                    str(go),
                    str(source),
                    str(tmp_path / f"rejects{p}.csv"),
                ],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    time.sleep(1.5)  # let every process import Django and wait at the line
    go.touch()
    results = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err[-2000:]
        assert "IntegrityError" not in err + out and "Traceback" not in err, err[-2000:]

    stored = pg_rows(env, "users", "id, lower(email)")
    owners = {email: user_id for user_id, email in stored}
    assert len(owners) == len(stored) == count  # each email exactly once
    stored_per_process = [sum(1 for i, _ in stored if i // 10_000 == p) for p in range(3)]
    rejected = 0
    for p in range(3):
        with open(tmp_path / f"rejects{p}.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) + stored_per_process[p] == count
        for row in rows:
            owner = owners[row["email"].lower()]
            assert row["reason"] == f"email {row['email']!r} is already used by customer {owner}"
            assert owner // 10_000 != p
        rejected += len(rows)
    assert rejected == 2 * count
    spans = [re.search(r"^SPAN (\S+) (\S+)$", out, re.M).groups() for out, _err in results]
    assert max(float(s) for s, _e in spans) < min(float(e) for _s, e in spans), spans


DEADLOCK = """
import sys, threading, time
import psycopg
from crossdb.loading.postgres import PostgresBulkWriter
from crossdb.loading.load import writer_for
from crossdb.loading.processes import Job

deadlocks = []
copy = PostgresBulkWriter._copy

def recording_copy(self, raw, statement, rows):
    try:
        copy(self, raw, statement, rows)
    except psycopg.errors.DeadlockDetected:
        deadlocks.append(statement)
        raise

PostgresBulkWriter._copy = recording_copy
other = psycopg.connect(sys.argv[1])  # plays a second loader
other.execute(
    "INSERT INTO users (id, name, email, email_key) "
    "VALUES (100, 'Other', 'one@example.com', 'one@example.com')"
)

def close_the_cycle():
    # wait until the writer below holds two@ and waits for one@ (a lock wait on the server)
    watch = psycopg.connect(sys.argv[1], autocommit=True)
    for _ in range(200):
        waiting = watch.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()[0]
        if waiting:
            break
        time.sleep(0.05)
    watch.close()
    try:
        other.execute(
            "INSERT INTO users (id, name, email, email_key) "
            "VALUES (101, 'Other', 'two@example.com', 'two@example.com')"
        )
        other.commit()
    except psycopg.errors.DeadlockDetected:
        other.rollback()
        print("the other loader was aborted")

thread = threading.Thread(target=close_the_cycle)
thread.start()
writer = writer_for("users", "users_db")
rows = [(200, "Mine", "TWO@example.com", "two@example.com"),
        (201, "Mine", "One@example.com", "one@example.com")]
written = writer.write(Job(1, [2, 3], rows, {}))
thread.join()
print("deadlocks in the writer:", len(deadlocks))
print("stored", written.stored, "present", written.present)
for rejection in written.rejections:
    print(rejection.line, rejection.id, rejection.reason)
"""


def test_a_deadlock_between_two_loaders_ends_in_clear_rejections(pg_databases, tmp_path):
    """Another loader holds one@ and then wants two@, while the writer holds two@ and
    waits for one@: PostgreSQL aborts the writer (it waited first), which must roll back,
    retry carefully and reject both rows by naming the other loader's users."""
    env = pg_databases()
    run("migrate_all", data_dir=tmp_path, env=env)
    out = manage(
        "shell",
        "-c",
        DEADLOCK.replace("sys.argv[1]", repr(env["USERS_DATABASE_URL"])),
        data_dir=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # Whether PostgreSQL aborts the writer or finds no cycle depends on who waits first;
    # either way both rows must end as clear rejections naming the other loader's users.
    assert re.search(r"deadlocks in the writer: [01]$", out.stdout, re.M), out.stdout
    assert "stored 0 present 0" in out.stdout
    assert "2 200 email 'TWO@example.com' is already used by customer 101" in out.stdout
    assert "3 201 email 'One@example.com' is already used by customer 100" in out.stdout
    assert pg_rows(env, "users", "id, name, email") == [
        (100, "Other", "one@example.com"),
        (101, "Other", "two@example.com"),
    ]


def test_the_in_process_suite_passes_on_postgres(postgres_server):
    """Every in-process database test (loads, re-runs, orders only after their users with
    its negative control, integrity checks, admin, report, streaming) rerun with every alias
    on PostgreSQL; only the tests that read SQLite files themselves are left out."""
    environment = dict(os.environ, MULTIDS_POSTGRES_ADMIN_URL=postgres_server)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--ds",
            "tests.settings_postgres",
            "-m",
            "django_db and not sqlite_files",
            "--ignore",
            str(Path("tests") / "test_postgres.py"),  # this file: it would rerun itself
            "--ignore",
            str(Path("tests") / "test_browser.py"),  # needs Chromium; covered on SQLite
            "tests",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=1200,  # a guard against a hang: 272 tests took 653 s at load average 13
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 100, result.stdout[-2000:]
    assert "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]


def orders_of_stored_parents(directory, count, users, products):
    """An orders.csv of count orders naming the synthetic users and products (ids from
    FIRST_ID) an earlier load stored."""
    from core.sources import FIRST_ID

    directory.mkdir()
    rows = [(i, FIRST_ID + i % users, FIRST_ID + i % products, 1) for i in range(1, count + 1)]
    write_csv(directory / "orders.csv", ["id", "user_id", "product_id", "quantity"], rows)
    return directory


@pytest.mark.parametrize("segment_mb", ["64", "0"], ids=["in-a-segment", "batch-by-batch"])
def test_a_writer_whose_connection_the_server_ends_fails_in_one_line(
    pg_databases, tmp_path, segment_mb
):
    """pg_terminate_backend on the orders writer's backend, while its first batch holds its
    transaction open (``crossdb.loading.writers.HOLD``, after its parents were looked up): the run
    ends with one line and exit 1, whichever COPY was going on (a load segment's streams through
    psycopg directly); the re-run stores every order."""
    env = pg_databases()
    run("migrate_all", data_dir=tmp_path, env=env)
    run("insert_data", "--no-progress", "--users=50", "--products=5", data_dir=tmp_path, env=env)
    source = orders_of_stored_parents(tmp_path / "orders", 3000, 50, 5)
    hold = tmp_path / "hold"
    environment = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    environment |= env | {
        "MULTIDS_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "multids.settings",
        "MULTIDS_TEST_HOLD": str(hold),
        "MULTIDS_LOAD_SEGMENT_MB": segment_mb,
    }
    load = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "launch.py"), "insert_data", "--from", str(source)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        held = Path(f"{hold}.held")
        for _ in range(1200):  # up to 120 s for the start-up on a busy machine
            if held.exists() or load.poll() is not None:
                break
            time.sleep(0.1)
        assert held.exists(), load.communicate(timeout=60)
        orders_db = urlsplit(env["ORDERS_DATABASE_URL"]).path.lstrip("/")
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [orders_db],
            ).fetchall()
        assert ended == [(True,)], ended  # the writer's connection, and no other
        Path(f"{hold}.go").touch()
        out, err = load.communicate(timeout=120)
    finally:
        load.kill()
        load.wait()
    lines = err.strip().splitlines()
    assert load.returncode == 1, out[-2000:] + err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("CommandError: orders writer (orders_db at 127.0.0.1:5432/"), err
    assert lines[0].endswith("run the same command again to finish."), err
    again = run("insert_data", "--no-progress", "--from", str(source), data_dir=tmp_path, env=env)
    assert summary_line(again.stdout) == "3,000 stored, 0 already present, 0 rejected"
    assert run("check_integrity", data_dir=tmp_path, env=env).returncode == 0


def test_psycopgs_echo_of_a_copy_cut_off_by_the_server_is_not_a_second_line(pg_databases, caplog):
    """The server ends the connection in the middle of a COPY: psycopg logs "error ignored
    terminating <Copy>: the connection is lost" beside the error it raises, which is the
    writer's one line already. crossdb.loading.postgres drops that echo; without its filter it is
    there."""
    import logging

    from crossdb.loading import postgres

    url = pg_databases(["orders_db"])["ORDERS_DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE cut (a integer)")

    def copy_cut_off():
        caplog.clear()
        with psycopg.connect(url) as connection:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                end = "SELECT pg_terminate_backend(%s)"
                with pytest.raises(psycopg.OperationalError):
                    with connection.cursor().copy("COPY cut (a) FROM STDIN") as copy:
                        admin.execute(end, [connection.info.backend_pid])
                        for _ in range(10_000):
                            copy.write(b"1\n" * 10_000)
        return [r.getMessage() for r in caplog.records if r.name == "psycopg"]

    assert copy_cut_off() == []
    psycopg_log = logging.getLogger("psycopg")
    (echo_filter,) = [f for f in psycopg_log.filters if isinstance(f, postgres._LostConnectionEcho)]
    psycopg_log.removeFilter(echo_filter)
    try:
        echoed = copy_cut_off()
    finally:
        psycopg_log.addFilter(echo_filter)
    assert len(echoed) == 1 and echoed[0].startswith("error ignored terminating"), echoed
