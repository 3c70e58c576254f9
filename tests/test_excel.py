"""``TABLE.xlsx``: a sheet read as a stream gives the verdicts of the same rows as CSV.

Workbooks are written here with openpyxl (its normal, writing mode); cells a program leaves
as openpyxl cannot write them (a formula's saved result, 17 digits of a float, a wrong
declared size) are patched into the sheet's XML. A typed cell meets the rule of the text a
person sees in it: each row below gives the cell and that text, and the same rows as CSV
must get exactly the same verdicts (stored rows, rejections with their reasons and values).
"""

import csv
import datetime
import gzip
import sys
import tracemalloc
import zipfile

import openpyxl
import pytest
from crossdb.loading import load
from crossdb.sources import FileSource, SourceError, excel, source_for_path

from tests.conftest import all_databases, manage
from tests.test_verdicts import empty_tables


class Shown:
    """A cell and the text a person sees in it (what the same row holds as CSV)."""

    def __init__(self, value, text, number_format=None, data_type=None):
        self.value, self.text = value, text
        self.number_format, self.data_type = number_format, data_type


def text_of(cell):
    return cell.text if isinstance(cell, Shown) else str(cell)


def write_book(path, header, rows, title=None, more_sheets=()):
    """A workbook of one sheet (title: its name) holding header and rows; None is an
    empty row. Returns the path."""
    book = openpyxl.Workbook()
    sheet = book.active
    if title:
        sheet.title = title
    for name in more_sheets:
        book.create_sheet(name).append(["nothing", "here"])
    sheet.append(header)
    for number, row in enumerate(rows, 2):
        if row is None:
            continue
        for column, cell in enumerate(row, 1):
            value = cell.value if isinstance(cell, Shown) else cell
            target = sheet.cell(number, column, value)
            if isinstance(cell, Shown) and cell.number_format:
                target.number_format = cell.number_format
            if isinstance(cell, Shown) and cell.data_type:
                target.data_type = cell.data_type
    book.save(path)
    return path


def write_text(path, header, rows):
    """The same rows as CSV, each cell as the text it shows; None is a blank line."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            if row is None:
                handle.write("\n")
            else:
                writer.writerow([text_of(cell) for cell in row])


def patch_sheet(path, old, new, member="xl/worksheets/sheet1.xml"):
    """Replace old by new in one part of the workbook (once, and it must be there)."""
    with zipfile.ZipFile(path) as archive:
        parts = {info.filename: archive.read(info) for info in archive.infolist()}
    assert parts[member].count(old) == 1, parts[member][:2000]
    parts[member] = parts[member].replace(old, new)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)


def read(directory, table):
    source = FileSource(directory)
    source.check()
    return list(source.rows(table))


# --- the shop's tables: the verdicts of the same rows as CSV ---------------------------------

SHOP = {
    "users": (
        ["id", "name", "email"],
        [
            (1, "Ann", "ann@example.com"),
            (Shown(2.0, "2"), "Bob", "bob@example.com"),  # a whole float is a whole id
            (Shown(3.5, "3.5"), "Cid", "cid@example.com"),  # and 3.5 is not one, as text
            (4, Shown(12, "12"), "dan@example.com"),  # a name typed as a number
            (5, Shown(True, "true"), "eve@example.com"),
            (6, Shown(None, ""), "fay@example.com"),  # name is required
            (7, " Gus ", "ANN@example.com"),  # the email of user 1
            None,  # an empty row, as a blank line
            (Shown(-8, "-8"), "Hal", "hal@example.com"),
            (9, Shown(datetime.date(2024, 5, 1), "2024-05-01"), "ida@example.com"),
            (10, "Jo", Shown(None, "")),
            (11, "Kim", "kim@example.com"),
        ],
    ),
    "products": (
        ["ID", "Name", "Price"],  # a header in any case, as in CSV
        [
            (1, "Pen", Shown(1.5, "1.5")),
            (2, "Ink", Shown(1000.0, "1000")),
            (3, "Cap", Shown(-50.0, "-50")),
            (4, "Box", Shown(2.675, "2.675")),
            (5, "Bag", Shown(0.1 + 0.2, "0.3")),
            (6, "Mug", "1,50"),  # a text cell: the same advice about its comma
            (7, "Cup", "1e2"),
            (8, "Jar", Shown(True, "true")),
            (9, "Tin", Shown(None, "")),
            (10, Shown(7, "7"), Shown(19.99, "19.99")),
            (11, "Dot", Shown(1e-05, "0.00001")),
        ],
    ),
    "orders": (
        ["id", "user_id", "product_id", "quantity"],
        [
            (1, 1, 1, Shown(3.0, "3")),
            (2, Shown(2.0, "2"), 2, Shown(3.5, "3.5")),  # rejected, as 3.5 is in CSV
            (3, 4, 10, 0),
            (4, 6, 1, 1),  # user 6 was rejected
            (5, 1, 99, 1),  # no product 99
            (6, 1, 1, Shown(None, "")),
            (7, Shown(2**63, "9223372036854780000"), 1, 1),  # a number keeps 15 digits
            (8, 5, 2, Shown(2, "2")),
            (9, "x", 1, 1),
            (10, 9, Shown(10.0, "10"), Shown(1e3, "1000")),
            (11, 11, 1, 1),
        ],
    ),
}


def write_shop(directory, kind):
    directory.mkdir()
    for table, (header, rows) in SHOP.items():
        if kind == "xlsx":
            write_book(directory / f"{table}.xlsx", header, rows)
        else:
            write_text(directory / f"{table}.csv", header, rows)
    return directory


def verdicts(directory, models):
    """Load directory into emptied tables; return every verdict, comparable row by row."""
    empty_tables()
    source = FileSource(directory)
    source.check()
    result = load.load(source, batch_size=4)
    counts = {t: (r.stored, r.present, r.rejected) for t, r in result.tables.items()}
    rejections = sorted(
        (r.table, int(r.line), repr(r.id), r.reason, sorted(r.values.items()), r.raw)
        for r in result.rejections
    )
    stored = {m.__name__: list(m.objects.order_by("pk").values_list()) for m in models}
    return counts, rejections, stored


def shop_models():
    from core.models import Order, Product, User

    return (User, Product, Order)


@all_databases
def test_the_shop_from_xlsx_gets_the_verdicts_of_the_same_rows_as_csv(tmp_path):
    as_csv = verdicts(write_shop(tmp_path / "csv", "csv"), shop_models())
    as_xlsx = verdicts(write_shop(tmp_path / "xlsx", "xlsx"), shop_models())
    assert as_xlsx == as_csv
    counts, rejections, stored = as_xlsx
    assert counts == {"users": (6, 0, 5), "products": (4, 0, 7), "orders": (4, 0, 7)}
    reasons = {(table, line): reason for table, line, _id, reason, _values, _raw in rejections}
    assert reasons["users", 4] == "id must be a whole number (got '3.5')"
    assert reasons["users", 10] == "id must be a positive whole number (got -8)"
    assert reasons["products", 4] == "price must be greater than 0 (got -50)"
    assert reasons["products", 9] == "price must be a number (got 'true')"
    assert reasons["orders", 3] == "quantity must be a whole number (got '3.5')"
    assert reasons["orders", 5] == "customer 6 was rejected in this run"
    assert [row[1] for row in stored["User"]] == ["Ann", "Bob", "12", "true", "2024-05-01", "Kim"]
    assert [(pk, str(price)) for pk, _name, price in stored["Product"]] == [
        (1, "1.50"),
        (2, "1000.00"),
        (5, "0.30"),
        (10, "19.99"),
    ]
    assert [(pk, quantity) for pk, _u, _p, quantity in stored["Order"]] == [
        (1, 3),
        (8, 2),
        (10, 1000),
        (11, 1),
    ]


@all_databases
def test_a_reader_that_writes_cells_as_python_prints_them_fails_the_comparison(
    tmp_path, monkeypatch
):
    """Negative control: str() of a cell's value (True, 1e-05) stores a customer named
    True and refuses a price for its exponent, and the comparison sees both."""
    as_csv = verdicts(write_shop(tmp_path / "csv", "csv"), shop_models())
    monkeypatch.setattr(excel, "cell_text", lambda cell: str(cell.value))
    as_xlsx = verdicts(write_shop(tmp_path / "xlsx", "xlsx"), shop_models())
    assert as_xlsx != as_csv
    assert [row[1] for row in as_xlsx[2]["User"] if row[0] == 5] == ["True"]
    reasons = [r for table, line, _id, r, *_ in as_xlsx[1] if (table, line) == ("products", 12)]
    assert reasons == ["price must be written without an exponent (got '1e-05')"]


# --- every kind of field: dates, moments, booleans, floats ------------------------------------

TOP, MID, LOW, BAD = (f"{n}f1c2a52-8d3e-4b7a-9c10-2f3e4d5a6b7c" for n in "1234")
KINDS = {
    "shelves": (
        ["id", "label", "opened", "heated"],
        [
            (TOP, "Top", Shown(datetime.date(2024, 2, 29), "2024-02-29"), Shown(True, "true")),
            # a moment under a date format shows its day; under a date-and-time format it
            # shows the time too, and a date field refuses it as it refuses that text
            (
                LOW,
                "Low",
                Shown(datetime.datetime(2024, 5, 1), "2024-05-01", number_format="yyyy-mm-dd"),
                Shown(None, ""),
            ),
            (MID, "Mid", Shown(datetime.datetime(2024, 5, 1, 9, 30), "2024-05-01T09:30:00"), 0),
            (BAD, "Bad", Shown(None, ""), "yes"),
        ],
    ),
    "items": (
        ["code", "shelf", "weight", "fragile", "added", "expires", "count", "note"],
        [
            (
                "a1",
                TOP,
                Shown(2.5, "2.5"),
                Shown(True, "true"),
                "2024-05-01T09:30:00+02:00",
                Shown(datetime.date(2025, 1, 31), "2025-01-31"),
                Shown(3.0, "3"),
                Shown(None, ""),
            ),
            (  # Excel has no time zones: with USE_TZ a moment cell is refused as its text is
                "a2",
                TOP,
                Shown(1000.5, "1000.5"),
                Shown(False, "false"),
                Shown(datetime.datetime(2024, 5, 1, 9, 30), "2024-05-01T09:30:00"),
                Shown(None, ""),
                Shown(None, ""),
                "n",
            ),
            (
                "a3",
                LOW,
                Shown(7, "7"),
                "yes",
                "2024-05-01T09:30:00Z",
                Shown(datetime.datetime(2025, 1, 31, 12), "2025-01-31T12:00:00"),
                2,
                Shown(12, "12"),
            ),
            ("a4", MID, 1, Shown(1, "1"), "2024-05-01 09:30+02:00", None, 1, "x"),
            ("a5", LOW, Shown(0.5, "0.5"), Shown(False, "false"), "2024-05-01T00:00Z", "", "", ""),
        ],
    ),
}


def write_kinds(directory, kind):
    directory.mkdir()
    for table, (header, rows) in KINDS.items():
        rows = [tuple(Shown(None, "") if c is None else c for c in row) for row in rows]
        if kind == "xlsx":
            write_book(directory / f"{table}.xlsx", header, rows)
        else:
            write_text(directory / f"{table}.csv", header, rows)
    return directory


@all_databases
def test_dates_moments_booleans_and_floats_typed_by_excel_meet_the_rules_of_their_text(tmp_path):
    from tests.kinds.models import Item, Shelf

    as_csv = verdicts(write_kinds(tmp_path / "csv", "csv"), (Shelf, Item))
    as_xlsx = verdicts(write_kinds(tmp_path / "xlsx", "xlsx"), (Shelf, Item))
    assert as_xlsx == as_csv
    counts, rejections, stored = as_xlsx
    assert counts == {"shelves": (2, 0, 2), "items": (2, 0, 3)}
    reasons = {(table, line): reason for table, line, _id, reason, _values, _raw in rejections}
    assert reasons["shelves", 4] == (
        "opened must be a date written YYYY-MM-DD (got '2024-05-01T09:30:00')"
    )
    assert reasons["items", 3] == (
        "weight must be at most 1000 (got '1000.5'); added needs its time zone: end it with Z "
        "or an offset such as +02:00 (got '2024-05-01T09:30:00')"
    )
    assert reasons["items", 4] == (
        "expires must be a date written YYYY-MM-DD (got '2025-01-31T12:00:00')"
    )
    shelves = {row[1]: row for row in stored["Shelf"]}
    assert shelves["Low"][2:] == (datetime.date(2024, 5, 1), False)  # heated: its default
    assert shelves["Top"][2:] == (datetime.date(2024, 2, 29), True)
    columns = [f.attname for f in Item._meta.concrete_fields]
    items = {
        row["code"]: row for row in (dict(zip(columns, r, strict=True)) for r in stored["Item"])
    }
    a1 = items["a1"]
    assert (a1["weight"], a1["fragile"], a1["expires"], a1["count"], a1["note"]) == (
        2.5,
        True,
        datetime.date(2025, 1, 31),
        3,
        "",
    )


# --- reading: which sheet, which rows, what each cell says -----------------------------------


def test_typed_cells_read_as_the_text_they_show(tmp_path):
    rows = [
        (1, "Pen", 4.25),  # patched below to 3.0: a whole float is a whole number
        (2, "Ink", 0.25),  # patched to 17 digits: Excel keeps and shows 15
        (3, "Cap", "=1+1"),  # a formula saved with its result (patched in)
        (4, "Box", "=2+2"),  # a formula saved without one
        (5, "Bag", "#DIV/0!"),  # an error cell (openpyxl types the text so)
        (6, Shown("#N/A", "#N/A", data_type="s"), 2),  # the same words as text are text
        (7, datetime.time(9, 30), True),
        (8, Shown(datetime.datetime(2024, 5, 1, 9, 30, 15, 500000), ""), False),
        (9, Shown(None, ""), 777),  # patched to 20 digits: a whole number is kept whole
    ]
    path = write_book(tmp_path / "products.xlsx", ["id", "name", "price"], rows)
    patch_sheet(path, b"<v>4.25</v>", b"<v>3.0</v>")
    patch_sheet(path, b"<v>0.25</v>", b"<v>0.30000000000000004</v>")
    patch_sheet(path, b"<f>1+1</f><v />", b"<f>1+1</f><v>2</v>")
    patch_sheet(path, b"<v>777</v>", b"<v>12345678901234567890</v>")
    assert read(tmp_path, "products") == [
        (2, ("1", "Pen", "3")),
        (3, ("2", "Ink", "0.3")),
        (4, ("3", "Cap", "2")),
        (
            5,
            excel.Malformed(
                "cell C5 (price) holds a formula saved without its result "
                "(open the workbook in Excel or LibreOffice and save it)",
                "4,Box,",
            ),
        ),
        (6, excel.Malformed("cell C6 (price) holds the error #DIV/0!", "5,Bag,#DIV/0!")),
        (7, ("6", "#N/A", "2")),
        (8, ("7", "09:30:00", "true")),
        (9, ("8", "2024-05-01T09:30:15.500000", "false")),
        (10, ("9", "", "12345678901234567890")),
    ]


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (3.0, "3"),
        (-0.0, "0"),
        (3.5, "3.5"),
        (0.1 + 0.2, "0.3"),
        (0.1 * 30, "3"),  # 3.0000000000000004: Excel shows 3, and saves 3 to CSV
        (1e-05, "0.00001"),
        (1e16, "10000000000000000"),
        (2.0**53, "9007199254740992"),  # a whole float keeps every digit it holds
        (1234567890123456.0, "1234567890123456"),
        (19.99, "19.99"),
        (float("inf"), "inf"),
    ],
)
def test_a_float_is_the_number_excel_shows(number, text):
    assert excel.number_text(number) == text


def test_the_sheet_named_like_the_table_is_read_from_a_workbook_of_sheets(tmp_path):
    """One workbook with a sheet per table, given once per table (a symlink here)."""
    book = openpyxl.Workbook()
    book.active.title = "Notes"
    book.active.append(["read me first"])
    book.create_sheet(" Users ").append(["id", "name", "email"])
    book[" Users "].append([1, "Ann", "ann@example.com"])
    book.create_sheet("products").append(["id", "name", "price"])
    book["products"].append([1, "Pen", 1.5])
    book.save(tmp_path / "shop.xlsx")
    (tmp_path / "users.xlsx").symlink_to(tmp_path / "shop.xlsx")
    (tmp_path / "products.xlsx").symlink_to(tmp_path / "shop.xlsx")
    assert read(tmp_path, "users") == [(2, ("1", "Ann", "ann@example.com"))]
    assert read(tmp_path, "products") == [(2, ("1", "Pen", "1.5"))]


def test_a_workbook_of_several_sheets_none_named_like_the_table_is_refused(tmp_path):
    write_book(tmp_path / "users.xlsx", ["id"], [], title="Customers", more_sheets=["Notes"])
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == (
        f"{tmp_path / 'users.xlsx'}: 2 sheets ('Customers', 'Notes') and none is named users; "
        "name the sheet to load users, or keep only that sheet"
    )


def test_the_only_sheet_is_read_whatever_its_name_and_the_header_may_start_lower(tmp_path):
    path = write_book(
        tmp_path / "users.xlsx",
        [None, None],  # an empty first row
        [(" Email ", "ID", "Name", None, None), (Shown("x@example.com", ""), 1, "Ann"), None],
        title="Export 2024",
    )
    sheet = openpyxl.load_workbook(path)["Export 2024"]
    sheet["F3"].number_format = "0.00"  # a formatted cell beyond the table: not a column
    sheet.cell(8, 2, 2)
    sheet.cell(8, 3, "Bob")
    sheet.cell(8, 1, "bob@example.com")
    sheet.parent.save(path)
    assert read(tmp_path, "users") == [
        (3, ("1", "Ann", "x@example.com")),
        (8, ("2", "Bob", "bob@example.com")),
    ]


def test_a_wrong_declared_size_does_not_cut_the_sheet_short(tmp_path):
    """Some programs write a dimension of A1:A1; read-only mode would stop there."""
    rows = [(i, "Ann", f"a{i}@example.com") for i in range(1, 6)]
    path = write_book(tmp_path / "users.xlsx", ["id", "name", "email"], rows)
    source = FileSource(tmp_path)
    source.check()
    assert source.expected("users").total == 6  # the declared size: the progress bar's end
    patch_sheet(path, b'<dimension ref="A1:C6" />', b'<dimension ref="A1:A1" />')
    assert [line for line, _values in read(tmp_path, "users")] == [2, 3, 4, 5, 6]


def test_a_missing_column_is_named_as_for_csv(tmp_path):
    write_book(tmp_path / "users.xlsx", ["id", "name"], [(1, "Ann")])
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == (
        f"{tmp_path / 'users.xlsx'}: missing column(s) email "
        "(the header must name id,name,email; found id,name)"
    )


def test_a_workbook_column_named_otherwise_is_read_through_the_column_map(tmp_path):
    """--map applies to a sheet's header as to a CSV header, and the hint names it."""
    from crossdb.sources.mapping import ColumnMap

    write_book(tmp_path / "users.xlsx", ["id", "name", "Mail"], [(1, "Ann", "ann@example.com")])
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert "did you mean --map users.email=Mail?" in str(error.value)
    source = source_for_path(tmp_path, mapping=ColumnMap.from_options(["users.email=mail"]))
    source.check()
    assert list(source.rows("users")) == [(2, ("1", "Ann", "ann@example.com"))]


def test_a_table_given_as_csv_and_as_xlsx_is_refused(tmp_path):
    (tmp_path / "users.csv").write_text("id,name,email\n")
    write_book(tmp_path / "users.xlsx", ["id", "name", "email"], [])
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == f"{tmp_path}: both users.csv and users.xlsx exist; keep one"


def test_the_workbook_itself_given_to_from_is_pointed_at_its_directory(tmp_path):
    path = write_book(tmp_path / "users.xlsx", ["id", "name", "email"], [])
    with pytest.raises(SourceError) as error:
        source_for_path(path)
    assert str(error.value) == (
        f"--from {path}: give the directory that holds it, not the file: --from {tmp_path}"
    )


ORDERS = ["id", "user_id", "product_id", "quantity"]


def test_a_big_sheet_is_streamed_not_loaded_whole(tmp_path):
    """The first row comes out after a few rows of the sheet are read, and reading 6,000
    rows takes less memory than openpyxl loading them whole (the negative control)."""
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("orders")
    sheet.append(ORDERS)
    for i in range(1, 6001):
        sheet.append([i, i % 97 + 1, i % 13 + 1, 3])
    book.save(tmp_path / "orders.xlsx")
    source = FileSource(tmp_path)
    source.check()
    assert source.expected("orders").total is None  # a write-only workbook declares no size
    rows = source.rows("orders")
    assert next(rows) == (2, ("1", "2", "2", "3"))
    assert source.expected("orders").position() < 100
    budget = 4_000_000
    tracemalloc.start()
    try:
        count = 1 + sum(1 for _ in rows)
        streamed = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        whole = openpyxl.load_workbook(tmp_path / "orders.xlsx", data_only=True)
        loaded = tracemalloc.get_traced_memory()[1]
        whole.close()
    finally:
        tracemalloc.stop()
    assert count == 6000
    assert source.expected("orders").position() == 6001
    assert streamed < budget < loaded, (streamed, loaded)


# --- files that cannot be read: one line naming the file --------------------------------------


def _truncated(path):
    write_book(path, ["id", "name", "email"], [(1, "Ann", "ann@example.com")])
    path.write_bytes(path.read_bytes()[:300])


def _without_workbook_part(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (
            lambda p: p.write_text("id,name,email\n1,Ann,ann@example.com\n"),
            "File is not a zip file",
        ),
        (lambda p: p.write_bytes(gzip.compress(b"id,name,email\n")), "File is not a zip file"),
        (_truncated, None),
        (_without_workbook_part, None),
    ],
    ids=["csv-text", "gzip", "truncated", "no-workbook-part"],
)
def test_a_file_that_is_not_a_workbook_is_one_line_naming_it(tmp_path, make, said):
    path = tmp_path / "users.xlsx"
    make(path)
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable .xlsx workbook (")
    assert "\n" not in message and message.isprintable(), message
    if said:
        assert message == f"{path}: not a readable .xlsx workbook ({said})"


def test_an_old_xls_workbook_is_told_to_be_saved_as_xlsx(tmp_path):
    (tmp_path / "users.xlsx").write_bytes(excel.OLE2_MAGIC + b"\xa1\xb1\x1a\xe1" + bytes(504))
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == (
        f"{tmp_path / 'users.xlsx'}: an old .xls workbook or a password-protected one, not "
        ".xlsx; save it as an Excel Workbook (.xlsx) without a password"
    )


INSTALL = 'reading .xlsx files needs openpyxl: pip install "django-crossdb[excel]"'


def test_without_openpyxl_a_workbook_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    write_book(tmp_path / "users.xlsx", ["id", "name", "email"], [(1, "Ann", "a@x.com")])
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # import openpyxl: ImportError
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == f"{tmp_path / 'users.xlsx'}: {INSTALL}"


def test_the_command_says_each_in_one_line_and_exit_1(tmp_path, migrated_dir):
    """As a user runs it: a damaged workbook, then openpyxl missing (a package of that name
    that fails to import, first on the path), each one line on stderr, no traceback."""
    data = tmp_path / "in"
    data.mkdir()
    (data / "users.xlsx").write_text("id,name,email\n")
    broken = manage("insert_data", "--from", str(data), "--no-progress", data_dir=migrated_dir)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert broken.stderr.strip() == (
        f"CommandError: {data / 'users.xlsx'}: "
        "not a readable .xlsx workbook (File is not a zip file)"
    )
    write_book(data / "users.xlsx", ["id", "name", "email"], [(1, "Ann", "a@x.com")])
    fake = tmp_path / "fake" / "openpyxl"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named openpyxl')\n")
    missing = manage(
        "insert_data",
        "--from",
        str(data),
        "--no-progress",
        data_dir=migrated_dir,
        env={"PYTHONPATH": str(tmp_path / "fake")},
    )
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert missing.stderr.strip() == f"CommandError: {data / 'users.xlsx'}: {INSTALL}"


@all_databases
def test_insert_data_loads_a_workbook_and_names_the_cells_it_cannot_use(tmp_path, run_command):
    from core.models import Product

    rows = [(1, "Pen", 1.5), (2, "Ink", "#DIV/0!"), (3, "Cap", "=A2*2"), (4, "Mug", 2)]
    write_book(tmp_path / "products.xlsx", ["id", "name", "price"], rows, title="Products")
    out = run_command("insert_data", "--from", str(tmp_path), "--no-progress")
    assert "2 stored, 0 already present, 2 rejected" in out
    assert "products (line 3): cell C3 (price) holds the error #DIV/0!" in out
    assert "products (line 4): cell C4 (price) holds a formula saved without its result" in out
    assert list(Product.objects.order_by("pk").values_list("pk", flat=True)) == [1, 4]
