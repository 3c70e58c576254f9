"""crossdb.loading.postgres.packed_rows: the orders' binary COPY bytes built at once must store
exactly what psycopg's ``write_row`` stores, and anything it cannot pack goes back to ``write_row``.

Run on PostgreSQL by the in-process rerun (tests/test_postgres.py); the fallbacks need no
database.
"""

import pytest
from crossdb.loading.binarycopy import COPY_SIGNATURE, COPY_TRAILER
from crossdb.loading.postgres import packed_rows
from django.db import connections

from tests.conftest import all_databases

ORDER_TYPES = ["bigint", "bigint", "bigint", "integer"]
EDGES = [
    (1, 1, 1, 1),
    (2**63 - 1, 2**40, 7, 2**31 - 1),
    (12345, 678, 9, -(2**31)),
]


def test_what_cannot_be_packed_is_left_to_write_row():
    assert packed_rows(ORDER_TYPES, []) is None
    assert packed_rows(["bigint", "numeric"], [(1, 2)]) is None  # not a fixed-width integer
    assert packed_rows(["bigint", "text"], [(1, "a")]) is None
    assert packed_rows(ORDER_TYPES, [(1, None, 1, 1)]) is None  # NULL
    assert packed_rows(ORDER_TYPES, [(1, 1, 1, 2**31)]) is None  # beyond integer


def test_the_layout_is_postgresqls():
    # field count 2; then length 8 and bigint 1; then length 4 and integer 2 (big-endian)
    assert packed_rows(["bigint", "integer"], [(1, 2)]) == bytes.fromhex(
        "00020000000800000000000000010000000400000002"
    )


@all_databases
def test_packed_rows_store_what_write_row_stores():
    connection = connections["orders_db"]
    if connection.vendor != "postgresql":
        pytest.skip("binary COPY is PostgreSQL's")
    with connection.cursor() as cursor:
        raw = cursor.cursor
        for table in ("packed", "by_row"):
            raw.execute(f"CREATE TEMP TABLE {table} (a bigint, b bigint, c bigint, d integer)")
        with raw.copy("COPY packed FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(COPY_SIGNATURE + packed_rows(ORDER_TYPES, EDGES) + COPY_TRAILER)
        with raw.copy("COPY by_row FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(ORDER_TYPES)
            for row in EDGES:
                copy.write_row(row)
        stored = {}
        for table in ("packed", "by_row"):
            raw.execute(f"SELECT a, b, c, d FROM {table} ORDER BY a")
            stored[table] = raw.fetchall()
    assert stored["packed"] == stored["by_row"] == sorted(EDGES)
