"""Files as people write them: header names in any case with spaces or a BOM, ``;`` or
tab between fields, gzipped files, and the progress a file source reports."""

import gzip
from io import StringIO

import pytest
from crossdb.loading.rows import Expected
from crossdb.sources import FileSource, SourceError
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import all_databases, manage

ORDERS = [("1", "1", "1", "3"), ("2", "1", "1", "4")]


def read(directory, table):
    source = FileSource(directory)
    source.check()
    return [values for _line, values in source.rows(table)]


@pytest.mark.parametrize(
    "header",
    [
        "id,user_id,product_id,quantity",
        "ID,User_ID,PRODUCT_ID,Quantity",
        " id , user_id ,product_id,  quantity ",
        "\ufeffId,USER_id,product_id,quantity",
    ],
)
def test_header_names_match_in_any_case_with_spaces_or_a_bom(tmp_path, header):
    (tmp_path / "orders.csv").write_text(f"{header}\n1,1,1,3\n2,1,1,4\n", encoding="utf-8")
    assert read(tmp_path, "orders") == ORDERS


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_the_delimiter_is_found_from_the_header_line(tmp_path, delimiter):
    lines = ["quantity,id,user_id,product_id", "3,1,1,1", "4,2,1,1"]
    text = "\r\n".join(line.replace(",", delimiter) for line in lines) + "\r\n"
    (tmp_path / "orders.csv").write_text(text, encoding="utf-8")
    assert read(tmp_path, "orders") == ORDERS


def test_values_with_commas_in_a_semicolon_file_stay_whole(tmp_path):
    (tmp_path / "products.csv").write_text("id;name;price\n1;Pen, blue;2,50\n")
    assert read(tmp_path, "products") == [("1", "Pen, blue", "2,50")]  # the validator judges 2,50


def test_a_semicolon_file_missing_a_column_says_how_it_was_read(tmp_path):
    (tmp_path / "users.csv").write_text("id;name\n1;Ann\n")
    with pytest.raises(Exception) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == (
        f"{tmp_path}/users.csv: missing column(s) email (the header must name id,name,email; "
        "found 'id;name', semicolon-separated)"
    )


@pytest.mark.parametrize("name", ["orders.csv.gz", "orders.jsonl.gz"])
def test_gzipped_files_are_streamed(tmp_path, name):
    if name.endswith(".csv.gz"):
        text = "id,user_id,product_id,quantity\n" + "".join(
            f"{i},1,1,3\n" for i in range(1, 20_001)
        )
    else:
        text = "".join(
            f'{{"id": {i}, "user_id": 1, "product_id": 1, "quantity": 3}}\n'
            for i in range(1, 20_001)
        )
    (tmp_path / name).write_bytes(gzip.compress(text.encode()))
    source = FileSource(tmp_path)
    source.check()
    expected = source.expected("orders")
    size = (tmp_path / name).stat().st_size
    assert (expected.total, expected.unit, expected.position()) == (size, "bytes", 0)
    rows = source.rows("orders")
    positions = []
    count = 0
    for _line, values in rows:
        count += 1
        if count % 5000 == 0:
            positions.append(expected.position())
        assert values[3] in ("3", 3)
    assert count == 20_000
    assert 0 < positions[0] <= positions[-1] <= size  # compressed bytes, growing
    assert expected.position() == size


def test_progress_counts_bytes_of_a_plain_file(tmp_path):
    text = "id,user_id,product_id,quantity\n" + "".join(f"{i},1,1,3\n" for i in range(1, 100_001))
    (tmp_path / "orders.csv").write_text(text)
    source = FileSource(tmp_path)
    expected = source.expected("orders")
    assert isinstance(expected, Expected) and expected.total == len(text)
    rows = source.rows("orders")
    for _ in range(50_000):
        next(rows)
    assert 0 < expected.position() < len(text)
    for _ in rows:
        pass
    assert expected.position() == len(text)


@all_databases
def test_a_gzipped_semicolon_file_with_a_spreadsheet_header_loads(tmp_path, run_command):
    from core.models import User

    text = "\ufeff ID ;Name; EMAIL \r\n1;Ann;ann@example.com\r\n2;Bob;bob@example.com\r\n"
    (tmp_path / "users.csv.gz").write_bytes(gzip.compress(text.encode()))
    out = run_command("insert_data", "--from", str(tmp_path), "--no-progress")
    assert "2 stored, 0 already present, 0 rejected" in out
    assert list(User.objects.order_by("pk").values_list("name", flat=True)) == ["Ann", "Bob"]


# --- messages that quote the input never carry its control characters -----------------------

ESCAPES = "\x1b[2J\x1b]0;pwned\x07"  # clear the screen, retitle the window, ring the bell


@pytest.mark.parametrize(
    ("header", "found"),
    [
        (f"{ESCAPES},name".encode(), r"\x1b[2J\x1b]0;pwned\x07,name"),
        (b"i\xffd\x00\x9b,name", r"i\xffd\x00\x9b,name"),  # bytes not UTF-8, a NUL
        ("id,name,\u202eliame".encode(), r"id,name,\u202eliame"),  # right-to-left override
    ],
)
def test_a_header_is_quoted_with_its_control_characters_escaped(tmp_path, header, found):
    (tmp_path / "users.csv").write_bytes(header + b"\n1,Ann\n")
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    message = str(error.value)
    assert message.endswith(f"found {found})"), message
    assert message.isprintable(), message


def test_a_header_name_quoted_for_a_broken_record_is_escaped(tmp_path):
    (tmp_path / "users.csv").write_text(
        f'id,name,email,{ESCAPES}note\n1,Ann,a@x.com,"x\ny",extra\n', encoding="utf-8"
    )
    (malformed,) = read(tmp_path, "users")
    assert malformed.reason == (
        r"\x1b[2j\x1b]0;pwned\x07note contains a line break (an unbalanced quote?)"
    )


def test_a_file_name_in_a_warning_is_escaped(tmp_path):
    (tmp_path / "users.csv").write_text("id,name,email\n1,Ann,a@x.com\n")
    (tmp_path / f"orders.csv{ESCAPES}").write_text("id,user_id,product_id,quantity\n")
    (warning,) = FileSource(tmp_path).warnings()
    assert warning.startswith(rf"{tmp_path}/orders.csv\x1b[2J\x1b]0;pwned\x07: not read ("), warning
    assert warning.isprintable()


def test_insert_data_never_prints_a_control_character_it_read(migrated_dir, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "users.csv").write_text(f"{ESCAPES},name\n1,Ann\n", encoding="utf-8")
    done = manage("insert_data", "--from", str(source), data_dir=migrated_dir)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"CommandError: {source}/users.csv: missing column(s) id, email (the header must "
        rf"name id,name,email; found \x1b[2J\x1b]0;pwned\x07,name)"
    )


# --- files that are not the text their name says --------------------------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            '[\n  {"id": 1, "name": "Ann", "email": "a@x.com"},\n'
            '  {"id": 2, "name": "Bob", "email": "b@x.com"}\n]\n',
            "this is a JSON array, not JSON Lines (one object per line); "
            "jq -c '.[]' users.jsonl writes it as JSON Lines",
        ),
        (
            '\ufeff [{"id": 1, "name": "Ann", "email": "a@x.com"}]\n',
            "this is a JSON array, not JSON Lines (one object per line); "
            "jq -c '.[]' users.jsonl writes it as JSON Lines",
        ),
        (
            '{\n  "id": 1,\n  "name": "Ann",\n  "email": "a@x.com"\n}\n',
            "this is pretty-printed JSON, not JSON Lines (one object per line); "
            "jq -c . users.jsonl writes it as JSON Lines",
        ),
    ],
    ids=["array", "array-on-one-line", "pretty-printed-object"],
)
def test_a_json_document_in_a_jsonl_file_stops_the_run_before_anything_is_loaded(
    tmp_path, text, said
):
    """Read line by line, a pretty-printed array loads its last object alone."""
    (tmp_path / "users.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == f"{tmp_path / 'users.jsonl'}: {said}"


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        (
            "users.csv",
            gzip.compress(b"id,name,email\n1,Ann,a@x.com\n"),
            "looks gzip-compressed; name it users.csv.gz",
        ),
        (
            "orders.jsonl",
            gzip.compress(b'{"id": 1, "user_id": 1, "product_id": 1, "quantity": 1}\n'),
            "looks gzip-compressed; name it orders.jsonl.gz",
        ),
        (
            "users.csv",
            b"PK\x03\x04\x14\x00\x06\x00[Content_Types].xml",
            "looks like a ZIP archive (an Excel workbook? name it users.xlsx), not text",
        ),
    ],
    ids=["gzip-csv", "gzip-jsonl", "xlsx"],
)
def test_compressed_data_under_a_text_name_is_named_not_printed(tmp_path, name, content, said):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == f"{tmp_path / name}: {said}"


# --- --encoding -------------------------------------------------------------------------------

LATIN = "id,name,email\n1,José,jose@example.com\n2,Renée,renee@example.com\n3,Ann,ann@example.com\n"


def insert(directory, *options):
    out, err = StringIO(), StringIO()
    call_command(
        "insert_data", "--from", str(directory), "--no-progress", *options, stdout=out, stderr=err
    )
    return out.getvalue(), err.getvalue()


@all_databases
@pytest.mark.parametrize(
    ("encoding", "name", "text"),
    [
        ("latin-1", "users.csv", LATIN),
        ("cp1252", "users.csv", LATIN.replace("Ann", "Ann €")),
        ("utf-16", "users.csv", LATIN),
        ("latin-1", "users.jsonl", '{"id": 1, "name": "José", "email": "jose@example.com"}\n'),
    ],
    ids=["latin-1", "cp1252", "utf-16", "latin-1-jsonl"],
)
def test_files_in_another_encoding_load_with_encoding(tmp_path, encoding, name, text):
    from core.models import User

    (tmp_path / name).write_bytes(text.encode(encoding))
    out, err = insert(tmp_path, "--encoding", encoding)
    assert " 0 rejected" in out and err == "", out + err
    names = [line.split(",")[1] for line in text.splitlines()[1:]]
    if name.endswith(".csv"):
        assert list(User.objects.order_by("pk").values_list("name", flat=True)) == names
    else:
        assert User.objects.get().name == "José"


@all_databases
def test_a_file_whose_rows_mostly_fail_utf8_gets_one_hint_naming_encoding(tmp_path):
    (tmp_path / "users.csv").write_bytes(LATIN.encode("latin-1"))
    out, err = insert(tmp_path)
    assert "users #1 (line 2): name is not valid UTF-8 text" in out
    assert err == (
        "warning: most users rows (2 of 3) are not valid UTF-8: if the file is in another "
        "encoding, give it, e.g. --encoding latin-1 (or cp1252, utf-16)\n"
    )


@all_databases
def test_one_row_that_fails_utf8_gets_no_hint(tmp_path):
    (tmp_path / "users.csv").write_bytes(
        LATIN.replace("José", "Jos\udce9").encode("utf-8", "surrogateescape")
    )
    out, err = insert(tmp_path)
    assert "users #1 (line 2): name is not valid UTF-8 text" in out and err == ""


def test_a_utf16_file_read_as_utf8_is_named_before_anything_is_read(tmp_path):
    (tmp_path / "users.csv").write_bytes(LATIN.encode("utf-16"))
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).check()
    assert str(error.value) == (
        f"{tmp_path / 'users.csv'}: starts with a UTF-16 byte-order mark; give --encoding utf-16"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--encoding", "klingon"],
            "--encoding klingon: Python knows no such encoding; give one "
            "such as utf-8, latin-1, cp1252 or utf-16",
        ),
        (
            ["--encoding", "hex"],
            "--encoding hex: not a text encoding; give one such as utf-8, "
            "latin-1, cp1252 or utf-16",
        ),
    ],
    ids=["unknown", "not-text"],
)
def test_an_encoding_python_cannot_read_text_with_is_refused(tmp_path, args, message):
    (tmp_path / "users.csv").write_text(LATIN)
    with pytest.raises(CommandError) as error:
        insert(tmp_path, *args)
    assert str(error.value) == message


def test_encoding_without_from_is_refused():
    with pytest.raises(CommandError) as error:
        call_command("insert_data", "--encoding", "latin-1", "--no-progress")
    assert str(error.value) == "--encoding is for files read with --from"
