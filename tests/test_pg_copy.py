"""crossdb.loading.postgres.packed_rows: the orders' binary COPY bytes built at once must store
exactly what psycopg's ``write_row`` stores, and anything it cannot pack goes back to ``write_row``;
``binarycopy.unpack`` reads PostgreSQL's own binary COPY back (a re-run's stored rows).

Run on PostgreSQL by the in-process rerun (tests/test_postgres.py); the fallbacks need no
database.
"""

import numpy as np
import pytest
from crossdb.loading import binarycopy
from crossdb.loading.binarycopy import COPY_SIGNATURE, COPY_TRAILER
from crossdb.loading.postgres import packed_rows
from django.db import connections, transaction

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


def test_from_send_reads_rows_of_big_endian_columns_and_refuses_a_short_value():
    data = b"".join(np.array([row], dtype=">i8,>i8,>i8,>i4").tobytes() for row in map(tuple, EDGES))
    assert binarycopy.from_send(ORDER_TYPES, data, len(EDGES)).tolist() == list(map(list, EDGES))
    assert binarycopy.from_send(ORDER_TYPES, b"", 0).shape == (0, 4)
    assert binarycopy.from_send(ORDER_TYPES, data, len(EDGES) + 1) is None  # a row dropped


@all_databases
def test_from_send_reads_what_postgresql_sends_and_a_null_is_noticed():
    """The query the orders writer reads stored rows with (``send_sql``), on rows of every
    width's edges; a NULL (stored by other code) drops its row, and the count says so."""
    from crossdb.loading.postgres import PostgresBulkWriter

    connection = connections["orders_db"]
    if connection.vendor != "postgresql":
        pytest.skip("the send functions are PostgreSQL's")
    writer = PostgresBulkWriter("orders", "orders_db")
    rows = [(i + 1, *row[1:]) for i, row in enumerate(EDGES)]
    # in a transaction rolled back at the end: the schema's changes go with it
    with transaction.atomic(using="orders_db"), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_quantity_gte_1")
        cursor.execute("ALTER TABLE orders ALTER COLUMN product_id DROP NOT NULL")
        for row in rows:
            cursor.execute("INSERT INTO orders VALUES (%s, %s, %s, %s)", row)
        assert writer._stored_range(1, 3).tolist() == list(map(list, rows))
        cursor.execute("INSERT INTO orders VALUES (4, 1, NULL, 1)")
        assert writer._stored_range(1, 4) is None
        transaction.set_rollback(True, using="orders_db")
