"""export_data (crossdb.exporting): every registered table written into the files
insert_data --from reads, and read back as the same rows.

In process (on SQLite, and on PostgreSQL through tests/test_postgres.py's rerun of the
suite): tricky values of every field kind (the shop's tables, the reviews and the kinds
tables: decimals at their bounds, floats, booleans, dates and datetimes at the ends of
the calendar, UUIDs, NULLs, text with commas, quotes, tabs and non-ASCII) survive export
and a load into emptied tables, as CSV and JSONL, plain and gzipped; the comparison is
shown to catch one changed value; rows that would not load back are named; nothing is
written to any database; memory stays bounded; each refusal is one line.

Across backends, in subprocesses as a person runs it (``-m postgres``): SQLite -> files
-> PostgreSQL -> files -> SQLite ends with the same rows, and check_integrity is clean.
"""

import contextlib
import csv
import gzip
import io
import json
import os
import sqlite3
import stat
import tracemalloc
from pathlib import Path

import psycopg
import pytest
from crossdb import exporting, registry
from crossdb.integrity import check_integrity
from crossdb.loading import load
from crossdb.sources import FileSource
from django.core.management import CommandError
from django.db import DatabaseError, connections
from psycopg import sql

from tests.conftest import all_databases, behind_the_guards_back, manage
from tests.test_postgres import postgres_server, url_for  # noqa: F401 - a fixture
from tests.test_verdicts import empty_tables

SHELF_A = "6f1c2a52-8d3e-4b7a-9c10-2f3e4d5a6b7c"
SHELF_B = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
SHELF_C = "ffffffff-0000-4000-8000-00000000abcd"
ID_MAX = str(2**63 - 1)

# Input rows as a file gives them (text), each valid, with the values that are hardest to
# write and read back: every field kind the loader has, at its bounds, and text with the
# characters CSV and JSON must escape.
TRICKY = {
    "users": [
        ("1", 'Zoë "Zee" O\'Brien, Jr.', "zoe@example.com"),
        ("2", "Ænne, 東京 🌸", "änne@exämple.org"),
        ("3", "semi;colon\ttab", "STRASSE@example.com"),
        ("4", '"', "q@example.com"),
        (ID_MAX, "Max", "max@example.com"),
    ],
    "products": [
        ("1", "Pen, blue", "0.01"),
        ("2", 'Ink "black"', "9999999999.99"),
        ("3", "Ünïcödé", "1000"),
    ],
    "orders": [("1", "1", "1", "1"), ("2", ID_MAX, "3", "2147483647"), ("3", "2", "2", "5")],
    "reviews": [("1", "2", "2", "5"), ("2", ID_MAX, "3", "1")],
    "shelves": [
        (SHELF_A, 'A, "north"', "0001-01-01", "true"),
        (SHELF_B, "Über", "9999-12-31", "false"),
        (SHELF_C, "plain", "2024-02-29", ""),  # heated left empty: its default
    ],
    "items": [
        ('a,b"c', SHELF_A, "", "0.1", "true", "2024-05-01T09:30:00.123456+02:00")
        + ("", "", "", "1"),
        ("東京-1", SHELF_B, SHELF_A, "1e-05", "false", "0001-01-01T00:00:00Z")
        + ("2024-02-29", SHELF_C, 'note, with "quotes" and ünïcode 🌸', "-7"),
        ("x", SHELF_C, "", "1000", "no", "9999-12-31T23:59:59.999999Z")
        + ("", "", "tab\tinside", "2147483647"),
        ("zero", SHELF_A, "", "0", "yes", "2000-01-01 00:00+00:00", "", "", "", ""),
    ],
}
VARIANTS = [("csv", False), ("csv", True), ("jsonl", False), ("jsonl", True)]


def write_inputs(directory, rows=TRICKY):
    directory.mkdir(parents=True, exist_ok=True)
    for table, table_rows in rows.items():
        with open(directory / f"{table}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(registry.fields(table))
            writer.writerows(table_rows)
    return directory


def load_dir(directory):
    """Load directory with the loader the command uses; return its result."""
    source = FileSource(directory)
    source.check()
    return load.load(source, batch_size=2)


def every_row():
    """{table: [row, ...]} of every registered table, each row in its fields' order."""
    return {
        table: list(
            spec.model._base_manager.using(spec.alias).order_by("pk").values_list(*spec.fields)
        )
        for table, spec in registry.specs().items()
    }


def differences(before, after):
    """One line per row that is not the same in after as in before (empty: the same)."""
    lines = []
    for table in sorted(set(before) | set(after)):
        old = {row[0]: row for row in before.get(table, [])}
        new = {row[0]: row for row in after.get(table, [])}
        for pk in sorted(set(old) | set(new), key=str):
            if old.get(pk) != new.get(pk):
                lines.append(f"{table} {pk}: {old.get(pk)!r} -> {new.get(pk)!r}")
    return lines


@pytest.fixture
def tricky(tmp_path):
    """The TRICKY rows stored (every one of them) through the loader; their rows."""
    result = load_dir(write_inputs(tmp_path / "input"))
    assert result.rejections == [], [str(r) for r in result.rejections]
    rows = every_row()
    assert {t: len(r) for t, r in rows.items()} == {t: len(r) for t, r in TRICKY.items()}
    return rows


def read_file(path):
    """A written file's text (gunzipped)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        return handle.read()


# --- The round trip ---------------------------------------------------------------------


@all_databases
@pytest.mark.parametrize(("file_format", "compress"), VARIANTS)
def test_every_table_round_trips_through_the_files_with_the_same_rows(
    tricky, tmp_path, run_command, file_format, compress
):
    args = ["--format", file_format, "--no-progress"] + (["--gzip"] if compress else [])
    out = run_command("export_data", str(tmp_path / "out"), *args)
    names = sorted(exporting.file_name(t, file_format, compress) for t in registry.tables())
    assert sorted(os.listdir(tmp_path / "out")) == names, "one file per table, nothing else"
    assert f"{sum(map(len, TRICKY.values()))} rows written in 6 files" in out
    assert "warning" not in out

    empty_tables()
    assert all(rows == [] for rows in every_row().values())
    result = load_dir(tmp_path / "out")
    assert result.rejections == [], [str(r) for r in result.rejections]
    assert differences(tricky, every_row()) == []
    assert check_integrity().ok


@all_databases
def test_the_comparison_catches_one_changed_value(tricky, tmp_path, run_command):
    """Negative control: a price changed in the exported file is a difference."""
    run_command("export_data", str(tmp_path / "out"), "--no-progress")
    products = tmp_path / "out" / "products.csv"
    text = read_file(products)
    assert '\r\n2,"Ink ""black""",9999999999.99\r\n' in text  # quoted, doubled quotes
    products.write_text(text.replace("9999999999.99", "9999999999.98"), encoding="utf-8")
    empty_tables()
    assert load_dir(tmp_path / "out").rejections == []
    assert [line.split(":")[0] for line in differences(tricky, every_row())] == ["products 2"]


@all_databases
def test_values_are_spelled_as_the_loader_reads_them(tricky, tmp_path, run_command):
    run_command("export_data", str(tmp_path / "csv"), "--no-progress")
    items = list(csv.reader(io.StringIO(read_file(tmp_path / "csv" / "items.csv"))))
    assert items[0] == list(registry.fields("items"))
    by_code = {row[0]: dict(zip(items[0], row, strict=True)) for row in items[1:]}
    assert by_code['a,b"c']["added"] == "2024-05-01T07:30:00.123456+00:00"
    assert by_code['a,b"c']["spare"] == by_code['a,b"c']["serial"] == ""  # NULL: empty
    assert by_code["東京-1"]["weight"] == "1e-05"
    assert by_code["東京-1"]["serial"] == SHELF_C
    assert by_code["x"]["fragile"] == "false"
    products = list(csv.reader(io.StringIO(read_file(tmp_path / "csv" / "products.csv"))))
    assert products[3] == ["3", "Ünïcödé", "1000.00"]  # two places, plain notation

    run_command("export_data", str(tmp_path / "jsonl"), "--format", "jsonl", "--no-progress")
    lines = read_file(tmp_path / "jsonl" / "items.jsonl").splitlines()
    first = json.loads(lines[0])
    assert first["spare"] is None and first["fragile"] is True and first["weight"] == 0.1
    shelves = [
        json.loads(line) for line in read_file(tmp_path / "jsonl" / "shelves.jsonl").splitlines()
    ]
    assert {s["id"]: s["heated"] for s in shelves} == {
        SHELF_A: True,
        SHELF_B: False,
        SHELF_C: False,
    }
    product = json.loads(read_file(tmp_path / "jsonl" / "products.jsonl").splitlines()[1])
    assert product == {"id": 2, "name": 'Ink "black"', "price": "9999999999.99"}
    assert "東京" in read_file(tmp_path / "jsonl" / "users.jsonl")  # UTF-8, not \\u escapes


@all_databases
def test_rows_that_would_not_load_back_are_named_and_written_as_stored(
    tricky, tmp_path, run_command
):
    """Raw SQL can store what the rules refuse: the export says so before a load does."""
    behind_the_guards_back(
        "reviews_db", "UPDATE items SET note = %s WHERE code = 'x'", ["two\nlines"]
    )
    behind_the_guards_back("users_db", "UPDATE users SET name = %s WHERE id = 3", ["  padded "])
    out = run_command("export_data", str(tmp_path / "out"), "--no-progress")
    assert "warning: 2 stored row(s) would not load back" in out
    assert "customer 3: name '  padded ' would load as 'padded'" in out
    assert "item x: note contains a line break (the load would reject it)" in out
    items = list(csv.reader(io.StringIO(read_file(tmp_path / "out" / "items.csv"))))
    assert ["two\nlines"] == [row[8] for row in items if row[0] == "x"]  # quoted, whole


# --- Only reading, in bounded memory ---------------------------------------------------------

WRITING = ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "REPLACE", "TRUNCATE")


@all_databases
def test_the_export_sends_nothing_but_reads_and_the_databases_refuse_a_write(
    tricky, tmp_path, run_command
):
    statements = []

    def record(execute, statement, params, many, context):
        statements.append(statement.strip())
        return execute(statement, params, many, context)

    aliases = sorted({spec.alias for spec in registry.specs().values()})
    with contextlib.ExitStack() as stack:
        for alias in aliases:
            stack.enter_context(connections[alias].execute_wrapper(record))
        run_command("export_data", str(tmp_path / "out"), "--no-progress", "--batch-size", "2")
    assert statements, "the wrapper saw the queries"
    assert [s for s in statements if s.upper().startswith(WRITING)] == []
    assert every_row() == tricky

    # The database itself refuses a write in the export's session (negative control: the
    # same write outside it is stored).
    spec = registry.spec("users")
    with pytest.raises(DatabaseError), exporting._read_only(spec.alias):
        behind_the_guards_back(spec.alias, "UPDATE users SET name = 'x' WHERE id = 1")
    assert behind_the_guards_back(spec.alias, "UPDATE users SET name = 'x' WHERE id = 1") == 1


@all_databases
def test_a_table_is_read_in_chunks_in_bounded_memory(tmp_path):
    """Peak memory of exporting 30,000 orders is a fraction of the table held in a list
    (measured alongside, as the control)."""
    rows = [(i, 1, 1, 1) for i in range(1, 30_001)]
    with connections["orders_db"].cursor() as cursor:
        cursor.executemany(
            "INSERT INTO orders (id, user_id, product_id, quantity) VALUES (%s, %s, %s, %s)", rows
        )
    del rows
    spec = registry.spec("orders")
    tracemalloc.start()
    try:
        whole = list(spec.model._base_manager.using(spec.alias).values_list(*spec.fields))
        _size, held = tracemalloc.get_traced_memory()
        del whole
        tracemalloc.reset_peak()
        result = exporting.export(tmp_path / "out", chunk_size=1_000)
        _size, streamed = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.tables["orders"].rows == 30_000
    assert streamed < held / 3, (streamed, held)


# --- Refusals: one line, before anything is read ---------------------------------------------


@all_databases
def test_files_already_there_are_named_and_kept_unless_force(tricky, tmp_path, run_command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "users.csv").write_bytes(b"id,name,email\r\n")
    (out / "orders.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(CommandError) as refused:
        run_command("export_data", str(out), "--no-progress")
    assert str(refused.value) == (
        f"{out} already holds users.csv, orders.jsonl; give --force to replace them, "
        "or choose an empty directory"
    )
    assert sorted(os.listdir(out)) == ["orders.jsonl", "users.csv"]
    assert (out / "users.csv").read_bytes() == b"id,name,email\r\n"

    said = run_command("export_data", str(out), "--no-progress", "--force")
    assert f"removed {out / 'orders.jsonl'} (another file of the same table)" in said
    assert "orders.jsonl" not in os.listdir(out)
    assert len(read_file(out / "users.csv").splitlines()) == 1 + len(TRICKY["users"])


@all_databases
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t / "no" / "such", "{t}/no/such: its parent directory {t}/no does not exist"),
        (lambda t: _fifo(t / "fifo"), "{t}/fifo: a FIFO, not a directory"),
        (lambda t: _file(t / "file"), "{t}/file: a file, not a directory"),
        (lambda t: _fifo(t / "out" / "users.csv.gz", t / "out"), "{t}/out/users.csv.gz: a FIFO"),
        (lambda t: _dir(t / "out" / "items.csv", t / "out"), "{t}/out/items.csv: a directory"),
    ],
    ids=["missing-parent", "fifo-as-dir", "file-as-dir", "fifo-as-file", "dir-as-file"],
)
def test_a_directory_that_cannot_take_the_files_is_refused_in_one_line(
    tmp_path, run_command, make, message
):
    target = make(tmp_path)
    for force in ([], ["--force"]):
        with pytest.raises(CommandError) as refused:
            run_command("export_data", str(target), "--no-progress", *force)
        assert str(refused.value).startswith(message.format(t=tmp_path)), refused.value
        assert "\n" not in str(refused.value)


def _fifo(path, directory=None):
    if directory is not None:
        directory.mkdir()
    os.mkfifo(path)
    return directory or path


def _file(path):
    path.write_text("", encoding="utf-8")
    return path


def _dir(path, directory):
    path.mkdir(parents=True)
    return directory


@all_databases
def test_a_directory_where_no_file_can_be_created_is_refused(tmp_path, run_command):
    if os.geteuid() != 0:
        target = tmp_path / "locked"
        target.mkdir()
        target.chmod(stat.S_IRUSR | stat.S_IXUSR)
    else:  # a superuser passes permission bits; not /sys
        target = Path("/sys")
        try:
            with open(target / ".probe", "w"):
                pytest.skip("/sys takes files here; nothing left to refuse a superuser")
        except OSError:
            pass
    with pytest.raises(CommandError) as refused:
        run_command("export_data", str(target), "--no-progress")
    assert str(refused.value) == f"{target}: cannot create files in it (Permission denied)"


@all_databases
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "--format xml: choose csv or jsonl"),
        (["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
        (["--show", "-1"], "--show must be 0 or more (got -1)"),
    ],
)
def test_bad_options_are_refused_in_one_line(tmp_path, run_command, args, message):
    with pytest.raises(CommandError) as refused:
        run_command("export_data", str(tmp_path / "out"), *args)
    assert str(refused.value) == message
    assert not (tmp_path / "out").exists()


@all_databases
def test_a_failure_mid_way_leaves_no_file_under_a_real_name(tricky, tmp_path, monkeypatch):
    """A disk that fills while the third table is written: no file is renamed, the
    temporary files are removed, and the files an earlier export left are untouched."""
    out = tmp_path / "out"
    exporting.export(out, "jsonl")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    real = exporting._csv_writer
    calls = []

    def failing(spec, text):
        calls.append(spec.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(out / f".{spec.name}.csv.part"))
        return real(spec, text)

    monkeypatch.setattr(exporting, "_csv_writer", failing)
    with pytest.raises(exporting.ExportError, match="No space left on device"):
        exporting.export(out, "csv", force=True)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_the_command_fails_without_a_traceback(tmp_path):
    """As a person runs it: exit 1, one line on stderr, no traceback."""
    result = manage("export_data", str(tmp_path / "no" / "such"), data_dir=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"CommandError: {tmp_path}/no/such: its parent directory {tmp_path}/no does not exist; "
        "create it first"
    ]
    unmigrated = manage("export_data", str(tmp_path / "out"), data_dir=tmp_path)
    assert unmigrated.returncode == 1
    assert "Traceback" not in unmigrated.stderr
    assert unmigrated.stderr.strip().endswith("does not exist. Run: python manage.py migrate_all")
    assert not (tmp_path / "out").exists()


# --- SQLite -> PostgreSQL -> SQLite, as a person runs it ---------------------------------------

ALIAS_VARIABLES = {
    "default": "DATABASE_URL",
    "users_db": "USERS_DATABASE_URL",
    "orders_db": "ORDERS_DATABASE_URL",
    "products_db": "PRODUCTS_DATABASE_URL",
    "reviews_db": "REVIEWS_DATABASE_URL",
}
TEST_SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.settings"}  # with the kinds and reviews


def sqlite_env(data_dir):
    return {**TEST_SETTINGS, "MULTIDS_TEST_DATA_DIR": str(data_dir)}


def run(*args, data_dir, env):
    result = manage(*args, data_dir=data_dir, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result.stdout


def sqlite_tables(data_dir):
    """{table: rows} read straight from the SQLite files, in key order."""
    rows = {}
    for db in sorted(data_dir.glob("*.db")):
        with sqlite3.connect(db) as connection:
            for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                if table in TRICKY:
                    rows[table] = connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    return rows


@pytest.fixture
def pg_env(postgres_server):  # noqa: F811 - the imported fixture
    """Fresh PostgreSQL databases for every alias of the test settings; their URLs."""
    tag = os.urandom(4).hex()
    names = {alias: f"multids_test_{tag}_{alias}" for alias in ALIAS_VARIABLES}
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        for name in names.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield {ALIAS_VARIABLES[alias]: url_for(name) for alias, name in names.items()}
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        for name in names.values():
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.postgres
def test_sqlite_to_postgresql_to_sqlite_ends_with_the_same_rows(tmp_path, pg_env):
    laptop, server_dir, back = tmp_path / "laptop", tmp_path / "server", tmp_path / "back"
    for directory in (laptop, server_dir, back):
        directory.mkdir()
    write_inputs_outside_django(tmp_path / "input")
    run("migrate_all", data_dir=laptop, env=sqlite_env(laptop))
    loaded = run(
        "insert_data",
        "--from",
        str(tmp_path / "input"),
        "--no-progress",
        data_dir=laptop,
        env=sqlite_env(laptop),
    )
    assert "0 rejected" in loaded
    run(
        "export_data",
        str(tmp_path / "files1"),
        "--no-progress",
        data_dir=laptop,
        env=sqlite_env(laptop),
    )

    server = {**TEST_SETTINGS, **pg_env}
    run("migrate_all", data_dir=server_dir, env=server)
    moved = run(
        "insert_data",
        "--from",
        str(tmp_path / "files1"),
        "--no-progress",
        data_dir=server_dir,
        env=server,
    )
    assert f"{sum(map(len, TRICKY.values()))} stored, 0 already present, 0 rejected" in moved
    assert "Integrity holds." in run("check_integrity", data_dir=server_dir, env=server)
    assert list(server_dir.glob("*.db")) == [], "nothing may fall back to SQLite files"
    run(
        "export_data",
        str(tmp_path / "files2"),
        "--format",
        "jsonl",
        "--gzip",
        "--no-progress",
        data_dir=server_dir,
        env=server,
    )

    run("migrate_all", data_dir=back, env=sqlite_env(back))
    run(
        "insert_data",
        "--from",
        str(tmp_path / "files2"),
        "--no-progress",
        data_dir=back,
        env=sqlite_env(back),
    )
    assert "Integrity holds." in run("check_integrity", data_dir=back, env=sqlite_env(back))

    before, after = sqlite_tables(laptop), sqlite_tables(back)
    assert sorted(before) == sorted(TRICKY)
    assert {t: len(r) for t, r in before.items()} == {t: len(r) for t, r in TRICKY.items()}
    assert before == after
    # and the files of the way back are byte for byte those of the way out
    run(
        "export_data",
        str(tmp_path / "files3"),
        "--no-progress",
        data_dir=back,
        env=sqlite_env(back),
    )
    for name in os.listdir(tmp_path / "files1"):
        assert (tmp_path / "files3" / name).read_bytes() == (
            tmp_path / "files1" / name
        ).read_bytes()


def write_inputs_outside_django(directory):
    """TRICKY as CSV files, with the field names the test settings give (read in a
    subprocess, so that this test needs no database of its own)."""
    fields = {
        "users": ("id", "name", "email"),
        "products": ("id", "name", "price"),
        "orders": ("id", "user_id", "product_id", "quantity"),
        "reviews": ("id", "user_id", "product_id", "rating"),
        "shelves": ("id", "label", "opened", "heated"),
        "items": ("code", "shelf", "spare", "weight", "fragile", "added")
        + ("expires", "serial", "note", "count"),
    }
    directory.mkdir()
    for table, rows in TRICKY.items():
        with open(directory / f"{table}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(fields[table])
            writer.writerows(rows)
