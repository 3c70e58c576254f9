"""Write one validated batch to one database in one transaction.

The fast path is a single ``INSERT ... ON CONFLICT DO NOTHING`` executed for the whole
batch (``executemany``; PostgreSQL gets COPY in ``PostgresBulkWriter``). When every row went
in, the batch commits. When some did not (a re-run, a second process, a duplicate email),
the transaction is rolled back and the batch is written carefully: rows whose id is stored
with identical data count as already present, rows that clash are rejected with the stored
values named, and the rest are inserted. The fast path costs nothing extra on a fresh load;
the careful path is what makes re-runs and concurrent runs exact.

Orders get two hooks from the pipeline: ``wait_for_parents`` blocks until every user and
product batch dispatched before this order batch is committed, and ``must_verify`` says
whether a parent writer rejected rows at write time, in which case each order's user and
product are looked up in their databases before the order is committed.
"""

import logging
import time

from django.conf import settings
from django.db import connections, transaction
from django.db.models.functions import Lower

from core import tables
from core.tables import MODELS, fields
from core.validation import CENT, email_key, shown

log = logging.getLogger(__name__)


class _Redo(Exception):
    """Roll the fast path back and write the batch carefully."""


def _no_wait():
    pass


def _never():
    return False


def query_chunks(connection, items):
    """Split items so an IN (...) query stays under the backend's parameter limit."""
    size = min(connection.features.max_query_params or 5000, 5000)
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def existing_ids(table, ids):
    """Return the subset of ids stored in table, one query per chunk."""
    alias = tables.alias(table)
    found = set()
    for chunk in query_chunks(connections[alias], ids):
        found.update(
            MODELS[table].objects.using(alias).filter(pk__in=chunk).values_list("pk", flat=True)
        )
    return found


def comparable(table, row):
    """Return row in the form used to decide "identical data" (emails case-insensitive)."""
    if table == "users":
        return (row[0], row[1], email_key(row[2]))
    if table == "products":
        return (row[0], row[1], row[2].quantize(CENT))
    return tuple(row)


class BulkWriter:
    """Writes batches of one table to its database; one instance per writer process."""

    def __init__(self, table, alias, wait_for_parents=_no_wait, must_verify=_never):
        self.table = table
        self.model = MODELS[table]
        self.alias = alias
        self.connection = connections[alias]
        self.fields = fields(table)
        self.wait_for_parents = wait_for_parents
        self.must_verify = must_verify
        if self.connection.vendor == "sqlite":
            with self.connection.cursor() as cursor:
                cursor.execute(f"PRAGMA cache_size = -{settings.SQLITE_WRITER_CACHE_MB * 1024}")
        qn = self.connection.ops.quote_name
        self.columns = ", ".join(qn(self.model._meta.get_field(f).column) for f in self.fields)
        self.db_table = qn(self.model._meta.db_table)
        placeholders = ", ".join(["%s"] * len(self.fields))
        self.insert_sql = (
            f"INSERT INTO {self.db_table} ({self.columns}) VALUES ({placeholders}) "
            "ON CONFLICT DO NOTHING"
        )

    def insert_ignoring_conflicts(self, cursor, rows):
        """Insert rows, skipping any that clash with a unique key; return how many went in."""
        cursor.executemany(self.insert_sql, rows)
        return cursor.rowcount

    def write(self, rows, lines):
        """Commit rows; return (stored, already_present, rejections)."""
        if not self.must_verify():
            try:
                with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                    if self.insert_ignoring_conflicts(cursor, rows) != len(rows):
                        raise _Redo
                    # Inserted but not yet committed: wait for the parents, holding the lock.
                    self.wait_for_parents()
                    if self.must_verify():
                        raise _Redo
                return len(rows), 0, []
            except _Redo:
                pass
        return self.write_carefully(rows, lines)

    def write_carefully(self, rows, lines, attempts=3):
        self.wait_for_parents()
        for _attempt in range(attempts):
            try:
                with transaction.atomic(using=self.alias):
                    return self._classify_and_insert(rows, lines)
            except _Redo:
                # Another process inserted a clashing row between our read and our insert
                # (possible on PostgreSQL, where transactions do not lock the table); retry.
                time.sleep(0.01)
        raise RuntimeError(f"{self.table}: batch kept racing another writer; run again")

    def _classify_and_insert(self, rows, lines):
        rejections = []
        if self.must_verify():
            rows, lines, rejections = self.reject_missing_parents(rows, lines)
        stored_rows = {
            r[0]: r
            for chunk in query_chunks(self.connection, [r[0] for r in rows])
            for r in self.model.objects.using(self.alias)
            .filter(pk__in=chunk)
            .values_list(*self.fields)
        }
        present = 0
        pending = {}
        for line, row in zip(lines, rows, strict=True):
            earlier = stored_rows.get(row[0]) or pending.get(row[0])
            if earlier is None:
                pending[row[0]] = row
            elif comparable(self.table, earlier) == comparable(self.table, row):
                present += 1  # stored before, or twice in this batch
            else:
                rejections.append(self._conflict(line, row, earlier))
        fresh = list(pending.values())
        fresh_lines = {row[0]: line for line, row in zip(lines, rows, strict=True)}
        fresh, more = self.reject_unique_clashes(fresh, fresh_lines)
        rejections.extend(more)
        if not fresh:
            return 0, present, rejections
        try:
            with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                if self.insert_ignoring_conflicts(cursor, fresh) != len(fresh):
                    raise _Redo  # back to the savepoint: settle the rows one by one
            return len(fresh), present, rejections
        except _Redo:
            stored, settled_present, settled = self._insert_one_by_one(fresh, fresh_lines)
            return stored, present + settled_present, rejections + settled

    def _insert_one_by_one(self, rows, lines):
        """Insert rows singly and classify each that does not go in by what is stored now.

        Reached only when a row clashed with a key the checks above did not see: a row
        another process committed a moment ago, or an email that Python's and the database's
        case rules fold differently. Slow, but exact, and never an endless retry.
        """
        stored, present, rejections = 0, 0, []
        with self.connection.cursor() as cursor:
            for row in rows:
                cursor.execute(self.insert_sql, row)
                if cursor.rowcount == 1:
                    stored += 1
                    continue
                earlier = (
                    self.model.objects.using(self.alias)
                    .filter(pk=row[0])
                    .values_list(*self.fields)
                    .first()
                )
                if earlier is None:
                    what = f"email {shown(row[2])}" if self.table == "users" else "a unique value"
                    reason = f"{what} is already used by another stored row"
                    rejections.append((lines[row[0]], row[0], reason, row))
                elif comparable(self.table, earlier) == comparable(self.table, row):
                    present += 1
                else:
                    rejections.append(self._conflict(lines[row[0]], row, earlier))
        return stored, present, rejections

    def _conflict(self, line, row, earlier):
        stored = ", ".join(
            f"{name} {shown(value)}"
            for name, value in zip(self.fields[1:], earlier[1:], strict=True)
        )
        return (line, row[0], f"id {row[0]} is already stored with different data ({stored})", row)

    def reject_unique_clashes(self, rows, lines):
        """Reject users whose email another stored user already has."""
        if self.table != "users" or not rows:
            return rows, []
        keys = {email_key(r[2]): r for r in rows}
        owners = {}
        for chunk in query_chunks(self.connection, keys):
            owners.update(
                self.model.objects.using(self.alias)
                .annotate(key=Lower("email"))
                .filter(key__in=chunk)
                .values_list("key", "pk")
            )
        kept, rejections = [], []
        for row in rows:
            owner = owners.get(email_key(row[2]))
            if owner is None or owner == row[0]:
                kept.append(row)
            else:
                reason = f"email {shown(row[2])} is already used by user {owner}"
                rejections.append((lines[row[0]], row[0], reason, row))
        return kept, rejections

    def reject_missing_parents(self, rows, lines):
        """Drop orders whose user or product is not stored (a parent writer rejected it)."""
        users = existing_ids("users", {r[1] for r in rows})
        products = existing_ids("products", {r[2] for r in rows})
        kept, kept_lines, rejections = [], [], []
        for line, row in zip(lines, rows, strict=True):
            problems = []
            if row[1] not in users:
                problems.append(f"user {row[1]} does not exist (it was not stored)")
            if row[2] not in products:
                problems.append(f"product {row[2]} does not exist (it was not stored)")
            if problems:
                rejections.append((line, row[0], "; ".join(problems), row))
            else:
                kept.append(row)
                kept_lines.append(line)
        return kept, kept_lines, rejections


def writer_for(table, alias, **hooks):
    """Pick the fastest writer the database behind alias supports (COPY on PostgreSQL)."""
    if connections[alias].vendor == "postgresql":
        from core.pg import PostgresBulkWriter  # core.pg imports this module

        return PostgresBulkWriter(table, alias, **hooks)
    return BulkWriter(table, alias, **hooks)
