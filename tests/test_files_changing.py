"""A file that is still being written while it is read: its size and modification time
when it was opened are compared at its end, before its last line is handed on, and again
once the load is done; a change stops the run with one line and exit 1 (what was committed
stays, and the re-run finishes). A last line without a line end is a row like any other
when the file did not change (``crossdb.sources.reading.Opened`` says why).

Each test makes the writer act at a chosen point of the read (no clock involved): at the
moment the reader meets the end of the file, or after the source has handed on its last
row.
"""

import re
from io import StringIO

import pytest
from crossdb.sources import FileSource, SourceError, reading
from django.core.management import call_command
from django.core.management.base import CommandError

from core.models import Order
from tests.conftest import all_databases

ORDERS_HEADER = "id,user_id,product_id,quantity\n"
TOTALS = re.compile(r"([\d,]+) stored, ([\d,]+) already present, ([\d,]+) rejected")


def parents(directory):
    (directory / "users.csv").write_text("id,name,email\n1,Ann,a@x.com\n")
    (directory / "products.csv").write_text("id,name,price\n1,Pen,1.50\n")


def load(directory):
    out = StringIO()
    call_command("insert_data", "--from", str(directory), "--no-progress", stdout=out, stderr=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("orders.csv", "{i},1,1,1\n"),
        ("orders.jsonl", '{{"id": {i}, "user_id": 1, "product_id": 1, "quantity": 1}}\n'),
    ],
)
def test_a_file_that_grows_while_it_is_read_stops_the_reading(tmp_path, name, line):
    path = tmp_path / name
    head = ORDERS_HEADER if name.endswith(".csv") else ""
    path.write_text(head + "".join(line.format(i=i) for i in range(1, 20_001)))
    size = path.stat().st_size
    rows = FileSource(tmp_path).rows("orders")
    next(rows)  # the first block is read
    with open(path, "a") as handle:
        handle.write(line.format(i=20_001))
    with pytest.raises(SourceError) as error:
        list(rows)
    assert str(error.value) == (
        f"{path}: changed while it was read ({size:,} bytes when opened, "
        f"{path.stat().st_size:,} now), so it may still be being written"
    )


def test_a_last_line_without_a_line_end_is_a_row_when_the_file_did_not_change(tmp_path):
    (tmp_path / "orders.csv").write_text(ORDERS_HEADER + "1,1,1,1\n2,1,1,1234")
    assert [values for _line, values in FileSource(tmp_path).rows("orders")] == [
        ("1", "1", "1", "1"),
        ("2", "1", "1", "1234"),
    ]


@all_databases
def test_a_last_line_cut_short_by_a_writer_is_not_stored_and_the_rerun_stores_it(
    tmp_path, monkeypatch
):
    """The writer of orders.csv has written "2,1,1,1" of "2,1,1,1234" when the reader meets
    the end of the file, and the rest a moment later (here: right then): the run stops
    before that line, which was stored as quantity 1 before."""
    parents(tmp_path)
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS_HEADER + "1,1,1,1\n2,1,1,1")
    read = reading.Opened.read

    def writer_catches_up(self, size):
        text = read(self, size)
        if not text and self.path == path and path.read_text().endswith(",1"):
            with open(path, "a") as handle:
                handle.write("234\n")
        return text

    monkeypatch.setattr(reading.Opened, "read", writer_catches_up)
    with pytest.raises(CommandError) as error:
        load(tmp_path)
    assert str(error.value).startswith(f"{path}: changed while it was read (")
    assert str(error.value).endswith(
        "so it may still be being written. Batches committed before the failure are kept; "
        "run the same command again to finish."
    )
    assert error.value.returncode == 1
    assert 2 not in set(Order.objects.values_list("id", flat=True))
    monkeypatch.undo()
    # The parents the stopped run committed are found present, or counted as stored by it
    # when its record holds their reports (a resume): which, depends on whether their
    # writers reported before the failure. Either way every row is accounted for once.
    stored, present, rejected = (
        int(n.replace(",", "")) for n in TOTALS.search(load(tmp_path)).groups()
    )
    assert (stored + present, rejected) == (4, 0)
    assert sorted(Order.objects.values_list("id", "quantity")) == [(1, 1), (2, 1234)]


@all_databases
def test_rows_written_after_the_end_was_read_fail_the_run_once_it_is_done(tmp_path, monkeypatch):
    """The reader has handed on the last row; the writer then adds one: the summary of what
    was loaded is printed, then one line says the file changed, and the run exits 1."""
    parents(tmp_path)
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS_HEADER + "1,1,1,1\n")
    runs = FileSource.runs

    def writer_adds_a_row_after_the_end(self, table, *args, **kwargs):
        yield from runs(self, table, *args, **kwargs)
        if table == "orders":
            with open(path, "a") as handle:
                handle.write("2,1,1,5\n")

    monkeypatch.setattr(FileSource, "runs", writer_adds_a_row_after_the_end)
    out = StringIO()
    with pytest.raises(CommandError) as error:
        call_command("insert_data", "--from", str(tmp_path), "--no-progress", stdout=out)
    assert "3 stored, 0 already present, 0 rejected" in out.getvalue()
    message = str(error.value)
    assert message.startswith(
        f"{path}: changed while it was read (39 bytes when opened, 47 now)"
    ), message
    monkeypatch.undo()
    # the run stopped on its changed file: the next one resumes the files that did not
    # change, reporting their rows as its own, and compares the changed one whole
    again = load(tmp_path)
    resumed = again.split("settled by it")[0]
    assert "Resuming run" in resumed and "orders" not in resumed, again
    assert "3 stored, 1 already present, 0 rejected" in again
