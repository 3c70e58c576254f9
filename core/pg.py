"""The PostgreSQL fast path: COPY each batch into a staging table, then one INSERT ... SELECT.

``BulkWriter`` sends a batch as ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING``.
On PostgreSQL that is one statement per row (pipelined, but still parsed, planned and
executed 10,000 times per batch). ``PostgresBulkWriter`` instead streams the batch with
binary COPY (psycopg 3 ``cursor.copy()``) into a temporary table of the same shape and
moves it with a single ``INSERT INTO t SELECT ... FROM staging ON CONFLICT DO NOTHING``.
COPY cannot skip conflicting rows itself, which is why the staging table is needed.

Semantics are the base class's, unchanged:

* the return value is the number of rows that went in, so a batch that clashed with stored
  rows (a re-run, another process, a duplicate email) still rolls back and goes through
  ``BulkWriter.write_carefully``, which also calls this method for its insert;
* ``ON CONFLICT DO NOTHING`` with no conflict target covers every unique index, including
  the case-insensitive email index. When another process has inserted the same email but
  not yet committed, PostgreSQL makes our insert wait for that transaction and then skips
  the row; the careful path then finds the owner and reports
  "email ... is already used by user N" instead of an IntegrityError. If the clashing row
  appears between the careful path's read and its insert (READ COMMITTED allows that), the
  count comes up short, ``_Redo`` is raised and the careful path retries with a fresh read.
  A deadlock between two writers inserting the same keys in different orders is handled
  the same way: PostgreSQL aborts one transaction, which rolls back and retries carefully.

The staging table is a ``TEMP`` table ``ON COMMIT DELETE ROWS``: private to the connection
(two writer processes never see each other's staging rows), never WAL-logged, and emptied
by every commit. It is created on the first batch of a connection; because a rolled-back
transaction also drops a table it created, it is only remembered as existing once a
transaction that created it has committed.
"""

import re

import psycopg
from django.db import transaction

from core.writers import BulkWriter, _Redo


def _copy_type(field, connection):
    """Return the PostgreSQL type name COPY should send field as ("bigint", "numeric", ...)."""
    return re.sub(r"\(.*\)", "", field.db_type(connection)).strip()


class PostgresBulkWriter(BulkWriter):
    """``BulkWriter`` whose batch insert is a binary COPY plus one INSERT ... SELECT."""

    def __init__(self, table, alias, **hooks):
        super().__init__(table, alias, **hooks)
        qn = self.connection.ops.quote_name
        self.staging = qn(f"multids_staging_{table}")
        self.copy_types = [
            _copy_type(self.model._meta.get_field(f), self.connection) for f in self.fields
        ]
        self.create_staging_sql = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.staging} "
            f"(LIKE {self.db_table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        self.copy_sql = f"COPY {self.staging} ({self.columns}) FROM STDIN (FORMAT BINARY)"
        self.move_sql = (
            f"INSERT INTO {self.db_table} ({self.columns}) "
            f"SELECT {self.columns} FROM {self.staging} ON CONFLICT DO NOTHING"
        )
        self._staging_exists_on = None  # the raw connection whose staging table is committed
        self._staging_has_rows = False

    def insert_ignoring_conflicts(self, cursor, rows):
        """Insert rows, skipping any that clash with a unique key; return how many went in."""
        if not rows:
            return 0
        raw = cursor.cursor  # the psycopg 3 cursor under Django's wrapper
        connection = raw.connection
        # Staging rows live until the commit, so COPY and INSERT must share a transaction;
        # savepoint=False joins the caller's transaction (the normal case) at no cost.
        with (
            transaction.atomic(using=self.alias, savepoint=False),
            self.connection.wrap_database_errors,  # psycopg errors -> django.db errors
        ):
            if self._staging_exists_on is not connection:
                raw.execute(self.create_staging_sql)
            elif self._staging_has_rows:
                raw.execute(f"TRUNCATE {self.staging}")  # a rolled-back or unfinished batch
            self._staging_has_rows = True
            transaction.on_commit(lambda: self._committed(connection), using=self.alias)
            with raw.copy(self.copy_sql) as copy:
                copy.set_types(self.copy_types)
                for row in rows:
                    copy.write_row(row)
            try:
                raw.execute(self.move_sql)
            except psycopg.errors.DeadlockDetected:
                # Two writers inserting clashing keys in opposite orders: PostgreSQL aborts
                # one of them. Roll back and write the batch carefully, which waits for the
                # other writer's commit and then reports the clashes as rejections.
                raise _Redo from None
            return raw.rowcount

    def _committed(self, connection):
        """The commit emptied the staging table and, if it created the table, kept it."""
        self._staging_exists_on = connection
        self._staging_has_rows = False
