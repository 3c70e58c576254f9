"""Reading input: CSV and JSONL files as a user writes them, the errors that stop a run, and
synthetic data.

Each test writes real files into a directory and loads it with ``insert_data --from`` as a user
would, so it doubles as an example of what the loader accepts and of the exact reason it
gives for each line it rejects.
"""

import gzip
import json
from decimal import Decimal

import pytest
from crossdb.loading.rows import Lines, Malformed
from crossdb.sources import FileSource
from django.core.management.base import CommandError

from core.models import Order, Product, User
from core.sources import FIRST_ID, SyntheticSource
from tests.conftest import all_databases


def write(directory, name, content):
    """Write content (str, or bytes for encoding tests) to directory/name; return the path."""
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def rejected(out):
    """Return the rejection lines insert_data printed, in the order it printed them (the
    warnings written after them, such as the --encoding hint, are not rejections)."""
    if "\nRejected rows:\n" not in out:
        return []
    lines = out.split("\nRejected rows:\n", 1)[1].splitlines()
    return [line.strip() for line in lines if not line.startswith("warning: ")]


@pytest.fixture
def load(run_command):
    """Load a directory with insert_data --from; return the printed rejection lines."""

    def run(directory):
        out = run_command("insert_data", "--from", str(directory), "--no-progress", "--show=999")
        return rejected(out)

    return run


def users():
    return list(User.objects.order_by("pk").values_list("pk", "name", "email"))


def rows(directory, table):
    """Read table from directory as the loader does, after check(): (line, values) pairs."""
    source = FileSource(directory)
    source.check()
    return list(source.rows(table))


# --- CSV ------------------------------------------------------------------------------------


@all_databases
def test_csv_columns_may_come_in_any_order_and_extra_columns_are_ignored(tmp_path, load):
    write(tmp_path, "users.csv", "email,note,id,name\nann@example.com,VIP,1,Ann\n")
    write(tmp_path, "products.csv", "price,name,id,sku\n9.50,Pen,1,P-1\n")
    write(tmp_path, "orders.csv", "quantity,product_id,user_id,id\n3,1,1,1\n")
    assert load(tmp_path) == []
    assert users() == [(1, "Ann", "ann@example.com")]
    assert list(Product.objects.values_list("pk", "name", "price")) == [(1, "Pen", Decimal("9.50"))]
    assert list(Order.objects.values_list("pk", "user_id", "product_id", "quantity")) == [
        (1, 1, 1, 3)
    ]


@all_databases
def test_any_subset_of_the_files_loads(tmp_path, load):
    write(tmp_path, "products.csv", "id,name,price\n1,Pen,2\n")
    assert load(tmp_path) == []
    assert Product.objects.count() == 1
    assert User.objects.count() == Order.objects.count() == 0


def test_csv_with_bom_crlf_blank_lines_and_quoted_commas(tmp_path):
    """A spreadsheet export: byte-order mark, CRLF, quoted fields, and stray blank lines.

    A field holding a line break keeps its record's line range; the validator rejects the
    line break (see test_files_limits): in a file people write it is nearly always a quote
    left open.
    """
    text = (
        'id,name,email\r\n\r\n1,"Smith, Ann",ann@example.com\r\n'
        '2,"Bob\r\nthe Builder",bob@example.com\r\n\r\n\r\n'
        '3,"Carl ""CJ"" Jones",carl@example.com\r\n'
    )
    write(tmp_path, "users.csv", b"\xef\xbb\xbf" + text.encode())
    assert rows(tmp_path, "users") == [
        (3, ("1", "Smith, Ann", "ann@example.com")),
        (Lines(4, 5), ("2", "Bob\r\nthe Builder", "bob@example.com")),
        (8, ("3", 'Carl "CJ" Jones', "carl@example.com")),
    ]
    assert rows(tmp_path, "users")[1][0].last == 5


def test_too_many_or_too_few_fields_are_malformed_with_their_text(tmp_path):
    write(
        tmp_path,
        "users.csv",
        "id,name,email\n"
        "1,Ann,ann@example.com\n"
        "2,Bob,bob@example.com,extra\n"
        "3,Cy\n"
        "\n"
        "4,Dee,dee@example.com\n",
    )
    assert rows(tmp_path, "users") == [
        (2, ("1", "Ann", "ann@example.com")),
        (3, Malformed("expected 3 fields, got 4", "2,Bob,bob@example.com,extra")),
        (4, Malformed("expected 3 fields, got 2", "3,Cy")),
        (6, ("4", "Dee", "dee@example.com")),
    ]


@all_databases
def test_too_many_or_too_few_fields_reject_that_line_only(tmp_path, load):
    write(tmp_path, "users.csv", "id,name,email\n1,Ann,ann@example.com\n3,Cy\n")
    assert load(tmp_path) == ["users (line 3): expected 3 fields, got 2"]
    assert [u[0] for u in users()] == [1]


@all_databases
def test_an_invalid_utf8_byte_rejects_that_row_and_the_rest_loads(tmp_path, load):
    write(
        tmp_path,
        "users.csv",
        b"id,name,email\n1,Ann,ann@example.com\n2,B\xffb,bob@example.com\n3,Cy,cy@example.com\n",
    )
    assert load(tmp_path) == ["users #2 (line 3): name is not valid UTF-8 text"]
    assert [u[0] for u in users()] == [1, 3]


@all_databases
def test_an_invalid_utf8_byte_in_an_id_is_named(tmp_path, load):
    write(tmp_path, "users.csv", b"id,name,email\n1\xe9,Ann,ann@example.com\n")
    assert load(tmp_path) == ["users (line 2): id is not valid UTF-8 text"]  # and the hint


def test_a_line_over_the_size_limit_is_malformed_and_the_rest_is_read(tmp_path):
    """A runaway line is skipped in chunks rather than read into memory whole."""
    huge = "x" * (2 << 20)
    write(
        tmp_path,
        "users.csv",
        f"id,name,email\n1,{huge},a@example.com\n2,Bob,bob@example.com\n",
    )
    assert rows(tmp_path, "users") == [
        (2, Malformed("the line is longer than 1,048,576 characters")),
        (3, ("2", "Bob", "bob@example.com")),
    ]


def test_a_quoted_field_over_the_size_limit_is_malformed_and_the_rest_is_read(tmp_path):
    """A quote left open before a long stretch of lines is cut off by the field limit."""
    swallowed = "".join(f"{i},Name{i},n{i}@example.com\n" for i in range(60_000))
    write(tmp_path, "users.csv", f'id,name,email\n1,"Ann,a@example.com\n{swallowed}')
    first, *rest = rows(tmp_path, "users")
    assert first[1] == Malformed("the field is longer than 1,048,576 characters")
    assert int(first[0]) == 2 and first[0].last > 2
    assert rest and all(isinstance(values, tuple) for _line, values in rest)


@all_databases
def test_ids_that_are_not_whole_numbers_are_rejected(tmp_path, load):
    write(
        tmp_path,
        "products.csv",
        "id,name,price\n1.5,Pen,1\nabc,Ink,1\n,Cap,1\n-3,Nib,1\n 7 ,Pad,1\n",
    )
    assert load(tmp_path) == [
        "products (line 2): id must be a whole number (got '1.5')",
        "products (line 3): id must be a whole number (got 'abc')",
        "products (line 4): id is required",
        "products (line 5): id must be a positive whole number (got -3)",
    ]
    assert list(Product.objects.values_list("pk", flat=True)) == [7]


# --- JSONL ----------------------------------------------------------------------------------


@all_databases
def test_jsonl_takes_json_numbers_or_strings_and_ignores_extra_keys(tmp_path, load):
    write(
        tmp_path,
        "users.jsonl",
        '{"email": "ann@example.com", "name": "Ann", "id": 1, "tags": ["x"]}\n'
        "\n"
        '{"id": "2", "name": "Bob", "email": "bob@example.com"}\n',
    )
    write(tmp_path, "products.jsonl", '{"id": 1, "name": "Pen", "price": 2.5}\n')
    write(tmp_path, "orders.jsonl", '{"id": 1, "user_id": 2, "product_id": 1, "quantity": 4}\n')
    assert load(tmp_path) == []
    assert users() == [(1, "Ann", "ann@example.com"), (2, "Bob", "bob@example.com")]
    assert Product.objects.get().price == Decimal("2.50")
    assert Order.objects.get().user_id == 2


@all_databases
def test_jsonl_rejections_name_the_line_and_the_problem(tmp_path, load):
    lines = [
        '{"id": 1, "name": "Ann", "email": "ann@example.com"}',  # 1: fine
        '{"id": 6.5, "name": "Fay", "email": "fay@example.com"}',  # 2
        '{"id": true, "name": "Gus", "email": "gus@example.com"}',  # 3
        "",  # 4: blank, skipped but counted
        '{"id": "eight", "name": "Hal", "email": "hal@example.com"}',  # 5
        '{"id": 9, "name": "Ivy\\udc80", "email": "ivy@example.com"}',  # 6
        '{"id": 12, "name": "Jo", "email": "jo@example.com"}',  # 7: fine
    ]
    write(tmp_path, "users.jsonl", "\n".join(lines) + "\n")
    assert load(tmp_path) == [
        "users (line 2): id must be a whole number (got 6.5)",
        "users (line 3): id must be a whole number (got true)",
        "users (line 5): id must be a whole number (got 'eight')",
        "users #9 (line 6): name is not valid UTF-8 text",
    ]
    assert [u[0] for u in users()] == [1, 12]


@all_databases
def test_jsonl_keys_match_in_any_case_with_spaces_as_csv_headers_do(tmp_path, load):
    lines = [
        '{"ID": 1, "Name": "Ann", " EMAIL ": "ann@example.com"}',
        '{"id": 2, "ID": 99, "name": "Bob", "email": "bob@example.com"}',  # exact key wins
        '{"Id": 3, "iD": 4, "name": "Cy", "email": "cy@example.com"}',
    ]
    write(tmp_path, "users.jsonl", "\n".join(lines) + "\n")
    assert load(tmp_path) == ["users (line 3): field id is given twice ('Id' and 'iD')"]
    assert [u[0] for u in users()] == [1, 2]


def test_json_values_are_quoted_in_json_not_python(tmp_path):
    from crossdb import registry

    _row, problems = registry.specs()["users"].clean(
        (False, {"first": "Ann", "tags": [None]}, "a@x.com")
    )
    assert [message for _field, message in problems] == [
        "id must be a whole number (got false)",
        'name must be text (got {"first": "Ann", "tags": [null]})',
    ]


def test_jsonl_lines_that_cannot_be_split_say_why_and_keep_their_text(tmp_path):
    lines = [
        '{"id": 1, "name": "Ann", "email": "ann@example.com"}',  # 1: fine
        '{"id": 2, "name": "Bob",}',  # 2
        '[2, "Bob", "bob@example.com"]',  # 3
        '{"id": 5, "name": "Eve"}',  # 4
        "null",  # 5
        "[" * 100_000,  # 6
        '{"id": 7, "name": "Ann", "email": "ann@exa',  # 7: cut short in a string
        '{"id": 8, "name": ',  # 8: cut short before a value
        '{"id": 9',  # 9: cut short after a value
    ]
    write(tmp_path, "users.jsonl", "\r\n".join(lines) + "\r\n")
    got = [(line, m.reason) for line, m in rows(tmp_path, "users")[1:]]
    assert got == [
        (2, "not valid JSON (Expecting property name enclosed in double quotes at column 25)"),
        (3, "expected a JSON object, got an array"),
        (4, "missing field(s) email"),
        (5, "expected a JSON object, got null"),
        (6, "not valid JSON (nested too deeply)"),
        (7, "not valid JSON (the line ends early: Unterminated string starting at column 35)"),
        (8, "not valid JSON (the line ends where a value should be, at column 19)"),
        (9, "not valid JSON (the line ends early: Expecting ',' delimiter at column 9)"),
    ]
    assert rows(tmp_path, "users")[2][1].raw == lines[2]


def test_a_jsonl_line_over_the_size_limit_is_malformed_without_reading_it_whole(tmp_path):
    huge = '{"id": 1, "name": "' + "x" * (3 << 20) + '", "email": "a@example.com"}'
    write(tmp_path, "users.jsonl", huge + '\n{"id": 2, "name": "Bob", "email": "b@example.com"}\n')
    assert rows(tmp_path, "users") == [
        (1, Malformed("the line is longer than 1,048,576 characters")),
        (2, (2, "Bob", "b@example.com")),
    ]


@all_databases
def test_jsonl_with_an_invalid_utf8_byte_rejects_that_row(tmp_path, load):
    write(
        tmp_path,
        "users.jsonl",
        b'{"id": 1, "name": "A\xc3nn", "email": "ann@example.com"}\n'
        b'{"id": 2, "name": "Bob", "email": "bob@example.com"}\n',
    )
    assert load(tmp_path) == ["users #1 (line 1): name is not valid UTF-8 text"]
    assert [u[0] for u in users()] == [2]


# --- errors that stop the run ---------------------------------------------------------------


def _missing_directory(tmp_path):
    return tmp_path / "nope", f"--from {tmp_path / 'nope'}: no such directory"


def _missing_column(tmp_path):
    path = write(tmp_path, "products.csv", "id,title,price\n1,Pen,2\n")
    return tmp_path, (
        f"{path}: missing column(s) name (the header must name id,name,price; found id,title,price)"
    )


def _duplicate_column(tmp_path):
    path = write(tmp_path, "products.csv", "id,name,price,name\n1,Pen,2,Ink\n")
    return tmp_path, f"{path}: column(s) name appear more than once; keep one"


def _empty_file(tmp_path):
    path = write(tmp_path, "products.csv", "\n\n")
    return tmp_path, f"{path}: the file is empty (expected a header row)"


def _both_formats(tmp_path):
    write(tmp_path, "products.csv", "id,name,price\n1,Pen,2\n")
    write(tmp_path, "products.jsonl", '{"id": 1, "name": "Pen", "price": 2}\n')
    return tmp_path, f"{tmp_path}: both products.csv and products.jsonl exist; keep one"


def _both_formats_one_gzipped(tmp_path):
    write(tmp_path, "products.csv", "id,name,price\n1,Pen,2\n")
    write(tmp_path, "products.jsonl.gz", gzip.compress(b'{"id": 1, "name": "Pen", "price": 2}\n'))
    return tmp_path, f"{tmp_path}: both products.csv and products.jsonl.gz exist; keep one"


def _not_gzip(tmp_path):
    path = write(tmp_path, "products.csv.gz", "id,name,price\n1,Pen,2\n")
    return tmp_path, f"{path}: cannot read (Not a gzipped file (b'id'))"


def _no_files(tmp_path):
    write(tmp_path, "customers.csv", "id,name\n")
    return tmp_path, (
        f"{tmp_path}: no file of a table (users or products or shelves or orders or reviews "
        "or items as .csv, .jsonl, .csv.gz, .jsonl.gz or .xlsx)"
    )


def _header_too_long(tmp_path):
    path = write(tmp_path, "products.csv", "\x00" * (2 << 20) + "\n")
    return tmp_path, f"{path}: the header line is longer than 1,048,576 characters"


def _header_not_csv(tmp_path):
    path = write(tmp_path, "products.csv", 'id,"name\n' + "x\n" * 600_000)
    return tmp_path, (
        f"{path}: the header row is not valid CSV (field larger than field limit (1048576))"
    )


def _data_file_instead_of_directory(tmp_path):
    path = write(tmp_path, "products.csv", "id,name,price\n1,Pen,2\n")
    return path, f"--from {path}: give the directory that holds it, not the file: --from {tmp_path}"


@all_databases
@pytest.mark.parametrize(
    "case",
    [
        _missing_directory,
        _missing_column,
        _duplicate_column,
        _empty_file,
        _both_formats,
        _both_formats_one_gzipped,
        _not_gzip,
        _no_files,
        _header_too_long,
        _header_not_csv,
        _data_file_instead_of_directory,
    ],
)
def test_a_problem_with_the_input_stops_the_run_before_anything_is_written(
    tmp_path, run_command, case
):
    directory = tmp_path / "in"
    directory.mkdir()
    if case is not _no_files:
        write(directory, "users.csv", "id,name,email\n1,Ann,ann@example.com\n")
    source, message = case(directory)
    with pytest.raises(CommandError) as error:
        run_command("insert_data", "--from", str(source), "--no-progress")
    assert str(error.value) == message
    assert User.objects.count() == Product.objects.count() == Order.objects.count() == 0


# --- synthetic data -------------------------------------------------------------------------


def _all_rows(source):
    return {table: list(source.rows(table)) for table in source.tables()}


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_rows():
    first = _all_rows(SyntheticSource(users=50, products=20, orders=300, seed=7))
    again = _all_rows(SyntheticSource(users=50, products=20, orders=300, seed=7))
    other = _all_rows(SyntheticSource(users=50, products=20, orders=300, seed=8))
    assert first == again
    for table in ("users", "products", "orders"):
        assert first[table] != other[table], table
        assert [line for line, _ in first[table]] == [line for line, _ in other[table]]


def test_synthetic_rows_look_real_and_orders_name_generated_parents():
    rows = _all_rows(SyntheticSource(users=30, products=10, orders=2000, seed=1))
    user_ids = {values[0] for _, values in rows["users"]}
    product_ids = {values[0] for _, values in rows["products"]}
    assert user_ids == set(range(1001, 1031)) and product_ids == set(range(1001, 1011))
    assert {line for table in rows.values() for line, _ in table} == {None}
    for _, (id_, name, email) in rows["users"]:
        first, last = name.split(" ")
        assert email == f"{first}.{last}.{id_}@example.com".lower()
    for _, (_id, _name, price) in rows["products"]:
        assert Decimal("1.00") <= price < Decimal("2000.00")
        assert price == price.quantize(Decimal("0.01"))
    orders = [values for _, values in rows["orders"]]
    assert [o[0] for o in orders] == list(range(1001, 3001))
    assert {o[1] for o in orders} == user_ids  # 2000 draws hit every one of 30 users
    assert {o[2] for o in orders} == product_ids
    assert {o[3] for o in orders} == {1, 2, 3, 4, 5}


def test_each_synthetic_table_is_reproducible_on_its_own():
    """Orders do not depend on how many users were drawn, only on the counts they refer to."""
    a = SyntheticSource(users=5, products=5, orders=100, seed=3)
    b = SyntheticSource(users=5, products=5, orders=100, seed=3)
    list(a.rows("users"))
    assert list(a.rows("orders")) == list(b.rows("orders"))


@all_databases
def test_running_the_same_synthetic_command_twice_stores_nothing_twice(run_command):
    args = ("insert_data", "--users=300", "--products=40", "--orders=2000", "--seed=5")
    first = run_command(*args, "--no-progress", "--batch-size=250")
    assert "2,340 stored, 0 already present, 0 rejected" in first
    stored = list(Order.objects.order_by("pk").values_list("pk", "user_id", "product_id"))
    second = run_command(*args, "--no-progress")
    assert "0 stored, 2,340 already present, 0 rejected" in second
    assert list(Order.objects.order_by("pk").values_list("pk", "user_id", "product_id")) == stored


@all_databases
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users=-1"], "--users must be 0 or more (got -1)"),
        (["--orders=5"], "--orders needs --users and --products to reference"),
        (["--orders=5", "--users=5"], "--orders needs --users and --products to reference"),
    ],
)
def test_synthetic_options_that_cannot_work_are_refused(run_command, args, message):
    with pytest.raises(CommandError) as error:
        run_command("insert_data", *args, "--no-progress")
    assert str(error.value) == message


def test_jsonl_round_trips_through_json_dumps(tmp_path):
    """Files written by json.dumps, the usual way to make JSONL, read back value for value."""
    from crossdb.sources import FileSource

    records = [{"id": i, "name": f"N{i}", "price": f"{i}.25"} for i in range(1, 4)]
    write(tmp_path, "products.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    source = FileSource(tmp_path)
    source.check()
    assert list(source.rows("products")) == [(i, (i, f"N{i}", f"{i}.25")) for i in range(1, 4)]


def test_synthetic_ids_start_clear_of_the_demo_data_and_values_are_python_values():
    source = SyntheticSource(users=3, products=2, orders=4, seed=1)
    assert FIRST_ID == 1001
    users, products, orders = (list(source.rows(t)) for t in ("users", "products", "orders"))
    assert [values[0] for _, values in users] == [1001, 1002, 1003]
    assert all(type(v) is int for _, order in orders for v in order)
    assert all(type(price) is Decimal for _, (_i, _n, price) in products)
    assert [source.expected(t).total for t in ("users", "products", "orders")] == [3, 2, 4]
    assert source.expected("orders").unit == "rows"
    assert source.input_paths() == [] and source.warnings() == []


def test_synthetic_orders_stream_in_chunks_and_the_last_chunk_is_whole():
    """More orders than one chunk: every id once, in order, every reference in range."""
    count = 120_003
    orders = [values for _, values in SyntheticSource(7, 3, count, seed=2).rows("orders")]
    assert [o[0] for o in orders] == list(range(FIRST_ID, FIRST_ID + count))
    assert {o[1] for o in orders} == set(range(FIRST_ID, FIRST_ID + 7))
    assert {o[2] for o in orders} == set(range(FIRST_ID, FIRST_ID + 3))


@all_databases
def test_the_demo_then_the_readme_synthetic_example_reports_no_conflict(run_command):
    """make demo, then the README's next command (smaller): nothing is 'already stored'."""
    run_command("insert_data", "--no-progress")
    out = run_command(
        "insert_data", "--users=300", "--products=40", "--orders=2000", "--seed=7", "--no-progress"
    )
    assert "2,340 stored, 0 already present, 0 rejected" in out
    assert User.objects.count() == 8 + 300


def test_order_i_is_the_same_row_whatever_the_number_of_orders():
    """Concurrent loads of growing --orders counts rely on it (tests/test_reliability.py)."""
    short = list(SyntheticSource(40, 9, 70_011, seed=4).rows("orders"))
    longer = list(SyntheticSource(40, 9, 123_456, seed=4).rows("orders"))
    assert len(short) == 70_011 and len(longer) == 123_456
    assert longer[: len(short)] == short
