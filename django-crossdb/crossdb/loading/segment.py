"""A load segment: an empty table filled in one transaction, its primary key built at commit.

PostgreSQL maintains a primary key row by row during a COPY, one WAL record per key: a
million orders take about 0.75 s into a table with its key, against 0.28 s into a bare table
plus 0.17 s to build the key from the loaded rows (measured on a 2-core machine). pg_restore
and pgloader load first and index afterwards because nobody else uses the table meanwhile. A
segment has PostgreSQL itself guarantee that, for a table that is empty when the load begins:

* the writer takes the table's ACCESS EXCLUSIVE lock, without waiting (a table somebody is
  using is loaded the usual way), checks under the lock that the table is still empty, and
  drops the primary key inside its transaction;
* it streams its batch, and each batch that comes after it, into one COPY;
* before it commits, it adds the key back, with the same name and definition.

DDL is transactional, so no other transaction ever sees the table without its key. Others
wait for the lock and then find the key (another loader's ``ON CONFLICT``, the admin's saves
and the unique check rely on it). A crash, a kill or a rollback takes the drop back with the
rows. The reference guard is held as for any batch (``crossdb.loading.writers``).

A batch joins the segment only if building the key cannot fail on it and a redo stays
affordable:

* it is an integer array (a ``crossdb.loading.columns.Block``) that packs for binary COPY;
* its ids increase strictly and start above the segment's last id, so no two rows share an id
  (a file in id order does this; the first batch out of order ends the segment, and it and
  the rest are written the usual way, with the key in place);
* the segment holds at most ``segment_bytes()`` of arrays and stays open ``SEGMENT_SECONDS`` at
  most. Its batches are kept until the commit: one that needs a second look (a parent
  rejected or deleted meanwhile) rolls the whole segment back, and they are written again.

SQLite never opens one: its rowid key is the table itself, so there is no key to defer.
"""

import contextlib
import logging
import time

import numpy as np
import psycopg
from django.db import DatabaseError, transaction

from crossdb import conf
from crossdb.loading import binarycopy, indexes

log = logging.getLogger(__name__)


def segment_bytes():
    """Batches kept for a redo (``CROSSDB["LOAD_SEGMENT_MB"]``; 0: no segment): 40 MB holds
    a million orders with their line numbers. It is the writer's largest holding: 64 MB made
    the peak of an 11.1M-row load 1.29 times that of 1.11M rows (237 MB against 184), 40 MB
    1.16 times, at the same speed."""
    return conf.get("LOAD_SEGMENT_MB") * 2**20


SEGMENT_SECONDS = 30.0  # the longest the table is locked, however slowly the batches come

PRIMARY_KEY_SQL = (
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE conrelid = %s::regclass AND contype = 'p'"
)
# A foreign key naming the table depends on its key, which then cannot be dropped.
REFERENCED_SQL = "SELECT 1 FROM pg_constraint WHERE confrelid = %s::regclass LIMIT 1"


# A hook for tests (tests/test_segment.py, tests/launch.py --segment-unprotected): True drops
# the key in a transaction of its own, committed at once, and takes no lock: what deferring
# the key would be without transactional DDL. Its tests show what that breaks.
UNPROTECTED = False


class _NotEmpty(Exception):
    """Back to the savepoint: the table has rows, or its key cannot be dropped."""


def increasing(ids, after=None):
    """Whether ids increase strictly, all of them above after (None: no bound)."""
    if not len(ids):
        return True
    if after is not None and ids[0] <= after:
        return False
    return bool(np.all(ids[1:] > ids[:-1]))


def _held_bytes(job):
    lines = job.lines.nbytes if isinstance(job.lines, np.ndarray) else 0
    return job.rows.nbytes + lines


class Segment:
    """The open segment of one writer's transaction (``open`` makes one)."""

    def __init__(self, writer, cursor, key, first, payload):
        self.raw = cursor.cursor  # psycopg's cursor under Django's wrapper
        self.qn = writer.connection.ops.quote_name
        self.table = writer.db_table  # quoted
        self.copy_sql = writer.copy_sql
        self.copy_types = writer.copy_types
        self.key = key  # (constraint name, definition), as pg_get_constraintdef gives it
        self.deadline = time.monotonic() + SEGMENT_SECONDS
        self.held = 0
        self.last_id = None
        self.pending = None  # (rows, packed) of the job taken last, until it is sent
        self._take(first, payload)

    @classmethod
    def open(cls, writer, cursor, job):
        """A Segment holding job if writer's table is empty and nobody is using it; else
        None, and the transaction is as it was."""
        if not isinstance(job.rows, np.ndarray) or not increasing(job.rows[:, 0]):
            return None
        if _held_bytes(job) > segment_bytes():
            return None
        payload = binarycopy.copy_payload(writer.copy_types, job.rows)
        if payload is None:
            return None
        if UNPROTECTED:  # before this transaction reads the table: the drop would wait
            return cls._open_unprotected(writer, cursor, job, payload)
        connection = writer.connection
        table = writer.db_table
        name = writer.model._meta.db_table
        with connection.cursor() as check:
            check.execute(f"SELECT 1 FROM {table} LIMIT 1")  # no lock for a table with rows
            if check.fetchone() is not None:
                return None
        try:
            with transaction.atomic(using=writer.alias), connection.cursor() as locked:
                # NOWAIT: a lock queued behind a reader would stall every later reader too.
                locked.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE NOWAIT")
                locked.execute(f"SELECT 1 FROM {table} LIMIT 1")
                if locked.fetchone() is not None:
                    raise _NotEmpty
                locked.execute(REFERENCED_SQL, [name])
                if locked.fetchone() is not None:
                    raise _NotEmpty
                locked.execute(PRIMARY_KEY_SQL, [name])
                key = locked.fetchone()
                if key is None:
                    raise _NotEmpty
                qn = connection.ops.quote_name
                locked.execute(f"ALTER TABLE {table} DROP CONSTRAINT {qn(key[0])}")
        except _NotEmpty:
            return None  # back to the savepoint, which releases the lock
        except DatabaseError as exc:  # the lock was not free
            log.info("%s: loading with its key in place (%s)", name, exc)
            return None
        log.info("%s: loading the empty table, its key %s built at commit", name, key[0])
        return cls(writer, cursor, key, job, payload)

    @classmethod
    def _open_unprotected(cls, writer, cursor, job, payload):
        """``UNPROTECTED``: the key dropped and committed on a connection of its own."""
        connection = writer.connection
        name = writer.model._meta.db_table
        with connection.get_new_connection(connection.get_connection_params()) as apart:
            apart.autocommit = True
            if apart.execute(f"SELECT 1 FROM {writer.db_table} LIMIT 1").fetchone():
                return None
            key = apart.execute(PRIMARY_KEY_SQL, [name]).fetchone()
            if key is None:
                return None
            qn = connection.ops.quote_name
            apart.execute(f"ALTER TABLE {writer.db_table} DROP CONSTRAINT {qn(key[0])}")
        return cls(writer, cursor, key, job, payload)

    def accepts(self, job):
        """Whether job may join (see the module docstring); if so, it is taken."""
        rows = job.rows
        if not isinstance(rows, np.ndarray) or time.monotonic() > self.deadline:
            return False
        if self.held + _held_bytes(job) > segment_bytes() or not increasing(
            rows[:, 0], self.last_id
        ):
            return False
        payload = binarycopy.copy_payload(self.copy_types, rows)
        if payload is None:
            return False
        self._take(job, payload)
        return True

    def _take(self, job, payload):
        self.pending = (job.rows, payload)
        self.held += _held_bytes(job)
        if len(job.rows):
            self.last_id = int(job.rows[-1, 0])

    @contextlib.contextmanager
    def stream(self):
        """One COPY for the whole segment; yields put(rows), which sends the rows of the job
        taken last (or some of them, when rows had to be set aside) and says how many."""
        with self.raw.copy(self.copy_sql) as copy:
            copy.write(binarycopy.COPY_SIGNATURE)

            def put(rows):
                assert self.pending is not None  # _take() set it
                taken, payload = self.pending
                self.pending = None
                if rows is not taken:  # rows set aside first (their parents are missing)
                    payload = binarycopy.copy_payload(self.copy_types, rows) if len(rows) else b""
                copy.write(payload)
                return len(rows)

            yield put
            copy.write(binarycopy.COPY_TRAILER)

    def build_key(self):
        """Add the key back before the commit; False if the rows clash on it after all (the
        caller then rolls back and writes the batches the usual way)."""
        name, definition = self.key
        self.raw.execute(f"SET LOCAL maintenance_work_mem = '{indexes.build_memory()}'")
        add = f"ALTER TABLE {self.table} ADD CONSTRAINT {self.qn(name)} {definition}"
        try:
            self.raw.execute(add)
        except psycopg.errors.UniqueViolation:
            return False
        return True
