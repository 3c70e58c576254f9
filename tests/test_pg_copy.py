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


def test_unpack_reads_back_what_copy_payload_packs():
    values = np.array(EDGES, dtype=np.int64)
    data = COPY_SIGNATURE + binarycopy.copy_payload(ORDER_TYPES, values) + COPY_TRAILER
    assert binarycopy.unpack(ORDER_TYPES, data).tolist() == [list(row) for row in EDGES]
    assert binarycopy.unpack(ORDER_TYPES, COPY_SIGNATURE + COPY_TRAILER).shape == (0, 4)
    assert binarycopy.unpack(["bigint", "text"], data) is None
    assert binarycopy.unpack(ORDER_TYPES, b"not a copy stream") is None


@all_databases
def test_unpack_reads_what_postgresql_copies_out_and_refuses_a_null():
    connection = connections["orders_db"]
    if connection.vendor != "postgresql":
        pytest.skip("binary COPY is PostgreSQL's")
    with connection.cursor() as cursor:
        raw = cursor.cursor
        raw.execute("CREATE TEMP TABLE stored (a bigint, b bigint, c bigint, d integer)")
        with raw.copy("COPY stored FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(COPY_SIGNATURE + packed_rows(ORDER_TYPES, EDGES) + COPY_TRAILER)

        def copied_out():
            with raw.copy("COPY (SELECT * FROM stored ORDER BY a) TO STDOUT (FORMAT BINARY)") as c:
                return b"".join(c)

        assert binarycopy.unpack(ORDER_TYPES, copied_out()).tolist() == sorted(map(list, EDGES))
        raw.execute("INSERT INTO stored VALUES (7, NULL, 1, 1)")  # a NULL: its row is shorter
        assert binarycopy.unpack(ORDER_TYPES, copied_out()) is None
