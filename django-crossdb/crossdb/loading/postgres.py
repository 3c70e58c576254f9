"""The PostgreSQL fast path: binary COPY, with ``ON CONFLICT DO NOTHING`` only when needed.

``BulkWriter`` sends a batch as ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING``.
On PostgreSQL that is one statement per row (pipelined, but still parsed, planned and
executed 10,000 times per batch). ``PostgresBulkWriter`` streams the batch with binary COPY
(psycopg 3 ``cursor.copy()``) instead, in two steps:

1. COPY straight into the table, inside a savepoint. On a fresh load nothing clashes and
   this is the whole cost: the same work as a plain COPY of the file.
2. Only when that COPY hits a unique key (a re-run, another process, a duplicate email) is
   the savepoint rolled back and the batch COPYed into a temporary staging table of the
   same shape, then moved with one ``INSERT INTO t SELECT ... ON CONFLICT DO NOTHING``.
   COPY cannot skip conflicting rows itself, which is why the staging table is needed.

Semantics are the base class's, unchanged: the return value is the number of rows that
went in, so a batch that clashed still rolls back and goes through
``BulkWriter.write_carefully``, which also calls this method for its insert. That is where
``--on-conflict skip`` and ``update`` settle a row whose id is stored: a fresh load never
clashes, so it costs them nothing.

Concurrency (PostgreSQL's default READ COMMITTED): ``ON CONFLICT DO NOTHING`` with no
conflict target covers every unique index, including the case-insensitive email index. When
another process has inserted the same email but not yet committed, PostgreSQL makes our
insert wait for that transaction, then skips the row (or fails the COPY, which leads to the
same place). The careful path then finds the owner and reports
"email ... is already used by user N", never an IntegrityError. If the clashing row appears
between the careful path's read and its insert, the count comes up short, ``_Redo`` is
raised and the careful path retries with a fresh read. A deadlock between two writers
inserting the same keys in opposite orders is handled the same way: PostgreSQL aborts one
transaction, which rolls back and goes (again) through the careful path.

The staging table is ``TEMP ... ON COMMIT DELETE ROWS``: private to the connection (two
writer processes never see each other's staging rows), not WAL-logged, and emptied by every
commit. Because a rolled-back transaction also drops a table it created, it is remembered
as existing only once a transaction that created it has committed.
"""

import logging
import re

import numpy as np
import psycopg
from django.db import transaction

from crossdb.loading import binarycopy, columns
from crossdb.loading.segment import Segment
from crossdb.loading.writers import REJECT, BulkWriter, _Redo

SAVEPOINT = "multids_copy"


class _LostConnectionEcho(logging.Filter):
    """Drop psycopg's "error ignored terminating <Copy>: the connection is lost".

    When the server ends the connection in the middle of a COPY (``pg_terminate_backend``,
    a restart), psycopg logs this while the error that ended the COPY goes on, and that
    error is already the writer's one-line failure; the echo would be a second line with
    nothing new in it. Any other record of psycopg's passes.
    """

    def filter(self, record):
        if not str(record.msg).startswith("error ignored terminating"):
            return True
        return "connection is lost" not in record.getMessage()


logging.getLogger("psycopg").addFilter(_LostConnectionEcho())


def packed_rows(types, rows):
    """rows (tuples) as binary COPY data, or None when a column is not a fixed-width
    integer, holds a NULL or a value beyond its range (psycopg's ``write_row`` does those).

    ``write_row`` costs three Python calls per row, about a second per million orders in
    the orders writer; one array and ``binarycopy.copy_payload`` build the same bytes.
    """
    if not rows or any(t not in binarycopy.COPY_WIDTHS for t in types):
        return None
    try:
        values = np.array(rows, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):  # a NULL, or beyond 64 bits
        return None
    return binarycopy.copy_payload(types, values)


def _copy_type(field, connection):
    """Return the PostgreSQL type name COPY sends field as ("bigint", "numeric", ...)."""
    return re.sub(r"\(.*\)", "", field.db_type(connection)).strip()


class PostgresBulkWriter(BulkWriter):
    """``BulkWriter`` whose batch insert is a binary COPY (plus a staging table on clashes)."""

    def __init__(self, table, alias, gate=None, snapshot=None, on_conflict=REJECT):
        super().__init__(table, alias, gate, snapshot, on_conflict)
        qn = self.connection.ops.quote_name
        self.staging = qn(f"multids_staging_{table}")
        self.copy_types = [
            _copy_type(self.model._meta.get_field(c), self.connection) for c in self.columns
        ]
        self.copy_sql = f"COPY {self.db_table} ({self.column_list}) FROM STDIN (FORMAT BINARY)"
        self.create_staging_sql = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.staging} "
            f"(LIKE {self.db_table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        self.copy_staging_sql = (
            f"COPY {self.staging} ({self.column_list}) FROM STDIN (FORMAT BINARY)"
        )
        self.move_sql = (
            f"INSERT INTO {self.db_table} ({self.column_list}) "
            f"SELECT {self.column_list} FROM {self.staging} ON CONFLICT DO NOTHING"
        )
        sent = [
            f"{binarycopy.SEND_FUNCTIONS[t]}({c})"
            for t, c in zip(self.copy_types, self.quoted_columns, strict=True)
            if t in binarycopy.SEND_FUNCTIONS
        ]
        self.send_sql = (
            f"SELECT count(*), string_agg({' || '.join(sent)}, '') FROM {self.db_table} "
            f"WHERE {self.pk_column} BETWEEN %s AND %s"
            if len(sent) == len(self.columns)
            else None
        )
        self._staging_exists_on = None  # the raw connection whose staging table is committed
        self._staging_has_rows = False
        self._segment_tried = False

    def segment_for(self, cursor, job):
        """The first job may open a segment (``crossdb.loading.segment``: the table is empty, so its
        primary key is built at commit); later ones go the usual way."""
        if self._segment_tried:
            return None
        self._segment_tried = True
        return Segment.open(self, cursor, job)

    def insert_ignoring_conflicts(self, cursor, rows):
        """Insert rows, skipping any that clash with a unique key; return how many went in."""
        if not len(rows):
            return 0
        raw = cursor.cursor  # the psycopg 3 cursor under Django's wrapper
        # COPY and the staging rows must share one transaction; savepoint=False joins the
        # caller's (the normal case) and opens one when called in autocommit mode.
        with (
            transaction.atomic(using=self.alias, savepoint=False),
            self.connection.wrap_database_errors,  # psycopg errors -> django.db errors
        ):
            try:
                raw.execute(f"SAVEPOINT {SAVEPOINT}")
                try:
                    self._copy(raw, self.copy_sql, rows)
                    inserted = len(rows)
                except psycopg.errors.UniqueViolation:
                    raw.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
                    inserted = self._insert_through_staging(raw, rows)
                raw.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
            except psycopg.errors.DeadlockDetected:
                # Two writers inserting clashing keys in opposite orders; PostgreSQL chose
                # this one to abort. Roll back and write the batch carefully, which waits
                # for the other writer's commit and reports the clashes as rejections.
                raise _Redo from None
            return inserted

    def _copy(self, raw, statement, rows):
        if isinstance(rows, np.ndarray):  # a crossdb.loading.columns.Block's values
            packed = binarycopy.copy_payload(self.copy_types, rows)
            rows = columns.tuples(rows) if packed is None else rows
        else:
            packed = packed_rows(self.copy_types, rows)
        with raw.copy(statement) as copy:
            if packed is not None:
                copy.write(binarycopy.COPY_SIGNATURE + packed + binarycopy.COPY_TRAILER)
                return
            copy.set_types(self.copy_types)
            for row in self.prepare(rows):
                copy.write_row(row)

    def _insert_through_staging(self, raw, rows):
        """COPY rows into the staging table, then insert those that clash with nothing."""
        connection = raw.connection
        if self._staging_exists_on is not connection:
            raw.execute(self.create_staging_sql)
        elif self._staging_has_rows:
            raw.execute(f"TRUNCATE {self.staging}")  # left by an earlier call in this transaction
        self._staging_has_rows = True
        transaction.on_commit(lambda: self._committed(connection), using=self.alias)
        self._copy(raw, self.copy_staging_sql, rows)
        raw.execute(self.move_sql)
        return raw.rowcount

    def _stored_range(self, low, high):
        """``BulkWriter._stored_range`` as one value: the rows' columns through their send
        functions, concatenated by the server (``binarycopy.from_send``). A re-run reads
        back every row it loads; a million rows as tuples, or as COPY's rows, cost the
        writer seconds of Python, as one value a few array passes."""
        if self.send_sql is None:
            return super()._stored_range(low, high)
        with self.connection.cursor() as cursor:
            cursor.execute(self.send_sql, [low, high])
            count, data = cursor.fetchone()
        return binarycopy.from_send(self.copy_types, bytes(data or b""), count)

    def _committed(self, connection):
        """The commit emptied the staging table and, if it created the table, kept it."""
        self._staging_exists_on = connection
        self._staging_has_rows = False
