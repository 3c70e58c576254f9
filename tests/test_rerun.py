"""A re-run settles the rows it finds stored set-wise, with the careful path's verdicts.

The writers read the stored rows with a batch's ids in one query and compare them at once
(``BulkWriter._settle_stored``): an array pass for a table of whole numbers, one dict look-up
per row for the others. These tests show that it gives the careful path's verdicts and
messages, that a re-run never needs the careful path, and, as a property over generated
stored rows and batches, that the settle and the careful path agree (``tests/test_verdicts.py``
holds the whole run to the rules); the negative controls break the settle alone.
"""

import numpy as np
import pytest
from crossdb import registry
from crossdb.loading import load
from crossdb.loading.load import writer_for
from crossdb.loading.processes import Job
from crossdb.loading.writers import ON_CONFLICT, SKIP, BulkWriter, as_tuples
from crossdb.sources import FileSource
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from core.models import Order, Product, User
from tests.conftest import all_databases


def _stored_shop():
    User.objects.create(id=1, name="Ann", email="ann@example.com")
    User.objects.create(id=2, name="Bob", email="bob@example.org")
    Product.objects.create(id=1, name="Pen", price="2.00")
    Product.objects.create(id=2, name="Ink", price="3.50")
    Order.objects.bulk_create(Order(id=i, user_id=1, product_id=1, quantity=i) for i in (1, 2, 3))


def _orders_job(rows):
    """Orders as the file path hands them to a writer: one array, line numbers beside it."""
    values = np.array(rows, dtype=np.int64)
    return Job(1, np.arange(2, 2 + len(rows)), values, {}, frozenset())


def _summary(written):
    return (
        written.stored,
        written.present,
        written.updated,
        written.skipped,
        [(r.line, r.id, r.reason) for r in written.rejections],
    )


def _careful(monkeypatch):
    """Make the careful path fail the test: these batches must be settled without it."""

    def refuse(self, job, attempts=3):
        raise AssertionError(f"{self.table}: a batch of stored rows took the careful path")

    monkeypatch.setattr(BulkWriter, "write_carefully", refuse)


# same data (1, 2), other data (3), new (4): in input order, with a repeated stored id last
ROWS = [(4, 1, 1, 4), (1, 1, 1, 1), (3, 1, 1, 9), (2, 1, 1, 2)]


@all_databases
def test_an_array_batch_of_stored_rows_is_settled_as_the_careful_path_settles_it(monkeypatch):
    _stored_shop()
    writer = BulkWriter("orders", "orders_db")
    assert writer.meets_stored
    careful = writer.write_carefully(as_tuples(_orders_job(ROWS)))
    Order.objects.filter(id=4).delete()

    _careful(monkeypatch)
    fast = BulkWriter("orders", "orders_db").write(_orders_job(ROWS))

    assert _summary(fast) == _summary(careful)
    assert _summary(fast) == (
        1,
        2,
        0,
        0,
        [
            (
                4,
                3,
                "id 3 is already stored with different data (user_id 1, product_id 1, quantity 3)",
            )
        ],
    )
    assert sorted(Order.objects.values_list("id", "quantity")) == [(1, 1), (2, 2), (3, 3), (4, 4)]


@all_databases
def test_rows_of_text_are_settled_the_same_way(monkeypatch):
    """Users (text, an email key) take the tuple path: the key stands for the email, so an
    email differing only in case is the same data."""
    _stored_shop()
    rows = [
        (1, "Ann", "ANN@example.com"),  # the same user
        (1, "Anne", "ann@example.com"),  # other data
        (3, "Cy", "cy@example.com"),  # new
    ]
    spec = registry.spec("users")
    cleaned = [spec.clean(r)[0] for r in rows]
    job = Job(1, [2, 3, 4], cleaned, {}, frozenset())
    _careful(monkeypatch)
    written = BulkWriter("users", "users_db").write(job)
    assert _summary(written) == (
        1,
        1,
        0,
        0,
        [
            (
                3,
                1,
                "id 1 is already stored with different data (name 'Ann', email 'ann@example.com')",
            )
        ],
    )


@all_databases
def test_skip_keeps_the_stored_row_without_a_rejection(monkeypatch):
    _stored_shop()
    _careful(monkeypatch)
    written = BulkWriter("orders", "orders_db", on_conflict=SKIP).write(_orders_job(ROWS))
    assert _summary(written) == (1, 2, 0, 1, [])
    assert Order.objects.get(id=3).quantity == 3


@all_databases
def test_a_sparse_batch_is_read_by_its_ids_not_by_one_range(monkeypatch):
    """Ids far apart would make one range scan read the whole table: they are looked up as
    a list, with the same verdicts."""
    _stored_shop()
    Order.objects.create(id=10**9, user_id=1, product_id=1, quantity=5)
    _careful(monkeypatch)
    writer = BulkWriter("orders", "orders_db")
    assert writer._stored_block(np.array([1, 10**9])) is None
    written = writer.write(_orders_job([(1, 1, 1, 1), (10**9, 1, 1, 6), (7, 1, 1, 7)]))
    assert _summary(written)[:4] == (1, 1, 0, 0)
    assert [r.id for r in written.rejections] == [10**9]


@all_databases
def test_a_rerun_of_a_finished_load_never_takes_the_careful_path(tmp_path, monkeypatch):
    (tmp_path / "users.csv").write_text(
        "id,name,email\n" + "".join(f"{i},U{i},u{i}@example.com\n" for i in range(1, 51))
    )
    (tmp_path / "products.csv").write_text("id,name,price\n1,Pen,2.00\n2,Ink,3.50\n")
    (tmp_path / "orders.csv").write_text(
        "id,user_id,product_id,quantity\n"
        + "".join(f"{i},{i % 50 + 1},{i % 2 + 1},{i % 7 + 1}\n" for i in range(1, 301))
    )
    first = load.load(FileSource(tmp_path), batch_size=40)
    assert _counts(first) == {"users": (50, 0, 0), "products": (2, 0, 0), "orders": (300, 0, 0)}
    _careful(monkeypatch)
    again = load.load(FileSource(tmp_path), batch_size=40)
    assert again.error is None
    assert _counts(again) == {"users": (0, 50, 0), "products": (0, 2, 0), "orders": (0, 300, 0)}


def _counts(result):
    return {t: (r.stored, r.present, r.rejected) for t, r in result.tables.items()}


# --- The property: the settle and the careful path agree on any batch over any stored rows --

ORDER = st.tuples(st.integers(1, 12), st.integers(1, 2), st.integers(1, 2), st.integers(1, 3))
USER = st.tuples(
    st.integers(1, 6),
    st.sampled_from(["Ann", "Bob"]),
    st.sampled_from(["a@x.io", "A@x.io", "b@x.io"]),
)
SETTLE = settings(max_examples=40, deadline=None, database=None, derandomize=True)
NEGATIVE = {"phases": [Phase.generate], "report_multiple_bugs": False}  # the first is enough


@st.composite
def orders_case(draw):
    stored = draw(st.lists(ORDER, max_size=8, unique_by=lambda r: r[0]))
    return (
        stored,
        draw(st.lists(ORDER, min_size=1, max_size=10)),
        draw(st.sampled_from(ON_CONFLICT)),
    )


@st.composite
def users_case(draw):
    stored = draw(st.lists(USER, max_size=4, unique_by=(lambda r: r[0], lambda r: r[2].lower())))
    return stored, draw(st.lists(USER, min_size=1, max_size=6)), draw(st.sampled_from(ON_CONFLICT))


def _both_ways(table, stored, batch, on_conflict):
    """(what the careful path makes of batch over stored, what the fast path makes of it):
    each its Written and the stored rows after it."""
    model, spec = {"orders": Order, "users": User}[table], registry.spec(table)
    outcomes = []
    for careful in (True, False):
        model.objects.all().delete()
        model.objects.bulk_create(model(**dict(zip(spec.fields, r, strict=True))) for r in stored)
        writer = BulkWriter(table, spec.alias, on_conflict=on_conflict)
        if table == "orders":
            job = _orders_job(batch)
        else:
            job = Job(1, list(range(2, 2 + len(batch))), [spec.clean(r)[0] for r in batch], {}, ())
        written = writer.write_carefully(as_tuples(job)) if careful else writer.write(job)
        outcomes.append((_summary(written), sorted(model.objects.values_list(*spec.columns))))
    return outcomes


def settle_property(table, **overrides):
    case = orders_case() if table == "orders" else users_case()

    @settings(SETTLE, **overrides)
    @given(case=case)
    def run(case):
        careful, fast = _both_ways(table, *case)
        assert fast == careful, f"the settle and the careful path disagree on {case}"

    return run


@all_databases
@pytest.mark.parametrize("table", ["orders", "users"])
def test_the_settle_gives_the_careful_paths_verdicts(table):
    _stored_shop()
    Order.objects.all().delete()
    settle_property(table)()


@all_databases
def test_a_settle_that_ignores_the_quantity_fails_the_property(monkeypatch):
    """Negative control: orders (arrays) compared on every column but the last call a
    changed quantity "already present"."""
    from crossdb.loading import writers

    compare = writers._compare_blocks

    def ignoring_quantity(rows, stored):
        same, differ = compare(rows, stored)
        moved = {i for i, earlier in differ if tuple(rows[i, :-1].tolist()) == earlier[:-1]}
        return sorted([*same, *moved]), [(i, e) for i, e in differ if i not in moved]

    monkeypatch.setattr(writers, "_compare_blocks", ignoring_quantity)
    _stored_shop()
    with pytest.raises(AssertionError, match="disagree"):
        settle_property("orders", **NEGATIVE)()


@all_databases
def test_a_settle_that_calls_changed_users_present_fails_the_property(monkeypatch):
    """Negative control: users (tuples) whose stored row has other data counted as already
    present by the settle alone (the careful path is untouched)."""
    compare = BulkWriter._compare_stored

    def changed_as_present(self, rows):
        same, differ = compare(self, rows)
        return sorted(same + [i for i, _earlier in differ]), []

    monkeypatch.setattr(BulkWriter, "_compare_stored", changed_as_present)
    with pytest.raises(AssertionError, match="disagree"):
        settle_property("users", **NEGATIVE)()


@all_databases
@pytest.mark.parametrize("stored", ["2.5", "X'32'", "1e30", "'1_000'"])
def test_a_stored_value_that_is_no_whole_number_is_settled_as_the_careful_path_does(stored):
    """Other code may write a fraction, a blob, a text or a huge number into SQLite's
    integer column (the check lets them through): read as an array it would pass for a
    whole number, so the settle leaves it to the row-wise comparison. PostgreSQL's column
    types refuse them."""
    from django.db import DatabaseError, connections

    _stored_shop()
    try:
        with connections["orders_db"].cursor() as cursor:
            cursor.execute(f"UPDATE orders SET quantity = {stored} WHERE id = 2")
    except DatabaseError:  # PostgreSQL's integer column refuses it: nothing to settle
        assert connections["orders_db"].vendor == "postgresql"
        return
    job = _orders_job([(2, 1, 1, 2)])
    careful = BulkWriter("orders", "orders_db").write_carefully(as_tuples(job))
    assert _summary(BulkWriter("orders", "orders_db").write(job)) == _summary(careful)
    assert _summary(careful)[1] == 0  # a conflict, not present


@all_databases
def test_a_table_emptied_after_the_writer_started_is_loaded_in_a_segment():
    """The writer saw rows at its start; by its first batch another process had deleted
    them all, so on PostgreSQL the batch opens a load segment (the table locked, one COPY
    open): the settle must not query the connection the COPY holds (it waited for ever)."""
    _stored_shop()
    writer = writer_for("orders", "orders_db")  # PostgreSQL's: COPY, load segments
    assert writer.meets_stored
    Order.objects.all().delete()
    assert _summary(writer.write(_orders_job([(1, 1, 1, 1), (2, 1, 1, 2)]))) == (2, 0, 0, 0, [])
