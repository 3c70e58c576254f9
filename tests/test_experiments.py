"""``python -m bench.experiments`` drives today's writers, so it must follow their API.

It is not part of ``make bench`` or of any other command, which is how it came to call
``BulkWriter.write`` with the arguments of an older version and fail on its first batch.
These tests run its writer set-up and its jobs against the test databases, on a few rows.
"""

import pytest
from crossdb.loading import indexes
from django.db import connections

from bench import experiments
from core.models import Order
from tests.conftest import all_databases

pytestmark = all_databases

ROWS = [(i, 1 + i % 7, 1 + i % 5, 1 + i % 3) for i in range(1, 26)]


def _stored():
    return sorted(
        Order.objects.using("orders_db").values_list("id", "user_id", "product_id", "quantity")
    )


def test_jobs_cover_every_row_once_in_order():
    jobs = list(experiments._jobs(ROWS, 10))
    assert [job.seq for job in jobs] == [1, 2, 3]
    assert [row for job in jobs for row in job.rows] == ROWS
    assert [line for job in jobs for line in job.lines] == list(range(len(ROWS)))


@pytest.mark.parametrize("deferred", [False, True], ids=["indexes in place", "deferred"])
def test_the_orders_child_loads_through_todays_writer(deferred, restore_indexes):
    writer = experiments._writer(deferred)
    absent = indexes.missing("orders_db", Order)
    for job in experiments._jobs(ROWS, 10):
        written = writer.write(job)
        assert (written.stored, written.present, written.rejections) == (len(job.rows), 0, [])
    assert _stored() == ROWS
    if deferred:
        assert {index.name for index in absent} == {
            index.name for index in indexes.deferrable(Order, "orders_db")
        }
    else:
        assert absent == []


def test_the_text_copy_mode_sends_text(restore_indexes):
    if connections["orders_db"].vendor != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    writer = experiments._writer(deferred=True)
    experiments._use_copy_format(writer, "TEXT")
    assert "FORMAT TEXT" in writer.copy_sql
    for job in experiments._jobs(ROWS, 10):
        assert writer.write(job).stored == len(job.rows)
    assert _stored() == ROWS
