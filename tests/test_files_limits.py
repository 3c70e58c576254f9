"""Records that must not be stored or held: a 200 MB line, and a quote left open.

The memory test measures, in a subprocess, the kernel's peak resident size while a source
reads one 200 MB line, against the same program reading a small file: before records were
capped, the whole line was read (442 MB at peak).
"""

import gzip
import json
import subprocess
import sys

import pytest
from crossdb.loading.rows import Lines, Malformed
from crossdb.sources import FileSource

from tests.conftest import ROOT, all_databases

LINE_MB = 200
SLACK_MB = 40  # a 1 MB record cap, 256k-character blocks, allocator noise

READ_ALL = """\
import os, resource, sys
import django
django.setup()
from crossdb.sources import FileSource
source = FileSource(sys.argv[1])
source.check()
rows = list(source.rows(sys.argv[2]))
print(len(rows), type(rows[0][1]).__name__, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kb(directory, table):
    """Read table from directory in a fresh process; return (rows, first kind, peak RSS KB)."""
    done = subprocess.run(
        [sys.executable, "-c", READ_ALL, str(directory), table],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "multids.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows, kind, peak = done.stdout.split()
    return int(rows), kind, int(peak)


def _write_long_line(path, head, tail, opener=open):
    chunk = "x" * (1 << 20)
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write(head)
        for _ in range(LINE_MB):
            handle.write(chunk)
        handle.write(tail)


@pytest.mark.parametrize(
    ("name", "head", "tail", "opener"),
    [
        ("users.csv", "id,name,email\n1,", ",a@example.com\n2,Bob,b@example.com\n", open),
        (
            "users.jsonl",
            '{"id": 1, "name": "',
            '", "email": "a@example.com"}\n{"id": 2, "name": "Bob", "email": "b@example.com"}\n',
            open,
        ),
        (
            "users.csv.gz",
            "id,name,email\n1,",
            ",a@example.com\n2,Bob,b@example.com\n",
            lambda p, *a, **k: gzip.open(p, *a, compresslevel=1, **k),
        ),
    ],
)
def test_a_200_mb_line_is_rejected_in_small_memory(tmp_path, name, head, tail, opener):
    small = tmp_path / "small"
    small.mkdir()
    big = tmp_path / "big"
    big.mkdir()
    (small / "users.csv").write_text("id,name,email\n1,Ann,a@example.com\n2,Bob,b@example.com\n")
    _write_long_line(big / name, head, tail, opener)
    rows, kind, peak = _peak_kb(big, "users")
    (big / name).unlink()
    _rows, _kind, baseline = _peak_kb(small, "users")
    figures = f"{name}: peak {peak // 1024} MB reading the {LINE_MB} MB line, {baseline // 1024} MB"
    print(figures)
    assert (rows, kind) == (2, "Malformed")
    assert peak < baseline + SLACK_MB * 1024, figures


def test_the_long_line_is_named_and_the_next_row_is_read(tmp_path):
    _write_long_line(tmp_path / "users.csv", "id,name,email\n1,", ",a@example.com\n2,Bob,b@x.com\n")
    source = FileSource(tmp_path)
    assert list(source.rows("users")) == [
        (2, Malformed("the line is longer than 1,048,576 characters")),
        (3, ("2", "Bob", "b@x.com")),
    ]


UNBALANCED = (
    "id,name,email\n"
    "1,Ann,ann@example.com\n"
    '2,"Bob 12in,bob@example.com\n'
    "3,Cy,cy@example.com\n"
    "4,Dee,dee@example.com\n"
    "5,Eve,eve@example.com\n"
    '6,"Fay" ,fay@example.com\n'
    "7,Gus,gus@example.com\n"
)


def test_a_quote_left_open_is_one_record_naming_its_lines(tmp_path):
    """The quote swallows lines 3-7 (up to the next quote): one record, not five rows; the
    validator rejects its line break (see the end-to-end test below)."""
    (tmp_path / "users.csv").write_text(UNBALANCED)
    got = list(FileSource(tmp_path).rows("users"))
    assert got[0] == (2, ("1", "Ann", "ann@example.com"))
    line, values = got[1]
    assert (type(line), int(line), line.last, str(line)) == (Lines, 3, 7, "3-7")
    assert values[0] == "2"
    assert "3,Cy,cy@example.com\n4,Dee" in values[1]
    assert got[2:] == [(8, ("7", "Gus", "gus@example.com"))]


def test_a_quote_left_open_in_a_semicolon_file_is_found_the_same_way(tmp_path):
    (tmp_path / "users.csv").write_text(
        ' ID ; Email;NAME\n1;"ann@example.com;Ann\n2;b@example.com;Bob\n', encoding="utf-8"
    )
    ((line, malformed),) = list(FileSource(tmp_path).rows("users"))
    assert (int(line), line.last) == (2, 3)
    assert malformed == Malformed(
        "email contains a line break (an unbalanced quote?)",
        '1;"ann@example.com;Ann\n2;b@example.com;Bob\n"',
    )


def test_a_quote_left_open_in_a_file_much_longer_than_a_block_keeps_every_line_break(tmp_path):
    """The swallowed text runs into blocks without quotes; its line breaks are still there."""
    rest = "".join(f"{i},N{i},n{i}@example.com\n" for i in range(3, 20_000))
    (tmp_path / "users.csv").write_text(
        'id,name,email\n1,Ann,a@example.com\n2,"Bob,b@x.com\n' + rest
    )
    ((line, malformed),) = list(FileSource(tmp_path).rows("users"))[1:]
    assert (int(line), line.last) == (3, 20_000)
    assert malformed.raw.count("\n") == 20_000 - 3 + 1  # lines 3 to 20,000, each ended


@all_databases
@pytest.mark.usefixtures("run_command")
def test_nothing_of_a_quote_left_open_is_stored(tmp_path, run_command):
    from core.models import User

    (tmp_path / "users.csv").write_text(UNBALANCED)
    out = run_command("insert_data", "--from", str(tmp_path), "--no-progress")
    assert "users #2 (lines 3-7): name contains a line break (an unbalanced quote?)" in out
    assert list(User.objects.order_by("pk").values_list("pk", flat=True)) == [1, 7]


def test_json_lines_report_the_column_where_the_line_ends(tmp_path):
    text = json.dumps({"id": 1, "name": "Ann", "email": "a@example.com"})
    (tmp_path / "users.jsonl").write_text(text[:-1] + "\n")
    ((line, malformed),) = list(FileSource(tmp_path).rows("users"))
    assert malformed.reason == (
        f"not valid JSON (the line ends early: Expecting ',' delimiter at column {len(text)})"
    )


@pytest.mark.parametrize(
    ("blocks", "end"),
    [(2, "\r\n"), (17, "\r\n"), (17, "\r"), (18, "\r\n")],  # 2: long but not overlong
)
def test_a_line_end_cut_between_two_blocks_is_one_line_end(tmp_path, blocks, end):
    """A line longer than a block whose CR is the last character of a block: the LF of its
    CRLF starts the next block and is no line of its own, and with CR line ends alone the
    line ends there; either way the line after keeps its number (before, it was numbered
    one on, or swallowed into the overlong line)."""
    from crossdb.sources.reading import BLOCK, csv_rows

    header = "id,user_id,product_id,quantity" + end
    length = BLOCK * blocks - len(header) - 1  # the CR is the last character of a block
    path = tmp_path / "orders.csv"
    path.write_bytes((header + "1" * length + end + "5,1,1,1" + end).encode())
    rows = list(csv_rows(path, ("id", "user_id", "product_id", "quantity")))
    assert rows[-1] == (3, ("5", "1", "1", "1"))


HUGE = "9" * 5000  # more digits than int() takes from text (4,300)


@all_databases
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("users.csv", f"id,name,email\n1,Ann,a@x.com\n{HUGE},Big,b@x.com\n3,Cy,c@x.com\n"),
        (
            "users.jsonl",
            '{"id": 1, "name": "Ann", "email": "a@x.com"}\n'
            f'{{"id": {HUGE}, "name": "Big", "email": "b@x.com"}}\n'
            '{"id": 3, "name": "Cy", "email": "c@x.com"}\n',
        ),
    ],
)
def test_an_id_of_5000_digits_is_one_rejected_row(tmp_path, run_command, name, text):
    from core.models import User

    (tmp_path / name).write_text(text)
    rejects = tmp_path / "rejects.csv"
    out = run_command(
        "insert_data", "--from", str(tmp_path), "--no-progress", f"--rejects={rejects}"
    )
    line = 3 if name.endswith(".csv") else 2
    reason = "id must be at most 9223372036854775807 (got a number of 5,000 digits)"
    assert f"users (line {line}): {reason}" in out
    assert list(User.objects.order_by("pk").values_list("pk", flat=True)) == [1, 3]
    assert HUGE in rejects.read_text()


@all_databases
def test_a_quantity_of_5000_digits_in_a_table_of_whole_numbers_is_one_rejected_row(
    tmp_path, run_command
):
    from core.models import Order

    (tmp_path / "users.csv").write_text("id,name,email\n1,Ann,a@x.com\n")
    (tmp_path / "products.csv").write_text("id,name,price\n1,Pen,1.50\n")
    (tmp_path / "orders.csv").write_text(
        "id,user_id,product_id,quantity\n1,1,1,1\n2,1,1,-"
        + HUGE
        + "\n3,1,1,2\n4,1,1,"
        + HUGE
        + "\n"
    )
    out = run_command("insert_data", "--from", str(tmp_path), "--no-progress")
    assert (
        "orders #2 (line 3): quantity must be at least 1 (got a negative number of 5,000 digits)"
        in out
    )
    assert (
        "orders #4 (line 5): quantity must be at most 2147483647 (got a number of 5,000 digits)"
        in out
    )
    assert list(Order.objects.order_by("pk").values_list("pk", flat=True)) == [1, 3]
