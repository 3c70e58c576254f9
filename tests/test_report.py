"""What a run hands back: the rejects file a person fixes and feeds back, the JSON report a
machine reads, and the help text of every command.

The round trip is tested as a person does it: load a directory, open the rejects file, edit
one value, and load the rejects file with ``--from``.
"""

import argparse
import json
from datetime import datetime
from io import StringIO
from pathlib import Path

import pytest
from crossdb.loading.rows import Lines, Malformed
from crossdb.results import LoadResult, Rejection, TableResult
from crossdb.sources import RejectsFileSource
from django.core.management import call_command, find_commands, load_command_class
from django.core.management.base import CommandError

from core.models import Order, Product, User
from tests.conftest import all_databases

HEADER = b"table,line,id,reason,name,email,price,user_id,product_id,quantity,raw\r\n"

# See tests/test_sources.py: until the validator takes crossdb.loading.rows.Malformed, loading one
# through insert_data fails with TypeError; strict, so the marker goes once it does.


def write(directory, name, content):
    path = directory / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def rejected(out):
    """The rejection lines printed (not the warnings after them, such as --encoding's)."""
    if "\nRejected rows:\n" not in out:
        return []
    lines = out.split("\nRejected rows:\n", 1)[1].splitlines()
    return [line.strip() for line in lines if not line.startswith("warning: ")]


def summary(out):
    """Return the one-line total, e.g. '1 stored, 0 already present, 5 rejected'."""
    line = next(line for line in out.splitlines() if " already present, " in line)
    return line.split(" in ")[0]


def insert(run_command, *args):
    return run_command("insert_data", *args, "--no-progress", "--show=999")


def counts():
    return User.objects.count(), Product.objects.count(), Order.objects.count()


@pytest.fixture
def bad_input(tmp_path):
    """A directory where most user rows have a problem of a different kind."""
    directory = tmp_path / "in"
    directory.mkdir()
    write(
        directory,
        "users.csv",
        b"id,name,email\n"
        b"1,Ann,ann@example.com\n"
        b"2,Bob,bob-at-example.com\n"
        b"x3,Cy,cy@example.com\n"
        b"4,,dee@example.com\n"
        b"5,Eve,eve@example.com,extra\n"
        b"6,F\xffy,fay@example.com\n",
    )
    write(directory, "products.csv", "id,name,price\n1,Pen,2.00\n")
    write(directory, "orders.csv", "id,user_id,product_id,quantity\n1,1,1,1\n3,1,1,0\n")
    return directory


@all_databases
def test_the_rejects_file_holds_every_rejected_row_as_it_was_read(run_command, bad_input, tmp_path):
    """Raw values, including the unparsable id and the undecodable byte, so they can be fixed."""
    rejects = tmp_path / "rejects.csv"
    out = insert(run_command, "--from", str(bad_input), "--rejects", str(rejects))
    assert summary(out) == "3 stored, 0 already present, 6 rejected"
    assert rejects.read_bytes() == HEADER + (
        b"users,3,2,email is not a valid email address (got 'bob-at-example.com'),"
        b"Bob,bob-at-example.com,,,,,\r\n"
        b"users,4,x3,id must be a whole number (got 'x3'),Cy,cy@example.com,,,,,\r\n"
        b"users,5,4,name is required,,dee@example.com,,,,,\r\n"
        b'users,6,,"expected 3 fields, got 4",,,,,,,"5,Eve,eve@example.com,extra"\r\n'
        b"users,7,6,name is not valid UTF-8 text,F\xffy,fay@example.com,,,,,\r\n"
        b"orders,3,3,quantity must be at least 1 (got 0),,,,1,1,0,\r\n"
    )


@all_databases
def test_fix_one_line_of_the_rejects_file_and_feed_it_back(run_command, bad_input, tmp_path):
    rejects = tmp_path / "rejects.csv"
    insert(run_command, "--from", str(bad_input), "--rejects", str(rejects))
    assert counts() == (1, 1, 1)

    rejects.write_bytes(rejects.read_bytes().replace(b"bob-at-example.com", b"bob@example.com"))
    again = tmp_path / "rejects-again.csv"
    out = insert(run_command, "--from", str(rejects), "--rejects", str(again))

    assert summary(out) == "1 stored, 0 already present, 5 rejected"
    assert counts() == (2, 1, 1)
    assert User.objects.get(pk=2).email == "bob@example.com"
    # The rest are rejected again, numbered by their line in the file being fixed.
    assert rejected(out) == [
        "users (line 3): id must be a whole number (got 'x3')",
        "users #4 (line 4): name is required",
        "users (line 5): not split into fields yet: copy the values of its raw column into the "
        "id, name, email columns",
        "users #6 (line 6): name is not valid UTF-8 text",
        "orders #3 (line 7): quantity must be at least 1 (got 0)",
    ]
    # ... and the new rejects file can go round again.
    assert again.read_bytes().count(b"\r\n") == 6
    assert b"F\xffy" in again.read_bytes()


@all_databases
def test_fixing_a_bad_id_and_a_bad_byte_in_the_rejects_file_loads_them(
    run_command, bad_input, tmp_path
):
    rejects = tmp_path / "rejects.csv"
    insert(run_command, "--from", str(bad_input), "--rejects", str(rejects))
    fixed = rejects.read_bytes().replace(b"users,4,x3,", b"users,4,3,").replace(b"F\xffy", b"Fay")
    rejects.write_bytes(fixed)
    out = insert(run_command, "--from", str(rejects))
    assert summary(out) == "2 stored, 0 already present, 4 rejected"
    assert list(User.objects.filter(pk__in=[3, 6]).values_list("pk", "name")) == [
        (3, "Cy"),
        (6, "Fay"),
    ]


@all_databases
def test_fixing_a_user_lets_the_order_that_named_it_load_with_it(run_command, tmp_path):
    directory = tmp_path / "in"
    directory.mkdir()
    write(directory, "users.csv", "id,name,email\n1,Ann,ann@example\n")
    write(directory, "products.csv", "id,name,price\n1,Pen,2.00\n")
    write(directory, "orders.csv", "id,user_id,product_id,quantity\n1,1,1,2\n")
    rejects = tmp_path / "rejects.csv"
    out = insert(run_command, "--from", str(directory), "--rejects", str(rejects))
    assert rejected(out) == [
        "users #1 (line 2): email is not a valid email address (got 'ann@example')",
        "orders #1 (line 2): customer 1 was rejected in this run",
    ]
    rejects.write_text(rejects.read_text().replace("ann@example,", "ann@example.com,"))
    out = insert(run_command, "--from", str(rejects))
    assert summary(out) == "2 stored, 0 already present, 0 rejected"
    assert counts() == (1, 1, 1)


@all_databases
def test_a_json_escaped_surrogate_is_written_to_the_rejects_file_and_stays_rejected(
    run_command, tmp_path
):
    """A lone surrogate has no UTF-8 form; it must not stop the rejects file being written."""
    directory = tmp_path / "in"
    directory.mkdir()
    write(directory, "users.jsonl", '{"id": 1, "name": "A\\ud800", "email": "a@example.com"}\n')
    rejects = tmp_path / "rejects.csv"
    out = insert(run_command, "--from", str(directory), "--rejects", str(rejects))
    assert rejected(out) == ["users #1 (line 1): name is not valid UTF-8 text"]
    # only users were read, so the file has the users' columns
    assert rejects.read_bytes() == (
        b"table,line,id,reason,name,email,raw\r\n"
        b"users,1,1,name is not valid UTF-8 text,A\xed\xa0\x80,a@example.com,\r\n"
    )
    out = insert(run_command, "--from", str(rejects))
    assert rejected(out) == ["users #1 (line 2): name is not valid UTF-8 text"]


def test_a_rejects_row_with_a_field_too_many_is_malformed_like_any_csv_line(tmp_path):
    rejects = write(
        tmp_path,
        "rejects.csv",
        HEADER + b"users,9,1,old reason,Ann,ann@example.com,,,,,,\r\n"
        b"users,9,2,old reason,Bob,bob@example.com,,,,,\r\n",
    )
    source = RejectsFileSource(rejects)
    source.check()
    assert list(source.rows("users")) == [
        (
            2,
            Malformed(
                "expected 11 fields, got 12", "users,9,1,old reason,Ann,ann@example.com,,,,,,"
            ),
        ),
        (3, ("2", "Bob", "bob@example.com")),
    ]


@all_databases
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"id,name,email\n1,Ann,ann@example.com\n",
            "{path}: not a rejects file (it has no 'table' column); to load data files, "
            "give their directory: --from {path.parent}",
        ),
        (
            HEADER
            + b"users,2,1,r,Ann,ann@example.com,,,,,\r\nuser,3,2,r,Bob,b@example.com,,,,,\r\n",
            "{path}: line 3: unknown table 'user' "
            "(the table column must be users or products or shelves or orders or reviews or "
            "items)",
        ),
        (
            b"table,line,id,reason,user_id,product_id\r\norders,2,1,r,1,1\r\n",
            "{path}: missing column(s) quantity for orders rows (the header must name "
            "table,id,user_id,product_id,quantity; found table,line,id,reason,user_id,product_id)",
        ),
        (
            b"table,line,id,reason,name,email,email\r\nusers,2,1,r,Ann,a@example.com,b@example.com\r\n",
            "{path}: column(s) email appear more than once; keep one",
        ),
    ],
)
def test_a_rejects_file_that_cannot_be_read_stops_the_run(run_command, tmp_path, content, message):
    """A row naming no table would be loaded nowhere and counted nowhere, so it stops the run."""
    rejects = write(tmp_path, "rejects.csv", content)
    with pytest.raises(CommandError) as error:
        insert(run_command, "--from", str(rejects))
    assert str(error.value) == message.format(path=rejects)
    assert counts() == (0, 0, 0)


@all_databases
def test_the_json_report_has_counts_and_timings_per_table_and_in_total(run_command, tmp_path):
    report = tmp_path / "results.json"
    insert(run_command, "--report", str(report))
    insert(run_command, "--report", str(report))  # a re-run: everything is already present
    data = json.loads(report.read_text())

    assert data["source"] == "demo data"
    assert data["error"] is None
    counted = {
        t: {k: v[k] for k in ("read", "stored", "already_present", "rejected")}
        for t, v in data["tables"].items()
    }
    assert counted == {
        "users": {"read": 10, "stored": 0, "already_present": 8, "rejected": 2},
        "products": {"read": 10, "stored": 0, "already_present": 9, "rejected": 1},
        "orders": {"read": 10, "stored": 0, "already_present": 7, "rejected": 3},
    }
    started, finished = (datetime.fromisoformat(data[k]) for k in ("started", "finished"))
    assert data["started"].endswith("+00:00")  # ISO 8601, UTC, to the millisecond
    for name, table in data["tables"].items():
        start, end = (
            datetime.fromisoformat(table[k]) for k in ("writer_started", "writer_finished")
        )
        assert started <= start <= end <= finished, name
        assert abs(table["seconds"] - (end - start).total_seconds()) < 0.002
    assert data["totals"]["read"] == 30 and data["totals"]["already_present"] == 24
    assert abs(data["seconds"] - (finished - started).total_seconds()) < 0.002
    assert data["writers_overlapped"] == bool(data["overlapping_writers"])


@all_databases
def test_a_table_with_nothing_written_reports_zero_seconds_not_an_error(run_command, tmp_path):
    directory = tmp_path / "in"
    directory.mkdir()
    write(directory, "users.csv", "id,name,email\n1,,a@example.com\n")
    report = tmp_path / "results.json"
    insert(run_command, "--from", str(directory), "--report", str(report))
    users = json.loads(report.read_text())["tables"]["users"]
    assert users == {
        "read": 1,
        "stored": 0,
        "already_present": 0,
        "rejected": 1,
        "seconds": 0.0,
        "rows_per_second": 0.0,
        "writer_started": None,
        "writer_finished": None,
    }


@all_databases
def test_a_report_in_a_missing_directory_is_refused_before_anything_is_read(
    run_command, bad_input, tmp_path
):
    """Found before the load, not after every row was committed with nothing printed."""
    with pytest.raises(CommandError) as error:
        insert(run_command, "--from", str(bad_input), "--report", str(tmp_path / "no" / "r.json"))
    assert str(error.value) == (
        f"--report {tmp_path / 'no' / 'r.json'}: no such directory: {tmp_path / 'no'}"
    )
    assert counts() == (0, 0, 0)


@all_databases
@pytest.mark.parametrize("option", ["--rejects", "--report"])
def test_an_output_naming_a_directory_is_refused_before_anything_is_read(
    run_command, bad_input, tmp_path, option
):
    with pytest.raises(CommandError) as error:
        insert(run_command, "--from", str(bad_input), option, str(tmp_path))
    assert str(error.value) == f"{option} {tmp_path}: it is a directory; name a file"
    assert counts() == (0, 0, 0)


@all_databases
def test_a_report_into_a_fifo_that_a_process_reads_is_written_there(
    run_command, bad_input, tmp_path
):
    """A FIFO with a reader is a fine output (``--report >(jq .)``); the reader here is this
    test, which opened it before the run."""
    import os

    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        insert(run_command, "--from", str(bad_input), "--report", str(fifo))
        written = os.read(reader, 1 << 20)
    finally:
        os.close(reader)
    assert json.loads(written)["totals"]["stored"] == 3


def _commands():
    """(app, command) for every command the project's apps ship."""
    import crossdb

    apps = {
        "core": Path(__file__).resolve().parent.parent / "core",
        "crossdb": Path(crossdb.__file__).parent,
    }
    return sorted(
        (app, name)
        for app, path in apps.items()
        for name in find_commands(str(path / "management"))
    )


COMMANDS = _commands()


def test_the_project_commands_are_found():
    assert {"insert_data", "migrate_all", "check_integrity", "delete_row"} <= {
        n for _a, n in COMMANDS
    }


@pytest.mark.parametrize(("app", "name"), COMMANDS)
def test_every_command_and_every_option_has_help(app, name):
    command = load_command_class(app, name)
    assert command.help and command.help.strip(), f"{name} has no help text"
    parser = command.create_parser("manage.py", name)
    undocumented = [
        action.option_strings or action.dest
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert undocumented == [], f"{name}: options without help"
    assert command.help.split()[0] in parser.format_help()


# --- spreadsheet-safe cells, raw text, where a rejection was ------------------------------


@all_databases
def test_formula_cells_are_written_safe_and_read_back_unchanged(run_command, tmp_path):
    """OWASP CSV injection: = + - @ tab CR start a formula; they get a leading ' in the
    rejects file, and --from reads the value as it was, so -1 is still -1."""
    directory = tmp_path / "in"
    directory.mkdir()
    write(
        directory,
        "users.csv",
        "id,name,email\n"
        '1,=HYPERLINK("http://x"),ann-at-example.com\n'
        "2,@SUM(A1),bob-at-example.com\n"
        "3,+1,cy-at-example.com\n"
        "4,'quoted,dee-at-example.com\n",
    )
    write(directory, "products.csv", "id,name,price\n1,Pen,2.00\n")
    write(directory, "orders.csv", "id,user_id,product_id,quantity\n1,1,1,-1\n")
    rejects = tmp_path / "rejects.csv"
    insert(run_command, "--from", str(directory), "--rejects", str(rejects))
    cells = rejects.read_bytes()
    assert b"'=HYPERLINK" in cells and b"'@SUM(A1)" in cells and b",'+1," in cells
    assert b",''quoted," in cells and b",1,1,'-1," in cells
    assert b",=" not in cells and b",@" not in cells and b",-1" not in cells

    fixed = tmp_path / "fixed.csv"
    fixed.write_bytes(cells.replace(b"-at-", b"@"))
    out = insert(run_command, "--from", str(fixed))
    assert summary(out) == "4 stored, 0 already present, 1 rejected"
    assert list(User.objects.order_by("pk").values_list("name", flat=True)) == [
        '=HYPERLINK("http://x")',
        "@SUM(A1)",
        "+1",
        "'quoted",
    ]
    assert rejected(out) == ["orders #1 (line 6): quantity must be at least 1 (got -1)"]


def _result_with(*rejections):
    result = LoadResult("test", tables={t: TableResult(t) for t in ("users", "products", "orders")})
    for rejection in rejections:
        result.reject(rejection)
    return result


def test_a_record_that_could_not_be_split_keeps_its_raw_text_and_goes_round_again(tmp_path):
    """Its raw text is kept until the person copies it into the field columns."""
    raw = '2,"Bob 12in,bob@example.com\n3,Cy,cy@example.com\n'
    result = _result_with(
        Rejection("users", Lines(3, 4), None, "name contains a line break", {}, raw=raw),
        Rejection(
            "orders",
            None,
            1001,
            "quantity must be at least 1 (got 0)",
            dict(id=1001, user_id=1001, product_id=1001, quantity=0),
        ),
    )
    rejects = tmp_path / "rejects.csv"
    result.write_rejects(rejects)
    assert rejects.read_bytes().splitlines()[1:] == [
        b'users,3-4,,name contains a line break,,,,,,,"2,""Bob 12in,bob@example.com',
        b"3,Cy,cy@example.com",
        b'"',
        b"orders,,1001,quantity must be at least 1 (got 0),,,,1001,1001,0,",
    ]
    source = RejectsFileSource(rejects)
    source.check()
    assert source.tables() == ["users", "orders"]
    ((line, again),) = source.rows("users")
    assert (line, line.last) == (2, 4)
    assert again == Malformed(
        "not split into fields yet: copy the values of its raw column into the id, name, email "
        "columns",
        raw,
    )
    assert list(source.rows("orders")) == [(5, ("1001", "1001", "1001", "0"))]

    rejects.write_bytes(
        rejects.read_bytes()
        .replace(b"users,3-4,,", b"users,3-4,2,")
        .replace(b"line break,,,", b"line break,Bob,bob@example.com,")
    )
    assert list(RejectsFileSource(rejects).rows("users")) == [
        (Lines(2, 4), ("2", "Bob", "bob@example.com"))
    ]


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (3, "users #2 (line 3)"),
        (Lines(3, 7), "users #2 (lines 3-7)"),
        (Lines(4, 4), "users #2 (line 4)"),
        (None, "users #2"),
    ],
)
def test_where_names_the_line_the_lines_or_none_for_generated_rows(line, where):
    assert Rejection("users", line, 2, "r", {}).where == where


def test_writers_overlapped_is_true_exactly_when_some_pair_overlapped():
    """users+orders overlapped but products did not overlap both: one notion, no contradiction."""
    result = LoadResult("test", started=1000.0, finished=1010.0)
    spans = {"users": (1000.0, 1005.0), "products": (1006.0, 1007.0), "orders": (1004.0, 1009.0)}
    for table, (start, end) in spans.items():
        result.tables[table].started, result.tables[table].finished = start, end
    data = result.as_dict()
    assert data["overlapping_writers"] == ["users+orders", "products+orders"]
    assert data["writers_overlapped"] is True
    assert data["started"] == "1970-01-01T00:16:40.000+00:00"
    assert data["tables"]["orders"]["writer_finished"] == "1970-01-01T00:16:49.000+00:00"
    result.tables["orders"].started = 1009.5
    result.tables["orders"].finished = 1009.8
    assert result.as_dict()["overlapping_writers"] == []
    assert result.as_dict()["writers_overlapped"] is False


@all_databases
def test_a_run_that_cannot_be_logged_prints_its_summary_then_one_line(bad_input, monkeypatch):
    """The default database fails only at the end (its connection ended, say): every row
    is committed and said, then one line says the run is not in the log."""
    from crossdb import runs
    from django.db import OperationalError

    def unreachable(*args):
        raise OperationalError("terminating connection due to administrator command\nmore")

    # a run of files is recorded when it starts and closed at the end (crossdb.resume)
    monkeypatch.setattr(runs, "record", unreachable)
    monkeypatch.setattr(runs, "finish", unreachable)
    out = StringIO()
    with pytest.raises(CommandError) as error:
        call_command("insert_data", "--from", str(bad_input), "--no-progress", stdout=out)
    assert "3 stored, 0 already present, 6 rejected" in out.getvalue()
    assert str(error.value) == (
        "the load is complete, but it could not be logged in the default database "
        "(terminating connection due to administrator command); "
        "the overview page will not list it"
    )
    assert counts() == (1, 1, 1)
