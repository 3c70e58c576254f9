"""Write one validated batch to one database in one transaction, inside the reference guard.

The fast path is a single ``INSERT ... ON CONFLICT DO NOTHING`` executed for the whole
batch (``executemany``; PostgreSQL gets COPY in ``crossdb.loading.postgres.PostgresBulkWriter``),
after the rows whose parents the run cannot vouch for (stored by an earlier load, say) are looked up
inside the guard and those whose parents are missing set aside as rejections. When every
row went in and nothing needs a second look, the batch commits. Otherwise the transaction is
rolled back and the batch is written carefully: parents are looked up inside the guard where
they must be, rows whose id is stored with identical data count as already present, rows
that clash are rejected with the stored values named, and the rest are inserted. The fast
path costs nothing extra on a fresh load; the careful path is what makes re-runs,
concurrent runs and concurrent deletes exact.

A row whose id is stored with other data is settled by the run's ``on_conflict``
(``insert_data --on-conflict``), on the careful path only, since such a row always makes the
fast path's insert come up short:

* ``reject`` (the default): rejected as a conflict, the stored values named;
* ``skip``: the stored row is kept and the row counted as skipped, not rejected;
* ``update``: the row's values are written over the stored row's, in the batch's transaction,
  after every check an insert passes: its parents are verified inside the guard as an
  insert's are, its comparison keys are computed from its values and must not be another
  row's (the rejection names the owner). The id is what matches it, so it never changes.
  Rows are settled in input order: an id given twice in a run is updated twice, and the
  later values win (a batch repeating an id is settled in runs of distinct ids, each seeing
  what the runs before it wrote).

A child table's writer (one holding references, ``crossdb.registry``) also:

* waits, inside its transaction, until every parent batch dispatched before its batch is
  committed (``Gate.wait_for_parents``), so no child reaches its database before its parents;
  the batches queued meanwhile are written into the same transaction, so the wait costs no
  time, and it commits them all once their parents are in (a batch that needs a second look
  rolls them all back: the first is written carefully, the others go back to the queue);
* holds the guard (``crossdb.guard.share``) from its first statement to its commit;
* looks its rows' parents up again, inside the guard, when a parent writer rejected rows at
  write time, when a parent delete has committed since the run began (the guard's counter
  moved), and for the rows whose parent the validator did not know (another process may
  have stored it since). So a row is stored if and only if its parents are committed when
  its batch commits.
"""

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import Field

from crossdb import causal, conf, guard
from crossdb.loading import columns, indexes
from crossdb.loading.processes import Written
from crossdb.lookups import query_chunks, stored_rows
from crossdb.registry import spec as spec_of
from crossdb.results import Rejection
from crossdb.rules import parent_problem, shown

log = logging.getLogger(__name__)

# A hook for tests (never set otherwise): a callable the first writer that looks its rows'
# parents up, or is about to write rows over stored ones (``on_conflict`` "update"), calls
# inside its transaction, after the lookup and before the commit, so a test can run a delete
# in between (tests/test_races.py, tests/test_on_conflict.py, tests/launch.py).
HOLD = None

# What a writer does with a row whose id is stored with other data (``--on-conflict``).
REJECT, SKIP, UPDATE = "reject", "skip", "update"
ON_CONFLICT = (REJECT, UPDATE, SKIP)
DEADLOCK = "40P01"  # PostgreSQL's SQLSTATE for a transaction it aborted to end a deadlock


def as_tuples(job):
    """job with its rows as tuples and its lines as a list, for the careful path."""
    rows = columns.tuples(job.rows)
    return job._replace(rows=rows, lines=columns.line_list(job.lines, len(rows)))


def _hold_for_test():
    """Call ``HOLD`` once, in the first writer that gets here (the hook holds it there)."""
    global HOLD
    hold, HOLD = HOLD, None
    if hold is not None:
        hold()


# Values the database drivers take as they are: whole numbers, text, decimals (Django
# registers SQLite's adapter), booleans and floats. Anything else (a UUID, a date, a moment)
# goes through its field's get_db_prep_save, as Django's own saves do.
PLAIN_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
        "CharField",
        "TextField",
        "DecimalField",
        "BooleanField",
        "FloatField",
    }
)


def stored_form(model, names, connection):
    """A function giving rows (tuples of the fields names) in the form the database driver
    stores; the identity when every field is of a plain type (the common case costs nothing)."""
    fields = [model._meta.get_field(name) for name in names]
    preps = [
        (i, field.get_db_prep_save)
        for i, field in enumerate(fields)
        if field.get_internal_type() not in PLAIN_TYPES
    ]
    if not preps:
        return lambda rows: rows

    def prepare(rows):
        out = []
        for row in rows:
            values = list(row)
            for i, prep in preps:
                if values[i] is not None:
                    values[i] = prep(values[i], connection)
            out.append(tuple(values))
        return out

    return prepare


def _rows_at(rows, indexes):
    """The rows at indexes: an array of a Block's array, else a list of its tuples."""
    if isinstance(rows, np.ndarray):
        return rows[indexes]
    return [rows[i] for i in indexes]


def _without(job, drop):
    """job without the rows (and their lines) at the indexes in drop."""
    if isinstance(job.rows, np.ndarray):
        keep = np.ones(len(job.rows), dtype=bool)
        keep[list(drop)] = False
        lines = None if job.lines is None else np.asarray(job.lines)[keep]
        return job._replace(rows=job.rows[keep], lines=lines)
    drop = set(drop)
    kept = [i for i in range(len(job.rows)) if i not in drop]
    return job._replace(rows=[job.rows[i] for i in kept], lines=[job.lines[i] for i in kept])


# Fields stored as whole numbers, compared as one array on a re-run (``_stored_block``).
WHOLE_NUMBER_TYPES = frozenset(t for t in PLAIN_TYPES if t.endswith(("AutoField", "IntegerField")))


def _compare_blocks(rows, stored):
    """``BulkWriter._compare_stored`` of an array of rows against the stored rows (an array
    sorted by id), in a few array passes."""
    if not len(stored):
        return [], []
    at = np.minimum(np.searchsorted(stored[:, 0], rows[:, 0]), len(stored) - 1)
    matched = stored[at]
    is_stored = matched[:, 0] == rows[:, 0]
    identical = is_stored & (matched == rows).all(axis=1)
    same = np.flatnonzero(identical).tolist()
    differ = np.flatnonzero(is_stored & ~identical).tolist()
    return same, [(i, tuple(matched[i].tolist())) for i in differ]


class _Redo(Exception):
    """Roll the fast path back and write the batch carefully."""


class _NoGate:
    """For a writer used outside the pool: no parent writers to wait for."""

    def wait_for_parents(self, join=None):
        pass

    def keep_joining(self, join, deadline):
        pass

    def any_flagged(self, tables):
        return False


FIRST_LOAD_CACHE_MB = 8  # SQLite: the page cache of a writer into an empty table


class BulkWriter:
    """Writes batches of one table to its database; one instance per writer process."""

    def __init__(self, table, alias, gate=None, snapshot=None, on_conflict=REJECT):
        if on_conflict not in ON_CONFLICT:
            raise ValueError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}")
        self.on_conflict = on_conflict
        self.spec = spec_of(table)
        self.table = self.spec.name
        self.model = self.spec.model
        self.alias = alias
        self.connection = connections[alias]
        self.gate: Any = gate or _NoGate()  # the pool's gate (processes), or none
        self.parents = self.spec.parents
        # the guard's deletion counters when the run began (None: read them now)
        self.snapshot = snapshot if snapshot is not None else self._counters()
        self.fields = self.spec.fields
        self.columns = self.spec.columns
        qn = self.connection.ops.quote_name
        self.quoted_columns = [
            qn(cast(Field, self.model._meta.get_field(c)).column) for c in self.columns
        ]
        self.column_list = ", ".join(self.quoted_columns)
        self.db_table = qn(self.model._meta.db_table)
        placeholders = ", ".join(["%s"] * len(self.columns))
        self.insert_sql = (
            f"INSERT INTO {self.db_table} ({self.column_list}) VALUES ({placeholders}) "
            "ON CONFLICT DO NOTHING"
        )
        pk, *others = (qn(cast(Field, self.model._meta.get_field(c)).column) for c in self.columns)
        self.update_sql = (
            f"UPDATE {self.db_table} SET {', '.join(f'{c} = %s' for c in others)} WHERE {pk} = %s"
        )
        # Parent ids found committed by this writer's fast path, not looked up again while
        # the deletion counters stay as they were when the run began (``_suspect_parents``).
        self.parents_found = {}
        # Into an empty table, load first and build the secondary indexes after (finish):
        # sorted builds cost a fraction of inserting random keys into a B-tree.
        self.deferred_indexes = indexes.drop_for_load(alias, self.model)
        self.prepare = stored_form(self.model, self.columns, self.connection)
        # Rows stored before the run are settled set-wise on the fast path (``_settle_stored``);
        # into a table empty when the writer starts (a first load) that costs nothing.
        self.meets_stored = not self.deferred_indexes and self._has_rows()
        if self.meets_stored:
            # A load stopped part-way (killed, Ctrl-C, a failure) left the indexes it had
            # dropped missing, and insert_data leaves them so for the tables it writes: this
            # load goes on as the stopped one did and builds them when it ends, after its
            # rows, rather than inserting millions of rows into them (11.1M rows on
            # PostgreSQL, the same command with --no-resume after a kill at half: 66 s with
            # the indexes built first, 21 s after).
            self.deferred_indexes = [i.name for i in indexes.missing(alias, self.model)]
        if self.connection.vendor == "sqlite":
            # Rows inserted into indexes of random keys (a table that holds rows) need the
            # large cache: an append of 1M orders took 14 s with 8 MB, 8.4 s with 64 MB. A
            # table empty at the start takes its rows in id order, where 8 MB does as well
            # (11.1M rows: 27.5 s either way) and three 64 MB caches were most of the
            # load's memory (320 MB at the peak, 195 MB with 8 MB).
            large = self.meets_stored and not self.deferred_indexes
            megabytes = conf.get("WRITER_CACHE_MB") if large else FIRST_LOAD_CACHE_MB
            with self.connection.cursor() as cursor:
                cursor.execute(f"PRAGMA cache_size = -{megabytes * 1024}")
        self.whole_numbers = all(
            cast(Field, self.model._meta.get_field(c)).get_internal_type() in WHOLE_NUMBER_TYPES
            for c in self.columns
        )
        self.pk_column = self.quoted_columns[0]
        self.range_sql = (
            f"SELECT {self.column_list} FROM {self.db_table} "
            f"WHERE {self.pk_column} BETWEEN %s AND %s"
        )

    def _has_rows(self):
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {self.db_table} LIMIT 1")
            return cursor.fetchone() is not None

    def _counters(self):
        return guard.counters(self.alias, self.parents) if self.parents else {}

    def insert_ignoring_conflicts(self, cursor, rows):
        """Insert rows, skipping any that clash with a unique key; return how many went in."""
        cursor.executemany(self.insert_sql, self.prepare(columns.tuples(rows)))
        return cursor.rowcount

    def write(self, job):
        """Commit one job's rows, and those of the jobs that joined its transaction while it
        waited for its parents (``Gate.wait_for_parents``); return a
        crossdb.loading.processes.Written, or a list of (job, Written) when jobs joined.

        Every error of the driver leaves as one of Django's: the COPY of
        ``crossdb.loading.postgres`` and ``crossdb.loading.segment`` talks to psycopg
        directly, and a connection the server ended there (``pg_terminate_backend``, a
        restart) must fail the run with one line, as it does anywhere else, not kill the
        writer with a traceback.
        """
        with self.connection.wrap_database_errors:
            return self._write(job)

    def _write(self, job):
        if not self._may_take_fast_path(job):
            return self.write_carefully(as_tuples(job))
        joined = [job]
        written = []  # the Written of each joined job

        def insert(this, put):
            kept, rejections = self._without_missing_parents(this)
            kept, settled = self._settle_stored(kept)
            if put(kept.rows) != len(kept.rows):
                raise _Redo
            written.append(
                settled._replace(stored=len(kept.rows), rejections=rejections + settled.rejections)
            )

        def joining(put, accepts=None):
            def join(later):
                if not self._may_take_fast_path(later) or (accepts and not accepts(later)):
                    return False
                joined.append(later)
                insert(later, put)
                return True

            return join

        try:
            with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                guard.share(self.alias, self.parents)
                segment = self.segment_for(cursor, job)
                if segment is not None:
                    # The table was empty under the segment's lock: nothing stored to settle,
                    # and no query may run on this connection while its COPY is open.
                    self.meets_stored = False
                if segment is None:
                    put = functools.partial(self.insert_ignoring_conflicts, cursor)
                    insert(job, put)
                    # Inserted but not yet committed: wait for the parents, holding the guard
                    # (and writing the jobs queued meanwhile into this transaction).
                    self.gate.wait_for_parents(joining(put))
                else:  # the whole table in this transaction, its key built at the end
                    with segment.stream() as put:
                        insert(job, put)
                        self.gate.keep_joining(joining(put, segment.accepts), segment.deadline)
                    self.gate.wait_for_parents()
                if self._suspect_parents():
                    raise _Redo
                if segment is not None and not segment.build_key():
                    raise _Redo
                causal.record_for(self.table, self.alias)  # replicas: what the rows depend on
        except _Redo:
            # Every joined job was rolled back with it: they go back to the queue, to be
            # written again after this one, which is written carefully on its own.
            if len(joined) > 1:
                self.gate.give_back(job, joined[1:])
            return self.write_carefully(as_tuples(job))
        return written[0] if len(joined) == 1 else list(zip(joined, written, strict=True))

    def segment_for(self, cursor, job):
        """A ``crossdb.loading.segment.Segment`` taking job and the jobs after it into this
        transaction, or None: here always (SQLite's rowid key is the table itself; nothing to
        defer)."""
        return None

    def _may_take_fast_path(self, job):
        """Whether job may be written without reading what is stored first: no parent
        writer has rejected rows at write time, so the run's own parents are as validated
        (rows whose parent is not the run's are looked up, ``_without_missing_parents``)."""
        return not self.gate.any_flagged(self.parents)

    def _without_missing_parents(self, job):
        """(job without the rows whose parents are not committed, their rejections).

        Only the references the validator could not settle are looked up: those parents are
        not the run's, so they must be committed already (by an earlier load or another
        process). A parent the run accepted is not: this runs before the wait for the run's
        parent batches, which may not have committed yet (an order naming a user of this run
        and a product of an earlier one looks up the product alone). The lookup runs inside
        the guard, which no deleter can pass until this transaction ends, and waits out a
        deleter still committing (``guard``). Rows of a parent stored earlier take the fast
        path too, rather than the careful one's read of every id in the batch.
        """
        recheck = job.recheck
        if not (recheck and recheck.rows):
            return job, []
        problems: dict[int, list[tuple[str, tuple[str, Any] | None]]] = {}
        for reference in self.spec.references:
            to_check = sorted(recheck.unknown.get(reference.field, ()))
            if not to_check:
                continue
            rows = _rows_at(job.rows, to_check)
            found = self._parent_problems(
                rows, to_check, recheck, set(), self.parents_found, references=[reference]
            )
            for index, messages in found.items():
                problems.setdefault(index, []).extend(messages)
        _hold_for_test()
        if not problems:
            return job, []
        lines = columns.line_list(job.lines, len(job.rows))
        rejections = [
            self._parent_rejection(
                lines[i], columns.tuples(_rows_at(job.rows, [i]))[0], problems[i]
            )
            for i in sorted(problems)
        ]
        return _without(job, problems.keys()), rejections

    def _settle_stored(self, job):
        """(job without the rows whose id is stored, a Written of what became of them).

        A re-run, or a resume, meets its rows stored: the stored rows with the batch's ids
        are read in one query and compared with the batch's at once, rather than the
        insert coming up short and the careful path settling the batch row by row. A row
        stored with the same data is already present; one stored with other data is
        settled by ``on_conflict`` as the careful path would (``reject``: named as a
        conflict with the stored values; ``skip``: kept), except ``update``, whose writes
        the careful path makes (``_Redo``). What is left is inserted; an id given twice in
        the run, or a key another row holds, still makes the insert come up short.

        Runs after ``_without_missing_parents`` inside the guard, so the verdicts and their
        order are the careful path's: a row whose parents are gone is rejected for that,
        stored or not.
        """
        settled = Written(0, 0, [])
        if not self.meets_stored or not len(job.rows):
            return job, settled
        same, differ = self._compare_stored(job.rows)
        if not same and not differ:
            return job, settled
        if differ and self.on_conflict == UPDATE:
            raise _Redo
        lines = columns.line_list(job.lines, len(job.rows))
        rejections = []
        if self.on_conflict == REJECT:
            indexes = [i for i, _earlier in differ]
            rows = columns.tuples(_rows_at(job.rows, indexes))  # one conversion for them all
            rejections = [
                self._conflict(lines[i], row, earlier)
                for (i, earlier), row in zip(differ, rows, strict=True)
            ]
        skipped = len(differ) if self.on_conflict == SKIP else 0
        drop = same + [i for i, _earlier in differ]
        return _without(job, drop), Written(0, len(same), rejections, 0, skipped)

    def _compare_stored(self, rows):
        """(indexes of rows stored with the same data, [(index, stored row)] of rows whose
        id is stored with other data), in input order."""
        if (
            isinstance(rows, np.ndarray)
            and self.whole_numbers
            and rows.shape[1] == len(self.columns)
        ):
            stored = self._stored_block(rows[:, 0])
            if stored is not None:
                return _compare_blocks(rows, stored)
            rows = columns.tuples(rows)
        found = stored_rows(self.spec, self.connection, self.alias, [r[0] for r in rows])
        if not found:
            return [], []
        comparable = self.spec.comparable
        same, differ = [], []
        for index, row in enumerate(rows):
            earlier = found.get(row[0])
            if earlier is None:
                continue
            if comparable(earlier) == comparable(row):
                same.append(index)
            else:
                differ.append((index, earlier))
        return same, differ

    def _stored_block(self, ids):
        """The stored rows of a table of whole numbers with ids between the batch's least
        and greatest, as an array sorted by id; None when the ids are too sparse for one
        range scan to pay (4 stored rows read per id), or a stored value is NULL."""
        low, high = int(ids.min()), int(ids.max())
        if high - low >= 4 * len(ids):
            return None
        stored = self._stored_range(low, high)
        if stored is None:
            return None
        return stored[np.argsort(stored[:, 0], kind="stable")]

    def _stored_range(self, low, high):
        """The stored rows with ids from low to high as an int64 array, or None when a
        stored value is not a whole number of 64 bits: a NULL, or on SQLite a fraction, a
        blob, a text or a huge number that other code wrote into an integer column (the
        careful path then reads and names it as it is)."""
        with self.connection.cursor() as cursor:
            cursor.execute(self.range_sql, [low, high])
            found = cursor.fetchall()
        if not found:
            return np.empty((0, len(self.columns)), dtype=np.int64)
        try:
            stored = np.array(found)
        except (OverflowError, ValueError):
            return None
        if stored.dtype.kind != "i" or stored.shape != (len(found), len(self.columns)):
            return None
        return stored.astype(np.int64, copy=False)

    def _suspect_parents(self):
        """Parent tables whose rows may have gone since validation (read inside the guard)."""
        if not self.parents:
            return set()
        suspects = {p for p in self.parents if self.gate.any_flagged([p])}
        if guard.ENABLED:
            now = self._counters()
            suspects |= {p for p in self.parents if now[p] != self.snapshot.get(p, 0)}
        return suspects

    def write_carefully(self, job, attempts=3):
        """Write job's rows after reading what is stored; return a Written."""
        for _attempt in range(attempts):
            try:
                with transaction.atomic(using=self.alias):
                    guard.share(self.alias, self.parents)
                    self.gate.wait_for_parents()
                    rows, lines, rejections = self._verify_parents(job)
                    written = self._classify_and_insert(rows, lines)
                    causal.record_for(self.table, self.alias)
                    return written._replace(rejections=rejections + written.rejections)
            except _Redo:
                # Another process inserted a clashing row between our read and our insert,
                # or changed or deleted a row we update (possible on PostgreSQL, where
                # transactions do not lock the table); retry.
                time.sleep(0.01)
        raise RuntimeError(f"{self.table}: batch kept racing another writer; run again")

    def _verify_parents(self, job):
        """Drop, with a reason, the rows whose parents are not committed now."""
        rows, lines = job.rows, job.lines
        if not self.parents:
            return rows, lines, []
        suspects = self._suspect_parents()
        recheck = job.recheck
        to_check: Sequence[int]
        if suspects:
            to_check = range(len(rows))
        elif recheck and recheck.rows:
            to_check = sorted(recheck.rows)
        else:
            return rows, lines, []
        problems = self._parent_problems([rows[i] for i in to_check], to_check, recheck, suspects)
        if not problems:
            return rows, lines, []
        kept_rows, kept_lines, rejections = [], [], []
        for index, (line, row) in enumerate(zip(lines, rows, strict=True)):
            if index in problems:
                rejections.append(self._parent_rejection(line, row, problems[index]))
            else:
                kept_rows.append(row)
                kept_lines.append(line)
        return kept_rows, kept_lines, rejections

    def _parent_problems(self, checked, to_check, recheck, suspects, known=None, references=None):
        """{row index: messages} for the rows of checked (at indexes to_check) whose parents
        (of references, default all) are not committed, looked up inside the guard
        (``guard.missing_parents``)."""
        problems: dict[int, list[tuple[str, tuple[str, Any] | None]]] = {}
        missing = guard.missing_parents(self.spec, checked, known, references)
        for position, reference, pk in missing:
            index = to_check[position]
            rejected = recheck.rejected.get(reference.parent, ()) if recheck else ()
            rejected_in_run = pk in rejected
            deleted = (
                reference.parent in suspects
                and not (recheck and index in recheck.rows)
                and not self.gate.any_flagged([reference.parent])
            )
            problem = parent_problem(
                reference.field,
                reference.noun,
                pk,
                rejected_in_run=rejected_in_run,
                deleted=deleted,
            )
            absent = None if rejected_in_run or deleted else (reference.field, pk)
            problems.setdefault(index, []).append((problem.message, absent))
        return problems

    def _parent_rejection(self, line, row, problems):
        """The Rejection of row for its ``_parent_problems``: the reasons, and the parents
        said not to exist (``Rejection.missing``, reworded by the run if it rejected them)."""
        reason = "; ".join(message for message, _absent in problems)
        missing = tuple(absent for _message, absent in problems if absent is not None)
        return dataclasses.replace(self._rejection(line, row, reason), missing=missing)

    def _rejection(self, line, row, reason):
        values = dict(zip(self.fields, row, strict=False))
        return Rejection(self.table, line, row[0], reason, values)

    def _classify_and_insert(self, rows, lines):
        """Settle each row in input order against what is stored and what came before it;
        return a Written.

        An id stored or taken by an earlier row of the batch makes the row already present
        (same data) or a conflict, which ``_settle_conflict`` settles; else, and for a
        conflict that updates, a comparison key (an email) stored or claimed by an earlier
        accepted row makes it a rejection naming the owner; else it is inserted (or written
        over the stored row). So a row that is rejected never takes an id or a key from a
        later one, and a key an update gives up is free for the rows after it.
        """
        if self.on_conflict == UPDATE and len({r[0] for r in rows}) < len(rows):
            return self._in_runs_of_distinct_ids(rows, lines)
        rejections = []
        stored = stored_rows(self.spec, self.connection, self.alias, [r[0] for r in rows])
        owners = self._stored_key_owners(rows)
        present = skipped = 0
        taken: dict[Any, tuple[Any, ...]] = {}  # id -> the row of this batch that will be inserted
        # key column -> {key value: id of the row of this batch that has it, None: given up}
        claimed: dict[str, dict[Any, Any]] = {key.column: {} for key in self.spec.keys}
        updates, update_lines = [], []  # rows to write over stored ones, in input order
        fresh_lines = {}
        for line, row in zip(lines, rows, strict=True):
            earlier = stored.get(row[0]) or taken.get(row[0])
            if earlier is not None:
                if self.spec.comparable(earlier) == self.spec.comparable(row):
                    present += 1  # stored before, or twice in this run
                    continue
                verdict = self._settle_conflict(line, row, earlier)
                if verdict != UPDATE:
                    if verdict == SKIP:
                        skipped += 1
                    else:
                        rejections.append(verdict)
                    continue
            clash = self._key_owner(row, claimed, owners)
            if clash is not None:
                rejections.append(self._rejection(line, row, self._key_taken(row, *clash)))
                continue
            if earlier is None:
                taken[row[0]] = row
                fresh_lines[row[0]] = line
            else:  # a stored row (ids do not repeat in a batch that updates)
                updates.append(row)
                update_lines.append(line)
                stored[row[0]] = row
            for key in self.spec.keys:
                position = self.spec.position(key.column)
                if earlier is not None and earlier[position] != row[position]:
                    claimed[key.column][earlier[position]] = None  # free for the rows after
                claimed[key.column][row[position]] = row[0]
        # The updates first, in input order: each leaves the keys as the rows before it in
        # the input did, less the rows inserted next, so no step clashes on a unique key.
        self._update_stored(updates, update_lines)
        written = Written(0, present, rejections, len(updates), skipped)
        fresh = list(taken.values())
        if not fresh:
            return written
        try:
            with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                if self.insert_ignoring_conflicts(cursor, fresh) != len(fresh):
                    raise _Redo  # back to the savepoint: settle the rows one by one
            return written._replace(stored=len(fresh))
        except _Redo:
            settled = self._insert_one_by_one(fresh, fresh_lines)
            return Written(*(a + b for a, b in zip(written, settled, strict=True)))

    def _in_runs_of_distinct_ids(self, rows, lines):
        """``_classify_and_insert`` of a batch that repeats an id (``update``): in runs in
        which no id repeats, each settled (and written) before the next is read, so a row
        updates the one before it as it would in a later batch."""
        total = Written(0, 0, [], 0, 0)
        start, seen = 0, set()
        for end, row in enumerate([*rows, None]):
            if row is not None and row[0] not in seen:
                seen.add(row[0])
                continue
            written = self._classify_and_insert(rows[start:end], lines[start:end])
            total = Written(*(a + b for a, b in zip(total, written, strict=True)))
            start, seen = end, {row[0]} if row is not None else set()
        return total

    def _settle_conflict(self, line, row, earlier):
        """What becomes of row, whose id is stored, or taken by an earlier row of its batch,
        with other data (earlier): a Rejection naming the stored values (``reject``),
        ``SKIP``, or ``UPDATE`` (its keys are checked next, then it is written over)."""
        if self.on_conflict == REJECT:
            return self._conflict(line, row, earlier)
        return self.on_conflict

    def _update_stored(self, rows, lines):
        """Write rows over the stored rows with their ids, in order, in the open transaction.

        A row that has gone, or a key another process committed meanwhile (PostgreSQL,
        where reads lock nothing), or a deadlock with another writer, rolls the batch back
        to be read and settled again (``_Redo``), as a clashing insert does.
        """
        if not rows:
            return
        _hold_for_test()  # parents verified, the guard held: a test's delete may race here
        values = [(*row[1:], row[0]) for row in self.prepare(rows)]
        try:
            with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                cursor.executemany(self.update_sql, values)
                if cursor.rowcount != len(values):
                    raise _Redo
        except IntegrityError:
            raise _Redo from None
        except DatabaseError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == DEADLOCK:
                raise _Redo from None
            raise

    def _stored_key_owners(self, rows):
        """{key column: {key value: id of the stored row that has it}} for the rows' keys."""
        manager = self.model.objects.using(self.alias)
        owners = {}
        for key in self.spec.keys:
            position = self.spec.position(key.column)
            found: dict[Any, Any] = {}
            for chunk in query_chunks(self.connection, {r[position] for r in rows}):
                found.update(
                    manager.filter(**{f"{key.column}__in": chunk}).values_list(key.column, "pk")
                )
            owners[key.column] = found
        return owners

    def _key_owner(self, row, claimed, owners):
        """(key, owner id) for the first key of row that another row owns, or None."""
        for key in self.spec.keys:
            value = row[self.spec.position(key.column)]
            owner = claimed[key.column].get(value, owners[key.column].get(value))
            if owner is not None and owner != row[0]:
                return key, owner
        return None

    def _insert_one_by_one(self, rows, lines):
        """Insert rows singly and classify each that does not go in by what is stored now;
        return a Written.

        Reached only when a row clashed with a key the checks above did not see: a row
        another process committed a moment ago. Slow, but exact, and never an endless retry.
        """
        stored, present, rejections, updated, skipped = 0, 0, [], 0, 0
        with self.connection.cursor() as cursor:
            for row in rows:
                line = lines[row[0]]
                cursor.execute(self.insert_sql, self.prepare([row])[0])
                if cursor.rowcount == 1:
                    stored += 1
                    continue
                earlier = stored_rows(self.spec, self.connection, self.alias, [row[0]]).get(row[0])
                if earlier is None:
                    rejections.append(self._rejection(line, row, self._clash_reason(row)))
                    continue
                if self.spec.comparable(earlier) == self.spec.comparable(row):
                    present += 1
                    continue
                verdict = self._settle_conflict(line, row, earlier)
                if verdict == SKIP:
                    skipped += 1
                elif verdict != UPDATE:
                    rejections.append(verdict)
                elif clash := self._key_owner(
                    row, {k.column: {} for k in self.spec.keys}, self._stored_key_owners([row])
                ):
                    rejections.append(self._rejection(line, row, self._key_taken(row, *clash)))
                else:
                    self._update_stored([row], [line])
                    updated += 1
        return Written(stored, present, rejections, updated, skipped)

    def _clash_reason(self, row):
        """Why row, whose id is free, did not go in: the stored owner of one of its keys
        (committed by another process a moment ago), else a unique value we cannot name."""
        clash = self._key_owner(
            row, {k.column: {} for k in self.spec.keys}, self._stored_key_owners([row])
        )
        return self._unknown_clash(row) if clash is None else self._key_taken(row, *clash)

    def _key_taken(self, row, key, owner):
        value = row[self.spec.position(key.source)]
        return f"{key.source} {shown(value)} is already used by {self.spec.noun} {owner}"

    def _unknown_clash(self, row):
        if self.spec.keys:
            key = self.spec.keys[0]
            value = row[self.spec.position(key.source)]
            return f"{key.source} {shown(value)} is already used by another stored row"
        return "a unique value is already used by another stored row"

    def _conflict(self, line, row, earlier):
        stored = ", ".join(
            f"{name} {shown(value)}"
            for name, value in zip(self.fields[1:], earlier[1 : len(self.fields)], strict=True)
        )
        reason = f"{self.spec.pk} {row[0]} is already stored with different data ({stored})"
        return self._rejection(line, row, reason)

    def finish(self):
        """Build the indexes dropped for the load (a crash before this is repaired by the
        next command, ``crossdb.loading.indexes.repair``)."""
        if self.deferred_indexes:
            indexes.rebuild(self.alias, self.model)
