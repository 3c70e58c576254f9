"""Column mapping (issue 33): ``--map TABLE.FIELD=COLUMN`` and ``--map-file``.

A mapped load gives exactly the verdicts of the same data with its columns renamed to the
fields' names (CSV and JSONL, gzipped or not); every mistake in a mapping is one line
naming the flag or the file's line, before any data is read; a header lacking a field's
column names what it found, what it needed, and the ``--map`` that would read the closest
column. The in-process loads here rerun on PostgreSQL with the rest of the in-process suite
(``tests/test_postgres.py``); the last test runs the command there in a subprocess too.
"""

import csv
import gzip
import json
from io import StringIO

import pytest
from crossdb import registry
from crossdb.loading import load
from crossdb.sources import ColumnMap, FileSource, MappingError, SourceError, source_for_path
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import all_databases, behind_the_guards_back, manage
from tests.test_postgres import pg_databases, pg_rows, postgres_server  # noqa: F401

# The same rows twice: with the fields' own names, and as another system exports them.
USERS = [
    ("1", "Ann", "ann@example.com", "x"),
    ("2", "Bob", "bob@example.org", "x"),
    ("3", "Cid", "ANN@example.com", "x"),  # Ann's address, cased otherwise: rejected
    ("4", "", "dan@example.com", "x"),  # no name: rejected
    ("5", "Eve", "not-an-email", "x"),
    ("6", "Fay", "fay@example.com", "x"),
]
PRODUCTS = [("1", "Pen", "1.50"), ("2", "Ink", "-3"), ("3", "Cap", "2")]
ORDERS = [
    ("1", "1", "1", "2"),
    ("2", "3", "1", "1"),  # user 3 was rejected in this run
    ("3", "1", "2", "1"),  # product 2 was rejected
    ("4", "2", "3", "0"),  # quantity below 1
    ("5", "99", "1", "1"),  # no such user
    ("6", "6", "3", "3"),
]
# table: (the fields' names, another system's names); the last users column is extra, and
# in the mapped file it is called email: a column named like a field that feeds nothing
NAMES = {
    "users": (("id", "name", "email", "note"), ("ident", "Full Name", "mail", "email")),
    "products": (("id", "name", "price"), ("id", "name", "cost")),
    "orders": (("id", "user_id", "product_id", "quantity"), ("id", "customer", "item", "qty")),
}
ROWS = {"users": USERS, "products": PRODUCTS, "orders": ORDERS}
MAPS = [
    "--map=users.id=ident",
    "--map=users.name=full name",  # matched as header names are: any case
    "--map=users.email=mail",
    "--map=products.price=cost",
    "--map=orders.user_id=customer",
    "--map=orders.product_id=item",
    "--map=orders.quantity=qty",
]


def mapping(*maps, map_file=None):
    return ColumnMap.from_options([m.removeprefix("--map=") for m in maps], map_file)


def write(directory, table, names, rows, suffix):
    """table's rows under names, as TABLE.suffix (csv, jsonl, either .gz)."""
    directory.mkdir(exist_ok=True)
    if suffix.startswith("csv"):
        out = StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        text = out.getvalue()
    else:
        text = "".join(json.dumps(dict(zip(names, row, strict=True))) + "\n" for row in rows)
    path = directory / f"{table}.{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def files(directory, suffix, mapped):
    for table, rows in ROWS.items():
        write(directory, table, NAMES[table][mapped], rows, suffix)
    return directory


def emptied():
    """Every registered table emptied behind the guard's back, children first."""
    for table in reversed(registry.tables()):
        behind_the_guards_back(registry.alias(table), f"DELETE FROM {table}")


def stored():
    return {
        table: sorted(map(repr, model.objects.values_list()))
        for table, model in registry.models().items()
    }


def verdicts(result, with_raw):
    counts = [row[:4] for row in result.summary_rows()]
    rejections = [
        (r.table, str(r.line), r.id, r.reason, r.values, r.raw if with_raw else None)
        for r in result.sorted_rejections()
    ]
    return counts, rejections


# --- a mapped load is the load of the renamed files -------------------------------------


@all_databases
@pytest.mark.parametrize("suffix", ["csv", "jsonl", "csv.gz", "jsonl.gz"])
def test_a_mapped_load_gives_the_verdicts_of_the_same_data_with_renamed_columns(tmp_path, suffix):
    renamed = load.load(source_for_path(files(tmp_path / "renamed", suffix, mapped=False)))
    renamed_rows = stored()
    emptied()
    source = source_for_path(
        files(tmp_path / "mapped", suffix, mapped=True), mapping=mapping(*MAPS)
    )
    source.check()
    mapped = load.load(source)
    # a JSONL record's raw text holds its keys, which differ; a CSV record's does not
    with_raw = suffix.startswith("csv")
    assert verdicts(mapped, with_raw) == verdicts(renamed, with_raw)
    assert stored() == renamed_rows
    counts = verdicts(mapped, with_raw)[0]
    assert counts == [("users", 3, 0, 3), ("products", 2, 0, 1), ("orders", 2, 0, 4)]


@all_databases
def test_without_the_mapping_the_same_files_stop_the_run(tmp_path):
    """The negative control of the test above: the mapping is what reads them."""
    source = source_for_path(files(tmp_path, "csv", mapped=True))
    with pytest.raises(SourceError, match="missing column"):
        source.check()


def test_a_mapped_column_is_matched_in_any_case_in_csv_and_jsonl(tmp_path):
    write(tmp_path / "a", "users", ("ID", " Name ", "E-Mail"), [("1", "Ann", "a@x.com")], "csv")
    write(tmp_path / "b", "users", ("id", "name", "E-Mail"), [("1", "Ann", "a@x.com")], "jsonl")
    write(tmp_path / "c", "users", ("id", "name", "e-mail"), [("1", "Ann", "a@x.com")], "jsonl")
    for directory in ("a", "b", "c"):
        source = FileSource(tmp_path / directory, mapping=mapping("users.email=e-mail"))
        source.check()
        assert list(source.rows("users")) == [
            (2 if directory == "a" else 1, ("1", "Ann", "a@x.com"))
        ]


def test_a_mapping_file_reads_like_the_flags_and_a_flag_overrides_its_line(tmp_path):
    map_file = tmp_path / "columns.map"
    map_file.write_text(
        "# the CRM's names\n\nusers.email=mail\n  users.name = Full Name  \nusers.id=wrong\n"
    )
    write(tmp_path / "in", "users", NAMES["users"][1], USERS[:1], "csv")
    source = FileSource(tmp_path / "in", mapping=mapping("users.id=ident", map_file=map_file))
    source.check()
    assert list(source.rows("users")) == [(2, ("1", "Ann", "ann@example.com"))]
    assert source.warnings() == []


@all_databases
def test_insert_data_loads_with_map_and_map_file(tmp_path):
    files(tmp_path / "in", "csv", mapped=True)
    (tmp_path / "columns.map").write_text("\n".join(m.removeprefix("--map=") for m in MAPS[3:]))
    out = StringIO()
    call_command(
        "insert_data",
        f"--from={tmp_path / 'in'}",
        "--no-progress",
        f"--map-file={tmp_path / 'columns.map'}",
        *MAPS[:3],
        stdout=out,
        stderr=out,
    )
    assert "7 stored, 0 already present, 8 rejected" in out.getvalue()


def test_help_shows_the_options_and_an_example(tmp_path):
    done = manage("insert_data", "--help", data_dir=tmp_path)
    examples = done.stdout.split("examples:", 1)[1].split("file formats", 1)[0]
    assert "insert_data --from DIR --map users.email=COLUMN" in examples
    assert "--map TABLE.FIELD=COLUMN" in done.stdout
    assert "--map-file FILE" in done.stdout


# --- a field left out ---------------------------------------------------------------------

SHELF = "11111111-1111-1111-1111-111111111111"


@all_databases
def test_a_field_mapped_to_nothing_is_not_read_and_takes_its_default(tmp_path):
    from tests.kinds.models import Shelf

    write(
        tmp_path,
        "shelves",
        ("id", "label", "opened", "heated"),
        [(SHELF, "A", "2024-01-02", "maybe")],
        "csv",
    )
    without = load.load(FileSource(tmp_path))  # the column is read without the mapping
    assert [r.reason.split()[0] for r in without.rejections] == ["heated"]
    source = FileSource(tmp_path, mapping=mapping("shelves.heated="))
    source.check()
    result = load.load(source)
    assert result.rejections == []
    assert list(Shelf.objects.values_list("label", "heated")) == [("A", False)]


# --- mistakes in a mapping: one line each, before anything is read ------------------------


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (
            ["users.email"],
            "--map users.email: expected TABLE.FIELD=COLUMN (e.g. users.email=COLUMN)",
        ),
        (
            ["email=mail"],
            "--map email=mail: expected TABLE.FIELD=COLUMN; did you mean users.email=mail?",
        ),
        (
            ["user.email=mail"],
            "--map user.email=mail: no table is called 'user' (tables: users, products, "
            "shelves, orders, reviews, items); did you mean users?",
        ),
        (
            ["users.emial=mail"],
            "--map users.emial=mail: users has no field 'emial' (its fields: id, name, email); "
            "did you mean users.email?",
        ),
        (
            ["users.email=mail", "users.email=e"],
            "--map users.email=e: users.email is mapped twice (also by --map users.email=mail)",
        ),
        (
            ["users.email=mail", "users.name=MAIL"],
            "--map users.name=MAIL: column 'MAIL' cannot feed users.name: users.email is read "
            "from it too (a column feeds one field)",
        ),
        (
            ["users.name=email"],
            "--map users.name=email: column 'email' cannot feed users.name: users.email is read "
            "from it by its name; map users.email to another column, or leave it out with "
            "nothing after = (a column feeds one field)",
        ),
        (
            ["users.email="],
            "--map users.email=: users.email cannot be left out, every row needs it (fields "
            "users rows may leave out: none); give its column",
        ),
        (
            ["users.name=\x1b[2Jx"],
            r"--map users.name=\x1b[2Jx: column '\x1b[2Jx' cannot feed users.name: "
            "users.email is read from it too (a column feeds one field)",
        ),
    ],
)
def test_a_wrong_mapping_is_one_line_naming_the_flag(maps, message):
    if maps == ["users.name=\x1b[2Jx"]:
        maps = ["users.email=\x1b[2jx", *maps]  # the same column, in another case
    with pytest.raises(MappingError) as error:
        mapping(*maps)
    assert str(error.value) == message
    assert str(error.value).isprintable()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"users.email=mail\n# fine\nusers-email\n", "{path} line 3: expected TABLE.FIELD=COLUMN"),
        (
            b"users.email=mail\nusers.email=e\n",
            "{path} line 2: users.email is mapped twice (also by {path} line 1)",
        ),
        (
            b"\n\nusers.nam=n\n",
            "{path} line 3: users has no field 'nam' (its fields: id, name, email); "
            "did you mean users.name?",
        ),
        (b"users.name=\xff\n", "--map-file {path}: not UTF-8 text (invalid start byte at byte 11)"),
    ],
)
def test_a_wrong_mapping_file_is_one_line_naming_its_line(tmp_path, content, message):
    path = tmp_path / "columns.map"
    path.write_bytes(content)
    with pytest.raises(MappingError) as error:
        mapping(map_file=path)
    assert str(error.value).startswith(message.format(path=path)), str(error.value)


def test_a_missing_mapping_file_is_one_line(tmp_path):
    with pytest.raises(MappingError) as error:
        mapping(map_file=tmp_path / "nope.map")
    assert (
        str(error.value)
        == f"--map-file {tmp_path}/nope.map: cannot read (No such file or directory)"
    )


@all_databases
def test_the_mapping_is_checked_before_any_file_is_read(tmp_path):
    """The directory does not even exist: the mapping's mistake is what is said."""
    with pytest.raises(CommandError) as error:
        call_command("insert_data", f"--from={tmp_path / 'nope'}", "--map=users.emial=mail")
    assert str(error.value).startswith("--map users.emial=mail: users has no field 'emial'")


def test_map_without_from_is_refused(migrated_dir):
    done = manage("insert_data", "--map=users.email=mail", data_dir=migrated_dir)
    assert (done.returncode, done.stderr.strip()) == (
        1,
        "CommandError: --map and --map-file are for files read with --from",
    )


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (
            ["--map=users.email=mail", "--map=users.name=mail"],
            "--map users.name=mail: column 'mail' cannot feed users.name: "
            "users.email is read from it too (a column feeds one field)",
        ),
        (
            ["--map=users.email=e_mail"],
            "{dir}/users.csv: missing column(s) e_mail (for users.email, by --map "
            "users.email=e_mail) (the header must name id,name,e_mail; found id,name,email); "
            "did you mean --map users.email=email?",
        ),
    ],
)
def test_the_command_says_a_wrong_mapping_in_one_line_and_exits_1(
    migrated_dir, tmp_path, maps, message
):
    write(tmp_path / "in", "users", ("id", "name", "email"), [u[:3] for u in USERS[:1]], "csv")
    done = manage("insert_data", f"--from={tmp_path / 'in'}", *maps, data_dir=migrated_dir)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == "CommandError: " + message.format(dir=tmp_path / "in")


# --- a header without a field's column ----------------------------------------------------


def test_a_header_lacking_a_fields_column_suggests_the_map_for_the_closest(tmp_path):
    path = write(tmp_path, "users", ("id", "name", "mail"), [u[:3] for u in USERS[:1]], "csv")
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == (
        f"{path}: missing column(s) email (the header must name id,name,email; found "
        "id,name,mail); did you mean --map users.email=mail?"
    )


def test_the_suggestion_is_quoted_for_the_shell_and_skips_used_columns(tmp_path):
    path = write(
        tmp_path, "users", ("id", "names", "e mail", "email2"), [u[:3] for u in USERS[:1]], "csv"
    )
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path, mapping=mapping("users.email=email2")).check()
    assert str(error.value) == (
        f"{path}: missing column(s) name (the header must name id,name,email2; found "
        "id,names,e mail,email2); did you mean --map users.name=names?"
    )


def test_no_suggestion_when_no_column_is_close(tmp_path):
    path = write(tmp_path, "users", ("id", "name", "contact"), [u[:3] for u in USERS[:1]], "csv")
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == (
        f"{path}: missing column(s) email (the header must name id,name,email; found "
        "id,name,contact)"
    )


@pytest.mark.parametrize("suffix", ["csv", "csv.gz"])
def test_a_mapped_column_absent_from_the_header_names_the_flag(tmp_path, suffix):
    path = write(tmp_path, "users", ("id", "name", "e_mail"), [u[:3] for u in USERS[:1]], suffix)
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path, mapping=mapping("users.email=mial")).check()
    assert str(error.value) == (
        f"{path}: missing column(s) mial (for users.email, by --map users.email=mial) (the "
        "header must name id,name,mial; found id,name,e_mail); did you mean --map "
        "users.email=e_mail?"
    )


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz"])
def test_a_mapped_key_absent_from_the_first_jsonl_line_names_the_flag(tmp_path, suffix):
    path = write(tmp_path, "users", ("id", "name", "e_mail"), [u[:3] for u in USERS[:2]], suffix)
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path, mapping=mapping("users.email=mial")).check()
    assert str(error.value) == (
        f"{path}: missing key(s) mial (for users.email, by --map users.email=mial) on line 1 "
        "(the line must name id,name,mial; found id,name,e_mail); did you mean --map "
        "users.email=e_mail?"
    )


def test_a_jsonl_file_lacking_a_fields_key_gets_a_warning_with_the_map(tmp_path):
    """JSONL rows lacking a key are rejected one by one, as they always were; the first
    line's keys, standing for a header, give the hint once."""
    path = write(tmp_path, "users", ("id", "name", "mail"), [u[:3] for u in USERS[:2]], "jsonl")
    source = FileSource(tmp_path)
    source.check()
    assert source.warnings() == [
        f"{path}: missing key(s) email on line 1 (the line must name id,name,email; found "
        "id,name,mail); did you mean --map users.email=mail?"
    ]
    assert [values for _line, values in source.rows("users")][0].reason == "missing field(s) email"


def test_control_characters_of_a_header_are_escaped_in_the_hint(tmp_path):
    path = write(
        tmp_path, "users", ("id", "name", "mail\x1b[2J"), [u[:3] for u in USERS[:1]], "csv"
    )
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value).endswith(r"did you mean --map 'users.email=mail\x1b[2J'?")
    assert str(error.value).isprintable(), str(error.value)
    assert str(path) in str(error.value)


# --- the rejects file needs no mapping ----------------------------------------------------


@all_databases
def test_the_rejects_of_a_mapped_load_are_fed_back_without_it(tmp_path):
    files(tmp_path / "in", "csv", mapped=True)
    rejects = tmp_path / "rejects.csv"
    out = StringIO()
    call_command(
        "insert_data",
        f"--from={tmp_path / 'in'}",
        "--no-progress",
        f"--rejects={rejects}",
        *MAPS,
        stdout=out,
        stderr=out,
    )
    with open(rejects, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {"name", "email", "price", "quantity"} <= set(rows[0])  # the fields' names
    for row in rows:  # fix each the simplest way
        if row["table"] == "users":
            row["name"] = row["name"] or "Dan"
            row["email"] = f"user{row['id']}@example.net"
        elif row["table"] == "products":
            row["price"] = "3.00"
        else:
            row["quantity"] = "1"
            row["user_id"] = "1" if row["user_id"] == "99" else row["user_id"]
    with open(rejects, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = StringIO()
    call_command(
        "insert_data", f"--from={rejects}", "--no-progress", *MAPS[:1], stdout=out, stderr=out
    )
    assert "8 stored, 0 already present, 0 rejected" in out.getvalue(), out.getvalue()
    assert (
        "warning: --map users.id=ident: not used, a rejects file names its columns by field"
        in out.getvalue()
    )


def test_a_mapping_for_a_table_without_a_file_is_named(tmp_path):
    write(tmp_path, "users", ("id", "name", "email"), [u[:3] for u in USERS[:1]], "csv")
    source = FileSource(tmp_path, mapping=mapping("orders.quantity=qty"))
    source.check()
    assert source.warnings() == [
        f"--map orders.quantity=qty: not used, {tmp_path} has no orders file"
    ]


# --- PostgreSQL, through the command as a user runs it --------------------------------------


def test_a_mapped_load_on_postgres_stores_what_the_renamed_load_stores(pg_databases, tmp_path):  # noqa: F811
    results = []
    for mapped in (False, True):
        env = pg_databases(("default", "users_db", "orders_db", "products_db"))
        manage("migrate_all", data_dir=tmp_path, env=env, check=True)
        directory = files(tmp_path / f"in{int(mapped)}", "jsonl", mapped=mapped)
        done = manage(
            "insert_data",
            f"--from={directory}",
            "--no-progress",
            *(MAPS if mapped else ()),
            data_dir=tmp_path,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.split("Rejected rows:")[1].strip().splitlines()
        results.append((lines, [pg_rows(env, t) for t in ("users", "products", "orders")]))
    assert results[0] == results[1]
    assert [len(rows) for rows in results[1][1]] == [3, 2, 2]
