"""Which files of a directory are read, and what is said about the others.

A file that looks meant for a table but is not read is named in ``warnings()`` with the
reason, and the run goes on with the others; a directory where nothing can be read stops.
The FIFO case runs in a subprocess with a timeout: the scan must never open one.
"""

import os
import subprocess
import sys

import pytest
from crossdb.sources import FileSource, SourceError, source_for_path

from tests.conftest import ROOT

USERS = "id,name,email\n1,Ann,ann@example.com\n"


def make(directory, *names):
    for name in names:
        (directory / name).write_text(USERS)


def test_files_meant_for_a_table_but_not_read_are_named_with_the_reason(tmp_path):
    make(tmp_path, "users.csv", "Orders.csv", "orders.csv.bak", "products.txt", "notes.csv")
    os.symlink(tmp_path / "gone.csv", tmp_path / "orders.jsonl")
    (tmp_path / "products.csv").mkdir()
    source = FileSource(tmp_path)
    assert source.tables() == ["users"]
    assert source.warnings() == [
        f"{tmp_path}/Orders.csv: not read (file names are lower case: rename it orders.csv)",
        f"{tmp_path}/orders.csv.bak: not read "
        "(unknown extension: name it orders.csv, .jsonl, .csv.gz, .jsonl.gz or .xlsx)",
        f"{tmp_path}/orders.jsonl: not read (a symlink to nothing: {tmp_path}/gone.csv)",
        f"{tmp_path}/products.csv: not read (a directory, not a regular file)",
        f"{tmp_path}/products.txt: not read "
        "(unknown extension: name it products.csv, .jsonl, .csv.gz, .jsonl.gz or .xlsx)",
    ]
    assert source.input_paths() == [(tmp_path / "users.csv").resolve()]


def test_a_file_named_almost_like_a_table_is_named_with_the_name_meant(tmp_path):
    """product.csv was left out without a word, while Users.csv and orders.txt got one."""
    make(tmp_path, "users.csv", "product.csv", "ordres.jsonl", "notes.csv", "order_items.csv")
    source = FileSource(tmp_path)
    assert source.tables() == ["users"]
    assert source.warnings() == [
        f"{tmp_path}/ordres.jsonl: not read "
        "(no table is called 'ordres'; did you mean orders.jsonl?)",
        f"{tmp_path}/product.csv: not read "
        "(no table is called 'product'; did you mean products.csv?)",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_named(tmp_path):
    make(tmp_path, "users.csv", "orders.csv")
    (tmp_path / "orders.csv").chmod(0)
    assert FileSource(tmp_path).warnings() == [
        f"{tmp_path}/orders.csv: not read (cannot read (Permission denied))"
    ]


SCAN = """\
import sys
import django
django.setup()
from crossdb.sources import FileSource
source = FileSource(sys.argv[1])
source.check()
print(source.tables(), source.warnings())
"""


def test_a_fifo_is_named_and_never_opened(tmp_path):
    make(tmp_path, "users.csv")
    os.mkfifo(tmp_path / "orders.csv")
    done = subprocess.run(
        [sys.executable, "-c", SCAN, str(tmp_path)],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "multids.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,  # opening the FIFO would block here for ever
        check=True,
    )
    assert done.stdout.strip() == (
        f"['users'] ['{tmp_path}/orders.csv: not read (a FIFO, not a regular file)']"
    )


def test_a_directory_where_nothing_can_be_read_stops_and_lists_what_it_found(tmp_path):
    make(tmp_path, "Users.CSV", "orders.txt")
    os.symlink(tmp_path / "nothing", tmp_path / "products.csv")
    with pytest.raises(SourceError) as error:
        FileSource(tmp_path).tables()
    assert str(error.value) == (
        f"{tmp_path}: no file could be read. Found: "
        "Users.CSV (file names are lower case: rename it users.csv); "
        "orders.txt (unknown extension: name it orders.csv, .jsonl, .csv.gz, .jsonl.gz or .xlsx); "
        f"products.csv (a symlink to nothing: {tmp_path}/nothing)"
    )


def test_a_data_file_given_to_from_gets_the_directory_suggested(tmp_path):
    make(tmp_path, "users.csv")
    with pytest.raises(SourceError) as error:
        source_for_path(tmp_path / "users.csv")
    assert str(error.value) == (
        f"--from {tmp_path}/users.csv: give the directory that holds it, not the file: "
        f"--from {tmp_path}"
    )


def test_another_csv_that_is_not_a_rejects_file_gets_the_directory_suggested(tmp_path):
    make(tmp_path, "people.csv")
    with pytest.raises(SourceError) as error:
        source_for_path(tmp_path / "people.csv").check()
    assert str(error.value) == (
        f"{tmp_path}/people.csv: not a rejects file (it has no 'table' column); "
        f"to load data files, give their directory: --from {tmp_path}"
    )
